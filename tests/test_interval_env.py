"""Interval control: the weighted admission policy, IntervalEnv and IntervalPolicy."""

from __future__ import annotations

import dataclasses
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import register, registry

from servegym.agents.heuristics.length import (
    ShortestOutputFirst,
    ShortestPromptFirst,
    ShortestRemainingFirst,
)
from servegym.agents.heuristics.priority import StrictPriority
from servegym.agents.heuristics.weighted import (
    FEATURES,
    NUM_FEATURES,
    PRESETS,
    WeightedPriorityAdmission,
    check_weights,
)
from servegym.agents.learned import scheduler_for
from servegym.envs.build import build_simulator
from servegym.envs.core.decisions import (
    Decision,
    DecisionKind,
    FCFSAdmission,
    Policy,
    default_policies,
)
from servegym.envs.interval_env import (
    OBSERVATION_SIZE,
    IntervalEnv,
    IntervalPolicy,
    next_boundary,
)
from servegym.envs.rewards import met_slo

ENV_ID = "servegym/AdmissionInterval-v0"
if ENV_ID not in registry:  # the registration proposed for envs/__init__.py
    register(id=ENV_ID, entry_point="servegym.envs.interval_env:IntervalEnv",
             kwargs={"rate": 24.0, "episode_requests": 1000, "reward": "goodput"},
             max_episode_steps=100_000, disable_env_checker=True)

SMALL = {"rate": 24.0, "episode_requests": 240}


@pytest.fixture(scope="module")
def small_env() -> IntervalEnv:
    return IntervalEnv(**SMALL)


def preset(name: str) -> np.ndarray:
    return np.array(PRESETS[name], dtype=np.float32)


def run_episode(env: IntervalEnv, seed: int, act) -> tuple[list, list[float], dict]:
    observation, _ = env.reset(seed=seed)
    observations, rewards = [observation], []
    while True:
        observation, reward, terminated, truncated, info = env.step(act(observation))
        observations.append(observation)
        rewards.append(reward)
        assert env.observation_space.contains(observation)
        if terminated or truncated:
            return observations, rewards, info


def simulate(env: IntervalEnv, admit: Policy, seed: int = 0) -> dict:
    """`admit` in a plain simulator on the env's last episode, judged as the env judges."""
    policies = default_policies()
    policies[DecisionKind.ADMIT] = admit
    sim = build_simulator(env.sim.cost, 1, None, policies=policies)
    config = env.reward_config
    return sim.run(env.sim.workload, seed=seed).summarize(config.default_ttft_slo,
                                                          config.default_tpot_slo)


class Twin:
    """Answers with `reference` and counts the decisions where `candidate` picks otherwise."""

    def __init__(self, reference: Policy, candidate: Policy) -> None:
        self.reference, self.candidate = reference, candidate
        self.decisions = self.disagreements = 0

    def reset(self, rng: np.random.Generator | None = None) -> None:
        for policy in (self.reference, self.candidate):
            if hasattr(policy, "reset"):
                policy.reset(rng)

    def decide(self, decision: Decision) -> int:
        expected = self.reference.decide(decision)
        self.decisions += 1
        self.disagreements += int(self.candidate.decide(decision) != expected)
        return expected


# ============================================================================ the env
def test_gymnasium_checker_passes_with_default_kwargs() -> None:
    from gymnasium.utils.env_checker import check_env

    env = IntervalEnv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
    assert env.action_space.shape == (NUM_FEATURES,)
    assert env.observation_space.shape == (OBSERVATION_SIZE,)


def test_registered_id_builds_the_documented_setting() -> None:
    from servegym.envs.tasks import ADMISSION, ADMISSION_INTERVAL

    env = gym.make(ENV_ID, episode_requests=64)
    assert isinstance(env.unwrapped, IntervalEnv)
    # Admission-v0's setting (envs/tasks.py), on its measured pair
    assert env.unwrapped.serving.rate == ADMISSION.rate == ADMISSION_INTERVAL.rate == 10.0
    assert env.unwrapped.reward_config.kind == "goodput"
    cost = env.unwrapped.sim.pools[0].cost
    assert (cost.model.name, cost.gpu.name, cost.source) == ("Llama-2-7B", "H100-80GB",
                                                             "measured")


