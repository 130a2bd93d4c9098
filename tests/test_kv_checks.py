"""`BlockManager.check` and `TierStore.check` (envs/core/kv_cache.py, kv_tiers.py) run their
whole-cache passes in C; each broken book they report is broken here by hand, once per
kind, and a sound state passes."""

from __future__ import annotations

import pytest

from servegym.envs.core.kv_cache import BlockManager, KVCacheError
from servegym.envs.core.kv_tiers import KVTier, TierStore
from servegym.envs.core.request import Request

BLOCK = 4


def cached_state(tiers: TierStore | None = None) -> tuple[BlockManager, Request]:
    """A request holding 3 published blocks (1, 2, 3), and 2 unreferenced ones (8, 9)."""
    bm = BlockManager(16, BLOCK, enable_prefix_caching=True, tiers=tiers)
    done = Request(0, 0.0, 3 * BLOCK, 2, prefix_hashes=(8, 9))
    bm.allocate_fresh(done, 0, done.prompt_len)
    done.num_computed = done.prompt_len
    bm.commit_full_blocks(done)
    bm.free(done)
    live = Request(1, 0.0, 3 * BLOCK, 2, prefix_hashes=(1, 2, 3))
    bm.allocate_fresh(live, 0, live.prompt_len)
    live.num_computed = live.prompt_len
    bm.commit_full_blocks(live)
    return bm, live


def test_a_sound_state_passes() -> None:
    bm, live = cached_state()
    bm.check([live])
    bm.pin(5, [1, 2, 8])
    bm.check([live])


@pytest.mark.parametrize("break_it, message", [
    (lambda bm: bm.refcount.__setitem__(2, 2), "reference counts disagree"),
    (lambda bm: bm.refcount.__setitem__(9, 1), "evictable block is still referenced"),
    (lambda bm: bm.refcount.__setitem__(2, -1), "reference counts disagree"),
    (lambda bm: bm.evictable.pop(9), "blocks do not add up"),
])
def test_each_broken_book_is_reported(break_it, message) -> None:
    bm, live = cached_state()
    break_it(bm)
    with pytest.raises(KVCacheError, match=message):
        bm.check([live])


def test_a_negative_count_is_still_caught_beside_a_sound_one() -> None:
    bm, live = cached_state()
    bm.refcount[3] = -1
    bm.refcount[4] = 2  # the positive counts number as many as the hashes seen
    with pytest.raises(KVCacheError, match="reference counts disagree"):
        bm.check([live])


def test_tier_books() -> None:
    store = TierStore((KVTier("host", 25.0, capacity_blocks=4),
                       KVTier("ssd", 5.0, capacity_blocks=4)), 100)
    store.demote_all([20, 21, 22, 23, 24, 25])  # 22..25 on host, 20 and 21 on ssd
    assert store.check({}) == []
    assert list(store.levels[0]) == [22, 23, 24, 25] and list(store.levels[1]) == [20, 21]
    store.where[24] = 1  # booked on the wrong tier
    assert store.check({}) == ["block 24 in tier host is booked elsewhere",
                               "tiers hold 5 blocks but 6 are booked (a block in two tiers)"]
    store.where[24] = 0
    store.levels[1][23] = None  # in two tiers
    assert store.check({}) == ["block 23 in tier ssd is booked elsewhere",
                               "tiers hold 7 blocks but 6 are booked (a block in two tiers)"]
    del store.levels[1][23]
    assert store.check({20: 1, 99: 0}) == ["1 block(s) both on the GPU and in a lower tier"]
