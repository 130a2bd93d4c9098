"""KV retention (envs/core/retention.py, agents/heuristics/retention.py): bad TTLs refused,
pins conserved (BlockManager.check after every event), pins released by the next call's
admission, expiry or pressure, and the Continuum predictor never reads the truth."""

from __future__ import annotations

import math

import continuum  # experiments/ is on pytest's pythonpath (pyproject.toml)
import numpy as np
import pytest

from servegym.agents.heuristics import make_policy
from servegym.agents.heuristics.retention import (
    ContinuumTTL,
    OracleTTL,
    make_retention,
)
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.retention import check_ttl, option_for, retain_options
from servegym.envs.core.simulator import Simulator
from servegym.envs.protocol import DecisionKind


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "5", True])
def test_bad_ttls_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="TTL"):
        check_ttl(bad)
    assert check_ttl(None) is None and check_ttl(0) == 0.0 and check_ttl(2) == 2.0


class Constant:
    def __init__(self, value):
        self.value = value

    def ttl(self, request, instance, now):
        return self.value


def test_a_policy_answering_nan_stops_the_run_with_a_message() -> None:
    sim = continuum.build_simulator(Constant(math.nan))
    with pytest.raises(ValueError, match="NaN, negative or infinite"):
        sim.run(continuum.agentic_sessions(4, 3), seed=0)


class RandomAnswers:
    def reset(self, rng):
        self.rng = rng

    def ttl(self, request, instance, now):
        pick = int(self.rng.integers(4))
        return (None, 0.0, float(self.rng.uniform(0, 3)), float(self.rng.uniform(5, 30)))[pick]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tiers", [(), ({"name": "host", "capacity_blocks": 300,
                                         "bandwidth_gb_s": 25.0, "latency_s": 1e-5},)])
def test_random_retention_keeps_every_invariant(seed, tiers) -> None:
    workload = continuum.agentic_sessions(16, 4, rate=2.0, seed=seed)
    sim = continuum.build_simulator(RandomAnswers(), num_kv_blocks=600, kv_tiers=tiers,
                                    debug_checks=True)
    report = sim.run(workload, seed=seed)
    assert (report.records["status"] == "finished").all()
    summary = report.summary
    assert summary["serving/retain_asked"] == sum(1 for r in sim.requests
                                                  if not math.isnan(r.next_delay))
    # Every pin ended exactly one way (a fan-out's replaced pin aside: chains have none).
    assert summary["serving/retain_pinned"] == summary["serving/retain_consumed"] + \
        summary["serving/retain_expired"] + summary["serving/retain_pressure_released"]
    for instance in sim.instances:
        assert not instance.bm.pins
        instance.bm.check([])


def test_pins_keep_the_prefix_for_the_next_call() -> None:
    workload = continuum.agentic_sessions(20, 4, rate=0.5, seed=1)
    hits = {}
    for name in ("retain-none", "retain-lru", "retain-oracle"):
        report = continuum.build_simulator(make_retention(name), num_kv_blocks=4000).run(
            workload, seed=0)
        hits[name] = report.records["prefix_hit_tokens"].sum()
    assert hits["retain-none"] < hits["retain-lru"] <= hits["retain-oracle"]


class NoTruth:
    """A request view without next_delay: reading it would raise."""

    __slots__ = ("session", "tool_kind", "arrival_time")

    def __init__(self, session, tool_kind, arrival_time):
        self.session, self.tool_kind, self.arrival_time = session, tool_kind, arrival_time


def test_the_continuum_predictor_learns_delays_without_the_truth() -> None:
    policy = ContinuumTTL(quantile=1.0, margin=1.0, default_ttl_s=5.0, min_samples=1)
    policy.reset(np.random.default_rng(0))
    assert policy.ttl(NoTruth(0, 1, 0.0), None, now=1.0) == 5.0  # nothing observed yet
    assert policy.ttl(NoTruth(0, 1, 4.0), None, now=6.0) == pytest.approx(3.0)  # 4 - 1
    with pytest.raises(AttributeError):
        OracleTTL().ttl(NoTruth(0, 1, 0.0), None, 0.0)  # the oracle does read it
    with pytest.raises(ValueError, match="unknown retention policy"):
        make_retention("retain-forever")


