"""What a learned scheduler sees and is paid: candidate sets, time-aligned credit, horizons,
an objective that delaying cannot fool, and refusal of agents of another layout."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import servegym  # noqa: F401  (registers the ids)
from servegym.agents.learned import LayoutMismatchError, check_layout
from servegym.envs.core.decisions import STOP, DecisionKind, default_policies
from servegym.envs.observations import (
    ADMIT_KEYS,
    BASE_SLOT_FEATURES,
    MAX_ROLES,
    OBS_LAYOUT_VERSION,
    SLOT_FEATURES,
    ObservationEncoder,
    check_keys,
    round_robin_slots,
)
from servegym.envs.rewards import met_slo

# a queue builds: slots are scarce (on the roofline pair this was tuned on: with
# Llama-2-7B's larger KV fewer waiting requests fit at once)
LOADED = {"rate": 30.0, "episode_requests": 300, "model": "Llama-3-8B", "gpu": "H100-80GB"}


def test_round_robin_takes_each_rankings_best_not_yet_taken() -> None:
    slots, roles = round_robin_slots([[0, 1, 2, 3], [3, 2, 1, 0], [0, 3, 1, 2]], 4)
    assert slots == [0, 3, 1, 2]  # third ranking's 0 and 3 are taken: it takes 1
    assert roles == [0, 1, 2, 0]
    slots, roles = round_robin_slots([[5], [5, 6]], 8)  # exhausted rankings stop cleanly
    assert slots == [5, 6] and roles == [0, 1]


def test_bad_sort_keys_and_too_few_slots_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sort key.*shortest_promt"):
        check_keys(["oldest", "shortest_promt"], ADMIT_KEYS, "admit_keys", 8)
    with pytest.raises(ValueError, match="num_slots=2 is smaller than the 3 sort keys"):
        check_keys(["oldest", "shortest_prefill", "least_slack"], ADMIT_KEYS, "admit_keys", 2)
    with pytest.raises(ValueError, match="distinct"):
        check_keys(["oldest", "oldest"], ADMIT_KEYS, "admit_keys", 8)
    with pytest.raises(ValueError, match="num_slots"):
        gym.make("servegym/Admission-v0", num_slots=3)  # 4 default keys


def _prefill(request) -> int:
    return request.prompt_len + request.num_generated - request.num_computed


def test_each_rules_pick_is_visible_whatever_the_queue_length() -> None:
    env = gym.make("servegym/Admission-v0", **LOADED).unwrapped
    _, info = env.reset(seed=1)
    rng = np.random.default_rng(0)
    long_queues = late_heads = 0
    for _ in range(3000):
        decision = env._decision
        if decision is None:
            break
        fitting = [r for r in decision.candidates if decision.instance.can_admit(r)]
        visible = {decision.candidates[i].rid for i in env.encoder.slot_choice}
        long_queues += len(fitting) > env.encoder.num_slots
        assert fitting[0].rid in visible  # FCFS
        assert min(fitting, key=_prefill).rid in visible  # SPF (ties: queue order)
        def deadline(r):
            return r.arrival_time + (r.ttft_slo if r.ttft_slo < math.inf
                                     else env.encoder.default_ttft_slo)
        def late(r, now=decision.time):
            return not r.num_generated and deadline(r) < now
        assert min(fitting, key=lambda r: (late(r), _prefill(r))).rid in visible  # SPF late-last
        assert min(fitting, key=lambda r: (late(r), deadline(r))).rid in visible  # EDF late-last
        late_heads += late(min(fitting, key=_prefill))
        valid = np.flatnonzero(info["action_mask"])
        _, _, terminated, _, info = env.step(int(rng.choice(valid)))
        if terminated:
            break
    assert long_queues > 50  # the check ran where the old first-K slots hid requests
    assert late_heads > 20  # ... and where SPF's own pick was already late (38 here)


def test_slots_show_the_role_that_chose_them() -> None:
    env = gym.make("servegym/Admission-v0", **LOADED).unwrapped
    observation, _ = env.reset(seed=2)
    g = len(observation) - env.encoder.num_slots * SLOT_FEATURES
    slots = observation[g:].reshape(env.encoder.num_slots, SLOT_FEATURES)
    used = len(env.encoder.slot_choice)
    roles = slots[:used, BASE_SLOT_FEATURES:BASE_SLOT_FEATURES + MAX_ROLES]
    np.testing.assert_array_equal(roles.sum(axis=1), np.ones(used))
    assert np.argmax(roles, axis=1).tolist() == env.encoder.slot_roles
    assert not slots[used:].any()


def test_slots_say_which_one_each_rule_would_pick() -> None:
    env = gym.make("servegym/Admission-v0", **LOADED).unwrapped
    observation, _ = env.reset(seed=2)
    checked = 0
    for _ in range(400):
        decision = env.decision
        g = len(observation) - env.encoder.num_slots * SLOT_FEATURES
        slots = observation[g:].reshape(env.encoder.num_slots, SLOT_FEATURES)
        ranks = slots[:, BASE_SLOT_FEATURES + MAX_ROLES:]
        fitting = [r for r in decision.candidates if decision.instance.can_admit(r)]
        if len(fitting) >= 2:
            key = env.encoder.admit_keys.index("shortest_prefill")
            top = int(np.flatnonzero(ranks[:, key] == 1.0)[0])
            chosen = decision.candidates[env.encoder.slot_choice[top]]
            assert _prefill(chosen) == min(_prefill(r) for r in fitting)
            second = np.flatnonzero(ranks[:, key] == 0.5)
            assert second.size == 1  # ranks are positions, one slot each
            checked += 1
        observation, _, terminated, _, _ = env.step(int(np.flatnonzero(env.action_masks())[0]))
        if terminated:
            break
    assert checked > 20


def run_episode(env, choose) -> tuple[float, object]:
    _, info = env.reset(seed=7)
    total = 0.0
    for _ in range(100_000):
        _, reward, terminated, truncated, info = env.step(choose(env, info))
        total += reward
        if terminated or truncated:
            return total, info
    raise AssertionError("episode did not end")


def first_valid(env, info) -> int:
    return int(np.flatnonzero(info["action_mask"])[0])


@pytest.mark.parametrize("episode_end", ["drain", "horizon"])
def test_early_ttft_credit_keeps_the_episode_sum_equal_to_goodput(episode_end: str) -> None:
    kwargs = {**LOADED, "reward": "goodput", "episode_end": episode_end}
    plain = gym.make("servegym/Admission-v0", reward_options={"ttft_credit": 0.0},
                     **kwargs).unwrapped  # the id's own default pays early credit
    early = gym.make("servegym/Admission-v0", reward_options={"ttft_credit": 0.5},
                     **kwargs).unwrapped
    total_plain, info = run_episode(plain, first_valid)
    total_early, _ = run_episode(early, first_valid)
    config = plain.rewards.config
    met = sum(met_slo(r, config.default_ttft_slo, config.default_tpot_slo)
              for r in plain.sim.requests)
    assert total_plain == met == pytest.approx(total_early, abs=1e-9)
    assert info["serving"]["serving/slo_attainment"] == pytest.approx(met / len(plain.sim.requests))
    assert 0 < met < len(plain.sim.requests)  # a setting with misses: the claw-back ran


def test_horizon_ends_once_everything_left_is_a_certain_miss() -> None:
    kwargs = {"rate": 30.0, "episode_requests": 100, "reward": "goodput"}
    steps, met = {}, {}
    for end in ("drain", "horizon"):
        env = gym.make("servegym/Admission-v0", episode_end=end, **kwargs).unwrapped
        count = [0]

        def choose(env, info, count=count):  # STOPs whenever allowed: a long lost tail
            count[0] += 1
            return stop_whenever_allowed(env, info)

        run_episode(env, choose)
        steps[end], met[end] = count[0], env.rewards.met
    assert steps["horizon"] * 2 < steps["drain"]
    # The same decisions up to the horizon, and the tail after it could not add goodput.
    assert met["horizon"] == met["drain"]


def stop_whenever_allowed(env, info) -> int:
    mask = info["action_mask"]
    return env.encoder.stop_action if mask[env.encoder.stop_action] else first_valid(env, info)


def test_stop_forever_cannot_win_the_episode_or_the_objective() -> None:
    kwargs = {"rate": 30.0, "episode_requests": 100, "reward": "goodput",
              "episode_end": "horizon"}
    fair = gym.make("servegym/Admission-v0", **kwargs).unwrapped
    greedy_stop = gym.make("servegym/Admission-v0", **kwargs).unwrapped
    fair_reward, fair_info = run_episode(fair, first_valid)
    stop_reward, stop_info = run_episode(greedy_stop, stop_whenever_allowed)
    assert stop_reward < fair_reward
    assert stop_info["serving"]["serving/goodput_rps"] < fair_info["serving"]["serving/goodput_rps"]


class DelayTheLost:
    """SPF, but a request already past its TTFT target waits while any other can go, and
    the instance stops whenever only late requests fit: it buys attainment with delay."""

    def __init__(self, ttft: float) -> None:
        self.ttft = ttft

    def decide(self, decision):
        instance = decision.instance
        fitting = [i for i, r in enumerate(decision.candidates) if instance.can_admit(r)]
        on_time = [i for i in fitting
                   if decision.time - decision.candidates[i].arrival_time <= self.ttft]
        pool = on_time or ([] if decision.can_stop() else fitting)
        if not pool:
            return STOP
        return min(pool, key=lambda i: _prefill(decision.candidates[i]))


def test_delaying_lost_requests_does_not_beat_spf_on_goodput_rate() -> None:
    from servegym.agents.evaluation import compare, evaluation_episodes, policy_means
    from servegym.agents.heuristics import make_policy
    from servegym.envs.costs import build_cost_model
    from servegym.envs.workloads import load_azure_2023
    from servegym.envs.workloads.transforms import split_by_time

    source = split_by_time(load_azure_2023("conv"), "test")
    episodes = evaluation_episodes(source, 2, 600, 26.0, seed=0)
    cost = build_cost_model("Llama-3-8B", "H100-80GB", 1)
    def with_admit(policy):
        return {**default_policies(), DecisionKind.ADMIT: policy}

    factories = {"spf": lambda: with_admit(make_policy("spf")),
                 "delay-the-lost": lambda: with_admit(DelayTheLost(2.0))}
    means = policy_means(compare(factories, episodes, cost, {"num_instances": 1}))
    assert means["delay-the-lost"]["serving/goodput_rps"] < means["spf"]["serving/goodput_rps"]


def test_an_agent_of_another_observation_layout_is_refused() -> None:
    check_layout({"obs_layout": OBS_LAYOUT_VERSION}, "here")
    with pytest.raises(LayoutMismatchError, match="layout 1.*encodes layout"):
        check_layout({}, "outputs/train/x/model")  # agents saved before layouts existed


def test_legacy_queue_order_candidates_remain_available() -> None:
    encoder = ObservationEncoder(8, 2.0, 10.0, lambda r: 1.0, admit_keys=("oldest",))
    assert encoder.admit_keys == ("oldest",)


def test_requests_in_the_env_carry_the_targets_the_reward_judges_by() -> None:
    """The trace has no SLOs; the env's requests get the reward's default targets, so an
    SLO-aware heuristic inside the env (a warm start's teacher) acts as it does in the
    evaluation harness. Before, it saw infinite targets and played plain SPF."""
    from servegym.agents.heuristics import make_policy

    env = gym.make("servegym/Admission-v0", **LOADED).unwrapped
    env.reset(seed=3)
    config = env.rewards.config
    workload = env.sim.workload
    assert (workload.ttft_slo == config.default_ttft_slo).all()
    assert (workload.tpot_slo == config.default_tpot_slo).all()
    late_last, spf = make_policy("spf-tpot-budget-late-last"), make_policy("spf")
    differs = []

    class Compare:
        def decide(self, decision):
            choice = late_last.decide(decision)
            differs.append(choice != spf.decide(decision))
            return choice

    env.play({DecisionKind.ADMIT: Compare()})
    assert sum(differs) > 10, f"{sum(differs)} of {len(differs)} decisions differ"