def test_same_seed_same_episode(small_env: IntervalEnv) -> None:
    def actions(seed: int):
        rng = np.random.default_rng(seed)
        return lambda _: rng.uniform(-1, 1, NUM_FEATURES).astype(np.float32)

    first = run_episode(small_env, 7, actions(0))
    second = run_episode(IntervalEnv(**SMALL), 7, actions(0))
    for a, b in zip(first[0], second[0], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first[1] == second[1] and first[2]["serving"] == second[2]["serving"]
    other = run_episode(small_env, 8, actions(0))
    assert other[2]["serving"] != first[2]["serving"]


def test_episodes_are_drawn_as_serving_env_draws_them(small_env: IntervalEnv) -> None:
    from servegym.envs.serving_env import ServingEnv

    small_env.reset(seed=11)
    serving = ServingEnv(control=("admit",), reward="goodput", **SMALL)
    serving.reset(seed=11)
    for field in ("arrival_time", "prompt_len", "output_len"):
        np.testing.assert_array_equal(getattr(small_env.sim.workload, field),
                                      getattr(serving.sim.workload, field))


def reward_options() -> list[dict]:
    """No options, and the early TTFT credit of conf/env/admission.yaml where it exists."""
    from servegym.envs.rewards import RewardConfig

    fields = {f.name for f in dataclasses.fields(RewardConfig)}
    return [{}] + ([{"ttft_credit": 0.5}] if "ttft_credit" in fields else [])


@pytest.mark.parametrize("options", reward_options())
def test_rewards_sum_to_the_episode_goodput_count(options: dict) -> None:
    env = IntervalEnv(reward_options=options, **SMALL)
    _, rewards, info = run_episode(env, 2, lambda _: preset("spf"))
    summary = info["serving"]
    count = summary["serving/slo_attainment"] * summary["serving/requests"]
    config = env.reward_config
    met = sum(met_slo(r, config.default_ttft_slo, config.default_tpot_slo)
              for r in env.sim.requests)
    assert sum(rewards) == pytest.approx(met) and met == pytest.approx(count)
    assert len(rewards) > 3  # several intervals, not one step per decision


def test_steps_cross_one_boundary_each(small_env: IntervalEnv) -> None:
    small_env.reset(seed=4)
    times = [small_env.sim.now]
    terminated = False
    while not terminated:
        _, _, terminated, _, info = small_env.step(preset("fcfs"))
        assert info["decisions"] >= 1
        times.append(info["time"])
    intervals = [math.floor(t / small_env.interval_s) for t in times[:-1]]
    assert intervals == sorted(set(intervals))  # one step per boundary crossed, in order
    assert next_boundary(0.0, 2.0) == 2.0 and next_boundary(3.9, 2.0) == 4.0
    assert next_boundary(4.0, 2.0) == 6.0


def test_decision_guard_truncates_and_the_episode_then_refuses_steps() -> None:
    env = IntervalEnv(max_decisions_per_request=0.05, **SMALL)
    env.reset(seed=0)
    truncated = False
    for _ in range(1000):
        _, _, terminated, truncated, info = env.step(preset("fcfs"))
        if terminated or truncated:
            break
    assert truncated and not terminated and "serving" not in info
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(preset("fcfs"))


# ============================================================================ presets
def test_spf_and_fcfs_presets_reproduce_the_heuristics_summaries(small_env: IntervalEnv) -> None:
    """Same workload (the env's episode), same uncontrolled heuristics, same SLO judging:
    ranking by squash(prefill) is SPF's order, ties in queue order as RankedAdmission."""
    for seed in (1, 3):
        _, _, info = run_episode(small_env, seed, lambda _: preset("spf"))
        assert info["serving"] == simulate(small_env, ShortestPromptFirst())
        _, _, info = run_episode(small_env, seed, lambda _: preset("fcfs"))
        expected = simulate(small_env, FCFSAdmission())
        assert info["serving"] == pytest.approx(expected, rel=1e-9, nan_ok=True)


@pytest.mark.parametrize(("name", "reference"), [
    ("spf", ShortestPromptFirst), ("fcfs", FCFSAdmission), ("sjf", ShortestOutputFirst),
    ("srpt", ShortestRemainingFirst), ("priority", StrictPriority),
])
def test_presets_pick_what_the_heuristics_pick(small_env: IntervalEnv, name: str,
                                               reference: type) -> None:
    small_env.reset(seed=5)
    workload = small_env.sim.workload
    rng = np.random.default_rng(0)
    workload = dataclasses.replace(workload, priority=rng.integers(0, 3, len(workload)))
    twin = Twin(reference(), WeightedPriorityAdmission(name))
    policies = {**default_policies(), DecisionKind.ADMIT: twin}
    build_simulator(small_env.sim.cost, 1, None, policies=policies).run(workload, seed=0)
    assert twin.decisions >= len(workload) and twin.disagreements == 0


def test_backfill_matches_the_ranked_rule_with_backfill(small_env: IntervalEnv) -> None:
    small_env.reset(seed=3)
    twin = Twin(ShortestPromptFirst(backfill=True),
                WeightedPriorityAdmission("spf", backfill=True))
    policies = {**default_policies(), DecisionKind.ADMIT: twin}
    build_simulator(small_env.sim.cost, 1, None, policies=policies).run(
        small_env.sim.workload, seed=0)
    assert twin.decisions >= len(small_env.sim.workload) and twin.disagreements == 0


def test_features_are_bounded(small_env: IntervalEnv) -> None:
    small_env.reset(seed=1)
    for _ in range(3):
        small_env.step(preset("fcfs"))
    decision = small_env._decision
    matrix = small_env.admission.features(decision)
    assert matrix.shape == (len(decision.candidates), NUM_FEATURES)
    assert np.all(matrix >= -1) and np.all(matrix <= 1)
    assert np.all(matrix[:, FEATURES.index("bias")] == 1)


# ============================================================================ invalid input
@pytest.mark.parametrize(("weights", "message"), [
    (np.zeros(NUM_FEATURES - 1), r"shape \(9,\), need \(10,\)"),
    (np.full(NUM_FEATURES, np.nan), "NaN or inf for"),
    (np.r_[np.inf, np.zeros(NUM_FEATURES - 1)], r"NaN or inf for \['prefill'\]"),
    (np.r_[0.0, 1.5, np.zeros(NUM_FEATURES - 2)], r"outside \[-1, 1\].*'output': 1.5"),
    ("bogus", "unknown weight preset 'bogus'"),
    (["a"] * NUM_FEATURES, "are not numbers"),
])
def test_invalid_weights_say_what_is_wrong_and_what_to_pass(weights, message: str) -> None:
    policy = WeightedPriorityAdmission()
    with pytest.raises(ValueError, match=message) as error:
        policy.set_weights(weights)
    if not isinstance(weights, str):
        assert "pass 10 finite numbers in [-1, 1]" in str(error.value)
    np.testing.assert_array_equal(policy.weights, np.zeros(NUM_FEATURES))  # unchanged


def test_check_weights_accepts_the_bounds() -> None:
    np.testing.assert_array_equal(check_weights([1.0] + [-1.0] * 9), [1.0] + [-1.0] * 9)


def test_env_refuses_nan_and_bad_settings_and_clips_the_rest(small_env: IntervalEnv) -> None:
    small_env.reset(seed=0)
    with pytest.raises(ValueError, match=r"NaN for \['remaining'\]"):
        small_env.step(np.r_[0, 0, np.nan, np.zeros(7)])
    with pytest.raises(ValueError, match="has 3 entries; pass 10 weights"):
        small_env.step(np.zeros(3))
    _, _, _, _, info = small_env.step(np.full(NUM_FEATURES, 5.0))
    np.testing.assert_array_equal(info["weights"], np.ones(NUM_FEATURES))
    for interval in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="interval_s must be"):
            IntervalEnv(interval_s=interval)
    with pytest.raises(ValueError, match="controls admission only"):
        IntervalEnv(control=("preempt",))
    with pytest.raises(ValueError, match="policies\\['admit'\\]"):
        IntervalEnv(policies={"admit": FCFSAdmission()})


