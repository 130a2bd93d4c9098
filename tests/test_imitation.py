"""Warm start by imitation (agents/imitation.py): the teacher's answers in the agent's
terms, cloning that reproduces the teacher, and the config checks that refuse it early."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_train import PPO_TINY, TINY, run_train

import servegym  # noqa: F401  (registers the ids)
from servegym.agents import build_scheduler
from servegym.agents.config import PPOConfig
from servegym.agents.imitation import agreement, clone, collect, discounted_returns
from servegym.agents.learners import build_model
from servegym.envs.core.decisions import reset_policies

SMALL = {"rate": 30.0, "episode_requests": 120}


def teacher(spec: str):
    return lambda: build_scheduler(spec)


def test_discounted_returns_sum_the_future() -> None:
    rewards = np.array([1.0, 0.0, 2.0])
    assert discounted_returns(rewards, 0.5).tolist() == [1.5, 1.0, 2.0]


@pytest.mark.parametrize(("env_id", "spec"), [
    ("servegym/Admission-v0", "spf"),
    ("servegym/Preemption-v0", "preempt-least-progress"),
    ("servegym/Serving-v0", "spf+swap-cost-aware+p2c"),
])
def test_action_index_plays_exactly_the_teachers_answer(env_id: str, spec: str) -> None:
    env = gym.make(env_id, **SMALL, invalid_action="raise").unwrapped
    policies = build_scheduler(spec)
    env.reset(seed=3)
    reset_policies(policies, np.random.default_rng(0))
    kinds, steps = set(), 0
    while env.decision is not None and steps < 5000:
        decision = env.decision
        answer = decision.validate(policies[decision.kind].decide(decision))
        index = env.action_index(answer)
        assert index is not None, "the candidate sets show what these rules pick"
        played = env.encoder.to_action(index, decision)
        swap_ok = not answer.swap or env.action_masks()[env.encoder.num_slots
                                                        + env.encoder.slot_choice.index(
                                                            answer.choice)]
        assert played.choice == answer.choice and played.swap == (answer.swap and swap_ok)
        kinds.add(decision.kind)
        env.step(index)
        steps += 1
    assert steps > 20 and kinds


def test_action_index_refuses_an_invalid_answer_and_a_finished_episode() -> None:
    env = gym.make("servegym/Admission-v0", **SMALL).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        env.action_index(10_000)
    while env.decision is not None:
        env.step(int(np.flatnonzero(env.action_masks())[0]))
    with pytest.raises(RuntimeError, match="reset"):
        env.action_index(0)


def test_collected_demonstrations_are_the_teachers_and_follow_the_seed() -> None:
    env = gym.make("servegym/Admission-v0", **SMALL)
    first = collect(env, teacher("spf"), 300, 0.99, seed=5)
    again = collect(env, teacher("spf"), 300, 0.99, seed=5)
    assert len(first) >= 300 and first.visible == 1.0
    assert np.array_equal(first.actions, again.actions)
    assert np.array_equal(first.observations, again.observations)
    assert first.masks[np.arange(len(first)), first.actions].all()  # only valid actions
    other = collect(env, teacher("fcfs"), 300, 0.99, seed=5)
    assert not np.array_equal(first.actions[:len(other)], other.actions[:len(first)])


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo"])
def test_cloning_makes_the_policy_agree_with_its_teacher(algo: str) -> None:
    torch.set_num_threads(1)
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = gym.make("servegym/Admission-v0", **SMALL, num_slots=8)
    demos = collect(env, teacher("spf"), 1500, 0.99, seed=1)
    venv = DummyVecEnv([lambda: gym.make("servegym/Admission-v0", **SMALL, num_slots=8)])
    model = build_model(PPOConfig(algo=algo, network="auto", n_steps=64, batch_size=32),
                        venv, seed=0)
    before = agreement(model.policy, demos)
    stats = clone(model, demos, epochs=15, batch_size=128, learning_rate=3e-3,
                  vf_coef=0.5, seed=0)
    assert stats["agreement"] > 0.85 > before
    assert np.isfinite(stats["value_loss"])


def test_a_warm_started_run_records_its_teacher_and_evaluates_the_clone(tmp_path: Path) -> None:
    overrides = [*TINY, *PPO_TINY, "agent.warm_start.teacher=auto",
                 "agent.warm_start.steps=200", "agent.warm_start.epochs=2", "eval.freq=64",
                 "eval.freq_episodes=1"]
    _, run_dir = run_train(tmp_path, overrides)
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    warm = train["warm_start"]
    assert warm["teacher"] in ("fcfs", "spf")
    assert warm["teacher"] == max(warm["teacher_scores"], key=warm["teacher_scores"].get)
    assert warm["samples"] >= 200
    assert train["periodic_eval"][0]["timesteps"] == 0.0  # the clone, before any update
    assert len(train["periodic_eval"]) == 3


@pytest.mark.parametrize(("overrides", "message"), [
    (["agent=dqn", "agent.warm_start.teacher=spf"], "actor-critic"),
    (["env=admission_interval", "agent=ppo", "agent.warm_start.teacher=spf"],
     "no per-decision action"),
    (["agent.warm_start.teacher=spf", "agent.warm_start.steps=0"], "steps must be >= 1"),
    (["agent.warm_start.teacher=p2c"], "answers route decisions"),
])
def test_bad_warm_starts_fail_before_training(tmp_path: Path, overrides: list[str],
                                              message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_train(tmp_path, [*TINY, *overrides])
    assert not (tmp_path / "run" / "model").exists()

