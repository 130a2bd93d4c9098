"""Prefill/decode disaggregation (envs/core/disagg.py): hand-offs, KV transfers, PLACE."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_fixtures import AffineCost, make_workload

from servegym.envs.core.cluster import Pool
from servegym.envs.core.disagg import Network
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.request import REJECTED
from servegym.envs.core.simulator import Simulator
from servegym.envs.protocol import STOP, Action, DecisionKind, InvalidActionError


class TransferCost(AffineCost):
    """AffineCost whose KV transfers take `fixed + per_token * tokens` seconds."""

    def __init__(self, fixed: float = 0.5, per_token: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fixed, self.per_token_transfer = fixed, per_token

    def kv_transfer_time(self, num_tokens: int) -> float:
        return self.fixed + self.per_token_transfer * num_tokens


def pools(prefills: int = 1, decodes: int = 1, prefill_blocks: int = 64,
          decode_blocks: int = 64, cost=None, budget: int = 256, seqs: int = 64,
          swap: int = 0, prefix: bool = False) -> list[Pool]:
    cost = cost or TransferCost()
    return [Pool("p", InstanceConfig(num_kv_blocks=prefill_blocks, max_num_batched_tokens=budget,
                                     max_num_seqs=seqs, enable_prefix_caching=prefix),
                 cost, prefills, "prefill"),
            Pool("d", InstanceConfig(num_kv_blocks=decode_blocks, max_num_seqs=seqs,
                                     max_num_batched_tokens=budget, swap_space_blocks=swap),
                 cost, decodes, "decode")]


def test_one_request_is_prefilled_transferred_then_decoded() -> None:
    cost = TransferCost(fixed=0.5)
    sim = Simulator(pools=pools(cost=cost), debug_checks=True, record_token_times=True)
    sim.run(make_workload([0.0], [100], [4]), seed=0)
    request = sim.requests[0]
    # Prefill: one iteration of 100 tokens at t=0 gives the first token (TTFT) there.
    first = cost.iteration_time([(100, 0)], 0, 0)
    assert request.first_token_time == pytest.approx(first)
    assert request.instance == 1  # decoded on the decode instance
    times = request.token_times
    assert len(times) == 4 and times[0] == pytest.approx(first)
    # The second token comes one decode iteration after the transfer ends.
    assert times[1] == pytest.approx(first + 0.5 + cost.iteration_time([], 1, 101))
    assert sim.disagg.num_transfers == 1 and sim.disagg.transferred_tokens == 100
    assert sim.instances[0].bm.num_free == 64 and sim.instances[1].bm.num_free == 64
    assert sim.instances[0].num_iterations == 1  # the prefill instance never decodes


def test_prefill_instance_keeps_working_during_a_transfer() -> None:
    cost = TransferCost(fixed=5.0)
    sim = Simulator(pools=pools(cost=cost), debug_checks=True)
    sim.run(make_workload([0.0, 0.1], [100, 100], [3, 3]), seed=0)
    first, second = sim.requests
    # The second prompt is prefilled long before the first transfer (5 s) ends.
    assert second.first_token_time < first.first_token_time + 1.0
    assert second.finish_time < first.first_token_time + 5.0 + 1.0


def test_handoff_waits_for_decode_kv_holding_its_prefill_blocks() -> None:
    # The decode instance holds one request at a time (KV); the second waits prefilled.
    sim = Simulator(pools=pools(decode_blocks=8, cost=TransferCost(fixed=0.01)),
                    debug_checks=True)
    sim.reset(make_workload([0.0, 0.0], [100, 100], [20, 20]), seed=0)
    assert sim.next_decision() is None
    first, second = sim.requests
    assert second.first_token_time < first.finish_time  # prefilled while the first decodes
    assert math.isclose(second.first_token_time, first.first_token_time) or \
        second.first_token_time > first.first_token_time
    # The second decodes only after the first finished and freed the decode KV.
    assert sim.report().summary["serving/finished"] == 2
    assert second.finish_time > first.finish_time


def test_a_request_no_decode_instance_can_hold_is_rejected_with_a_reason() -> None:
    sim = Simulator(pools=pools(prefill_blocks=64, decode_blocks=4), debug_checks=True)
    sim.run(make_workload([0.0, 0.1], [200, 20], [10, 10]), seed=0)
    big, small = sim.requests
    assert big.status == REJECTED and big.reject_reason.startswith("no_decode_instance_fits")
    assert small.num_generated == 10


def test_bad_disaggregated_configs_are_refused() -> None:
    cost = TransferCost()
    with pytest.raises(ValueError, match="bandwidth_gbps must be a positive"):
        Network(0.0)
    with pytest.raises(ValueError, match="bandwidth_gbps must be a positive"):
        Simulator(pools=pools(), network={"bandwidth_gbps": 0})
    with pytest.raises(ValueError, match="unknown key"):
        Simulator(pools=pools(), network={"bandwidth": 5})
    with pytest.raises(ValueError, match="add a pool with role 'decode'"):
        Simulator(pools=[Pool("p", InstanceConfig(num_kv_blocks=8), cost, 1, "prefill")])
    with pytest.raises(ValueError, match="has none"):
        Simulator(cost, InstanceConfig(num_kv_blocks=8), network={"bandwidth_gbps": 100})


def test_network_prices_the_transfer() -> None:
    from servegym.envs.costs import build_cost_model

    cost = build_cost_model("Llama-3-8B", "H100-80GB", 1, source="roofline")
    net = Network(bandwidth_gbps=100.0, latency_s=0.002)
    # Llama-3-8B: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes = 128 KiB/token.
    assert net.transfer_time(cost, 1000) == pytest.approx(0.002 + 1000 * 131072 * 8 / 100e9)


def test_place_decisions_surface_and_are_validated() -> None:
    from servegym.envs.core.decisions import default_policies

    policies = default_policies()
    del policies[DecisionKind.PLACE]
    sim = Simulator(pools=pools(decodes=2, decode_blocks=10), policies=policies,
                    debug_checks=True)
    sim.reset(make_workload([0.0, 0.0, 0.0], [100, 100, 100], [5, 5, 5]), seed=0)
    decision = sim.next_decision()
    assert decision.kind == DecisionKind.PLACE
    assert [c.index for c in decision.candidates] == [1, 2]
    assert decision.mask().tolist() == [True, True]
    with pytest.raises(InvalidActionError):
        sim.apply(Action(0, target=1))
    with pytest.raises(InvalidActionError):
        sim.apply(STOP)
    sim.apply(1)
    decision = sim.next_decision()
    assert decision.kind == DecisionKind.PLACE and decision.mask().tolist() == [True, False]
    with pytest.raises(InvalidActionError, match="no room"):
        sim.apply(1)
    while sim.next_decision() is not None:
        sim.apply(int(np.flatnonzero(sim.next_decision().mask())[0]))
    assert sim.report().summary["serving/finished"] == 3


def _drive(sim: Simulator, workload, seed: int, choice_seed: int, limit: int = 200_000):
    """Answer every decision at random among the valid ones, checking after each step that
    every instance's used KV blocks are exactly those its requests hold plus reservations."""
    rng = np.random.default_rng(choice_seed)
    sim.reset(workload, seed=seed)
    answers = []
    steps = 0
    while (decision := sim.next_decision()) is not None:
        steps += 1
        assert steps < limit, "no progress: the loop does not end"
        for instance in sim.instances:
            bm = instance.bm
            live = instance.live_requests()
            private = sum(r.num_blocks - len(r.cached_hashes or ()) for r in live)
            shared = sum(1 for refs in bm.refcount.values() if refs > 0)
            # Used = private blocks + referenced shared ones + reservations (+ cached,
            # unreferenced blocks, which count as free).
            assert bm.num_used == private + shared + bm.reserved + bm.incoming_blocks
        valid = np.flatnonzero(decision.mask())
        if decision.kind == DecisionKind.ADMIT and decision.can_stop() and rng.random() < 0.3:
            action = Action(STOP)
        else:
            choice = int(rng.choice(valid))
            swap = decision.can_swap() and bool(rng.random() < 0.5)
            action = Action(choice, swap=swap)
        answers.append(action)
        sim.apply(action)
    return answers


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), prefills=st.integers(1, 3), decodes=st.integers(1, 3),
       decode_blocks=st.integers(20, 80), transfer=st.floats(0.0, 0.2),
       runs=st.booleans(), swap=st.sampled_from([0, 16]), prefix=st.booleans())
