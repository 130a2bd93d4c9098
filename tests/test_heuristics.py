"""Heuristic baselines: registry, specs, length predictor and each policy's rule."""

from __future__ import annotations

import numpy as np
import pytest
from sim_fixtures import AffineCost, make_workload

from servegym.agents import build_scheduler, parse_spec
from servegym.agents.heuristics import POLICIES, make_policy, policy_names
from servegym.agents.heuristics.load_balance import freeness
from servegym.agents.heuristics.past_future import peak_usage
from servegym.agents.heuristics.swap import swap_is_cheaper
from servegym.agents.heuristics.vtc import VirtualTokenCounter
from servegym.envs.core.decisions import STOP, Action, Decision, DecisionKind
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.request import Request
from servegym.envs.core.simulator import Simulator
from servegym.envs.predictors import LengthPredictor

ADMIT, PREEMPT, ROUTE = DecisionKind.ADMIT, DecisionKind.PREEMPT, DecisionKind.ROUTE


# ====================================================================== registry and specs
def test_registry_covers_every_kind_with_unique_names() -> None:
    assert len(POLICIES) == len(set(POLICIES))
    for kind in (ADMIT, PREEMPT, ROUTE):
        assert len(policy_names(kind)) >= 7
    assert {"fcfs", "preempt-latest", "rr"} <= set(POLICIES)


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown policy 'sjf'.*admit: fcfs, spf"):
        make_policy("sjf")
    with pytest.raises(ValueError, match="does not accept \\['sigmaa'\\]"):
        make_policy("sjf-pred", sigmaa=1.0)


def test_spec_builds_one_policy_per_kind_with_defaults_elsewhere() -> None:
    policies = build_scheduler("srpt-pred(sigma=1.0, max_wait_s=5)+lor+swap-cost-aware")
    # Every kind has a policy: the spec's, else its default (PLACE: disaggregation,
    # MIGRATE: live migration, RETAIN: KV retention, each asked only where it applies).
    assert sorted(policies) == sorted(DecisionKind)
    assert policies[ADMIT].predictor.sigma == 1.0 and policies[ADMIT].max_wait_s == 5
    assert type(policies[ROUTE]).__name__ == "LeastOutstandingRequests"
    defaults = build_scheduler("vtc")
    assert type(defaults[ROUTE]).__name__ == "RoundRobinRouting"
    assert type(defaults[PREEMPT]).__name__ == "LatestArrivalPreemption"
    assert parse_spec("edf(late_last=True)") == [("edf", {"late_last": True})]


@pytest.mark.parametrize("spec, message", [
    ("fcfs+vtc", "two ADMIT policies"),
    ("srpt-pred(1.0)", "bad arguments"),
    ("srpt-pred(sigma=)", "bad arguments"),
    ("sjf-oracle(buckets=[1, 2)", "cannot parse|bad arguments"),
    ("", "non-empty"),
    ("agent:runs/ppo.zip", "no saved agent there"),
])
def test_bad_specs_get_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_scheduler(spec)


# ====================================================================== length predictor
def test_predictor_modes() -> None:
    workload = make_workload(np.arange(5.0), [10] * 5, [1, 10, 100, 1000, 50])
    requests = [Request(i, 0.0, 10, int(o)) for i, o in enumerate(workload.output_len)]
    oracle = LengthPredictor("oracle")
    oracle.reset(workload, np.random.default_rng(0))
    assert [oracle.predict(r) for r in requests] == [1, 10, 100, 1000, 50]
    requests[2].num_generated = 99
    assert oracle.remaining(requests[2]) == 1.0
    requests[2].num_generated = 150  # outlived its prediction: about to finish
    assert oracle.remaining(requests[2]) == 1.0
    bucketed = LengthPredictor("oracle", buckets=[16, 128, 512])
    bucketed.reset(workload, np.random.default_rng(0))
    assert bucketed.predictions.tolist() == [16, 16, 128, 512, 128]
    none = LengthPredictor("none", prior=300)
    none.reset(workload, np.random.default_rng(0))
    assert none.predict(requests[0]) == 300
    none.observe(10)
    none.observe(30)
    assert none.predict(requests[3]) == 20


