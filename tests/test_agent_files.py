"""Agent folders load without unpickling anything (agents/agent_files.py), and act exactly
as the SB3 model they were saved from."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from test_train import PPO_TINY, TINY, run_train

import envs  # noqa: F401  (registers the ids)
from agents import build_scheduler
from agents.agent_files import POLICY_SPEC, POLICY_WEIGHTS, UnsafeAgentError
from agents.learned import load_policy
from agents.learners import algorithm_class

RUNS = {
    "a2c": ["agent=a2c", "agent.total_timesteps=64", "agent.n_envs=2"],
    "maskable_ppo": [*PPO_TINY],
    "ppo_vecnormalize": ["agent=ppo", *PPO_TINY, "agent.vec_normalize=true",
                         "agent.network=mlp"],
    "ppo_reward_only_normalized": ["agent=ppo", *PPO_TINY, "agent.vec_normalize=true",
                                   "agent.norm_obs=false"],
    "dqn": ["agent=dqn", "agent.total_timesteps=128", "agent.learning_starts=32",
            "agent.buffer_size=1000"],
    "interval": ["env=admission_interval", "agent=ppo", "agent.total_timesteps=32",
                 "agent.n_steps=16", "agent.batch_size=16", "agent.n_epochs=1"],
}


def forbid_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudpickle

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(cloudpickle, "loads", refuse)
    for algo in ("ppo", "maskable_ppo", "dqn"):
        monkeypatch.setattr(algorithm_class(algo), "load", refuse)


@pytest.mark.parametrize("kind", sorted(RUNS))
def test_saved_agents_load_without_pickle_and_act_as_saved(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, run_dir = run_train(tmp_path, [*TINY, *RUNS[kind]])
    folder = run_dir / "model"
    reference, metadata = load_policy(folder, allow_pickle=True, deterministic=True)
    with monkeypatch.context() as patched:
        forbid_unpickling(patched)
        safe, _ = load_policy(folder, deterministic=True)
    env_id = metadata["env_id"]
    env = gym.make(env_id, episode_requests=64)
    rng = np.random.default_rng(0)
    observation, info = env.reset(seed=0)
    for _ in range(40):
        if kind == "interval":
            expected = reference.weights_fn(observation)
            np.testing.assert_allclose(safe.weights_fn(observation), expected, rtol=1e-6)
            action = expected.astype(np.float32)
        else:
            mask = info["action_mask"]
            action = reference.act(observation, mask)
            assert safe.act(observation, mask) == action
        observation, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            observation, info = env.reset(seed=int(rng.integers(100)))


def test_old_pickle_only_folders_need_an_explicit_opt_in(tmp_path: Path) -> None:
    _, run_dir = run_train(tmp_path, [*TINY, *PPO_TINY])
    old = tmp_path / "old"
    shutil.copytree(run_dir / "model", old)
    (old / POLICY_WEIGHTS).unlink()
    (old / POLICY_SPEC).unlink()
    with pytest.raises(UnsafeAgentError, match="only pickled files.*allow_pickle=True"):
        load_policy(old)
    with pytest.raises(UnsafeAgentError, match="agent\\+pickle"):
        build_scheduler(f"agent:{old}")
    with pytest.warns(UserWarning, match="can run code"):
        build_scheduler(f"agent+pickle:{old}")


def test_a_tampered_policy_spec_is_refused(tmp_path: Path) -> None:
    _, run_dir = run_train(tmp_path, [*TINY, *PPO_TINY])
    folder = tmp_path / "tampered"
    shutil.copytree(run_dir / "model", folder)
    spec = json.loads((folder / POLICY_SPEC).read_text())
    spec["class"] = "os.system"
    (folder / POLICY_SPEC).write_text(json.dumps(spec))
    with pytest.raises(UnsafeAgentError, match="not one of"):
        load_policy(folder)
