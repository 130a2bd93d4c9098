"""The goodput ceiling (servegym.envs.bounds): hand-computed, and never below a simulation."""

from __future__ import annotations

import numpy as np
import pytest
from sim_fixtures import AffineCost, make_workload

from servegym.envs.bounds import drained_goodput_ceiling, goodput_ceiling, uncached_tokens
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator


def test_hand_computed_ceiling() -> None:
    cost = AffineCost(overhead=0.01, per_token=0.001, per_context=0.0)
    # ttft_min = 0.01 + 0.001 * prompt; tpot_min = 0.011 per token after the first.
    workload = make_workload([0.0, 0.0, 1.0], [100, 1000, 100], [11, 11, 1],
                             ttft_slo=0.5, tpot_slo=0.1)
    ceiling = goodput_ceiling(workload, [cost])
    # request 1 needs 1.01 s for its first token > 0.5 s: infeasible.
    assert (ceiling.feasible, ceiling.requests) == (2, 3)
    finishes = sorted([0.0 + 0.11 + 10 * 0.011, 1.0 + 0.11])  # 0.22, 1.11
    expected = max(1 / finishes[0], 2 / finishes[1])
    assert ceiling.goodput_rps == pytest.approx(expected)
    assert ceiling.min_makespan_s == pytest.approx(finishes[0])


def test_fastest_pool_and_tpot_feasibility() -> None:
    slow, fast = AffineCost(per_token=0.01), AffineCost(per_token=0.001)
    workload = make_workload([0.0], [100], [5], tpot_slo=0.015)
    assert goodput_ceiling(workload, [slow]).feasible == 0   # 0.021 s per token > 0.015
    assert goodput_ceiling(workload, [slow, fast]).feasible == 1


def test_shared_prefix_blocks_count_as_possibly_cached() -> None:
    workload = make_workload([0.0, 1.0, 2.0], [64, 64, 40], [2, 2, 2],
                             prefix_hashes=[(1, 2, 3, 4), (1, 2, 9, 8), (7, 1)])
    # the second request shares 2 leading blocks (32 tokens) with the first; the third's
    # first block (7) was never seen, so nothing of it is cached.
    assert uncached_tokens(workload).tolist() == [64, 32, 40]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_simulated_policy_beats_the_ceiling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    workload = make_workload(np.sort(rng.uniform(0, 5, n)), rng.integers(16, 2000, n),
                             rng.integers(1, 300, n), ttft_slo=0.3, tpot_slo=0.03)
    cost = AffineCost(per_token=2e-5, per_context=1e-6)
    summary = Simulator(cost, InstanceConfig(num_kv_blocks=400)).run(workload).summarize()
    ceiling = goodput_ceiling(workload, [cost])
    assert 0 < summary["serving/goodput_rps"] <= ceiling.goodput_rps


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one cost model"):
        goodput_ceiling(make_workload([0.0], [10], [1]), [])


def test_hand_computed_drained_ceiling() -> None:
    cost = AffineCost(overhead=0.01, per_token=0.001, per_context=0.0)
    # As above; request 1 is infeasible but must still finish: its earliest finish,
    # 0 + 1.01 + 10 * 0.011 = 1.12 s, is the latest, so the makespan is at least 1.12 s.
    workload = make_workload([0.0, 0.0, 1.0], [100, 1000, 100], [11, 11, 1],
                             ttft_slo=0.5, tpot_slo=0.1)
    ceiling = drained_goodput_ceiling(workload, [cost])
    assert ceiling.goodput_rps == pytest.approx(2 / 1.12)
    assert ceiling.min_makespan_s == pytest.approx(1.12)
    assert ceiling.goodput_rps < goodput_ceiling(workload, [cost]).goodput_rps
    # If request 1 may be rejected on arrival it need not finish: request 2 ends at 1.11 s.
    loose = drained_goodput_ceiling(workload, [cost], must_finish=[True, False, True])
    assert loose.goodput_rps == pytest.approx(2 / 1.11)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_drained_simulation_beats_the_drained_ceiling(seed: int) -> None:
    """`Simulator.run` serves every request it does not reject: the drained bound holds,
    here with some requests too long for the KV cache (rejected on arrival)."""
    rng = np.random.default_rng(seed)
    n = 100
    prompts = rng.integers(16, 2000, n)
    prompts[rng.random(n) < 0.08] = 3000  # beyond max_model_len: rejected on arrival
    workload = make_workload(np.sort(rng.uniform(0, 10, n)), prompts,
                             rng.integers(1, 300, n), ttft_slo=1.0, tpot_slo=0.1)
    cost = AffineCost(per_token=2e-5, per_context=1e-6)
    sim = Simulator(cost, InstanceConfig(num_kv_blocks=2000, max_model_len=2600))
    report = sim.run(workload)
    summary = report.summarize()
    instance = sim.instances[0]
    must_finish = np.array([not instance.rejection_reason(r) for r in sim.requests])
    assert 0 < (~must_finish).sum() < n // 5  # some requests are rejected, most are served
    ceiling = drained_goodput_ceiling(workload, [cost], must_finish)
    assert summary["serving/slo_attainment"] > 0.3  # a real run, not one that misses all
    assert 0 < summary["serving/goodput_rps"] <= ceiling.goodput_rps
    assert ceiling.goodput_rps <= goodput_ceiling(workload, [cost]).goodput_rps


def test_drained_ceiling_refuses_a_mask_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="one flag per request"):
        drained_goodput_ceiling(make_workload([0.0, 1.0], [10, 10], [1, 1]),
                                [AffineCost()], must_finish=[True])
