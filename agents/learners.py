"""Builders for learned agents: env arguments, vectorised envs, SB3 models, saving and loading.

`train.py` wires these; nothing here reads Hydra. Conventions:

* Env arguments (`env_kwargs`) are plain data from the `env`, `workload`, `cost` and
  `cluster` config nodes; heuristics for the decisions the agent does not control are
  named in `env.policies` and built fresh inside each env (`make_env`).
* Unmasked agents (PPO, A2C, DQN) train with `invalid_action="fallback"`; MaskablePPO with
  `"raise"` (it never picks an invalid action).
* A saved agent is a folder: `policy.pt` + `policy.json` (+ `obs_normalizer.json` with
  VecNormalize), which evaluation loads without unpickling anything
  (agents/agent_files.py); `agent.json` (what `servegym.agents.load_agent` needs to rebuild the
  observation encoder); SB3's `model.zip` and `vecnormalize.pkl` (pickled: used only to
  resume your own runs), and for checkpoints of off-policy agents `replay_buffer.pkl` plus
  `state.json`. Files are written atomically and never overwritten.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from servegym.agents.agent_files import (
    has_training_state,
    legacy_module_names,
    policy_files,
    restore_training_state,
    training_state_files,
)
from servegym.agents.config import MASKED_ALGORITHMS, AgentConfig, TrainConfig
from servegym.envs.build import CLUSTER_OPTIONS
from servegym.envs.core.metrics import atomic_write
from servegym.envs.observations import OBS_LAYOUT_VERSION

MODEL_FILE = "model.zip"
VECNORM_FILE = "vecnormalize.pkl"
AGENT_FILE = "agent.json"
REPLAY_FILE = "replay_buffer.pkl"
STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
BUILD_WORKLOAD = "servegym.envs.workloads.build_workload"
BUILD_COST = "servegym.envs.costs.build_cost_model"


def algorithm_class(algo: str) -> type:
    """The SB3 class of `algo` (imported lazily: heuristic runs need no torch)."""
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO

    classes = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
    if algo not in classes:
        raise ValueError(f"no SB3 algorithm for agent.algo={algo!r}; learned agents: "
                         f"{['maskable_ppo', *classes]}")
    return classes[algo]


def is_masked(algo: str) -> bool:
    return algo in MASKED_ALGORITHMS


# ============================================================================ env
def workload_arguments(workload: Mapping[str, Any]) -> dict[str, Any]:
    """`build_workload` arguments from a workload config node (its `_target_` dropped)."""
    spec = dict(workload)
    target = spec.pop("_target_", BUILD_WORKLOAD)
    if target != BUILD_WORKLOAD:
        raise ValueError(f"workload._target_={target!r}: the envs build workloads with "
                         f"{BUILD_WORKLOAD}; pick a workload/ config that uses it")
    if spec.get("split") is not None:
        raise ValueError(f"workload.split={spec['split']!r}: leave it null; the env takes its "
                         "train part and evaluation its test part (env.split, eval.split)")
    return spec


INTERVAL_ENTRY_POINT = "servegym.envs.interval_env:IntervalEnv"


def is_interval_env(env_id: str) -> bool:
    """Whether `env_id` is an interval-mode env (the agent sets priority weights once per
    scheduling interval, envs/interval_env.py) rather than a per-decision `ServingEnv`."""
    import servegym  # noqa: F401  (registers the ids)

    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(f"env.id={env_id!r} is not a registered env ({error}); the servegym "
                         "ids are listed in envs/__init__.py") from None
    return spec.entry_point == INTERVAL_ENTRY_POINT


def cluster_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The `cluster` argument of the envs and the evaluation harness (plain data)."""
    cluster = {"num_instances": cfg.cluster.num_instances,
               "instance": dataclasses.asdict(cfg.cluster.instance)}
    if cfg.cluster.pools:
        cluster["pools"] = [dataclasses.asdict(pool) for pool in cfg.cluster.pools]
        cluster["num_instances"] = sum(pool.count for pool in cfg.cluster.pools)
    for key in CLUSTER_OPTIONS:  # envs/build.py: each a `ClusterConfig` field
        value = getattr(cfg.cluster, key)
        if value is not None:
            cluster[key] = dict(value) if isinstance(value, Mapping) else value
    return cluster


