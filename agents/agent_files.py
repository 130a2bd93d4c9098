"""Agent folders that load without running code from them.

A saved agent (agents/learners.py `save_agent`) holds, besides SB3's own `model.zip` and
`vecnormalize.pkl` (which SB3 reads back through cloudpickle and pickle, so opening a
folder someone sent you could run their code; written so that SB3 and rl-zoo3 tools can
open servegym agents, and read by servegym only for folders saved before the files below
existed, behind an explicit opt-in):

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

What resuming training needs beyond the policy, also without pickle
(`training_state_files` writes, `restore_training_state` reads into a model that
`servegym.agents.learners.build_model` has just built from the run's recorded config):

* `optimizer.pt`: the optimizer's `state_dict` (`torch.load(weights_only=True)`);
* `training_state.json`: the counters (timesteps, updates, calls, episodes) and, with
  VecNormalize, its observation and return statistics (mean, variance, count);
* `replay_buffer.npz` (off-policy agents, checkpoints only): the replay buffer's arrays
  and position (`numpy.load(allow_pickle=False)`).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

POLICY_WEIGHTS = "policy.pt"
POLICY_SPEC = "policy.json"
NORMALIZER_FILE = "obs_normalizer.json"
OPTIMIZER_FILE = "optimizer.pt"
TRAINING_STATE = "training_state.json"
REPLAY_ARRAYS = "replay_buffer.npz"
# The replay buffer's arrays, as SB3's ReplayBuffer names them (next_observations is None
# with optimize_memory_usage, and then not saved).
REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones",
                 "timeouts")


def policy_classes() -> dict[str, type]:
    """The allowlist: class name -> the policy classes servegym saves."""
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy

    from servegym.agents.scorer_policy import MaskableScorerPolicy, ScorerPolicy

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


# ---------------------------------------------------------------------- legacy pickles
@contextlib.contextmanager
def legacy_module_names(what: str) -> Iterator[None]:
    """While unpickling an opted-in legacy folder: the pre-0.2 module names (``agents.*``,
    ``envs.*``) resolve to ``servegym.agents.*`` / ``servegym.envs.*``, with a
    DeprecationWarning; the aliases are removed afterwards."""
    import importlib
    import sys
    import warnings

    for package in ("servegym.agents.scorer_policy", "servegym.envs.observations"):
        importlib.import_module(package)  # what pickled SB3 models name
    added = [name[len("servegym."):] for name in list(sys.modules)
             if name.startswith(("servegym.agents", "servegym.envs"))
             and name[len("servegym."):] not in sys.modules]
    for name in added:
        sys.modules[name] = sys.modules[f"servegym.{name}"]
    warnings.warn(f"{what} may name pre-0.2 modules (agents.*, envs.*): read as servegym.*; "
                  "re-save it (the old names stop working in the next release)",
                  DeprecationWarning, stacklevel=3)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


# ---------------------------------------------------------------------- training state
def _running_stats(rms: Any) -> dict[str, Any]:
    return {"mean": np.asarray(rms.mean).tolist(), "var": np.asarray(rms.var).tolist(),
            "count": float(rms.count)}


def training_state_files(model: Any, replay_buffer: bool = False) -> dict[str, bytes]:
    """File name -> bytes of what resuming `model`'s training needs (module docstring)."""
    import torch

    state: dict[str, Any] = {
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "n_calls": int(getattr(model, "_n_calls", 0)),
        "episode_num": int(getattr(model, "_episode_num", 0)),
    }
    venv = model.get_vec_normalize_env()
    if venv is not None:  # (norm_obs=False: VecNormalize keeps no observation statistics)
        state["vec_normalize"] = {
            key: _running_stats(getattr(venv, f"{key}_rms")) if hasattr(venv, f"{key}_rms")
            else None for key in ("obs", "ret")}
    files = {TRAINING_STATE: json.dumps(state, indent=2).encode()}
    buffer = io.BytesIO()
    torch.save(model.policy.optimizer.state_dict(), buffer)
    files[OPTIMIZER_FILE] = buffer.getvalue()
    replay = getattr(model, "replay_buffer", None) if replay_buffer else None
    if replay is not None:
        arrays = {name: getattr(replay, name) for name in REPLAY_FIELDS
                  if getattr(replay, name, None) is not None}
        buffer = io.BytesIO()
        np.savez(buffer, pos=np.int64(replay.pos), full=np.bool_(replay.full), **arrays)
        files[REPLAY_ARRAYS] = buffer.getvalue()
    return files


