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

import servegym  # noqa: F401  (registers the ids)
from servegym.agents import build_scheduler
from servegym.agents.agent_files import POLICY_SPEC, POLICY_WEIGHTS, UnsafeAgentError
from servegym.agents.learned import load_policy
from servegym.agents.learners import algorithm_class

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


RESUMABLE = {
    "maskable_ppo": [*PPO_TINY],
    "ppo_vecnormalize": RUNS["ppo_vecnormalize"],
    "dqn": [*RUNS["dqn"], "agent.total_timesteps=256"],
}


@pytest.mark.parametrize("kind", sorted(RESUMABLE))
def test_checkpoints_resume_without_pickle_into_the_saved_state(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from omegaconf import OmegaConf

    from servegym.agents import learners
    from servegym.agents.training import RESOLVED_CONFIG, typed_config

    overrides = [o for o in TINY if "checkpoint" not in o]
    _, run_dir = run_train(tmp_path, [*overrides, "checkpoint.freq=64", *RESUMABLE[kind]])
    checkpoint = learners.checkpoints(run_dir)[-1]
    config = typed_config(OmegaConf.to_container(OmegaConf.load(run_dir / RESOLVED_CONFIG)))
    kwargs = learners.env_kwargs(config)
    cls = algorithm_class(config.agent.algo)
    reference = cls.load(str(checkpoint / "model.zip"),
                         env=learners.build_vec_env(config, kwargs,
                                                    checkpoint / learners.VECNORM_FILE
                                                    if config.agent.vec_normalize else None))
    if (checkpoint / "replay_buffer.pkl").exists():
        raise AssertionError("the replay buffer is pickled")
    with monkeypatch.context() as patched:
        forbid_unpickling(patched)
        venv = learners.build_vec_env(config, kwargs)
        model = learners.load_model(config.agent, checkpoint, venv, config.seed)
    assert model.num_timesteps == reference.num_timesteps > 0
    mine, theirs = model.policy.state_dict(), reference.policy.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    opt, ref_opt = model.policy.optimizer.state_dict(), reference.policy.optimizer.state_dict()
    assert len(opt["state"]) == len(ref_opt["state"]) > 0
    for key, state in opt["state"].items():
        assert all(torch.equal(v, ref_opt["state"][key][n]) if torch.is_tensor(v)
                   else v == ref_opt["state"][key][n] for n, v in state.items())
    if config.agent.vec_normalize:
        saved = pickle.loads((checkpoint / learners.VECNORM_FILE).read_bytes())
        restored = model.get_vec_normalize_env()
        assert np.array_equal(restored.obs_rms.mean, saved.obs_rms.mean)
        assert restored.ret_rms.count == saved.ret_rms.count
    if kind == "dqn":
        assert model._n_calls == reference._n_calls > 0
        with np.load(checkpoint / "replay_buffer.npz", allow_pickle=False) as arrays:
            assert int(arrays["pos"]) == model.replay_buffer.pos > 0
        assert np.array_equal(model.replay_buffer.observations[:model.replay_buffer.pos],
                              arrays_observations(checkpoint)[:model.replay_buffer.pos])


def arrays_observations(checkpoint: Path) -> np.ndarray:
    with np.load(checkpoint / "replay_buffer.npz", allow_pickle=False) as arrays:
        return arrays["observations"]


def test_resuming_an_old_pickle_only_checkpoint_needs_the_opt_in(tmp_path: Path) -> None:
    from servegym.agents.training import RESOLVED_CONFIG, resume_config

    overrides = [o for o in TINY if "checkpoint" not in o]
    _, run_dir = run_train(tmp_path, [*overrides, "checkpoint.freq=64", *PPO_TINY])
    for folder in [run_dir / "model", *(run_dir / "checkpoints").glob("step_*")]:
        (folder / "training_state.json").unlink()  # as saved before the file existed
    container = {"resume": str(run_dir), "resume_allow_pickle": False, "progress": False,
                 "logger": {}}
    assert (run_dir / RESOLVED_CONFIG).is_file()
    with pytest.raises(UnsafeAgentError, match="resume_allow_pickle=true"):
        resume_config(container, [f"resume={run_dir}"])
    with pytest.warns(UserWarning, match="unpickling"):
        _, checkpoint = resume_config({**container, "resume_allow_pickle": True},
                                      [f"resume={run_dir}", "resume_allow_pickle=true"])
    assert checkpoint == run_dir / "model"
