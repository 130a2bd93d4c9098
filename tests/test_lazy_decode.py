"""Lazy decode-run advancing (envs/core/decode_runs.py, `LazyEpoch`) changes no number.

Each run here is simulated twice: as is (decode instances advance lazily for placements
and end their runs without a pass over their requests), and with the lazy machinery
replaced by the eager one it stands for (`advance_to`, `bm.catch_up`, `_apply_run`
over every request at every run end). Every number must agree exactly: the report, each
request's token times, each instance's KV samples, token gaps and statistics; and a
PLACE policy that reads the decode instances' token state sees exactly what it saw
eagerly (`DecisionLoop.ask` syncs lazy runs for it).
"""

from __future__ import annotations

import numpy as np
import pytest
from sim_fixtures import AffineCost

from servegym.envs.core import decode_runs
from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.disagg import DecodeInstance, MostFreeKVPlacement
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator
from servegym.envs.protocol import DecisionKind
from servegym.envs.workloads.workload import Workload


class TransferCost(AffineCost):
    def kv_transfer_time(self, num_tokens: int) -> float:
        return 0.002 + 1e-6 * num_tokens


class ReadingPlacement(MostFreeKVPlacement):
    """Most free KV, and a record of the decode instances' token state at each ask."""

    reads_token_state = True

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def decide(self, decision):
        self.seen.append(tuple(
            (r.rid, r.num_computed, r.num_generated, r.last_token_time, r.num_blocks)
            for instance in decision.candidates for r in instance.running))
        return super().decide(decision)


def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace lazy advancing by the eager code it stands for."""
    monkeypatch.setattr(DecodeInstance, "lazy_run_ends", False)
    monkeypatch.setattr(decode_runs.DecodeRuns, "advance_lazy",
                        lambda self, now: decode_runs.DecodeRuns.advance_to(self, now))
    monkeypatch.setattr(decode_runs.DecodeRuns, "take_ahead",
                        lambda self: self.bm.catch_up(self.running, ahead=1))


def simulate(seed: int, blocks: int, policy=None, debug: bool = False) -> tuple:
    rng = np.random.default_rng(seed)
    n = 250
    workload = Workload.from_lengths(np.cumsum(rng.exponential(0.01, n)),
                                     rng.integers(20, 400, n), rng.integers(1, 120, n),
                                     ttft_slo=0.5, tpot_slo=0.05)
    cost = TransferCost()
    config = InstanceConfig(num_kv_blocks=blocks, max_num_seqs=64, max_num_batched_tokens=512)
    policies = default_policies()
    if policy is not None:
        policies[DecisionKind.PLACE] = policy
    sim = Simulator(pools=[Pool("p", config, cost, 2, "prefill"),
                           Pool("d", config, cost, 2, "decode")], policies=policies,
                    record_token_times=True, debug_checks=debug)
    report = sim.run(workload, seed=0)
    requests = [(r.rid, r.status, r.instance, r.first_token_time, r.finish_time,
                 tuple(r.token_times)) for r in sim.requests]
    instances = [(tuple(i.kv_times), tuple(i.kv_used), tuple(i.gaps.run_first),
                  tuple(i.gaps.run_last), tuple(i.gaps.run_count), tuple(i.gaps.run_weight),
                  tuple(i.gaps.singles), i.busy_time, i.num_iterations, i.num_decode_runs)
                 for i in sim.instances]
    return repr(sorted(report.summary.items())), sorted(report.counters.items()), requests, \
        instances


@pytest.mark.parametrize("seed, blocks", [(0, 400), (1, 120), (2, 60)])
def test_lazy_runs_equal_eager_runs(seed: int, blocks: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = simulate(seed, blocks)
    lazy_debug = simulate(seed, blocks, debug=True)  # synced after every event
    eager(monkeypatch)
    reference = simulate(seed, blocks)
    assert reference[1] == lazy[1]  # counters first: the clearest message
    assert reference == lazy
    assert reference == lazy_debug
    assert dict(reference[1])["decode_runs"] > 50  # the runs were exercised


def test_a_policy_reading_token_state_sees_eager_state(monkeypatch) -> None:
    lazy_policy = ReadingPlacement()
    lazy = simulate(3, 150, lazy_policy)
    eager(monkeypatch)
    eager_policy = ReadingPlacement()
    reference = simulate(3, 150, eager_policy)
    assert reference == lazy
    assert eager_policy.seen == lazy_policy.seen
    assert any(any(state) for state in lazy_policy.seen)  # decode instances were busy


def test_without_the_sync_a_reading_policy_would_see_stale_state(monkeypatch) -> None:
    # The guard of the test above: a policy that declares it reads no token state is not
    # synced for, and then sees lagging requests somewhere.
    lazy_policy = ReadingPlacement()
    lazy_policy.reads_token_state = False
    simulate(3, 150, lazy_policy)
    eager(monkeypatch)
    eager_policy = ReadingPlacement()
    simulate(3, 150, eager_policy)
    assert eager_policy.seen != lazy_policy.seen
