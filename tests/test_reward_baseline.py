"""The input-dependent reward baseline (agents/reward_baseline.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import servegym  # noqa: F401  (registers the ids)
from servegym.agents import build_scheduler
from servegym.agents.reward_baseline import InputDependentBaseline

KWARGS = {"episode_requests": 150, "rate": 80.0}


def make(**kwargs):
    return gym.make("servegym/Admission-v0", **{**KWARGS, **kwargs})


def wrapped(spec: str = "spf") -> InputDependentBaseline:
    return InputDependentBaseline(make(), make(), lambda: build_scheduler(spec))


def play(env, spec: str, seed: int) -> list[float]:
    """Rewards of an episode in which `spec` answers every decision through `step`."""
    policies = build_scheduler(spec)
    env.reset(seed=seed)
    rewards, done = [], False
    while not done:
        decision = env.unwrapped.decision
        action = env.unwrapped.action_index(policies[decision.kind].decide(decision))
        _, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    return rewards


@pytest.mark.parametrize("seed", [0, 3])
def test_playing_the_baseline_heuristic_earns_zero_at_every_step(seed: int) -> None:
    rewards = play(wrapped("spf"), "spf", seed)
    assert len(rewards) > 50
    assert np.allclose(rewards, 0.0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_episode_return_is_the_agents_minus_the_heuristics(seed: int) -> None:
    agent = sum(play(make(), "fcfs", seed))
    teacher = sum(play(make(), "spf", seed))
    shaped = play(wrapped("spf"), "fcfs", seed)
    assert agent != teacher  # the test means something only if they differ
    assert sum(shaped) == pytest.approx(agent - teacher, abs=1e-9)
    assert any(abs(r) > 1e-9 for r in shaped)


def test_unseeded_resets_follow_the_agent_envs_own_draws() -> None:
    env = wrapped("spf")
    env.reset(seed=5)
    play_rewards = []
    for _ in range(2):  # later episodes: reset(seed=None), the twin mirrors the generator
        env.reset()
        assert env.twin.unwrapped.sim.workload.arrival_time.tolist() == \
            env.unwrapped.sim.workload.arrival_time.tolist()
        play_rewards.append(env.baseline_reward(0.0, done=True))
    assert all(np.isfinite(play_rewards))
