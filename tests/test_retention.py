"""KV retention (envs/core/retention.py, agents/heuristics/retention.py): bad TTLs refused,
pins conserved (BlockManager.check after every event), pins released by the next call's
admission, expiry or pressure, and the Continuum predictor never reads the truth."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import continuum  # noqa: E402

from servegym.agents.heuristics.retention import (  # noqa: E402
    ContinuumTTL,
    OracleTTL,
    make_retention,
)
from servegym.envs.core.retention import check_ttl  # noqa: E402


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
