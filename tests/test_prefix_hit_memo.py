"""`BlockManager.count_prefix_hits` memoises its answer per request (envs/core/kv_cache.py):
under random sequences of every cache write (admit with hits, tier loads, publish, free,
evict, pin, unpin, drop), the memoised answer always equals a fresh scan of the cache, and
`check` reports a memo left stale by a write that bypassed the block manager."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegym.envs.core.kv_cache import BlockManager, KVCacheError
from servegym.envs.core.kv_tiers import KVTier, TierStore
from servegym.envs.core.request import Request

BLOCK = 4


def chain(session: int, length: int) -> tuple[int, ...]:
    """Prefix hashes of a session's prompt: a shared head (hashes 1, 2) then its own blocks."""
    return (1, 2) + tuple(1000 * (session + 1) + i for i in range(length - 2))


def fresh(bm: BlockManager, request: Request) -> tuple[int, int]:
    if not request.prefix_hashes or request.num_computed:
        return 0, 0
    return bm._scan_prefix_hits(request.prefix_hashes, request.num_tokens)


OPS = st.lists(st.tuples(st.sampled_from(["admit", "finish", "pin", "unpin", "drop", "take"]),
                         st.integers(0, 5), st.integers(3, 9)), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, tiered=st.booleans())
def test_memoised_prefix_hits_equal_a_fresh_scan_after_every_write(ops, tiered) -> None:
    tiers = TierStore((KVTier("host", 25.0, capacity_blocks=6),), 1024) if tiered else None
    bm = BlockManager(40, BLOCK, enable_prefix_caching=True, tiers=tiers)
    live: list[Request] = []
    probes = [Request(100 + s, 0.0, BLOCK * n, 2, prefix_hashes=chain(s, n))
              for s in range(6) for n in (3, 6, 9)]
    next_rid = 0
    for op, session, length in ops:
        if op == "admit":
            request = Request(next_rid, 0.0, BLOCK * length, 2,
                              prefix_hashes=chain(session, length))
            next_rid += 1
            hits, evictable = bm.count_prefix_hits(request)
            assert (hits, evictable) == fresh(bm, request)
            if not bm.can_allocate_fresh(request, hits, evictable, request.prompt_len -
                                         hits * BLOCK):
                continue
            loaded = len(bm.tier_run(request, hits)) if tiered else 0
            if loaded and not bm.can_allocate_fresh(request, hits + loaded, evictable,
                                                    request.prompt_len + loaded):
                loaded = 0
            bm.allocate_fresh(request, hits, request.prompt_len - (hits + loaded) * BLOCK,
                              loaded)
            request.num_computed = request.prompt_len
            bm.commit_full_blocks(request)
            live.append(request)
        elif op == "finish" and live:
            bm.free(live.pop(session % len(live)))
        elif op == "pin" and session not in bm.pins:
            bm.pin(session, list(chain(session, length)))
        elif op == "unpin" and session in bm.pins:
            bm.unpin(session)
        elif op == "drop":
            bm.drop_cached(list(chain(session, length)))
        elif op == "take" and bm.num_free >= length:
            bm.take_blocks(length)  # evicts (and demotes) cached blocks when short
            bm.free_uncached += length  # give them back as uncached blocks
        for probe in probes:
            assert bm.count_prefix_hits(probe) == fresh(bm, probe), (op, probe.rid)
        bm.check(live)


def test_check_reports_a_stale_memo() -> None:
    bm = BlockManager(16, BLOCK, enable_prefix_caching=True)
    first = Request(0, 0.0, 4 * BLOCK, 2, prefix_hashes=(1, 2, 3, 4))
    bm.allocate_fresh(first, 0, first.prompt_len)
    first.num_computed = first.prompt_len
    bm.commit_full_blocks(first)
    probe = Request(1, 0.0, 4 * BLOCK, 2, prefix_hashes=(1, 2, 3, 4))
    assert bm.count_prefix_hits(probe) == (3, 0)
    bm.free(first)
    assert bm.count_prefix_hits(probe) == (3, 3)  # the free cleared the memo
    del bm.refcount[2], bm.evictable[2]  # a write behind the block manager's back
    bm.free_uncached += 1
    with pytest.raises(KVCacheError, match="memoised prefix hits"):
        bm.check([])