def env_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Env keyword arguments (plain data) from the config; see `EnvConfig`. Interval-mode
    envs take `interval_s` and none of the per-decision options (slots, masks)."""
    env, cost = cfg.env, cfg.cost
    if cost._target_ != BUILD_COST:
        raise ValueError(f"cost._target_={cost._target_!r}: the envs build {BUILD_COST}")
    invalid = env.invalid_action
    if invalid == "auto":
        invalid = "raise" if is_masked(cfg.agent.algo) else "fallback"
    kwargs: dict[str, Any] = {
        "workload": workload_arguments(dataclasses.asdict(cfg.workload)),
        "rate": env.rate, "episode_requests": env.episode_requests, "split": env.split,
        "model": cost.model, "gpu": cost.gpu, "tensor_parallel": cost.tensor_parallel,
        "cost_source": cost.source,
        "cluster": cluster_kwargs(cfg),
        "num_slots": env.num_slots, "admit_keys": list(env.admit_keys),
        "preempt_keys": list(env.preempt_keys), "episode_end": env.episode_end,
        "length_knowledge": env.length_knowledge,
        "length_sigma": env.length_sigma, "over_context": env.over_context,
        "reward": env.reward,
        "reward_options": dict(env.reward_options), "invalid_action": invalid,
        "invalid_action_penalty": env.invalid_action_penalty, "debug_checks": env.debug_checks,
    }
    if env.control is not None:
        kwargs["control"] = list(env.control)
    if is_interval_env(env.id):
        from servegym.envs.interval_env import PER_DECISION_OPTIONS

        for key in PER_DECISION_OPTIONS:
            kwargs.pop(key)
        kwargs["interval_s"] = env.interval_s
    return kwargs


def uncontrolled_policies(specs: Mapping[str, str]) -> dict[str, Any]:
    """Fresh heuristics keyed by decision ("admit" | "preempt" | "route") from registry
    specs, e.g. {"preempt": "swap-cost-aware"}; each spec must be of its key's kind."""
    from servegym.agents import parse_spec
    from servegym.agents.heuristics import make_policy, policy_info

    policies = {}
    for key, spec in specs.items():
        terms = parse_spec(spec)
        if len(terms) != 1:
            raise ValueError(f"env.policies.{key}={spec!r}: give one registry name")
        name, kwargs = terms[0]
        kind = policy_info(name).kind.name.lower()
        if kind != key:
            raise ValueError(f"env.policies.{key}={spec!r} is a {kind} policy")
        policies[key] = make_policy(name, **kwargs)
    return policies


def make_env(env_id: str, kwargs: Mapping[str, Any], policy_specs: Mapping[str, str],
             max_episode_steps: int | None = None, monitor: bool = True,
             quiet_cost_notice: bool = False,
             reward_baseline: Callable[[], Mapping[Any, Any]] | None = None
             ) -> Callable[[], gym.Env]:
    """A thunk building one env (with its own heuristics), wrapped in SB3's `Monitor`.
    `quiet_cost_notice`: no `RooflineFallbackWarning` (for the envs a run builds after its
    probe env has said it, and its header names the cost source: the notice once per run;
    Python's "once" filter alone is not enough, as any `catch_warnings` resets it).
    `reward_baseline`: policies (a factory) whose return on the same window is subtracted
    from the agent's (`servegym.agents.reward_baseline.InputDependentBaseline`, inside
    `Monitor`, so the logged episode return is the agent's margin over them)."""

    def build() -> gym.Env:
        import warnings

        import servegym  # noqa: F401  (registers the ids, also in subprocesses)
        from servegym.envs.costs.factory import RooflineFallbackWarning

        extra = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        with warnings.catch_warnings():
            if quiet_cost_notice:
                warnings.simplefilter("ignore", RooflineFallbackWarning)
            return gym.make(env_id, policies=uncontrolled_policies(policy_specs), **kwargs,
                            **extra)

    def thunk() -> gym.Env:
        env = build()
        if reward_baseline is not None:
            from servegym.agents.reward_baseline import InputDependentBaseline

            env = InputDependentBaseline(env, build(), reward_baseline)
        if monitor:
            from stable_baselines3.common.monitor import Monitor

            env = Monitor(env)
        return env

    return thunk


