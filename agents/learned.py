"""Trained agents as simulator policies: `LearnedPolicy` and `load_agent`.

A `LearnedPolicy` answers a decision the way the env would have asked it: it encodes the
decision with the env's own `ObservationEncoder` (same slots, features and mask), picks an
action greedily among the valid ones, and maps it back with `encoder.to_action`. So a
trained agent is evaluated in a plain `Simulator`, on the same workloads and through the
same code path as every heuristic (`servegym.agents.evaluation`), and `agent:<path>` policy specs
work in `experiments/evaluate.py` too.

Action among the valid ones (PPO, A2C and DQN train unmasked with the env's fallback; at
evaluation every agent is masked):
    deterministic  maskable_ppo: model.predict(obs, action_masks=mask, deterministic=True),
                   computed as the argmax of the policy's logits over valid actions (same
                   result); ppo, a2c: the same argmax; dqn: argmax of Q over valid actions.
    stochastic     policy-gradient agents sample from their masked action distribution with
                   the generator the simulator hands the policy at each reset (Gumbel-max),
                   so a run is reproducible; DQN stays greedy.
Why stochastic exists (and is train.py's default, `eval.deterministic=false`): ADMIT slots
hold interchangeable requests, so a policy spreads the "admit" probability over up to K
slots while STOP keeps its mass in one action; the argmax then picks STOP whenever STOP's
probability exceeds every single slot's, even when admitting has most of the mass, and a
greedy agent that STOPs whenever allowed admits one request per idle instance.

Output-length knowledge follows the env's `length_knowledge`: "oracle" reads the true
length; "predicted" draws true x lognormal(0, length_sigma) per request from the policy's
generator (the simulator hands it one at each reset); "none" uses the mean output length of
the split the agent trained on.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.core.decisions import default_policies
from servegym.envs.observations import (
    DEFAULT_ADMIT_KEYS,
    DEFAULT_PREEMPT_KEYS,
    OBS_LAYOUT_VERSION,
    ObservationEncoder,
)
from servegym.envs.protocol import Action, Decision, DecisionKind, Policy

KINDS = {kind.control: kind for kind in DecisionKind}  # config name -> kind
KIND_ORDER = tuple(DecisionKind)  # the order a scheduler's policies are listed in


class LayoutMismatchError(ValueError):
    """A saved agent was trained on another observation layout than this code encodes."""


def check_layout(metadata: Mapping[str, Any], where: str) -> None:
    """Refuse an agent whose observation layout differs from `OBS_LAYOUT_VERSION`."""
    version = metadata.get("obs_layout", 1)
    if version != OBS_LAYOUT_VERSION:
        raise LayoutMismatchError(
            f"the agent at {where} was trained on observation layout {version}, but this "
            f"servegym encodes layout {OBS_LAYOUT_VERSION} (envs/observations.py): its "
            "network would read the wrong features. Retrain it with this version (python "
            "train.py ...), or evaluate it with the servegym version it was trained with.")


class AgentStalledError(RuntimeError):
    """The agent asked for far more decisions than a window needs (it keeps STOPping)."""


class LearnedPolicy:
    """A stable-baselines3 model behind the simulator's `Policy` protocol.

    Args:
        model: a trained MaskablePPO, PPO, A2C or DQN model.
        metadata: `servegym.agents.learners.agent_metadata` of the env it trained on (algo,
            num_slots, default_ttft_slo, rate_scale, length_knowledge, length_sigma,
            output_mean).
        normalizer: a `VecNormalize` whose `normalize_obs` is applied first (or None).
        deterministic: greedy actions, else samples (see the module docstring).
        max_decisions_per_request: the window is abandoned with `AgentStalledError` after
            this many decisions per request of the workload (a schedule needs about 2 per
            request; an agent that STOPs whenever allowed needs hundreds, and hours of CPU).
    """

    def __init__(self, model: Any, metadata: Mapping[str, Any], normalizer: Any = None,
                 deterministic: bool = True, max_decisions_per_request: float = 50.0) -> None:
        self.model = model
        self.max_decisions_per_request = max_decisions_per_request
        self.decisions = 0
        self._limit = 0
        self.deterministic = deterministic or metadata["algo"] == "dqn"
        self.algo = str(metadata["algo"])
        self.length_knowledge = str(metadata["length_knowledge"])
        self.length_sigma = float(metadata["length_sigma"])
        self.output_mean = float(metadata["output_mean"])
        self.normalizer = normalizer
        self.encoder = ObservationEncoder(int(metadata["num_slots"]),
                                          float(metadata["default_ttft_slo"]),
                                          rate_scale=float(metadata["rate_scale"]),
                                          output_estimate=self._estimate,
                                          admit_keys=metadata.get("admit_keys",
                                                                  DEFAULT_ADMIT_KEYS),
                                          preempt_keys=metadata.get("preempt_keys",
                                                                    DEFAULT_PREEMPT_KEYS))
        self._rng: np.random.Generator | None = None
        self._bound: Any = None
        self._estimates: list[float] = []

    # ------------------------------------------------------------------ protocol
    def reset(self, rng: np.random.Generator | None = None) -> None:
        self._rng = rng
        self._bound = None

    def decide(self, decision: Decision) -> Action:
        sim = decision.cluster if decision.instance is None else decision.instance.sim
        if sim.workload is not self._bound:
            self._bind(sim.workload)
        self.decisions += 1
        if self.decisions > self._limit:
            raise AgentStalledError(
                f"the agent took {self.decisions} decisions for {len(sim.workload)} requests "
                f"(limit {self.max_decisions_per_request:g} per request): it keeps STOPping; "
                "this window is abandoned")
        observation = self.encoder.encode(decision, sim)
        action = self.act(observation, self.encoder.mask)
        return self.encoder.to_action(action, decision)

    # ------------------------------------------------------------------ acting
    def act(self, observation: np.ndarray, mask: np.ndarray) -> int:
        """The greedy valid action for one observation (see the module docstring).

        One forward pass of the network, without SB3's `predict` plumbing: for MaskablePPO
        the argmax of the masked logits is exactly `predict(..., deterministic=True)`. The
        logits come from the policy's own action distribution, so any SB3 actor-critic
        policy (MlpPolicy, servegym.agents.scorer_policy's scorers) acts the same way.
        """
        import torch

        if self.normalizer is not None:
            observation = self.normalizer.normalize_obs(observation).astype(np.float32)
        with torch.no_grad():
            tensor = torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1)
            if self.algo == "dqn":
                scores = self.model.q_net(tensor)[0]
            else:
                scores = self.model.policy.get_distribution(tensor).distribution.logits[0]
            scores = scores.numpy().astype(np.float64)
        if not self.deterministic:
            if self._rng is None:
                raise RuntimeError("LearnedPolicy: reset(rng) before sampling (Simulator.reset "
                                   "does)")
            scores += self._rng.gumbel(size=scores.size)  # Gumbel-max: a softmax sample
        scores[~mask] = -np.inf
        return int(np.argmax(scores))

    # ------------------------------------------------------------------ lengths
    def _bind(self, workload: Any) -> None:
        outputs = workload.output_len.astype(np.float64)
        if self.length_knowledge == "oracle":
            estimates = outputs
        elif self.length_knowledge == "predicted":
            if self._rng is None:
                raise RuntimeError("LearnedPolicy: reset(rng) before deciding "
                                   "(Simulator.reset does)")
            estimates = outputs * self._rng.lognormal(0.0, self.length_sigma, outputs.size)
        else:
            estimates = np.full(outputs.size, self.output_mean)
        self._estimates = estimates.tolist()
        self.encoder.episode_requests = len(workload)
        self.decisions = 0
        self._limit = int(self.max_decisions_per_request * max(len(workload), 1))
        self._bound = workload

    def _estimate(self, request: Any) -> float:
        return self._estimates[request.rid]


def scheduler_for(policy: Policy, controlled: list[str], specs: Mapping[str, str]
                  ) -> dict[DecisionKind, Policy]:
    """Policies for every decision kind: `policy` for the controlled kinds, the heuristics
    named in `specs` (or the simulator's defaults) for the rest."""
    from servegym.agents.learners import uncontrolled_policies

    chosen = {KINDS[key]: value for key, value in uncontrolled_policies(specs).items()}
    for name in controlled:
        chosen[KINDS[name]] = policy
    defaults = default_policies()
    return {kind: chosen.get(kind, defaults[kind]) for kind in KIND_ORDER}


class AgentNotFoundError(FileNotFoundError, ValueError):
    """No saved agent at a path (a ValueError too, as every bad policy spec is)."""


def agent_folder(path: str | Path) -> Path:
    """The saved-agent folder behind `path`: the folder itself, a run folder (its `model/`),
    or a `model.zip` inside one."""
    from servegym.agents.learners import AGENT_FILE

    path = Path(path)
    for candidate in (path, path / "model", path.parent):
        if (candidate / AGENT_FILE).is_file():
            return candidate
    raise AgentNotFoundError(f"cannot load agent {str(path)!r}: no saved agent there (expected "
                             f"{AGENT_FILE} and model.zip: a train.py run folder, its model/ "
                             "folder or a checkpoint)")


def load_policy(path: str | Path, deterministic: bool | None = None,
                allow_pickle: bool = False) -> tuple[LearnedPolicy, dict[str, Any]]:
    """The `LearnedPolicy` saved at `path` (see `agent_folder`) and its metadata;
    `deterministic=None` takes the choice saved with the agent (`eval_deterministic`).

    The network is rebuilt from `policy.json` and `policy.pt` (agents/agent_files.py):
    nothing in the folder is unpickled. A folder saved before those files existed holds
    only pickles (`model.zip`, `vecnormalize.pkl`), which can run code when loaded: it is
    refused unless `allow_pickle=True` (policy spec `agent+pickle:<path>`), which warns."""
    import torch

    from servegym.agents.agent_files import (
        UnsafeAgentError,
        has_policy_files,
        legacy_module_names,
        load_policy_files,
    )
    from servegym.agents.learners import AGENT_FILE, MODEL_FILE, VECNORM_FILE, algorithm_class

    torch.set_num_threads(1)
    folder = agent_folder(path)
    metadata = json.loads((folder / AGENT_FILE).read_text())
    if metadata.get("mode") != "interval":
        check_layout(metadata, str(folder))
    if has_policy_files(folder):
        model, normalizer = load_policy_files(folder)
    elif not allow_pickle:
        raise UnsafeAgentError(
            f"{folder} holds no policy.pt/policy.json, only pickled files (model.zip"
            f"{', vecnormalize.pkl' if (folder / VECNORM_FILE).exists() else ''}), which can "
            "run code when loaded. Load it only if you trust whoever made it: "
            "load_policy(..., allow_pickle=True) or the spec agent+pickle:<path>; or retrain")
    else:
        warnings.warn(f"loading the pickled agent files of {folder} (allow_pickle=True): "
                      "they can run code", stacklevel=2)
        with legacy_module_names(str(folder)):
            model = algorithm_class(metadata["algo"]).load(str(folder / MODEL_FILE),
                                                           device="cpu")
            normalizer = None
            if (folder / VECNORM_FILE).exists():
                with open(folder / VECNORM_FILE, "rb") as handle:
                    normalizer = pickle.load(handle)
                normalizer.training = False
    if deterministic is None:
        deterministic = bool(metadata.get("eval_deterministic", True))
    return policy_from_model(model, metadata, normalizer, deterministic), metadata


def policy_from_model(model: Any, metadata: Mapping[str, Any], normalizer: Any = None,
                      deterministic: bool = True) -> Policy:
    """The simulator policy of a model: a `LearnedPolicy` for per-decision agents, an
    `servegym.envs.interval_env.IntervalPolicy` for interval-mode ones (`metadata["mode"]`)."""
    if metadata.get("mode") == "interval":
        from servegym.envs.interval_env import IntervalPolicy

        return IntervalPolicy.from_model(model, metadata, normalizer, deterministic)
    return LearnedPolicy(model, metadata, normalizer, deterministic)


def load_agent(path: str | Path, allow_pickle: bool = False) -> dict[DecisionKind, Policy]:
    """Policies of the agent saved at `path`: the learned policy for the decisions it was
    trained on, its training heuristics (or the defaults) for the others (`load_policy`)."""
    policy, metadata = load_policy(path, allow_pickle=allow_pickle)
    return scheduler_for(policy, metadata["controlled"], metadata.get("policies", {}))


__all__ = ["AgentNotFoundError", "AgentStalledError", "LayoutMismatchError", "LearnedPolicy",
           "agent_folder", "check_layout", "policy_from_model",
           "load_agent", "load_policy", "scheduler_for"]
