"""Hand-computed scenarios for the serving model, with the affine cost model of conftest."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sim_fixtures import AffineCost, make_workload

from servegym.envs.core.decisions import STOP, Action, DecisionKind, InvalidActionError
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.kv_cache import BlockManager
from servegym.envs.core.request import Request
from servegym.envs.core.simulator import Simulator


def run(cost, workload, **config):
    sim_kwargs = {k: config.pop(k) for k in ("policies", "num_instances", "decode_runs",
                                               "record_token_times") if k in config}
    sim = Simulator(cost, InstanceConfig(**config), debug_checks=True, **sim_kwargs)
    return sim, sim.run(workload, seed=0)


def times(report, column):
    return report.records[column]


def test_single_request_ttft_is_its_prefill_time(affine: AffineCost) -> None:
    _, report = run(affine, make_workload([0.0], [100], [1]), num_kv_blocks=100)
    assert times(report, "first_token")[0] == pytest.approx(0.010 + 0.001 * 100)
    assert times(report, "finish")[0] == times(report, "first_token")[0]


def test_two_requests_by_hand(affine: AffineCost) -> None:
    # Both arrive at 0: one prefill iteration of 150 tokens, then decodes.
    _, report = run(affine, make_workload([0.0, 0.0], [100, 50], [3, 2]), num_kv_blocks=100)
    t1 = 0.010 + 0.001 * 150
    t2 = t1 + 0.010 + 0.001 * 2 + 1e-5 * (101 + 51)  # contexts: cached + the decoded token
    t3 = t2 + 0.010 + 0.001 * 1 + 1e-5 * 102
    np.testing.assert_allclose(times(report, "first_token"), [t1, t1], rtol=1e-12)
    np.testing.assert_allclose(times(report, "finish"), [t3, t2], rtol=1e-12)
    tbt = np.sort(np.repeat(report.tbt_values, report.tbt_weights))
    np.testing.assert_allclose(tbt, np.sort([t2 - t1, t2 - t1, t3 - t2]), rtol=1e-9)
    assert report.summary["serving/ttft_p50"] == pytest.approx(t1)


def test_arrival_during_decode_joins_at_next_boundary(affine: AffineCost) -> None:
    _, report = run(affine, make_workload([0.0, 0.05], [10, 10], [50, 1]), num_kv_blocks=100)
    first = 0.010 + 0.010
    step = lambda ctx: 0.010 + 0.001 + 1e-5 * ctx  # noqa: E731
    boundary, ctx = first, 11
    while boundary < 0.05:
        boundary += step(ctx)
        ctx += 1
    # The second request is admitted at the first boundary at or after its arrival.
    mixed = 0.010 + 0.001 * 11 + 1e-5 * ctx
    assert times(report, "first_scheduled")[1] == pytest.approx(boundary)
    assert times(report, "first_token")[1] == pytest.approx(boundary + mixed)


def test_chunked_prefill_splits_to_the_budget(affine: AffineCost) -> None:
    _, report = run(affine, make_workload([0.0], [100], [1]), num_kv_blocks=100,
                    max_num_batched_tokens=32, max_num_seqs=32)
    # Chunks of 32, 32, 32 and 4 tokens: four iterations before the first token.
    assert times(report, "first_token")[0] == pytest.approx(4 * 0.010 + 0.001 * 100)
    assert report.summary["serving/iterations"] == 4


def test_v0_runs_prefills_alone_and_unchunked(affine: AffineCost) -> None:
    workload = make_workload([0.0, 0.025], [10, 100], [5, 2])
    _, report = run(affine, workload, num_kv_blocks=100, mode="vllm_v0",
                    max_num_batched_tokens=128, max_num_seqs=8)
    t1 = 0.010 + 0.001 * 10
    t2 = t1 + 0.010 + 0.001 * 1 + 1e-5 * 11  # second arrives mid-decode, waits for boundary
    # Prefill-first: the 100-token prefill runs alone, the first request's decode stalls.
    t3 = t2 + 0.010 + 0.001 * 100
    assert times(report, "first_token")[1] == pytest.approx(t3)
    stall = t3 - t2 + (0.010 + 0.001 * 2 + 1e-5 * (12 + 101))
    tbt = np.repeat(report.tbt_values, report.tbt_weights)
    assert np.isclose(tbt, stall).any()


def test_v0_padded_token_cap_keeps_prefills_apart(affine: AffineCost) -> None:
    # 2 x 70 = 140 > 128 tokens under Vidur's padded count: two prefill iterations.
    _, report = run(affine, make_workload([0.0, 0.0], [70, 10], [1, 1]), num_kv_blocks=100,
                    mode="vllm_v0", max_num_batched_tokens=128, max_num_seqs=8)
    assert times(report, "first_token")[0] < times(report, "first_token")[1]


def kv_pressure_workload():
    # Each request grows to 16 + 40 tokens = 4 blocks; 6 blocks cannot hold both.
    return make_workload([0.0, 0.001], [16, 16], [40, 40])


def test_kv_exhaustion_preempts_latest_arrival_by_recompute(affine: AffineCost) -> None:
    _, report = run(affine, kv_pressure_workload(), num_kv_blocks=6)
    preemptions = report.records["preemptions"]
    assert preemptions[1] >= 1 and preemptions[0] == 0  # vLLM evicts the latest arrival
    assert report.records["recomputed_tokens"][1] > 16  # prompt and generated tokens lost
    assert (report.records["generated_tokens"] == 40).all()


class SwapVictim:
    def decide(self, decision):
        latest = max(range(len(decision.candidates)),
                     key=lambda i: decision.candidates[i].arrival_time)
        return Action(latest, swap=True)


def test_swap_keeps_progress_and_pays_transfer_time() -> None:
    slow_link = AffineCost(swap_per_block=0.5)
    policies = {DecisionKind.ADMIT: _fcfs(), DecisionKind.PREEMPT: SwapVictim(),
                DecisionKind.ROUTE: _fcfs()}
    _, swapped = run(slow_link, kv_pressure_workload(), num_kv_blocks=6, swap_space_blocks=16,
                     policies=policies)
    _, recomputed = run(slow_link, kv_pressure_workload(), num_kv_blocks=6)
    assert swapped.records["swaps"][1] >= 1
    assert swapped.records["recomputed_tokens"].sum() == 0
    assert recomputed.records["recomputed_tokens"].sum() > 0
    # Out and back in, at 0.5 s a block for at least 3 blocks each way.
    delay = swapped.records["finish"].max() - recomputed.records["finish"].max()
    assert delay >= 2 * 3 * 0.5 - 0.1


def _fcfs():
    from servegym.envs.core.decisions import FCFSAdmission

    return FCFSAdmission()


def test_prefix_cache_hit_skips_shared_blocks(affine: AffineCost) -> None:
    shared = [11, 12, 13, 14]
    workload = make_workload([0.0, 5.0], [80, 80], [2, 2],
                             prefix_hashes=[shared + [15], shared + [25]])
    _, report = run(affine, workload, num_kv_blocks=100, enable_prefix_caching=True)
    ttft = times(report, "first_token") - times(report, "arrival")
    assert ttft[0] == pytest.approx(0.010 + 0.001 * 80)
    assert ttft[1] == pytest.approx(0.010 + 0.001 * 16)  # 4 of 5 blocks hit: 64 tokens skipped
    assert report.records["prefix_hit_tokens"].tolist() == [0, 64]


def test_requests_that_can_never_fit_are_rejected_with_reason(affine: AffineCost) -> None:
    workload = make_workload([0.0, 0.0, 0.0], [10, 500, 60], [10, 10, 200_000 - 60])
    small = AffineCost(max_context=200_000)
    _, report = run(small, workload, num_kv_blocks=20)
    status = report.records["status"].tolist()
    assert status == ["finished", "rejected", "rejected"]
    assert report.reject_reasons[1].startswith("exceeds_kv_capacity")
    _, report = run(affine, make_workload([0.0], [90_000], [20_000]), num_kv_blocks=20_000)
    assert report.reject_reasons[0].startswith("exceeds_context")
    _, report = run(affine, make_workload([0.0], [300], [2]), num_kv_blocks=100,
                    mode="vllm_v0", max_num_batched_tokens=256, max_num_seqs=8)
    assert report.reject_reasons[0].startswith("prompt_exceeds_batch_tokens")


def test_decode_runs_match_iteration_by_iteration(affine: AffineCost) -> None:
    rng = np.random.default_rng(3)
    n = 60
    workload = make_workload(np.cumsum(rng.exponential(0.2, n)), rng.integers(5, 300, n),
                             rng.integers(1, 200, n))
    for mode in ("vllm_v1", "vllm_v0"):
        _, fast = run(affine, workload, num_kv_blocks=120, mode=mode, max_num_seqs=16,
                      max_num_batched_tokens=256)
        _, slow = run(affine, workload, num_kv_blocks=120, mode=mode, max_num_seqs=16,
                      max_num_batched_tokens=256, decode_runs=False)
        for column in ("first_token", "finish", "first_scheduled"):
            np.testing.assert_allclose(fast.records[column], slow.records[column], rtol=1e-9)
        assert fast.records["preemptions"].tolist() == slow.records["preemptions"].tolist()
        assert fast.summary["serving/iterations"] == slow.summary["serving/iterations"]
        np.testing.assert_allclose(np.sort(np.repeat(fast.tbt_values, fast.tbt_weights)),
                                   np.sort(np.repeat(slow.tbt_values, slow.tbt_weights)),
                                   rtol=1e-9)


def test_derived_gaps_equal_recorded_token_times(affine: AffineCost) -> None:
    rng = np.random.default_rng(5)
    n = 40
    workload = make_workload(np.cumsum(rng.exponential(0.3, n)), rng.integers(5, 200, n),
                             rng.integers(1, 100, n))
    sim, report = run(affine, workload, num_kv_blocks=80, max_num_seqs=8,
                      max_num_batched_tokens=128, record_token_times=True)
    recorded = np.concatenate([np.diff(r.token_times) for r in sim.requests])
    derived = np.repeat(report.tbt_values, report.tbt_weights)
    np.testing.assert_allclose(np.sort(derived), np.sort(recorded), rtol=1e-9, atol=1e-12)
    for r in sim.requests:
        assert r.token_times[0] == r.first_token_time and r.token_times[-1] == r.finish_time


def test_stepping_decision_by_decision_matches_policies(affine: AffineCost) -> None:
    workload = kv_pressure_workload()
    reference = Simulator(affine, InstanceConfig(num_kv_blocks=6)).run(workload)
    default = _fcfs()
    sim = Simulator(affine, InstanceConfig(num_kv_blocks=6), policies={})
    sim.reset(workload, seed=0)
    from servegym.envs.core.decisions import LatestArrivalPreemption

    kinds = []
    while (decision := sim.next_decision()) is not None:
        kinds.append(decision.kind)
        policy = default if decision.kind == DecisionKind.ADMIT else LatestArrivalPreemption()
        sim.apply(policy.decide(decision))
    assert DecisionKind.PREEMPT in kinds and DecisionKind.ADMIT in kinds
    np.testing.assert_array_equal(sim.report().records["finish"], reference.records["finish"])


def test_invalid_actions_get_clear_errors(affine: AffineCost) -> None:
    sim = Simulator(affine, InstanceConfig(num_kv_blocks=50), policies={})
    sim.reset(make_workload([0.0], [10], [2]), seed=0)
    decision = sim.next_decision()
    assert decision.kind == DecisionKind.ADMIT
    with pytest.raises(InvalidActionError, match="out of range"):
        sim.apply(5)
    with pytest.raises(InvalidActionError, match="idle"):
        sim.apply(STOP)  # nothing runs yet: stopping would idle the instance
    with pytest.raises(InvalidActionError, match="swap"):
        sim.apply(Action(0, swap=True))
    sim.apply(0)  # the decision survives rejected answers
    assert sim.next_decision() is None
    assert sim.report().summary["serving/finished"] == 1


def test_routing_spreads_over_instances(affine: AffineCost) -> None:
    workload = make_workload(np.arange(8) * 0.01, [20] * 8, [30] * 8)
    sim, report = run(affine, workload, num_kv_blocks=50, num_instances=4)
    assert sorted(report.records["instance"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_same_seed_same_numbers(affine: AffineCost) -> None:
    rng = np.random.default_rng(11)
    n = 80
    workload = make_workload(np.cumsum(rng.exponential(0.05, n)), rng.integers(5, 400, n),
                             rng.integers(1, 300, n))

    def once():
        return run(affine, workload, num_kv_blocks=150, max_num_seqs=16,
                   max_num_batched_tokens=256, num_instances=2)[1]

    first, second = once(), once()
    for column in first.records:
        np.testing.assert_array_equal(first.records[column], second.records[column])
    assert first.summary == pytest.approx(second.summary, nan_ok=True)


def test_block_manager_pairs_and_frees() -> None:
    bm = BlockManager(4, 16, enable_prefix_caching=True)
    request = Request(0, 0.0, 40, 5, prefix_hashes=(1, 2))
    hits, evictable = bm.count_prefix_hits(request)
    assert (hits, evictable) == (0, 0)
    assert bm.can_allocate_fresh(request, 0, 0, 40)
    bm.allocate_fresh(request, 0, 40)
    assert bm.num_free == 1 and request.num_blocks == 3
    request.num_computed = 40
    bm.commit_full_blocks(request)
    assert request.cached_hashes == [1, 2]
    assert bm.can_allocate(request, 9)  # 49 tokens need 4 blocks: one more, one free
    assert not bm.can_allocate(request, 25)  # 65 tokens need 5
    bm.check([request])
    bm.free(request)
    assert bm.num_free == 4 and list(bm.evictable) == [2, 1]  # head evicted last
    other = Request(1, 0.0, 40, 5, prefix_hashes=(1, 3))
    assert bm.count_prefix_hits(other) == (1, 1)
    bm.check([])
    assert math.isclose(bm.num_used, 0)


def test_kv_utilisation_series_tracks_blocks(affine: AffineCost) -> None:
    _, report = run(affine, make_workload([0.0], [64], [33]), num_kv_blocks=10)
    times_, used = report.kv_series[0]
    assert np.all(np.diff(times_) >= 0)
    assert used[0] == pytest.approx(4 / 10)  # the 64-token prompt's 4 blocks at the first plan
    assert report.summary["serving/kv_utilisation_peak"] <= 1.0
    assert 0.4 <= report.summary["serving/kv_utilisation_mean"] <= 0.6


def test_a_workload_beyond_the_horizon_is_refused_not_simulated_forever() -> None:
    from servegym.envs.core.simulator import MAX_TIME_S

    sim = Simulator(AffineCost(), InstanceConfig(num_kv_blocks=64))
    far = make_workload([0.0, MAX_TIME_S * 10], [16, 16], [4, 4])
    with pytest.raises(ValueError, match="beyond the simulator's horizon"):
        sim.reset(far)
    near = make_workload([0.0, MAX_TIME_S], [16, 16], [4, 4])
    sim.run(near)
    assert [r.finish_time > MAX_TIME_S for r in sim.requests] == [False, True]


@pytest.mark.parametrize("horizon", [1e-3, 1.0, 1e9, 1e57, 1e300])
def test_first_reaching_ends_for_any_horizon(horizon: float) -> None:
    from servegym.envs.core.instance import _elapsed, _first_reaching

    count = _first_reaching(0.01, 1e-6, 4, 100, horizon)
    assert count >= 1
    if horizon <= 1e9:  # exact where a float clock can tell one iteration from the next
        assert _elapsed(0.01, 1e-6, 4, 100, count) >= horizon
        assert count == 1 or _elapsed(0.01, 1e-6, 4, 100, count - 1) < horizon


def test_jain_fairness_is_over_tenants_slo_attainment() -> None:
    from servegym.envs.core.metrics import _jain

    tenant = np.array([0, 0, 1, 1])
    assert _jain(tenant, np.array([True, True, True, True])) == 1.0
    assert _jain(tenant, np.array([True, True, False, True])) == pytest.approx(0.9)
    assert _jain(tenant, np.array([True, True, False, False])) == pytest.approx(0.5)
    assert math.isnan(_jain(tenant, np.zeros(4, dtype=bool)))