def build_vec_env(cfg: TrainConfig, kwargs: Mapping[str, Any],
                  vecnormalize_path: Path | None = None,
                  reward_baseline: Callable[[], Mapping[Any, Any]] | None = None) -> Any:
    """`agent.n_envs` envs in a DummyVecEnv (or SubprocVecEnv), optionally VecNormalize'd
    (statistics loaded from `vecnormalize_path` when resuming); `reward_baseline`: see
    `make_env`."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    agent = cfg.agent
    thunks = [make_env(cfg.env.id, kwargs, cfg.env.policies, cfg.env.max_episode_steps,
                       quiet_cost_notice=True, reward_baseline=reward_baseline)
              for _ in range(agent.n_envs)]
    venv = SubprocVecEnv(thunks) if agent.vec_env == "subproc" else DummyVecEnv(thunks)
    if not agent.vec_normalize:
        return venv
    if vecnormalize_path is not None:
        return VecNormalize.load(str(vecnormalize_path), venv)
    gamma = getattr(agent, "gamma", 0.99)
    return VecNormalize(venv, norm_obs=agent.norm_obs, norm_reward=agent.norm_reward,
                        clip_obs=agent.clip_obs, gamma=gamma)


def build_model(agent: AgentConfig, venv: Any, seed: int) -> Any:
    """A fresh SB3 model seeded with `seed`: `MlpPolicy` with `agent.net_arch`, or the
    shared candidate scorer (agents/scorer_policy.py) for `agent.network="scorer"`, and
    for "auto" with PPO or MaskablePPO on a discrete (per-decision) action space."""
    from gymnasium import spaces

    cls = algorithm_class(agent.algo)
    scorer = agent.network == "scorer" or (
        agent.network == "auto" and agent.algo in ("ppo", "maskable_ppo")
        and isinstance(venv.action_space, spaces.Discrete))
    if scorer:
        from servegym.agents.scorer_policy import policy_class
        from servegym.envs.observations import GLOBAL_FEATURES, SLOT_FEATURES

        policy: Any = policy_class(agent.algo)
        policy_kwargs = {"global_features": GLOBAL_FEATURES, "slot_features": SLOT_FEATURES,
                         "hidden": agent.scorer_hidden, "embed": agent.scorer_embed}
    else:
        policy, policy_kwargs = "MlpPolicy", {"net_arch": list(agent.net_arch)}
    return cls(policy, venv, seed=seed, verbose=0, device=agent.device,
               policy_kwargs=policy_kwargs, **agent.sb3_kwargs())


def resume_seed(seed: int, timesteps: int) -> int:
    """Seed of a run resumed at `timesteps`: derived from the run's seed, so reproducible."""
    return int(np.random.SeedSequence([seed, timesteps]).generate_state(1)[0] % 2**31)


def load_model(agent: AgentConfig, checkpoint: Path, venv: Any, seed: int) -> Any:
    """The model of a saved agent, attached to `venv` and re-seeded for the rest of training:
    rebuilt from the config and filled from its pickle-free training state
    (agents/agent_files.py); a folder saved before that existed goes through SB3's
    unpickling loader (`servegym.agents.training.check_resumable` has required the opt-in)."""
    if has_training_state(checkpoint):
        model = restore_training_state(build_model(agent, venv, seed), checkpoint)
    else:
        with legacy_module_names(str(checkpoint)):
            model = algorithm_class(agent.algo).load(str(checkpoint / MODEL_FILE), env=venv,
                                                     device=agent.device)
            if (checkpoint / REPLAY_FILE).exists():
                model.load_replay_buffer(str(checkpoint / REPLAY_FILE))
    model.set_random_seed(resume_seed(seed, model.num_timesteps))
    return model