def has_training_state(folder: Path) -> bool:
    folder = Path(folder)
    return has_policy_files(folder) and (folder / TRAINING_STATE).is_file() and \
        (folder / OPTIMIZER_FILE).is_file()


def _restore_stats(rms: Any, saved: dict[str, Any], what: str) -> None:
    mean, var = np.asarray(saved["mean"], np.float64), np.asarray(saved["var"], np.float64)
    if mean.shape != np.shape(rms.mean):
        raise UnsafeAgentError(f"{TRAINING_STATE}: VecNormalize {what} statistics have shape "
                               f"{mean.shape}, the env's {np.shape(rms.mean)}")
    rms.mean, rms.var, rms.count = mean, var, float(saved["count"])


def restore_training_state(model: Any, folder: Path) -> Any:
    """Load `folder`'s policy weights, optimizer, counters, VecNormalize statistics and
    replay buffer into `model` (freshly built with the same config), unpickling nothing."""
    import torch

    folder = Path(folder)
    model.policy.load_state_dict(
        torch.load(folder / POLICY_WEIGHTS, map_location=model.device, weights_only=True))
    model.policy.optimizer.load_state_dict(
        torch.load(folder / OPTIMIZER_FILE, map_location=model.device, weights_only=True))
    state = json.loads((folder / TRAINING_STATE).read_text())
    model.num_timesteps = int(state["num_timesteps"])
    for key in ("n_updates", "n_calls", "episode_num"):
        if hasattr(model, f"_{key}"):
            setattr(model, f"_{key}", int(state[key]))
    venv = model.get_vec_normalize_env()
    saved = state.get("vec_normalize")
    if (venv is None) != (saved is None):
        raise UnsafeAgentError(f"{folder}: the run was saved {'with' if saved else 'without'} "
                               "VecNormalize statistics but the config says otherwise")
    if venv is not None:
        for key, what in (("obs", "observation"), ("ret", "return")):
            if (saved.get(key) is None) != (not hasattr(venv, f"{key}_rms")):
                raise UnsafeAgentError(f"{folder}: VecNormalize {what} statistics were saved "
                                       f"{'without' if saved.get(key) is None else 'with'} "
                                       "them, but the config says otherwise")
            if saved.get(key) is not None:
                _restore_stats(getattr(venv, f"{key}_rms"), saved[key], what)
    replay = getattr(model, "replay_buffer", None)
    if replay is not None and (folder / REPLAY_ARRAYS).is_file():
        with np.load(folder / REPLAY_ARRAYS, allow_pickle=False) as arrays:
            for name in REPLAY_FIELDS:
                if name in arrays.files:
                    target = getattr(replay, name)
                    if target.shape != arrays[name].shape:
                        raise UnsafeAgentError(
                            f"{folder / REPLAY_ARRAYS}: {name} has shape "
                            f"{arrays[name].shape}, the config's buffer {target.shape}")
                    target[...] = arrays[name]
            replay.pos, replay.full = int(arrays["pos"]), bool(arrays["full"])
    return model


__all__ = ["NORMALIZER_FILE", "POLICY_SPEC", "POLICY_WEIGHTS", "LoadedModel", "ObsNormalizer",
           "UnsafeAgentError", "has_policy_files", "has_training_state", "load_policy_files",
           "policy_classes", "policy_files", "restore_training_state", "training_state_files"]
