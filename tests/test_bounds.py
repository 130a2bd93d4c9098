"""The goodput ceiling (servegym.envs.bounds): hand-computed, and never below a simulation."""

from __future__ import annotations

import numpy as np
import pytest
from sim_fixtures import AffineCost, make_workload

from servegym.envs.bounds import goodput_ceiling, uncached_tokens
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
