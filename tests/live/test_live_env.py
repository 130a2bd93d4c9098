"""`ServingEnv` stepping on the live backend: swapped in for `env.sim` (reusing the
session's engines), and built by the env itself with `backend="live"`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

import servegym  # noqa: F401  (registers the env ids)
from servegym.envs.workloads.workload import Workload


def test_admission_env_runs_an_episode_on_live_engines(live_backend):
    rng = np.random.default_rng(0)
    n = 64
    workload = Workload.from_lengths(np.cumsum(rng.exponential(0.05, n)),
                                     rng.integers(20, 300, n), rng.integers(5, 50, n))
    env = gym.make("servegym/Admission-v0", workload=workload, split="all", rate=20.0,
                   episode_requests=24).unwrapped
    live_backend.policies = env.sim.policies
    env.sim = live_backend
    observation, info = env.reset(seed=0)
    assert env.observation_space.contains(observation)
    steps, done = 0, False
    while not done:
        action = int(np.flatnonzero(info["action_mask"])[0])
        observation, reward, done, _, info = env.step(action)
        assert np.isfinite(reward)
        steps += 1
    assert steps > 0
    assert info["serving"]["serving/finished"] == 24


def test_env_builds_live_engines_from_its_arguments():
    rng = np.random.default_rng(1)
    n = 32
    workload = Workload.from_lengths(np.cumsum(rng.exponential(0.05, n)),
                                     rng.integers(20, 2000, n), rng.integers(5, 40, n))
    env = gym.make("servegym/Admission-v0", backend="live", workload=workload, split="all",
                   rate=20.0, episode_requests=12,
                   cluster={"num_instances": 1, "instance": {"num_kv_blocks": 64}}).unwrapped
    assert (env.source.prompt_len + env.source.output_len).max() <= env.sim.max_model_len
    _, info = env.reset(seed=0)
    done = False
    while not done:
        _, reward, done, _, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
        assert np.isfinite(reward)
    assert info["serving"]["serving/finished"] == 12
    env.sim.close()