# ------------------------------------------------------------------ RETAIN as a decision


def test_the_menu_and_its_rounding() -> None:
    options = retain_options((1, 2, 5))
    assert options == (None, 0.0, 1.0, 2.0, 5.0)
    assert [option_for(t, options) for t in (None, 0.0, 0.5, 1.0, 1.5, 4.0, 99.0)] == \
        [0, 1, 2, 2, 3, 4, 4]
    for bad in ((), (2, 1), (0, 1), (1, math.nan), "5", (1, 1)):
        with pytest.raises(ValueError, match="retain_ttls"):
            retain_options(bad)


def _records(report) -> tuple:
    r = report.records
    return tuple(np.asarray(r[f]).tolist() for f in ("rid", "first_token", "finish",
                                                     "prefix_hit_tokens"))


@pytest.mark.parametrize("name", ["retain-continuum", "retain-none", "retain-oracle"])
def test_a_stepped_run_answers_retain_as_the_inline_run(name) -> None:
    workload = continuum.agentic_sessions(24, 4, rate=2.0, seed=3)
    inline = continuum.build_simulator(make_policy(name), num_kv_blocks=900)
    expected = inline.run(workload, seed=5)
    from servegym.envs.core.decisions import default_policies

    policies = default_policies()
    del policies[DecisionKind.RETAIN]
    sim = Simulator(inline.cost, inline.config, policies=policies, retain_ttls=(1, 2, 5, 10, 30),
                    debug_checks=True)
    sim.reset(workload, seed=5)
    policy = make_policy(name)
    policy.reset(None) if hasattr(policy, "reset") else None
    asked = 0
    while (decision := sim.next_decision()) is not None:
        assert decision.kind == DecisionKind.RETAIN and decision.request.session >= 0
        assert decision.mask().all() and len(decision.candidates) == 7
        sim.apply(policy.decide(decision))
        asked += 1
    report = sim.report()
    assert asked == expected.summary["serving/retain_asked"] > 0
    assert _records(report) == _records(expected)
    assert report.summary["serving/retain_pinned"] == expected.summary["serving/retain_pinned"]


def test_retention_is_off_unless_asked_for() -> None:
    workload = continuum.agentic_sessions(8, 3, rate=2.0, seed=0)
    from servegym.envs.costs import build_cost_model

    cost = build_cost_model("Llama-3-8B", "H100-80GB", source="roofline")
    sim = Simulator(cost, InstanceConfig(enable_prefix_caching=True, num_kv_blocks=900))
    report = sim.run(workload, seed=0)
    assert sim.retention is None and "serving/retain_asked" not in report.summary
    lru = continuum.build_simulator(make_policy("retain-lru"), num_kv_blocks=900).run(
        workload, seed=0)
    assert _records(lru) == _records(report)  # retain-lru is the plain prefix cache
    assert lru.summary["serving/retain_lru"] == lru.summary["serving/retain_asked"] > 0
    with pytest.raises(ValueError, match="not both"):
        Simulator(cost, InstanceConfig(), policies={DecisionKind.RETAIN: make_policy(
            "retain-none")}, retention=make_policy("retain-lru"))


def test_the_memory_bound_pins_less_on_a_tight_cache() -> None:
    workload = continuum.agentic_sessions(60, 5, rate=1.0, seed=0)
    rows = {}
    for name in ("retain-continuum", "retain-continuum-unbounded", "retain-oracle",
                 "retain-oracle-bounded"):
        report = continuum.build_simulator(make_policy(name), num_kv_blocks=1500).run(
            workload, seed=0)
        rows[name] = report.summary
    bounded, unbounded = rows["retain-continuum"], rows["retain-continuum-unbounded"]
    assert bounded["serving/retain_pinned"] < unbounded["serving/retain_pinned"]
    assert bounded["serving/jct_p50"] < unbounded["serving/jct_p50"]
    oracle, capped = rows["retain-oracle"], rows["retain-oracle-bounded"]
    assert capped["serving/retain_pinned"] < oracle["serving/retain_pinned"]
    assert capped["serving/jct_p50"] < oracle["serving/jct_p50"]


