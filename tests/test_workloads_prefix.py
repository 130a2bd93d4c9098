"""BlockChains: compact prefix hashes, and how Workload selections and clipping treat them."""

from __future__ import annotations

import numpy as np
import pytest

from servegym.envs.workloads import BlockChains, Workload, merge
from servegym.envs.workloads.prefix import mooncake_segment_ends

M = 1 << 24


def chains() -> BlockChains:
    # Request 0: key 5 for blocks 0-1, key 7 for blocks 2-3; request 1: key 5 then key 9;
    # request 2: no blocks.
    return BlockChains(
        keys=[5, 7, 5, 9], ends=[2, 4, 2, 6], start=[0, 2, 0], stop=[2, 4, 0],
        num_blocks=[4, 5, 0],
    )


def test_expansion_by_hand() -> None:
    c = chains()
    assert len(c) == 3
    assert c[0] == (5 * M, 5 * M + 1, 7 * M + 2, 7 * M + 3)
    assert c[1] == (5 * M, 5 * M + 1, 9 * M + 2, 9 * M + 3, 9 * M + 4)
    assert c[2] == () and c[-1] == ()
    assert c[0][:2] == c[1][:2] and c[0][2] != c[1][2]  # shared head, then apart
    assert all(type(h) is int for h in c[0])
    with pytest.raises(IndexError):
        c[3]


def test_slices_take_and_truncation_share_segments() -> None:
    c = chains()
    assert tuple(c[1:]) == (c[1], ())
    assert tuple(c.take(np.array([2, 0, 0]))) == ((), c[0], c[0])
    cut = c.truncated(np.array([1, 10, 3]))
    assert tuple(cut) == (c[0][:1], c[1], ())  # never more than the request had
    assert cut.num_blocks.tolist() == [1, 5, 0]
    with pytest.raises(ValueError, match="read-only"):
        c.num_blocks[0] = 9


def test_concat_keeps_parts_apart() -> None:
    both = BlockChains.concat([chains(), chains()])
    assert len(both) == 6
    assert both[0] == chains()[0]
    assert not set(both[3]) & set(both[0])  # same keys in two parts: shifted apart
    assert both[3][:2] == both[4][:2]  # sharing inside a part survives


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"num_blocks": [7, 5, 0]}, "more blocks than its segments cover"),
        ({"keys": [-1, 7, 5, 9]}, "keys must be"),
        ({"start": [0, 2]}, "one entry per request"),
        ({"stop": [0, 4, 0]}, "segments in range"),
    ],
)
def test_validation(kwargs: dict, pattern: str) -> None:
    args = {"keys": [5, 7, 5, 9], "ends": [2, 4, 2, 6], "start": [0, 2, 0], "stop": [2, 4, 0],
            "num_blocks": [4, 5, 0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        BlockChains(**args)


def test_mooncake_segment_ends() -> None:
    assert mooncake_segment_ends(3, 512, 16).tolist() == [32, 64, 96]
    # 48-token blocks: block j takes the id of the 512-token block of its last token.
    assert mooncake_segment_ends(3, 512, 48).tolist() == [10, 21, 32]
    assert mooncake_segment_ends(0, 512, 16).tolist() == []


def test_workload_with_chains_head_take_clip_and_merge() -> None:
    w = Workload.from_lengths([0.0, 1.0, 2.0], [64, 90, 8], 10, prefix_hashes=chains(),
                              prefix_block_size=16)
    assert w.prefix_hashes is not None and w.prefix_hashes[1] == chains()[1]
    assert tuple(w.head(2).prefix_hashes) == (chains()[0], chains()[1])
    assert tuple(w.take(np.array([False, True, True])).prefix_hashes) == (chains()[1], ())
    clipped, changed = w.clip_total_tokens(50)  # prompts 49, 49, 8 -> 3, 3, 0 full blocks
    assert changed == 2
    assert tuple(clipped.prefix_hashes) == (chains()[0][:3], chains()[1][:3], ())
    plain = Workload.from_lengths([0.5], [10], 1, tenant_names=("other",))
    merged = merge([w, plain])
    assert merged.arrival_time.tolist() == [0.0, 0.5, 1.0, 2.0]
    assert tuple(merged.prefix_hashes) == (chains()[0], (), chains()[1], ())
    assert merged.tenant.tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="chain of block hashes per request"):
        Workload.from_lengths([0.0], [10], 1, prefix_hashes=chains())


def test_distinct_blocks_matches_a_set_of_the_hashes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 30))
        counts = rng.integers(0, 4, size=n)
        keys = rng.integers(0, 6, size=int(counts.sum()))
        ends = np.concatenate([np.cumsum(rng.integers(1, 5, size=c)) for c in counts] or [[]])
        stop = np.cumsum(counts)
        start = stop - counts
        covered = np.where(counts > 0, ends[np.maximum(stop - 1, 0)] if ends.size else 0, 0)
        blocks = np.minimum(rng.integers(0, 20, size=n), covered)
        chains = BlockChains(keys, ends, start, stop, blocks)
        brute = len({h for hashes in chains for h in hashes})
        assert chains.distinct_blocks() == brute
