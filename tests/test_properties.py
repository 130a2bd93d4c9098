"""Property tests: random workloads, configurations and random valid decisions."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_fixtures import AffineCost, make_workload

from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import STOP, Action, DecisionKind
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.request import FINISHED, REJECTED
from servegym.envs.core.simulator import Simulator


class RandomValid:
    """Answers any decision with a uniformly random valid action."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def decide(self, decision):
        choices = list(np.flatnonzero(decision.mask()))
        if decision.can_stop():
            choices.append(STOP)
        choice = int(choices[self.rng.integers(len(choices))])
        swap = decision.can_swap() and bool(self.rng.integers(2))
        return Action(choice, swap=swap)


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 25))
    gaps = draw(st.lists(st.floats(0, 0.3), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 120), min_size=n, max_size=n))
    block_size = draw(st.sampled_from([4, 16]))
    use_prefix = draw(st.booleans())
    hashes = None
    if use_prefix:
        # Requests share prefixes drawn from 3 families, so the cache sees real reuse.
        families = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        hashes = [
            [1000 * family + b for b in range(p // block_size)]
            for family, p in zip(families, prompts, strict=True)
        ]
    max_seqs = draw(st.integers(1, 8))
    config = InstanceConfig(
        mode=draw(st.sampled_from(["vllm_v1", "vllm_v0"])),
        max_num_seqs=max_seqs,
        max_num_batched_tokens=draw(st.integers(max(max_seqs, 16), 512)),
        enable_chunked_prefill=draw(st.booleans()),
        block_size=block_size,
        num_kv_blocks=draw(st.integers(8, 200)),
        enable_prefix_caching=use_prefix,
        swap_space_blocks=draw(st.sampled_from([0, 0, 50])),
        watermark=draw(st.sampled_from([0.0, 0.01])),
    )
    workload = make_workload(np.cumsum(gaps), prompts, outputs, prefix_hashes=hashes,
                             prefix_block_size=block_size)
    return workload, config, draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_decisions_keep_every_invariant(scenario) -> None:
    workload, config, instances, seed = scenario
    random_policy = RandomValid()
    policies = {kind: random_policy for kind in DecisionKind}
    sim = Simulator(AffineCost(), config, num_instances=instances, policies=policies,
                    debug_checks=True)  # KV invariants and clock order after every event
    report = sim.run(workload, seed=seed)
    for request in sim.requests:
        assert request.status in (FINISHED, REJECTED)
        if request.status == REJECTED:
            assert request.reject_reason
        else:
            assert request.num_generated == request.output_len
            assert request.arrival_time <= request.first_scheduled <= request.first_token_time
            assert request.first_token_time <= request.finish_time
    assert len(sim.requests) == len(workload)
    for instance in sim.instances:
        assert instance.bm.num_used == len(instance.bm.refcount) - len(instance.bm.evictable)
        assert instance.bm.swap_used == 0
        assert np.all(np.diff(np.frombuffer(instance.kv_times)) >= 0)
    assert np.all(report.tbt_values >= 0)


# Each example simulates a whole workload: slow by hypothesis's standard, by design.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_same_seed_same_numbers_and_stepping_drains(scenario) -> None:
    workload, config, instances, seed = scenario

    def inline():
        policies = {kind: RandomValid() for kind in DecisionKind}
        return Simulator(AffineCost(), config, num_instances=instances,
                         policies=policies).run(workload, seed=seed)

    first, second = inline(), inline()
    for column in first.records:
        np.testing.assert_array_equal(first.records[column], second.records[column])
    np.testing.assert_array_equal(first.tbt_values, second.tbt_values)

    agent = RandomValid()
    agent.reset(np.random.default_rng(seed))
    stepped = Simulator(AffineCost(), config, num_instances=instances, policies={},
                        debug_checks=True)
    stepped.reset(workload, seed=seed)
    while (decision := stepped.next_decision()) is not None:
        stepped.apply(agent.decide(decision))
    summary = stepped.report().summary
    assert summary["serving/finished"] + summary["serving/rejected"] == len(workload)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_fast_paths_match_the_reference_path(scenario) -> None:
    """Closed-form decode runs and group scheduling change no number (to float rounding)."""
    workload, config, instances, seed = scenario

    def run(fast: bool):
        policies = {kind: RandomValid() for kind in DecisionKind}
        sim = Simulator(AffineCost(), config, num_instances=instances, policies=policies,
                        decode_runs=fast)
        return sim.run(workload, seed=seed)

    fast, reference = run(True), run(False)
    for column in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_allclose(fast.records[column], reference.records[column], rtol=1e-9)
    for column in ("preemptions", "swaps", "instance", "prefix_hit_tokens"):
        np.testing.assert_array_equal(fast.records[column], reference.records[column])
    assert fast.counters["iterations"] == reference.counters["iterations"]
    np.testing.assert_allclose(np.sort(np.repeat(fast.tbt_values, fast.tbt_weights)),
                               np.sort(np.repeat(reference.tbt_values, reference.tbt_weights)),
                               rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(0, 2**16))
def test_cutting_decode_runs_short_changes_no_number(scenario, cut_seed) -> None:
    """`Simulator.interrupt` (envs/core/events.py) ends a planned decode run at the next
    iteration boundary and cancels its event; the same decisions then give the same
    results as the uncut run, to float rounding."""
    workload, config, instances, seed = scenario

    def run(cut: bool):
        agent = RandomValid()
        agent.reset(np.random.default_rng(seed))
        cutter = np.random.default_rng(cut_seed)
        sim = Simulator(AffineCost(), config, num_instances=instances, policies={},
                        debug_checks=True)
        sim.reset(workload, seed=seed)
        kinds, cuts = [], 0
        while (decision := sim.next_decision()) is not None:
            if cut:
                for instance in sim.instances:
                    if cutter.random() < 0.5 and sim.interrupt(instance) is not None:
                        cuts += 1
            kinds.append(decision.kind)
            sim.apply(agent.decide(decision))
        return sim.report(), kinds, cuts

    (cut, cut_kinds, _), (whole, kinds, _) = run(True), run(False)
    assert cut_kinds == kinds
    for column in ("first_scheduled", "first_token", "finish"):
        np.testing.assert_allclose(cut.records[column], whole.records[column], rtol=1e-9)
    for column in ("preemptions", "swaps", "instance", "prefix_hit_tokens"):
        np.testing.assert_array_equal(cut.records[column], whole.records[column])
    assert cut.counters["iterations"] == whole.counters["iterations"]
    assert cut.counters["decode_runs"] >= whole.counters["decode_runs"]


def test_interrupt_cuts_a_long_run_at_the_next_boundary_and_changes_no_number() -> None:
    """A PREEMPT on a KV-tight instance comes between arrivals, while the roomy instance is
    deep in a decode run: the one moment today's decisions can cut a run short."""
    cost = AffineCost()
    tight, roomy = InstanceConfig(num_kv_blocks=30), InstanceConfig(num_kv_blocks=400)
    workload = make_workload([0.0, 0.0, 0.0, 100.0], [32, 32, 32, 32], [300, 300, 400, 5])

    def run(cut: bool):
        sim = Simulator(pools=[Pool("tight", tight, cost), Pool("roomy", roomy, cost)],
                        policies={})
        sim.reset(workload, seed=0)
        cuts = []
        answers = iter([0, 0, 1, 1])
        while (decision := sim.next_decision()) is not None:
            if decision.kind == DecisionKind.ROUTE:
                sim.apply(next(answers))
                continue
            if cut and decision.kind == DecisionKind.PREEMPT and not cuts:
                cuts.append((sim.now, sim.interrupt(sim.instances[1])))
            sim.apply(0)
        return sim.report(), cuts

    (cut, cuts), (whole, _) = run(True), run(False)
    assert cuts and cuts[0][1] is not None and cuts[0][0] <= cuts[0][1]
    assert sim_interrupt_is_idempotent(cost, tight, roomy, workload)
    for column in ("first_token", "finish"):
        np.testing.assert_allclose(cut.records[column], whole.records[column], rtol=1e-9)
    assert cut.counters["iterations"] == whole.counters["iterations"]
    assert cut.counters["decode_runs"] > whole.counters["decode_runs"]


def sim_interrupt_is_idempotent(cost, tight, roomy, workload) -> bool:
    """A second interrupt at the same moment finds the run already ending there."""
    sim = Simulator(pools=[Pool("tight", tight, cost), Pool("roomy", roomy, cost)],
                    policies={})
    sim.reset(workload, seed=0)
    answers = iter([0, 0, 1, 1])
    while (decision := sim.next_decision()) is not None:
        if decision.kind == DecisionKind.ROUTE:
            sim.apply(next(answers))
            continue
        if decision.kind == DecisionKind.PREEMPT:
            first = sim.interrupt(sim.instances[1])
            return first is not None and sim.interrupt(sim.instances[1]) is None
        sim.apply(0)
    return False