def test_kv_is_conserved_across_transfers_under_random_decisions(
        seed, prefills, decodes, decode_blocks, transfer, runs, swap, prefix) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    prompts = rng.integers(1, 300, n)
    hashes = None
    if prefix:  # four groups of requests sharing their leading prompt blocks
        groups = rng.integers(0, 4, n)
        hashes = [tuple(int(g) * 1000 + i for i in range(int(p) // 16))
                  for g, p in zip(groups, prompts, strict=True)]
    workload = make_workload(np.sort(rng.uniform(0, 2, n)), prompts, rng.integers(1, 60, n),
                             prefix_hashes=hashes)
    built = pools(prefills, decodes, prefill_blocks=40, decode_blocks=decode_blocks,
                  cost=TransferCost(fixed=transfer, per_token=1e-4), budget=128, swap=swap,
                  prefix=prefix)
    sim = Simulator(pools=built, policies={}, debug_checks=True, decode_runs=runs)
    answers = _drive(sim, workload, seed, seed + 1)
    report = sim.report()
    for request in sim.requests:  # every request finished or was rejected with a reason
        if request.status == REJECTED:
            assert request.reject_reason
        else:
            assert request.num_generated == request.output_len
    assert sim.disagg.transfers == {}
    # Bit-for-bit determinism: the same answers give the same run.
    again = Simulator(pools=built, policies={}, debug_checks=True, decode_runs=runs)
    assert _drive(again, workload, seed, seed + 1) == answers
    assert repr(again.report().summary) == repr(report.summary)  # nan-safe equality
    assert [r.finish_time for r in again.requests] == [r.finish_time for r in sim.requests]


def test_default_policies_run_a_loaded_cluster_deterministically() -> None:
    rng = np.random.default_rng(3)
    n = 400
    workload = make_workload(np.sort(rng.uniform(0, 4, n)), rng.integers(10, 600, n),
                             rng.integers(1, 200, n))
    runs = []
    for _ in range(2):
        sim = Simulator(pools=pools(2, 2, prefill_blocks=80, decode_blocks=120, budget=512,
                                    cost=TransferCost(fixed=0.001, per_token=1e-5)),
                        debug_checks=True)
        runs.append(sim.run(workload, seed=1).summary)
        assert sim.disagg.num_transfers == sum(1 for r in sim.requests if r.output_len > 1)
    assert repr(runs[0]) == repr(runs[1])  # nan-safe equality
    assert runs[0]["serving/finished"] == n


def test_the_live_backend_refuses_prefill_decode_pools_naming_what_is_missing() -> None:
    from servegym.envs.backends import build_backend

    specs = [{"name": "p", "role": "prefill"}, {"name": "d", "role": "decode"}]
    with pytest.raises(ValueError, match="KV transfer between engines"):
        build_backend("live", None, 2, None, pools=specs)
    with pytest.raises(ValueError, match="cluster.network"):
        build_backend("live", None, 1, None, network={"bandwidth_gbps": 100})
    # every other cluster option too, by name (it was passed on and crashed LiveBackend)
    with pytest.raises(ValueError, match=r"cluster option\(s\) \['retain_ttls'\]"):
        build_backend("live", None, 1, None, retain_ttls=[1.0, 5.0])


def test_disaggregated_env_asks_route_and_place_with_masks() -> None:
    import gymnasium as gym

    import servegym  # noqa: F401  (registers the ids)
    from servegym.envs.observations import GLOBAL_FEATURES, SLOT_FEATURES

    env = gym.make("servegym/Disaggregated-v0", episode_requests=60).unwrapped
    env.reset(seed=0)
    kinds = set()
    done = False
    while not done:
        decision = env.sim.next_decision()
        kinds.add(decision.kind)
        obs = env.encoder.buffer
        if decision.kind == DecisionKind.PLACE:
            assert obs[10:13].tolist() == [0.0, 0.0, 0.0]  # PLACE: no ROUTE/ADMIT/PREEMPT bit
            valid = decision.mask()
            for slot, ok in enumerate(valid):
                assert obs[GLOBAL_FEATURES + slot * SLOT_FEATURES + 9] == float(ok)
            assert env.encoder.mask[: len(valid)].tolist() == valid.tolist()
        else:
            assert decision.kind == DecisionKind.ROUTE
            assert [c.index for c in decision.candidates] == [0, 1]  # prefill instances
        action = int(np.flatnonzero(env.encoder.mask)[0])
        _, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    assert kinds == {DecisionKind.ROUTE, DecisionKind.PLACE}


def test_env_takes_a_network_and_refuses_zero_bandwidth() -> None:
    import gymnasium as gym

    import servegym  # noqa: F401  (registers the ids)
    from servegym.envs.tasks import TASKS

    cluster = TASKS["servegym/Disaggregated-v0"].make_kwargs()["cluster"]
    env = gym.make("servegym/Disaggregated-v0", episode_requests=20,
                   cluster={**cluster, "network": {"bandwidth_gbps": 100.0,
                                                   "latency_s": 0.001}}).unwrapped
    assert env.sim.network == Network(100.0, 0.001)
    with pytest.raises(ValueError, match="bandwidth_gbps must be a positive"):
        gym.make("servegym/Disaggregated-v0", episode_requests=20,
                 cluster={**cluster, "network": {"bandwidth_gbps": 0}})
