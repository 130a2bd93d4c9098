"""Agent folders that load without running code from them.

A saved agent (agents/learners.py `save_agent`) holds, besides SB3's `model.zip` (which
SB3 reads back through cloudpickle, so opening a folder someone sent you could run their
code: kept only to resume training your own runs):

* `policy.pt`: the policy network's `state_dict`, read back with
  `torch.load(weights_only=True)` (tensors only, no code);
* `policy.json`: what rebuilds the network: its class, named from a fixed allowlist
  (`policy_classes()`; nothing is imported by a name read from the file), the observation and
  action spaces, and the constructor's `policy_kwargs` (plain numbers and lists);
* `obs_normalizer.json` (only when trained with VecNormalize): the observation mean,
  variance, epsilon and clip, applied exactly as VecNormalize does.

`load_policy_files(folder)` returns an object with the policy (`.policy`, and `.q_net` for
DQN) and the normaliser. A folder without these files (saved before they existed) holds
only pickled files: loading it needs `allow_pickle=True`, which warns (agents/learned.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

POLICY_WEIGHTS = "policy.pt"
POLICY_SPEC = "policy.json"
NORMALIZER_FILE = "obs_normalizer.json"


def policy_classes() -> dict[str, type]:
    """The allowlist: class name -> the policy classes servegym saves."""
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy

    from agents.scorer_policy import MaskableScorerPolicy, ScorerPolicy

    return {"ActorCriticPolicy": ActorCriticPolicy,
            "MaskableActorCriticPolicy": MaskableActorCriticPolicy,
            "ScorerPolicy": ScorerPolicy, "MaskableScorerPolicy": MaskableScorerPolicy,
            "DQNPolicy": DQNPolicy}


class UnsafeAgentError(ValueError):
    """An agent folder that could only be loaded by unpickling its files."""


class ObsNormalizer:
    """VecNormalize's observation transform from saved statistics (acting only)."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, epsilon: float, clip_obs: float,
                 norm_obs: bool) -> None:
        self.mean, self.var = mean, var
        self.epsilon, self.clip_obs, self.norm_obs = epsilon, clip_obs, norm_obs

    def normalize_obs(self, observation: np.ndarray) -> np.ndarray:
        if not self.norm_obs:
            return observation
        return np.clip((observation - self.mean) / np.sqrt(self.var + self.epsilon),
                       -self.clip_obs, self.clip_obs)


class LoadedModel:
    """The parts of an SB3 model that acting needs: `.policy` (and `.q_net` for DQN)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.q_net = getattr(policy, "q_net", None)


# ---------------------------------------------------------------------- spaces
def space_to_json(space: Any) -> dict[str, Any]:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(),
                "shape": list(space.shape), "dtype": str(space.dtype)}
    raise ValueError(f"cannot save a {type(space).__name__} space; servegym agents use "
                     "Discrete and Box")


def space_from_json(spec: dict[str, Any]) -> Any:
    from gymnasium import spaces

    if spec.get("type") == "Discrete":
        return spaces.Discrete(int(spec["n"]))
    if spec.get("type") == "Box":
        dtype = np.dtype(str(spec["dtype"]))
        if dtype.kind != "f":
            raise UnsafeAgentError(f"policy.json: Box dtype {dtype} is not a float type")
        return spaces.Box(np.asarray(spec["low"], dtype=dtype),
                          np.asarray(spec["high"], dtype=dtype), dtype=dtype)
    raise UnsafeAgentError(f"policy.json: unknown space {spec.get('type')!r}")


# ---------------------------------------------------------------------- save / load
def policy_files(model: Any) -> dict[str, bytes]:
    """File name -> bytes of the safe files for `model` (see the module docstring)."""
    import torch

    policy = model.policy
    name = type(policy).__name__
    if name not in policy_classes():
        raise ValueError(f"cannot save policy class {name}; known: {sorted(policy_classes())}")
    # The optimizer does not act (A2C adds its RMSprop class here): not saved.
    kwargs = {key: value for key, value in (model.policy_kwargs or {}).items()
              if key not in ("optimizer_class", "optimizer_kwargs")}
    try:
        json.dumps(kwargs)
    except TypeError as error:
        raise ValueError(f"policy_kwargs must be plain data to be saved safely: {error}") \
            from None
    spec = {"class": name, "observation_space": space_to_json(policy.observation_space),
            "action_space": space_to_json(policy.action_space), "policy_kwargs": kwargs}
    buffer = io.BytesIO()
    torch.save(policy.state_dict(), buffer)
    files = {POLICY_WEIGHTS: buffer.getvalue(), POLICY_SPEC: json.dumps(spec, indent=2).encode()}
    venv = model.get_vec_normalize_env()
    if venv is not None and venv.norm_obs:  # (reward normalisation does not act)
        stats = {"mean": venv.obs_rms.mean.tolist(), "var": venv.obs_rms.var.tolist(),
                 "epsilon": float(venv.epsilon), "clip_obs": float(venv.clip_obs),
                 "norm_obs": True}
        files[NORMALIZER_FILE] = json.dumps(stats).encode()
    return files


def has_policy_files(folder: Path) -> bool:
    return (Path(folder) / POLICY_WEIGHTS).is_file() and (Path(folder) / POLICY_SPEC).is_file()


def load_policy_files(folder: Path) -> tuple[LoadedModel, ObsNormalizer | None]:
    """The policy and normaliser of `folder`, rebuilt without unpickling anything."""
    import torch

    folder = Path(folder)
    spec = json.loads((folder / POLICY_SPEC).read_text())
    name = spec.get("class")
    classes = policy_classes()
    if name not in classes:
        raise UnsafeAgentError(f"{folder / POLICY_SPEC}: policy class {name!r} is not one of "
                               f"{sorted(classes)}")
    kwargs = spec.get("policy_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise UnsafeAgentError(f"{folder / POLICY_SPEC}: policy_kwargs must be a mapping")
    policy = classes[name](space_from_json(spec["observation_space"]),
                                     space_from_json(spec["action_space"]),
                                     lambda _: 0.0, **kwargs)
    state = torch.load(folder / POLICY_WEIGHTS, map_location="cpu", weights_only=True)
    policy.load_state_dict(state)
    policy.set_training_mode(False)
    normalizer = None
    if (folder / NORMALIZER_FILE).is_file():
        stats = json.loads((folder / NORMALIZER_FILE).read_text())
        normalizer = ObsNormalizer(np.asarray(stats["mean"]), np.asarray(stats["var"]),
                                   float(stats["epsilon"]), float(stats["clip_obs"]),
                                   bool(stats["norm_obs"]))
    return LoadedModel(policy), normalizer


__all__ = ["NORMALIZER_FILE", "POLICY_SPEC", "POLICY_WEIGHTS", "LoadedModel", "ObsNormalizer",
           "UnsafeAgentError", "has_policy_files", "load_policy_files", "policy_classes",
           "policy_files"]