# ============================================================================ saving
def agent_metadata(algo: str, env: gym.Env, env_id: str, policy_specs: Mapping[str, str],
                   deterministic: bool = True) -> dict[str, Any]:
    """What `load_agent` needs to answer decisions as the env encodes them, read from a live
    env (so it cannot drift from the env's own settings)."""
    base = env.unwrapped
    if hasattr(base, "agent_metadata"):  # interval mode: the env states what it needs
        return {**base.agent_metadata(), "algo": algo, "env_id": env_id,
                "policies": dict(policy_specs), "eval_deterministic": bool(deterministic)}
    encoder = base.encoder
    return {
        "algo": algo, "env_id": env_id,
        "controlled": sorted(kind.name.lower() for kind in base.controlled),
        "obs_layout": OBS_LAYOUT_VERSION, "num_slots": encoder.num_slots,
        "admit_keys": list(encoder.admit_keys), "preempt_keys": list(encoder.preempt_keys),
        "default_ttft_slo": encoder.default_ttft_slo,
        "rate_scale": encoder.rate_scale, "length_knowledge": base.length_knowledge,
        "length_sigma": base.length_sigma,
        "output_mean": float(base.source.output_len.mean()),
        "policies": dict(policy_specs), "eval_deterministic": bool(deterministic),
    }


def _bytes_of(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.buffer.write(data))


def save_agent(model: Any, folder: Path, metadata: Mapping[str, Any],
               extra: Mapping[str, Any] | None = None, replay_buffer: bool = False) -> Path:
    """Write `folder` (which must not exist) through a temporary sibling renamed into place:
    a folder that exists is complete. Returns `folder`."""
    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; saved agents are never overwritten")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _write_bytes(tmp / MODEL_FILE, _bytes_of(model.save))
        for name, data in policy_files(model).items():  # what loads without pickle
            _write_bytes(tmp / name, data)
        venv = model.get_vec_normalize_env()
        if venv is not None:
            _write_bytes(tmp / VECNORM_FILE, pickle.dumps(venv))
        for name, data in training_state_files(model, replay_buffer).items():
            _write_bytes(tmp / name, data)  # what resumes without pickle
        info = {**metadata, "timesteps": int(model.num_timesteps), **(extra or {})}
        atomic_write(tmp / AGENT_FILE, lambda h: json.dump(info, h, indent=2))
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_checkpoint(model: Any, run_dir: Path, metadata: Mapping[str, Any], keep: int) -> Path:
    """`<run_dir>/checkpoints/step_<timesteps>/` (model, VecNormalize, replay buffer, agent
    metadata); the oldest beyond the newest `keep` are removed (0: keep all)."""
    folder = Path(run_dir) / CHECKPOINTS / f"step_{model.num_timesteps:010d}"
    path = save_agent(model, folder, metadata, replay_buffer=True)
    if keep > 0:
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if (p / AGENT_FILE).exists())


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of `run_dir`, or a clear error."""
    found = checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"resume={run_dir}: no checkpoint under "
                                f"{Path(run_dir) / CHECKPOINTS} (checkpoint.freq > 0 writes "
                                "them)")
    return found[-1]


__all__ = [
    "AGENT_FILE", "MODEL_FILE", "VECNORM_FILE", "agent_metadata", "algorithm_class",
    "build_model", "build_vec_env", "checkpoints", "env_kwargs", "latest_checkpoint",
    "load_model", "make_env", "save_agent", "save_checkpoint", "uncontrolled_policies",
]