def test_predicted_lengths_are_lognormal_and_seeded() -> None:
    n = 20_000
    workload = make_workload(np.arange(float(n)), np.full(n, 10), np.full(n, 200))
    first, second = LengthPredictor(sigma=0.5), LengthPredictor(sigma=0.5)
    first.reset(workload, np.random.default_rng(7))
    second.reset(workload, np.random.default_rng(7))
    np.testing.assert_array_equal(first.predictions, second.predictions)
    log_error = np.log(first.predictions / 200)
    assert abs(log_error.mean()) < 0.02 and abs(log_error.std() - 0.5) < 0.02
    # The same stream as Generator.lognormal(0, sigma), which the Gymnasium env draws.
    expected = 200 * np.random.default_rng(7).lognormal(0.0, 0.5, n)
    np.testing.assert_allclose(first.predictions, expected)
    third = LengthPredictor(sigma=0.5)
    third.reset(workload, np.random.default_rng(8))
    assert not np.array_equal(first.predictions, third.predictions)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "perfect"}, "unknown length mode"),
    ({"sigma": -1.0}, "sigma"),
    ({"buckets": [10, 5]}, "increasing"),
    ({"prior": 0}, "prior"),
])
def test_predictor_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LengthPredictor(**kwargs)


def test_predict_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        LengthPredictor("oracle").predict(Request(0, 0.0, 10, 10))


# ====================================================================== every policy runs
def _mixed_workload(n: int = 60, seed: int = 1):
    rng = np.random.default_rng(seed)
    shared = [101, 102, 103]
    hashes = [shared + [1000 + i] if i % 2 else [2000 + i] for i in range(n)]
    return make_workload(np.cumsum(rng.exponential(0.02, n)), rng.integers(40, 80, n),
                         rng.integers(1, 120, n), tenant=rng.integers(0, 2, n),
                         priority=rng.integers(0, 3, n), ttft_slo=rng.choice([0.5, 2.0], n),
                         tpot_slo=0.2, tenant_names=("a", "b"), prefix_hashes=hashes)


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_serves_every_request_deterministically(name: str) -> None:
    def once():
        sim = Simulator(AffineCost(), InstanceConfig(
            num_kv_blocks=40, max_num_seqs=8, max_num_batched_tokens=128, swap_space_blocks=40,
            enable_prefix_caching=True), num_instances=3 if POLICIES[name].kind == ROUTE else 1,
            policies=build_scheduler(name), debug_checks=True)
        return sim.run(_mixed_workload(), seed=3)

    first, second = once(), once()
    assert first.summary["serving/finished"] == 60
    for column in ("first_token", "finish", "instance", "preemptions"):
        np.testing.assert_array_equal(first.records[column], second.records[column])


# ====================================================================== admission rules
def _first_admit_decision(workload, **config) -> tuple[Simulator, Decision]:
    sim = Simulator(AffineCost(), InstanceConfig(**config), policies={
        PREEMPT: make_policy("preempt-latest"), ROUTE: make_policy("rr")})
    sim.reset(workload, seed=0)
    decision = sim.next_decision()
    assert decision.kind == ADMIT
    return sim, decision


@pytest.mark.parametrize("name, expected", [
    ("fcfs", 0), ("spf", 2), ("sjf-oracle", 1), ("srpt-oracle", 1), ("edf", 3),
    ("priority", 2),
])
def test_admission_picks_by_its_rule(name: str, expected: int) -> None:
    workload = make_workload([0.0] * 4, [50, 40, 10, 60], [30, 5, 90, 60],
                             ttft_slo=[9.0, 8.0, 7.0, 1.0], priority=[2, 1, 0, 1])
    _, decision = _first_admit_decision(workload, num_kv_blocks=100)
    policy = make_policy(name)
    getattr(policy, "reset", lambda rng: None)(np.random.default_rng(0))
    assert policy.decide(decision) == expected


def test_ranked_admission_stops_at_a_best_that_does_not_fit_unless_backfilling() -> None:
    # 195 blocks of 16 tokens. Once the 300-token request runs (19 blocks), the shortest job,
    # a 3000-token prompt (188 blocks), no longer fits; the 100-token one still does.
    workload = make_workload([0.0, 0.0, 0.0], [300, 3000, 100], [50, 2, 40])
    sim, decision = _first_admit_decision(workload, num_kv_blocks=195,
                                          max_num_batched_tokens=4096)
    sim.apply(0)
    decision = sim.next_decision()
    assert decision.mask().tolist() == [False, True] and decision.can_stop()
    strict, backfill = make_policy("sjf-oracle"), make_policy("sjf-oracle", backfill=True)
    for policy in (strict, backfill):
        policy.reset(np.random.default_rng(0))
    assert strict.decide(decision) == STOP  # vLLM: stop at the first that cannot allocate
    assert backfill.decide(decision) == 1


def test_starvation_guard_bounds_the_wait_of_a_long_request() -> None:
    # A short request occupies the one slot, a long one queues behind it, and a steady stream
    # of short ones keeps arriving.
    n = 80
    arrivals = np.r_[0.0, 0.0005, 0.001 + np.arange(n - 2) * 0.03]
    outputs = np.r_[5, 400, np.full(n - 2, 5)]
    workload = make_workload(arrivals, np.full(n, 20), outputs)

    def long_ttft(spec: str) -> float:
        sim = Simulator(AffineCost(), InstanceConfig(num_kv_blocks=400, max_num_seqs=1,
                                                     max_num_batched_tokens=64),
                        policies=build_scheduler(spec))
        report = sim.run(workload, seed=0)
        return float(report.records["first_token"][1] - report.records["arrival"][1])

    # With one slot and the long request never being shortest, SJF serves it last.
    assert long_ttft("sjf-oracle") > 2.0
    assert long_ttft("sjf-oracle(max_wait_s=0.2)") < 0.5


