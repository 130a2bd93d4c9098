"""The Gymnasium envs: checkers, determinism, fuzzing, masks, and short SB3 runs."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import servegym  # noqa: F401  (registers the ids)
from servegym.envs.core.decisions import InvalidActionError
from servegym.envs.costs import RooflineFallbackWarning
from servegym.envs.tasks import TASKS

IDS = tuple(task.id for task in TASKS.values() if not task.interval)  # per-decision: masks
SMALL = {"episode_requests": 48}


def random_rollout(env: gym.Env, steps: int, seed: int):
    rng = np.random.default_rng(seed)
    observation, info = env.reset(seed=seed)
    trajectory = [observation]
    rewards = []
    for _ in range(steps):
        valid = np.flatnonzero(info["action_mask"])
        np.testing.assert_array_equal(info["action_mask"], env.unwrapped.action_masks())
        observation, reward, terminated, truncated, info = env.step(
            int(valid[rng.integers(valid.size)]))
        assert env.observation_space.contains(observation)
        trajectory += [observation, np.float64(reward)]
        rewards.append(reward)
        if terminated or truncated:
            assert "serving" in info or truncated
            observation, info = env.reset()
            trajectory.append(observation)
    env.unwrapped.rollout_rewards = rewards
    return trajectory


@pytest.mark.parametrize("env_id", tuple(TASKS))
def test_gymnasium_and_sb3_checkers_pass(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    # Default kwargs but shorter episodes: the checkers step with unmasked random actions
    # from the action space, which the env accepts (masked ones take the fallback path).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The cost model's own notice (no measured table: roofline) is not the checkers'.
        warnings.simplefilter("ignore", RooflineFallbackWarning)
        gym_check(gym.make(env_id, **SMALL).unwrapped, skip_render_check=True)
        sb3_check(gym.make(env_id, **SMALL).unwrapped, warn=True)


@pytest.mark.parametrize("action", [0.7, -0.5, "0", True, np.nan, None, np.array([0]), 10**6])
def test_actions_outside_the_action_space_get_a_clear_error(action) -> None:
    env = gym.make("servegym/Admission-v0", **SMALL)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="step\\(\\) takes an integer|outside"):
        env.step(action)
    _, _, _, _, info = env.step(np.int64(0))  # the decision is still pending
    assert "action_mask" in info


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_trajectory(env_id: str) -> None:
    first = random_rollout(gym.make(env_id, **SMALL), 400, seed=3)
    second = random_rollout(gym.make(env_id, **SMALL), 400, seed=3)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = random_rollout(gym.make(env_id, **SMALL), 400, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=False))


FUZZ_CONFIGS = [
    ("servegym/Serving-v0", {"cluster": {"num_instances": 3, "instance": {
        "num_kv_blocks": 600, "swap_space_blocks": 300, "enable_prefix_caching": True,
        "max_num_seqs": 32, "max_num_batched_tokens": 1024}}, "rate": 40.0}),
    ("servegym/Serving-v0", {"cluster": {"num_instances": 2, "instance": {
        "mode": "vllm_v0", "num_kv_blocks": 800, "swap_space_blocks": 200,
        "max_num_seqs": 16, "max_num_batched_tokens": 4096}}, "rate": 25.0}),
    ("servegym/Admission-v0", {"length_knowledge": "predicted", "reward": "slo",
                               "reward_options": {"fairness_weight": 0.1}}),
    ("servegym/Preemption-v0", {"reward": "goodput",
                                "reward_options": {"differential": True}}),
]


@pytest.mark.parametrize(("env_id", "kwargs"), FUZZ_CONFIGS)
def test_random_valid_actions_keep_every_invariant(env_id: str, kwargs: dict) -> None:
    env = gym.make(env_id, episode_requests=64, debug_checks=True, **kwargs)
    random_rollout(env, 2500, seed=7)  # KV and clock checked after every event
    rewards = np.array(env.unwrapped.rollout_rewards)
    assert rewards.size == 2500 and np.all(np.isfinite(rewards))


def test_invalid_action_names_the_decision_and_valid_choices() -> None:
    env = gym.make("servegym/Admission-v0", invalid_action="raise", **SMALL)
    _, info = env.reset(seed=0)
    invalid = int(np.flatnonzero(~info["action_mask"])[0])
    with pytest.raises(InvalidActionError, match=r"ADMIT decision; valid actions: \[0"):
        env.step(invalid)
    env.step(int(np.flatnonzero(info["action_mask"])[0]))  # the decision is still pending


def test_fallback_replaces_invalid_actions_with_a_penalty() -> None:
    strict = gym.make("servegym/Admission-v0", invalid_action="raise", **SMALL)
    lenient = gym.make("servegym/Admission-v0", invalid_action="fallback",
                       invalid_action_penalty=0.5, **SMALL)
    _, info = strict.reset(seed=1)
    lenient.reset(seed=1)
    valid = np.flatnonzero(info["action_mask"])
    invalid = int(np.flatnonzero(~info["action_mask"])[0])
    expected = strict.step(int(valid[0]))
    got = lenient.step(invalid)
    np.testing.assert_array_equal(expected[0], got[0])
    assert got[1] == pytest.approx(expected[1] - 0.5)


def test_latency_reward_sums_to_total_latency() -> None:
    env = gym.make("servegym/Admission-v0", episode_requests=40, reward="latency",
                   reward_options={"latency_scale_s": 1.0})  # the id's reward is goodput
    _, info = env.reset(seed=5)
    total = 0.0
    while True:
        _, reward, terminated, _, info = env.step(int(np.flatnonzero(info["action_mask"])[0]))
        total += reward
        if terminated:
            break
    records = env.unwrapped.sim.report().records
    latency = np.nansum(records["finish"] - records["arrival"])
    assert -total == pytest.approx(latency, rel=1e-9)


def test_length_knowledge_modes() -> None:
    def estimates(mode: str) -> np.ndarray:
        env = gym.make("servegym/Admission-v0", length_knowledge=mode, **SMALL).unwrapped
        env.reset(seed=2)
        return np.array(env._estimates), env.sim.workload.output_len

    oracle, truth = estimates("oracle")
    np.testing.assert_array_equal(oracle, truth)
    predicted, truth = estimates("predicted")
    assert not np.array_equal(predicted, truth)
    assert 0.3 < np.median(predicted / truth) < 3
    none, _ = estimates("none")
    assert np.unique(none).size == 1


@pytest.mark.parametrize("env_id", IDS)
def test_ppo_and_maskable_ppo_train_briefly(env_id: str) -> None:
    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    masked = gym.make(env_id, **SMALL)
    MaskablePPO("MlpPolicy", masked, n_steps=256, batch_size=64, n_epochs=1,
                seed=0).learn(1024)
    unmasked = gym.make(env_id, invalid_action="fallback", **SMALL)
    PPO("MlpPolicy", unmasked, n_steps=256, batch_size=64, n_epochs=1, seed=0).learn(1024)


def test_episodes_by_trace_time() -> None:
    env = gym.make("servegym/Admission-v0", episode_seconds=30.0, rate=None).unwrapped
    env.reset(seed=4)
    arrivals = env.sim.workload.arrival_time
    assert arrivals[0] == 0.0 and arrivals[-1] < 30.0
    times = env.source.arrival_time
    begin = np.random.default_rng(9).uniform(times[0], times[-1] - 30.0)
    expected = np.flatnonzero((times >= begin) & (times < begin + 30.0))
    np.testing.assert_array_equal(env._slice(np.random.default_rng(9)), expected)
    with pytest.raises(ValueError, match="episode_seconds"):
        gym.make("servegym/Admission-v0", episode_seconds=0.0)


def test_a_cluster_too_small_for_every_request_says_so_at_reset() -> None:
    # rejected, not clipped (Admission-v0 clips to its model's context: over_context)
    env = gym.make("servegym/Admission-v0", episode_requests=16, over_context="reject",
                   cluster={"num_instances": 1, "instance": {"max_model_len": 8}})
    with pytest.raises(RuntimeError, match=r"every request .* was rejected .*exceeds_context"):
        env.reset(seed=0)
    env.close()


def test_over_context_clip_fits_every_request_to_the_context_and_bad_values_are_named() -> None:
    env = gym.make("servegym/Admission-v0", episode_requests=16, over_context="clip",
                   cluster={"num_instances": 1, "instance": {"max_model_len": 64}})
    source = env.unwrapped.source
    assert int((source.prompt_len + source.output_len).max()) == 64
    env.reset(seed=0)
    env.close()
    with pytest.raises(ValueError, match="over_context must be one of"):
        gym.make("servegym/Admission-v0", over_context="truncate")
