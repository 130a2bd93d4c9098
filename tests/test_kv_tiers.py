"""The tiered KV cache (envs/core/kv_tiers.py): configuration errors, blocks moving down and
back up, load vs recompute, the shared host link, and block conservation across tiers under
random workloads and decisions (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_fixtures import make_workload

from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.kv_cache import BlockManager, KVCacheError
from servegym.envs.core.kv_tiers import KVTier, TierStore, tiers_from_config
from servegym.envs.core.request import FINISHED, REJECTED, Request
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import build_cost_model
from servegym.envs.protocol import STOP, Action, DecisionKind

COST = build_cost_model("Llama-3-8B", "H100-80GB", source="roofline")
HOST = {"name": "host", "capacity_blocks": 64, "bandwidth_gb_s": 25.0, "latency_s": 1e-5}
SSD = {"name": "ssd", "capacity_blocks": 256, "bandwidth_gb_s": 5.0, "latency_s": 1e-4}


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("spec, message", [
    ({**HOST, "bandwidth_gb_s": 0}, "bandwidth_gb_s must be a positive"),
    ({**HOST, "bandwidth_gb_s": -3}, "bandwidth_gb_s must be a positive"),
    ({**HOST, "bandwidth_gb_s": math.nan}, "bandwidth_gb_s must be a positive"),
    ({**HOST, "capacity_blocks": 0}, "capacity_blocks must be an integer >= 1"),
    ({"name": "host", "capacity_gb": -1.0, "bandwidth_gb_s": 25}, "capacity_gb must be"),
    ({"name": "host", "bandwidth_gb_s": 25}, "exactly one of capacity_gb"),
    ({**HOST, "latency_s": -1}, "latency_s must be a finite number >= 0"),
    ({**HOST, "bandwidth_gbps": 25}, "unknown key"),
    ({"name": "host", "capacity_blocks": 4}, "bandwidth_gb_s (GB/s per GPU) is required"),
])
def test_bad_tiers_are_refused_with_a_message(spec, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiers_from_config([spec])


def test_tiers_need_prefix_caching_and_distinct_names() -> None:
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        InstanceConfig(kv_tiers=[HOST])
    with pytest.raises(ValueError, match="distinct"):
        tiers_from_config([HOST, HOST])
    with pytest.raises(ValueError, match="a list of tiers"):
        tiers_from_config(HOST)
    config = InstanceConfig(enable_prefix_caching=True, kv_tiers=[HOST, SSD])
    assert [tier.name for tier in config.kv_tiers] == ["host", "ssd"]
    assert hash(config)  # still a frozen, hashable config
    assert InstanceConfig().kv_tiers == ()


def test_capacity_in_gb_is_sized_by_the_models_block_bytes() -> None:
    tier = KVTier("host", bandwidth_gb_s=25, capacity_gb=1.0)
    assert tier.blocks(2_097_152) == 476  # 1e9 B / 2 MiB blocks of Llama-3-8B
    assert tier.load_time(10, 2_097_152) == pytest.approx(10 * 2_097_152 / 25e9)
    with pytest.raises(ValueError, match="holds no"):
        KVTier("tiny", bandwidth_gb_s=25, capacity_gb=1e-9).blocks(2_097_152)


# ---------------------------------------------------------------- the store
def test_evicted_blocks_move_down_lru_per_tier_and_drop_at_the_bottom() -> None:
    store = TierStore(tiers_from_config([{**HOST, "capacity_blocks": 2},
                                         {**SSD, "capacity_blocks": 2}]), 100)
    for block_hash in range(5):
        store.demote(block_hash)
    assert list(store.levels[0]) == [3, 4] and list(store.levels[1]) == [1, 2]
    assert store.dropped == 1 and 0 not in store.where  # the oldest fell off the bottom
    assert store.run([3, 4, 1, 9], 0, 4) == [0, 0, 1]  # a chain stops at its first miss
    store.take(4)
    assert store.check(set()) == [] and len(store) == 3
    assert store.check({3}) == ["1 block(s) both on the GPU and in a lower tier"]


def test_a_gpu_eviction_demotes_and_a_republish_drops_the_copy() -> None:
    store = TierStore(tiers_from_config([HOST]), 100)
    bm = BlockManager(4, 4, enable_prefix_caching=True, tiers=store)
    first = Request(0, 0.0, 9, 2, prefix_hashes=(11, 12))
    bm.allocate_fresh(first, 0, 9)
    first.num_computed = 9
    bm.commit_full_blocks(first)
    bm.free(first)  # 2 cached blocks evictable
    bm.take_blocks(4)  # needs them: both move down
    assert set(store.where) == {11, 12} and store.demoted == 2
    assert store.check(bm.refcount) == [] and not bm.refcount
    bm.free_uncached = 4  # the anonymous blocks back (a test's shortcut)
    again = Request(1, 0.0, 9, 2, prefix_hashes=(11, 12))
    bm.allocate_fresh(again, 0, 9)  # recomputed, not loaded (the caller chose)
    again.num_computed = 9
    bm.commit_full_blocks(again)
    assert store.discarded == 2 and not store.where  # the copies below are dropped
    bm.check([again])
    with pytest.raises(ValueError, match="enable_prefix_caching"):
        BlockManager(4, 4, tiers=store)


# ---------------------------------------------------------------- in the simulator
def _sessions(n_sessions=12, turns=4, system=40, block=16, gap=0.4):
    """Sessions whose turns extend the previous prompt (so later turns hit the prefix)."""
    arrivals, prompts, outputs, hashes = [], [], [], []
    for turn in range(turns):
        for session in range(n_sessions):
            blocks = system + 8 * (turn + 1)
            arrivals.append(turn * gap * n_sessions + session * gap)
            prompts.append(blocks * block + 3)
            outputs.append(8)
            hashes.append([10_000 * session + b for b in range(blocks)])
    order = np.argsort(arrivals, kind="stable")
    return make_workload(np.asarray(arrivals)[order], np.asarray(prompts)[order],
                         np.asarray(outputs)[order],
                         prefix_hashes=[hashes[i] for i in order], prefix_block_size=block)


def _run(tiers, num_kv_blocks=400, **options):
    config = InstanceConfig(enable_prefix_caching=True, num_kv_blocks=num_kv_blocks,
                            kv_tiers=tiers, **options)
    sim = Simulator(COST, config, debug_checks=True)
    return sim.run(_sessions(), seed=0), sim


def test_without_tiers_nothing_changes_and_no_tier_keys() -> None:
    report, sim = _run(())
    assert sim.instances[0].bm.tiers is None
    assert not any(key.startswith("serving/kv_tier_") for key in report.summary)


def test_a_host_tier_turns_evictions_into_loads() -> None:
    plain, _ = _run(())
    tiered, sim = _run([{**HOST, "capacity_blocks": 4000}])
    summary = tiered.summary
    assert summary["serving/kv_tier_demoted_blocks"] > 0
    assert summary["serving/kv_tier_hit_blocks"] > 0
    assert summary["serving/kv_tier_loaded_blocks"] > 0
    assert summary["serving/kv_tier_loaded_bytes"] == \
        summary["serving/kv_tier_loaded_blocks"] * sim.instances[0].bm.tiers.block_bytes
    assert summary["serving/kv_tier_hit_blocks"] == \
        summary["serving/kv_tier_loaded_blocks"] + summary["serving/kv_tier_recomputed_blocks"]
    assert tiered.records["prefix_hit_tokens"].sum() > plain.records["prefix_hit_tokens"].sum()


def test_a_slow_tier_is_recomputed_instead() -> None:
    report, _ = _run([{**HOST, "capacity_blocks": 4000, "bandwidth_gb_s": 0.01}])
    summary = report.summary
    assert summary["serving/kv_tier_hit_blocks"] > 0
    assert summary["serving/kv_tier_loaded_blocks"] == 0
    assert summary["serving/kv_tier_recomputed_blocks"] == summary["serving/kv_tier_hit_blocks"]


def test_swaps_and_loads_share_the_host_link() -> None:
    report, sim = _run([{**HOST, "capacity_blocks": 4000}], num_kv_blocks=120,
                       swap_space_blocks=400)
    store = sim.instances[0].bm.tiers
    # Every transfer's seconds went through the one link clock.
    assert store.link.busy_time == pytest.approx(
        store.load_time + store.swap_bytes / store.block_bytes * COST.swap_time(1), rel=1e-6) \
        or store.swap_bytes == 0
    assert store.link.busy_time >= store.load_time > 0


# ---------------------------------------------------------------- conservation property
class RandomValid:
    def reset(self, rng):
        self.rng = rng

    def decide(self, decision):
        choices = list(np.flatnonzero(decision.mask()))
        if decision.can_stop():
            choices.append(STOP)
        choice = int(choices[self.rng.integers(len(choices))])
        swap = decision.can_swap() and bool(self.rng.integers(2))
        return Action(choice, swap=swap)


@st.composite
def tiered_scenarios(draw):
    n = draw(st.integers(1, 30))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    block = 16
    prompts = draw(st.lists(st.integers(1, 400), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n))
    families = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    hashes = [[1000 * f + b for b in range(p // block)]
              for f, p in zip(families, prompts, strict=True)]
    tiers = [{"name": "host", "capacity_blocks": draw(st.integers(1, 40)),
              "bandwidth_gb_s": draw(st.sampled_from([0.05, 25.0, 1000.0])),
              "latency_s": 1e-5}]
    if draw(st.booleans()):
        tiers.append({"name": "ssd", "capacity_blocks": draw(st.integers(1, 80)),
                      "bandwidth_gb_s": 5.0, "latency_s": 1e-4})
    max_seqs = draw(st.integers(1, 6))
    config = InstanceConfig(
        mode=draw(st.sampled_from(["vllm_v1", "vllm_v0"])), max_num_seqs=max_seqs,
        max_num_batched_tokens=draw(st.integers(64, 512)),
        enable_chunked_prefill=draw(st.booleans()), block_size=block,
        num_kv_blocks=draw(st.integers(30, 120)), enable_prefix_caching=True,
        swap_space_blocks=draw(st.sampled_from([0, 60])), kv_tiers=tiers)
    workload = make_workload(np.cumsum(gaps), prompts, outputs, prefix_hashes=hashes,
                             prefix_block_size=block)
    return workload, config, draw(st.integers(1, 2)), draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiered_scenarios())
def test_blocks_are_conserved_across_tiers(scenario) -> None:
    workload, config, instances, seed = scenario
    policies = {kind: RandomValid() for kind in
                (DecisionKind.ROUTE, DecisionKind.ADMIT, DecisionKind.PREEMPT)}
    # debug_checks: BlockManager.check after every event, tiers included (each within
    # capacity, every block in exactly one place).
    sim = Simulator(COST, config, num_instances=instances, policies=policies,
                    debug_checks=True)
    report = sim.run(workload, seed=seed)
    for request in sim.requests:
        assert request.status in (FINISHED, REJECTED)
    for instance in sim.instances:
        bm, store = instance.bm, instance.bm.tiers
        bm.check([])
        # Every block demoted is still below, was loaded back, fell off the bottom, or was
        # dropped as a stale copy when the GPU recomputed it: nothing lost, none twice.
        assert len(store) <= sum(store.capacity)
        assert store.demoted == len(store) + store.loaded_blocks + store.dropped + \
            store.discarded
        assert set(store.where).isdisjoint(bm.refcount)
    summary = report.summary
    assert summary["serving/kv_tier_hit_blocks"] == \
        summary["serving/kv_tier_loaded_blocks"] + summary["serving/kv_tier_recomputed_blocks"]


def test_the_check_sees_a_block_counted_twice() -> None:
    store = TierStore(tiers_from_config([HOST]), 100)
    bm = BlockManager(4, 4, enable_prefix_caching=True, tiers=store)
    bm.refcount[7] = 0
    bm.evictable[7] = None
    bm.free_uncached -= 1
    store.demote(7)  # also below: twice
    with pytest.raises(KVCacheError, match="both on the GPU and in a lower tier"):
        bm.check([])