def test_edf_late_last_serves_requests_that_can_still_make_it() -> None:
    rng = np.random.default_rng(4)
    n = 200
    workload = make_workload(np.cumsum(rng.exponential(0.1, n)), rng.integers(20, 60, n),
                             rng.integers(5, 40, n), ttft_slo=rng.choice([0.3, 3.0], n))

    def ttft_attained(spec: str) -> float:
        sim = Simulator(AffineCost(), InstanceConfig(num_kv_blocks=400, max_num_seqs=4,
                                                     max_num_batched_tokens=128),
                        policies=build_scheduler(spec))
        r = sim.run(workload, seed=0).records
        return float(np.mean(r["first_token"] - r["arrival"] <= r["ttft_slo"]))

    fcfs, edf, late_last = (ttft_attained(s) for s in ("fcfs", "edf", "edf-late-last"))
    assert late_last > fcfs + 0.2 and late_last >= edf


# ====================================================================== VTC
class _FakeInstance:
    index = 0
    running: list = []

    def can_admit(self, request: Request) -> bool:
        return True

    def can_stop_admitting(self) -> bool:
        return True


def _vtc_decision(waiting: list[Request]) -> Decision:
    return Decision(ADMIT, 0.0, waiting, instance=_FakeInstance())


def test_vtc_charges_service_and_lifts_newcomers() -> None:
    vtc = VirtualTokenCounter()
    a1, a2 = Request(0, 0.0, 100, 10, tenant=0), Request(1, 0.1, 100, 10, tenant=0)
    assert vtc.decide(_vtc_decision([a1, a2])) == 0
    assert vtc.counter(0) == 100  # input weight 1 x 100 prompt tokens
    a1.num_generated = 5
    b1 = Request(2, 0.2, 10, 10, tenant=1)
    # Tenant 1 is new while tenant 0 still waits: lifted to tenant 0's counter (after the
    # 5 generated tokens are charged at output weight 2), then ties go to the queue order.
    assert vtc.decide(_vtc_decision([a2, b1])) == 0
    assert vtc.counter(0) == pytest.approx(100 + 10 + 100)
    assert vtc.counter(1) == pytest.approx(110)
    assert vtc.decide(_vtc_decision([b1])) == 0  # now the smallest counter
    assert vtc.counter(1) == pytest.approx(120)


def test_vtc_stops_when_the_fair_choice_does_not_fit() -> None:
    class Full(_FakeInstance):
        def can_admit(self, request: Request) -> bool:
            return request.tenant == 0

    vtc = VirtualTokenCounter()
    vtc.counters.update({0: 50.0, 1: 10.0})
    waiting = [Request(0, 0.0, 10, 5, tenant=1), Request(1, 0.0, 10, 5, tenant=0)]
    assert vtc.decide(Decision(ADMIT, 0.0, waiting, instance=Full())) == STOP


# ====================================================================== Past-Future
def test_peak_usage_by_hand() -> None:
    # Held 10, 20, 30 tokens; remaining 5, 1, 3. Sorted by remaining: (5,10), (3,30), (1,20):
    # k=1: 5*1+10 = 15; k=2: 3*2+40 = 46; k=3: 1*3+60 = 63.
    peak = peak_usage(np.array([10.0, 20.0, 30.0]), np.array([[5.0, 1.0, 3.0]]))
    assert peak.tolist() == [63.0]


def test_past_future_avoids_preemptions_under_kv_pressure() -> None:
    rng = np.random.default_rng(2)
    n = 150
    workload = make_workload(np.cumsum(rng.exponential(0.02, n)), rng.integers(20, 60, n),
                             rng.integers(50, 200, n))

    def preemptions(spec: str) -> float:
        sim = Simulator(AffineCost(max_context=2048), InstanceConfig(
            num_kv_blocks=120, max_num_seqs=32, max_num_batched_tokens=256),
            policies=build_scheduler(spec))
        return sim.run(workload, seed=0).summary["serving/preemptions"]

    assert preemptions("fcfs") > 20
    assert preemptions("past-future(prior_output_len=150)") < 0.25 * preemptions("fcfs")


