"""servegym/Sessions-v0 (envs/tasks.py SESSIONS): RETAIN on closed-loop agentic programs.

The env builds from its task, asks only RETAIN with the 7-option menu, keeps observations
in [-1, 1], and closed-loop episodes (the env's and the evaluation harness's windows) hold
whole programs: every call's parents are in the episode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import servegym  # noqa: F401  (registers the ids)
from servegym.agents.evaluation import evaluation_episodes
from servegym.envs.tasks import TASKS
from servegym.envs.workloads import build_workload
from servegym.envs.workloads.transforms import split_by_time

ID = "servegym/Sessions-v0"


def _whole(workload) -> bool:
    n = len(workload)
    return all(0 <= p < n for parents in workload.parents for p in parents)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_env_asks_retain_with_its_menu() -> None:
    env = gym.make(ID)
    obs, info = env.reset(seed=1)
    sim = env.unwrapped.sim
    assert sim.retention is not None and len(sim.retention.options) == 7
    assert _whole(sim.workload) and sim.workload.parents is not None
    rng = np.random.default_rng(0)
    steps = 0
    while steps < 200:
        assert info["decision"] == "RETAIN"
        mask = info["action_mask"]
        assert mask[:7].all() and not mask[7:].any()
        assert obs.min() >= -1 and obs.max() <= 1
        obs, _, terminated, truncated, info = env.step(int(rng.integers(7)))
        steps += 1
        if terminated or truncated:
            break
    # a 1000-call episode asks far more than 200 RETAIN decisions
    assert steps == 200 and not (terminated or truncated)


def test_evaluation_windows_keep_whole_programs() -> None:
    spec = TASKS[ID].make_kwargs()["workload"]
    workload = build_workload(**spec)
    test = split_by_time(workload, "test")
    for episode in evaluation_episodes(test, 3, 400, None, seed=0):
        assert _whole(episode.workload) and 300 < len(episode.workload) <= 400
