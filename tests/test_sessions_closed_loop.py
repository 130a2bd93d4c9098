"""Closed-loop sessions and agentic programs: releases, failures, slicing, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_fixtures import AffineCost, make_workload

from servegym.envs.core.decisions import default_policies
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator
from servegym.envs.protocol import DecisionKind
from servegym.envs.workloads import Workload, WorkloadError

NAN = math.nan


def _sim(n: int = 2, **config) -> Simulator:
    defaults = {"max_model_len": 4096, "num_kv_blocks": 400}
    defaults.update(config)
    return Simulator(AffineCost(), InstanceConfig(**defaults), num_instances=n)


def _chain_sessions(sessions: int = 30, turns: int = 4, seed: int = 0) -> Workload:
    """`sessions` chains of `turns` calls, random lengths and think times."""
    rng = np.random.default_rng(seed)
    n = sessions * turns
    session = np.repeat(np.arange(sessions), turns)
    turn = np.tile(np.arange(turns), sessions)
    starts = np.sort(rng.uniform(0, 20, sessions))
    think = rng.exponential(2.0, n)
    nominal = starts[session] + turn * 3.0
    order = np.argsort(nominal, kind="stable")
    row = np.empty(n, dtype=np.int64)
    row[order] = np.arange(n)
    parents = [() if turn[i] == 0 else (int(row[i - 1]),) for i in order]
    delay = np.where(turn == 0, NAN, think)[order]
    return Workload.from_lengths(
        nominal[order], rng.integers(20, 400, n)[order], rng.integers(2, 60, n)[order],
        session_id=session[order], parents=parents, release_delay=delay,
        tool_kind=np.where(turn < turns - 1, 0, -1)[order])


def test_turn_released_after_parent_finish_plus_think() -> None:
    w = _chain_sessions()
    report = _sim().run(w)
    r = report.records
    by_rid = {int(rid): k for k, rid in enumerate(r["rid"])}
    assert (r["status"] == "finished").all()
    for i, parents in enumerate(w.parents):
        if not parents:
            assert r["arrival"][by_rid[i]] == pytest.approx(w.arrival_time[i])
            continue
        finish = max(r["finish"][by_rid[p]] for p in parents)
        assert r["arrival"][by_rid[i]] == pytest.approx(finish + w.release_delay[i], abs=1e-12)


def test_same_seed_same_numbers_and_stepped_equals_inline() -> None:
    w = _chain_sessions(seed=3)
    first = _sim().run(w, seed=5).summary
    np.testing.assert_equal(_sim().run(w, seed=5).summary, first)  # NaN == NaN here
    policies = default_policies()
    router = policies.pop(DecisionKind.ROUTE)
    stepped = Simulator(AffineCost(), InstanceConfig(max_model_len=4096, num_kv_blocks=400),
                        num_instances=2, policies=policies)
    stepped.reset(w, seed=5)
    asked = 0
    while (decision := stepped.next_decision()) is not None:
        asked += 1
        stepped.apply(router.decide(decision))
    assert asked == len(w)  # every release is routed like an arrival
    summary = stepped.report().summary
    assert summary.keys() == first.keys()
    for key, value in first.items():
        assert summary[key] == pytest.approx(value, nan_ok=True), key


def test_request_fields_for_policies() -> None:
    w = make_workload([0.0, 1.0, 2.0], [100, 100, 100], [5, 5, 5], session_id=[0, 0, 0],
                      parents=[(), (0,), (0,)], release_delay=[NAN, 0.5, 2.0],
                      tool_kind=[7, -1, -1])
    sim = _sim()
    sim.run(w)
    req = {r.rid: r for r in sim.requests}
    assert req[0].session == 0 and req[0].tool_kind == 7
    assert req[0].next_delay == 0.5  # the earliest child's release delay
    assert math.isnan(req[1].next_delay)
    assert req[0].critical_path == 2 and req[1].critical_path == 1
    assert req[1].turn == 1
    assert req[1].program is req[0].program
    assert req[2].program_service == 3 * 105  # every call finished


def test_rejected_parent_rejects_descendants_no_hang() -> None:
    # Turn 2 outgrows the 1000-token context: it and turn 3 are rejected, never waiting.
    w = make_workload([0.0, 1.0, 2.0, 5.0], [100, 990, 100, 50], [10, 20, 10, 5],
                      session_id=[0, 0, 0, 1], parents=[(), (0,), (1,), ()],
                      release_delay=[NAN, 1.0, 1.0, NAN])
    report = _sim(max_model_len=1000).run(w)
    reasons = dict(zip(report.records["rid"].tolist(), report.reject_reasons, strict=True))
    assert reasons[0] == "" and reasons[3] == ""
    assert reasons[1].startswith("exceeds_context")
    assert reasons[2] == "parent_rejected: request 1 (exceeds_context)"
    assert report.summary["serving/rejected"] == 2


def test_fan_in_waits_for_every_parent() -> None:
    w = make_workload([0.0, 0.0, 0.0, 1.0], [50, 50, 800, 50], [5, 5, 80, 5],
                      session_id=[0, 0, 0, 0], parents=[(), (0,), (0,), (1, 2)],
                      release_delay=[NAN, 0.1, 0.1, 0.3])
    sim = _sim()
    sim.run(w)
    req = {r.rid: r for r in sim.requests}
    last = max(req[1].finish_time, req[2].finish_time)
    assert req[2].finish_time > req[1].finish_time
    assert req[3].arrival_time == pytest.approx(last + 0.3)


def test_cycle_is_a_clear_error_naming_the_program() -> None:
    with pytest.raises(WorkloadError, match="program 4: .*cycle"):
        make_workload([0.0, 1.0, 2.0], [10, 10, 10], [2, 2, 2], session_id=[4, 4, 4],
                      parents=[(), (2,), (1,)], release_delay=[NAN, 1.0, 1.0])


@pytest.mark.parametrize("delay", [-1.0, NAN, math.inf])
def test_bad_think_time_is_refused(delay: float) -> None:
    with pytest.raises(WorkloadError, match=r"release_delay\[1\].*finite and >= 0"):
        make_workload([0.0, 1.0], [10, 10], [2, 2], session_id=[0, 0], parents=[(), (0,)],
                      release_delay=[NAN, delay])


def test_slicing_keeps_graph_or_refuses() -> None:
    w = _chain_sessions(sessions=5, turns=3)
    with pytest.raises(WorkloadError, match="would cut program"):
        w.take(np.arange(1, len(w)))
    rows = w.whole_programs(np.flatnonzero(w.session_id < 3))
    part = w.take(rows)
    assert len(part) == 9 and set(part.session_id.tolist()) == {0, 1, 2}
    for i, parents in enumerate(part.parents):
        for p in parents:
            assert part.session_id[p] == part.session_id[i] and part.turn[p] == part.turn[i] - 1
    assert _sim().run(part).summary["serving/finished"] == 9


def test_program_metrics_by_hand() -> None:
    # One instance, AffineCost: a prefill-only call of p tokens takes 0.010 + 0.001 p s.
    # Program 0: a chain 0 -> 1 -> 2 (think 0.5 s, then 1.0 s); program 1: one call at 5 s.
    w = make_workload([0.0, 0.2, 1.0, 5.0], [100, 200, 50, 100], [1, 1, 1, 1],
                      session_id=[0, 0, 0, 1], parents=[(), (0,), (1,), ()],
                      release_delay=[NAN, 0.5, 1.0, NAN], ttft_slo=0.15)
    report = _sim(n=1).run(w)
    finish = dict(zip(report.records["rid"].tolist(), report.records["finish"], strict=True))
    assert finish[0] == pytest.approx(0.11)
    assert finish[1] == pytest.approx(0.11 + 0.5 + 0.21)  # released at 0.61
    assert finish[2] == pytest.approx(0.82 + 1.0 + 0.06)  # released at 1.82
    s = report.summary
    assert s["serving/programs"] == 2
    assert s["serving/program_attainment"] == 0.5  # call 1's TTFT 0.21 > 0.15 sinks program 0
    assert s["serving/jct_p50"] == pytest.approx(0.11)  # program 1; inverted CDF of 2 values
    assert s["serving/jct_p99"] == pytest.approx(1.88)
    assert s["serving/jct_mean"] == pytest.approx((1.88 + 0.11) / 2)
    assert "serving/jct_p50" not in _sim(n=1).run(make_workload([0.0], [10], [2])).summary


# ---------------------------------------------------------------------- workloads

_SESSIONS = {
    "kind": "sessions", "num_sessions": 20, "arrivals": {"process": "poisson", "rate": 1.0},
    "turns": {"dist": "uniform", "low": 1, "high": 5},
    "think_time": {"dist": "exponential", "mean": 3.0},
    "first_prompt": {"dist": "lognormal", "mean": 300, "cv": 1.0, "high": 1500},
    "user_prompt": {"dist": "lognormal", "mean": 50, "cv": 1.0, "high": 300},
    "output": {"dist": "lognormal", "mean": 60, "cv": 0.8, "high": 300},
    "system_prompt_len": 32,
}
_PROGRAMS = {
    "kind": "programs", "num_programs": 25, "arrivals": {"process": "poisson", "rate": 1.0},
    "stages": {"dist": "uniform", "low": 1, "high": 4},
    "width": {"dist": "uniform", "low": 1, "high": 3}, "system_prompt_len": 64,
    "task_prompt": {"dist": "lognormal", "mean": 200, "cv": 0.8, "high": 1000},
    "instruction": {"dist": "lognormal", "mean": 30, "cv": 0.5, "high": 100},
    "output": {"dist": "lognormal", "mean": 60, "cv": 0.8, "high": 300},
    "tools": [
        {"name": "search", "weight": 2.0, "duration": {"dist": "uniform", "low": 0.5, "high": 1},
         "result": {"dist": "fixed", "value": 100}},
        {"name": "code", "duration": {"dist": "fixed", "value": 3.0},
         "result": {"dist": "fixed", "value": 40}},
    ],
}


def _source(spec: dict, seed: int = 0) -> Workload:
    from servegym.envs.workloads.sources import SourceContext, make_source

    return make_source(spec, np.random.default_rng(seed), SourceContext())


def test_sessions_closed_loop_option() -> None:
    open_loop = _source(_SESSIONS)
    closed = _source({**_SESSIONS, "closed_loop": True})
    assert open_loop.parents is None and open_loop.session_id is None  # unchanged
    np.testing.assert_array_equal(closed.prompt_len, open_loop.prompt_len)
    np.testing.assert_array_equal(closed.arrival_time, open_loop.arrival_time)  # nominal
    for i, parents in enumerate(closed.parents):
        if closed.turn[i] == 0:
            assert parents == ()
            continue
        (p,) = parents
        assert closed.session_id[p] == closed.session_id[i] and closed.turn[p] == closed.turn[i] - 1
        # open-loop think time (arrival to arrival) becomes the post-finish release delay
        gap = closed.arrival_time[i] - closed.arrival_time[p]
        assert closed.release_delay[i] == pytest.approx(gap)
        assert closed.prompt_len[i] > closed.prompt_len[p] + closed.output_len[p]
    with pytest.raises(WorkloadError, match="closed_loop"):
        _source({**_SESSIONS, "closed_loop": "yes"})


def test_agentic_programs_structure() -> None:
    w = _source(_PROGRAMS)
    assert w.closed_loop and len(np.unique(w.session_id)) == 25
    block = w.prefix_block_size
    for program in np.unique(w.session_id):
        rows = np.flatnonzero(w.session_id == program)
        stages = w.turn[rows]
        widths = np.bincount(stages)
        assert widths[0] == 1 and widths[-1] == 1
        for i in rows:
            parents = w.parents[i]
            if w.turn[i] == 0:
                assert parents == ()
                continue
            expected = set(rows[stages == w.turn[i] - 1].tolist())
            assert set(parents) == expected  # fan-in from the whole stage before
            kinds = {int(w.tool_kind[p]) for p in parents}
            assert len(kinds) == 1 and kinds.pop() in (0, 1)  # one tool step per stage
            delay = w.release_delay[i]
            assert (0.5 <= delay <= 1.0) or delay == 3.0
            # the prompt resends the stage before's context and outputs (a shared prefix)
            parent = parents[0]
            shared = sum(w.output_len[p] for p in parents)
            assert w.prompt_len[i] > shared
            ours, theirs = w.prefix_hashes[i], w.prefix_hashes[parent]
            common = next((k for k, (a, b) in enumerate(zip(ours, theirs, strict=False))
                           if a != b),
                          min(len(ours), len(theirs)))
            assert common >= (w.prompt_len[parent] - 100) // block - 1
        assert (w.tool_kind[rows[stages == stages.max()]] == -1).all()
    np.testing.assert_equal(_source(_PROGRAMS).prompt_len, w.prompt_len)  # deterministic
    report = _sim().run(w)
    assert report.summary["serving/programs"] == 25
    assert report.summary["serving/finished"] == len(w)


def test_mooncake_sessions_follow_block_ids() -> None:
    from servegym.envs.workloads.mooncake import load_mooncake

    w = load_mooncake(sessions=True)
    dependent = np.array([len(p) > 0 for p in w.parents])
    assert dependent.sum() == 3932 and (~dependent).sum() == len(np.unique(w.session_id))
    for i in np.flatnonzero(dependent)[:300]:
        (p,) = w.parents[i]
        full = w.prompt_len[p] // 512 * 32  # the parent's full 512-token ids start i's
        assert w.prefix_hashes[i][:full] == w.prefix_hashes[p][:full]
        think = w.arrival_time[i] - w.arrival_time[p] - 0.02 * w.output_len[p]
        assert w.release_delay[i] == pytest.approx(max(0.0, think))
    assert len({p[0] for p in w.parents if p}) == dependent.sum()  # chains: one child each


def test_build_keeps_programs_whole_and_merge_keeps_graphs() -> None:
    from servegym.envs.workloads import build_workload, merge

    for kwargs in ({"split": "test"}, {"split": "train"}, {"num_requests": 30},
                   {"window": [5.0, 15.0]}):
        part = build_workload(_PROGRAMS, seed=1, **kwargs)
        full = build_workload(_PROGRAMS, seed=1)
        sizes = np.bincount(full.session_id)
        for program, count in zip(*np.unique(part.session_id, return_counts=True),
                                  strict=True):
            assert count == sizes[program]
    a = build_workload(_PROGRAMS, seed=1)
    b = build_workload({**_SESSIONS, "closed_loop": True}, seed=2)
    both = merge([a.take(np.arange(len(a))), _renamed(b)])
    assert len(np.unique(both.session_id)) == 25 + 20
    for i, parents in enumerate(both.parents):
        for p in parents:
            assert both.session_id[p] == both.session_id[i] and both.turn[p] < both.turn[i]


def _renamed(w: Workload) -> Workload:
    """`w` with its one tenant named "chat" (merge needs unique tenant names)."""
    import dataclasses

    return dataclasses.replace(w, tenant_names=("chat",))


# ---------------------------------------------------------------------- program-aware admission


def _admitted_order(workload: Workload, name: str) -> list[int]:
    from servegym.agents.heuristics import make_policy

    policies = default_policies()
    policies[DecisionKind.ADMIT] = make_policy(name)
    sim = Simulator(AffineCost(), InstanceConfig(max_model_len=4096, num_kv_blocks=400,
                                                 max_num_seqs=1), policies=policies)
    sim.run(workload)
    return [r.rid for r in sorted(sim.requests, key=lambda r: (r.first_scheduled, r.rid))]


def test_critical_path_first_serves_the_deep_program_first() -> None:
    # Row 0: a lone call; row 1: the root of a 3-call chain; both waiting at t = 0.
    w = make_workload([0.0, 0.0, 1.0, 2.0], [100, 100, 100, 100], [20, 20, 20, 20],
                      session_id=[0, 1, 1, 1], parents=[(), (), (1,), (2,)],
                      release_delay=[NAN, 0.0, 0.0, 0.0])
    assert _admitted_order(w, "fcfs")[:2] == [0, 1]
    assert _admitted_order(w, "critical-path-first")[:2] == [1, 0]
    assert _admitted_order(w, "program-las")[:2] == [0, 1]  # no service yet: FCFS


def test_program_las_serves_the_program_with_least_service_first() -> None:
    # Row 0 (program 0) runs first; row 1 (program 2, long) then holds the only slot while
    # program 0's second call (row 3, released at row 0's finish, ~0.07 s) and program 1's
    # first call (row 2, arriving at 0.5 s) wait for it.
    w = make_workload([0.0, 0.0, 0.5, 0.5], [50, 400, 100, 100], [2, 200, 5, 5],
                      session_id=[0, 2, 1, 0], parents=[(), (), (), (0,)],
                      release_delay=[NAN, NAN, NAN, 0.0])
    assert _admitted_order(w, "fcfs") == [0, 1, 3, 2]  # row 3 was released first
    assert _admitted_order(w, "program-las") == [0, 1, 2, 3]  # program 1 has no service yet
    assert _admitted_order(w, "critical-path-first") == [0, 1, 3, 2]  # paths all 1 now


@pytest.mark.parametrize("instances", [1, 3])
def test_decode_runs_agree_with_the_reference_path(instances: int) -> None:
    # A release landing on an instance in a decode run cuts the run (as an arrival does).
    w = _chain_sessions(sessions=25, turns=5, seed=7)
    fast = _sim(instances, enable_prefix_caching=True).run(w, seed=1)
    reference = Simulator(AffineCost(), InstanceConfig(max_model_len=4096, num_kv_blocks=400,
                                                       enable_prefix_caching=True),
                          num_instances=instances, decode_runs=False,
                          debug_checks=True).run(w, seed=1)
    for field in ("rid", "arrival", "first_token", "finish", "instance"):
        np.testing.assert_allclose(fast.records[field], reference.records[field], rtol=1e-9,
                                   atol=1e-9, err_msg=field)


def test_live_backend_refuses_closed_loop_workloads() -> None:
    from servegym.envs.backends import build_backend

    backend = build_backend("live", None, 1, None)  # no engine is built before the check
    w = make_workload([0.0, 1.0], [10, 10], [2, 2], session_id=[0, 0], parents=[(), (0,)],
                      release_delay=[NAN, 1.0])
    with pytest.raises(ValueError, match="closed loop.*use backend='sim'"):
        backend.reset(w)


def test_arrivals_since_counts_releases() -> None:
    w = make_workload([0.0, 5.0, 5.0], [100, 100, 100], [5, 5, 5], session_id=[0, 0, 1],
                      parents=[(), (0,), ()], release_delay=[NAN, 3.0, NAN])
    sim = _sim(n=1)
    sim.run(w)
    released = next(r for r in sim.requests if r.rid == 1)
    assert 3.0 < released.arrival_time < 5.0  # request 0's finish + 3 s
    assert sim.arrivals_since(0.0) == 3
    assert sim.arrivals_since(released.arrival_time) == 3 - 1  # the release and row 2
    assert sim.arrivals_since(5.0 + 1e-9) == 0