# ====================================================================== preemption
def test_victim_rules_by_hand() -> None:
    running = [Request(0, 0.0, 100, 50, priority=0), Request(1, 1.0, 10, 50, priority=2),
               Request(2, 2.0, 50, 500, priority=1)]
    for r, computed, blocks in zip(running, (120, 15, 60), (8, 1, 4), strict=True):
        r.num_computed, r.num_blocks = computed, blocks
    decision = Decision(PREEMPT, 0.0, running, instance=None, request=running[0])
    expected = {"preempt-latest": 2, "preempt-priority": 1, "preempt-most-blocks": 0,
                "preempt-least-progress": 1}
    for name, index in expected.items():
        assert make_policy(name).decide(decision) == index, name


def test_swap_is_cheaper_follows_the_link_speed() -> None:
    workload = make_workload([0.0, 0.001], [16, 16], [40, 40])  # KV pressure on 6 blocks
    for per_block, swaps in ((1e-5, True), (1.0, False)):
        sim = Simulator(AffineCost(swap_per_block=per_block), InstanceConfig(
            num_kv_blocks=6, swap_space_blocks=16), policies={
            ADMIT: make_policy("fcfs"), ROUTE: make_policy("rr")})
        sim.reset(workload, seed=0)
        decision = sim.next_decision()
        assert decision.kind == PREEMPT
        victim = decision.candidates[make_policy("preempt-latest").decide(decision)]
        assert swap_is_cheaper(decision, victim) is swaps
        action = make_policy("swap-cost-aware").decide(decision)
        assert isinstance(action, Action) and action.swap is swaps
        assert make_policy("swap-always").decide(decision).swap is True
        least = make_policy("swap-cost-aware-least-progress").decide(decision)
        assert least.swap is swaps
        assert least.choice == make_policy("preempt-least-progress").decide(decision)
        most = make_policy("swap-always-most-blocks").decide(decision)
        assert most.swap is True
        assert most.choice == make_policy("preempt-most-blocks").decide(decision)


# ====================================================================== routing
def _cluster(num: int = 3, **config) -> Simulator:
    config.setdefault("num_kv_blocks", 100)
    sim = Simulator(AffineCost(), InstanceConfig(**config), num_instances=num, policies={})
    sim.reset(make_workload([0.0], [10], [1]), seed=0)
    return sim


def _route(sim: Simulator, request: Request) -> Decision:
    return Decision(ROUTE, 0.0, sim.instances, request=request, cluster=sim)


def test_load_routers_by_hand() -> None:
    sim = _cluster(num_kv_blocks=100, max_num_batched_tokens=256)
    a, b, c = sim.instances
    a.waiting = [Request(i, 0.0, 160, 10) for i in range(3)]  # 3 queued, 30 blocks of demand
    b.running = [Request(10 + i, 0.0, 16, 10) for i in range(2)]
    b.bm.take_blocks(10)
    for r in b.running:
        r.num_blocks = 5
    c.running = [Request(20 + i, 0.0, 16, 10) for i in range(4)]  # running, no blocks used
    request = Request(99, 0.0, 32, 10)
    decision = _route(sim, request)
    assert make_policy("jsq").decide(decision) == 1  # b: no queue, fewer running than c
    assert make_policy("lor").decide(decision) == 1  # outstanding 3, 2, 4
    assert freeness(a) == 70 and freeness(b) == 45 and freeness(c) == 25
    assert make_policy("llumnix").decide(decision) == 0
    assert make_policy("min-ttft").decide(decision) in (1, 2)  # a has 480 tokens queued


def test_prefix_affinity_prefers_the_cache_within_the_load_cap() -> None:
    sim = _cluster(num_kv_blocks=100, enable_prefix_caching=True)
    holder = Request(0, 0.0, 48, 2, prefix_hashes=(1, 2, 3))
    bm = sim.instances[2].bm
    bm.allocate_fresh(holder, 0, 48)
    holder.num_computed = 48
    bm.commit_full_blocks(holder)
    bm.free(holder)  # cached, evictable
    request = Request(1, 0.0, 64, 2, prefix_hashes=(1, 2, 3, 4))
    policy = make_policy("prefix-affinity", load_slack=2, load_ratio=1.0)
    assert policy.decide(_route(sim, request)) == 2
    sim.instances[2].waiting = [Request(10 + i, 0.0, 10, 2) for i in range(3)]
    assert policy.decide(_route(sim, request)) == 0  # over the cap: least loaded instead


def test_random_routers_are_seeded() -> None:
    sim = _cluster(num=4)
    request = Request(0, 0.0, 10, 2)
    for name in ("random", "p2c"):
        choices = []
        for _ in range(2):
            policy = make_policy(name)
            policy.reset(np.random.default_rng(5))
            choices.append([policy.decide(_route(sim, request)) for _ in range(20)])
        assert choices[0] == choices[1] and len(set(choices[0])) > 1
        with pytest.raises(RuntimeError, match="reset"):
            make_policy(name).decide(_route(sim, request))