# ============================================================================ one path
def linear_agent(seed: int):
    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-1, 1, (NUM_FEATURES, OBSERVATION_SIZE))
    bias = rng.uniform(-1, 1, NUM_FEATURES)
    return lambda observation: np.tanh(matrix @ observation + bias)


@pytest.mark.parametrize("lengths", ["oracle", "predicted"])
def test_interval_policy_in_the_simulator_replays_the_env_episode(lengths: str) -> None:
    env = IntervalEnv(length_knowledge=lengths, split="test", **SMALL)
    agent = linear_agent(0)
    observations, _, info = run_episode(env, 3, agent)
    seen: list[np.ndarray] = []
    policy = IntervalPolicy.from_metadata(lambda o: seen.append(o) or agent(o),
                                          env.agent_metadata())
    # The simulator seed the env drew for this episode (the evaluation path draws its own).
    seed = int(env.sim.rng.bit_generator.seed_seq.entropy)
    sim = build_simulator(env.sim.cost, 1, None, policies=scheduler_for(policy, ["admit"], {}))
    config = env.reward_config
    report = sim.run(env.sim.workload, seed=seed)
    assert report.summarize(config.default_ttft_slo, config.default_tpot_slo) == info["serving"]
    assert len(seen) == len(observations) - 1 == policy.intervals
    for a, b in zip(seen, observations, strict=False):
        np.testing.assert_array_equal(a, b)


def test_ppo_trains_and_evaluates_through_the_shared_path() -> None:
    from stable_baselines3 import PPO

    from servegym.agents.evaluation import evaluation_episodes
    from servegym.agents.evaluation import run_episode as evaluate

    env = IntervalEnv(rate=24.0, episode_requests=96)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")
    model.learn(total_timesteps=128)
    policy = IntervalPolicy.from_model(model, env.agent_metadata())
    episode = evaluation_episodes(env.serving.source, 1, 96, 24.0, seed=0)[0]
    row = evaluate(scheduler_for(policy, ["admit"], {}), episode, env.sim.cost, {})
    assert row["stalled"] == 0 and row["serving/finished"] == 96
    assert policy.intervals > 1


def test_interval_policy_refuses_other_features() -> None:
    metadata = {**IntervalEnv(**SMALL).agent_metadata(), "features": ["prefill"]}
    with pytest.raises(ValueError, match="retrain"):
        IntervalPolicy.from_metadata(lambda o: np.zeros(NUM_FEATURES), metadata)