def test_the_env_encodes_retain_from_its_spec() -> None:
    from servegym.envs.observations import GLOBAL_FEATURES, SLOT_FEATURES
    from servegym.envs.serving_env import ServingEnv

    workload = continuum.agentic_sessions(40, 4, rate=2.0, seed=0)
    cluster = {"instance": {"enable_prefix_caching": True, "num_kv_blocks": 1500},
               "retain_ttls": [1, 2, 5, 10, 30]}
    env = ServingEnv(control=("retain",), workload=workload, rate=None, episode_requests=80,
                     split="all", cluster=cluster, reward="goodput", num_slots=8)
    obs, info = env.reset(seed=0)
    assert info["decision"] == "RETAIN"
    assert info["action_mask"][:7].all() and not info["action_mask"][7:].any()
    slots = obs[GLOBAL_FEATURES:GLOBAL_FEATURES + 8 * SLOT_FEATURES].reshape(8, SLOT_FEATURES)
    assert slots[0, 2] == 1.0 and slots[1, 3] == 1.0 and slots[6, 7] == 1.0  # none, LRU, 30 s
    assert (slots[2:7, 1] > 0).all() and np.all(np.diff(slots[2:7, 1]) > 0)
    assert not slots[7].any()
    steps = 0
    done = False
    while not done:
        obs, _, term, trunc, info = env.step(6)  # always the longest pin
        done, steps = term or trunc, steps + 1
    assert steps > 10
    with pytest.raises(ValueError, match="retain_ttls"):
        ServingEnv(control=("retain",), workload=workload, rate=None, episode_requests=80,
                   split="all", cluster={"instance": {"enable_prefix_caching": True}})
    with pytest.raises(ValueError, match="num_slots"):
        ServingEnv(control=("retain",), workload=workload, rate=None, episode_requests=80,
                   split="all", cluster=cluster, num_slots=4)


def test_the_quantile_is_numpys_bit_for_bit() -> None:
    from servegym.agents.heuristics.retention import linear_quantile

    rng = np.random.default_rng(0)
    for trial in range(3000):
        n = int(rng.integers(1, 70))
        q = (0.9, 0.5, 1.0, 0.1, float(rng.uniform()))[trial % 5]
        values = (rng.lognormal(0, 1, n) if trial % 2 else rng.integers(0, 5, n)).tolist()
        assert linear_quantile(values, q) == float(np.quantile(values, q))


def test_a_batch_of_demotions_is_one_at_a_time() -> None:
    from servegym.envs.core.kv_tiers import TierStore, tiers_from_config

    tiers = tiers_from_config((
        {"name": "host", "capacity_blocks": 5, "bandwidth_gb_s": 10.0, "latency_s": 0.0},
        {"name": "ssd", "capacity_blocks": 3, "bandwidth_gb_s": 1.0, "latency_s": 0.0}))
    one, batch = TierStore(tiers, 1024), TierStore(tiers, 1024)
    rng = np.random.default_rng(1)
    for _ in range(40):
        hashes = [int(h) for h in rng.integers(0, 30, int(rng.integers(1, 6)))]
        hashes = list(dict.fromkeys(h for h in hashes if h not in one.where))
        for h in hashes:
            one.demote(h)
        batch.demote_all(hashes)
        assert [list(lru) for lru in one.levels] == [list(lru) for lru in batch.levels]
        assert one.where == batch.where and (one.demoted, one.dropped) == \
            (batch.demoted, batch.dropped)
