"""Compact per-request prefix-block hashes, expanded only when a request is read.

A trace such as Mooncake has ~750 KV blocks of 16 tokens per request; 12k requests as
Python tuples would cost hundreds of MB. :class:`BlockChains` stores instead, per
request, a few *segments* ``(key, end)``: block ``j`` of the request belongs to the first
segment whose ``end > j``, and its hash is ``key * 2**24 + j``. Requests that share a
segment key share every block hash in it, so two requests share their first ``i``
blocks exactly when their keys agree on those blocks: the hashes are *chained* as long as
each key itself stands for the whole prefix up to its segment (Mooncake's block ids do;
a session key does for the session's growing conversation).

``BlockChains`` is a read-only ``Sequence[tuple[int, ...]]``: ``chains[i]`` is request
``i``'s hash tuple (what the simulator reads at arrival), ``chains[a:b]`` and
:meth:`take` select requests without copying the segment arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

__all__ = ["BLOCK_INDEX_BITS", "BlockChains", "mooncake_segment_ends"]

BLOCK_INDEX_BITS = 24  # up to 16.7M blocks per request: 268M tokens at 16-token blocks
_MULTIPLIER = 1 << BLOCK_INDEX_BITS
_MAX_KEY = (2**63 - 1) // _MULTIPLIER - 1  # hashes stay inside int64
_FEW_SEGMENTS = 4  # up to this many segments a request is expanded without numpy


class BlockChains(Sequence[tuple[int, ...]]):
    """Per-request chained block hashes stored as segments (see the module docstring).

    Args:
        keys, ends: flat int64 arrays, one entry per segment; ``ends`` are block counts
            measured from the start of the request's prompt, increasing within a request.
        start, stop: per request, the slice of the flat arrays holding its segments.
        num_blocks: per request, how many blocks (hashes) it has; at most its last end.

    All arrays are made read-only; selections share them.
    """

    __slots__ = ("_ends", "_keys", "_num_blocks", "_start", "_stop")

    def __init__(
        self,
        keys: np.ndarray,
        ends: np.ndarray,
        start: np.ndarray,
        stop: np.ndarray,
        num_blocks: np.ndarray,
    ) -> None:
        self._keys = _frozen_int64(keys)
        self._ends = _frozen_int64(ends)
        self._start = _frozen_int64(start)
        self._stop = _frozen_int64(stop)
        self._num_blocks = _frozen_int64(num_blocks)
        self._validate()

    # ------------------------------------------------------------------ construction

    @classmethod
    def empty(cls, n: int) -> BlockChains:
        """``n`` requests without any block hashes."""
        zeros = np.zeros(n, dtype=np.int64)
        return cls(np.zeros(0), np.zeros(0), zeros, zeros, zeros)

    @classmethod
    def concat(cls, parts: Sequence[BlockChains]) -> BlockChains:
        """The requests of ``parts`` one after another.

        Keys of later parts are shifted past the largest key of the earlier ones, so two
        parts never share a block by accident (each part keeps its own sharing).
        """
        keys, ends, starts, stops, blocks = [], [], [], [], []
        offset_segments = 0
        offset_keys = 0
        for part in parts:
            keys.append(part._keys + offset_keys)
            ends.append(part._ends)
            starts.append(part._start + offset_segments)
            stops.append(part._stop + offset_segments)
            blocks.append(part._num_blocks)
            offset_segments += part._keys.size
            if part._keys.size:
                offset_keys = int(keys[-1].max()) + 1
        if not parts:
            return cls.empty(0)
        return cls(*(np.concatenate(a) for a in (keys, ends, starts, stops, blocks)))

    # ------------------------------------------------------------------ sequence

    def __len__(self) -> int:
        return int(self._start.shape[0])

    @overload
    def __getitem__(self, index: int) -> tuple[int, ...]: ...

    @overload
    def __getitem__(self, index: slice) -> BlockChains: ...

    def __getitem__(self, index: int | slice) -> tuple[int, ...] | BlockChains:
        if isinstance(index, slice):
            return self._subset(index)
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"BlockChains index {index} out of range for {len(self)} requests")
        return self._expand(i)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return (self._expand(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"BlockChains(requests={len(self)}, segments={self._keys.size})"

    # ------------------------------------------------------------------ queries

    @property
    def num_blocks(self) -> np.ndarray:
        """Read-only int64 array: the number of block hashes of each request."""
        return self._num_blocks

    def distinct_blocks(self) -> int:
        """How many different block hashes all requests together have (vectorised).

        Each request contributes, per segment, the block interval ``[lo, hi)`` (cut at its
        ``num_blocks``); the answer is the size of the union of those intervals per key.
        """
        counts = self._stop - self._start
        owner = np.repeat(np.arange(len(self)), counts)
        segment = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        flat = np.repeat(self._start, counts) + segment
        if flat.size == 0:
            return 0
        hi = np.minimum(self._ends[flat], self._num_blocks[owner])
        lo = np.where(segment > 0, self._ends[np.maximum(flat - 1, 0)], 0)
        used = hi > lo
        key, lo, hi = self._keys[flat][used], lo[used], hi[used]
        # Offsetting by key makes one running maximum serve every key's sorted intervals.
        lo, hi = key * _MULTIPLIER + lo, key * _MULTIPLIER + hi
        order = np.lexsort((lo, key))
        lo, hi = lo[order], hi[order]
        reach = np.maximum.accumulate(hi)
        covered_before = np.r_[lo[:1], reach[:-1]]
        return int(np.maximum(hi - np.maximum(lo, covered_before), 0).sum())

    def take(self, indices: np.ndarray) -> BlockChains:
        """The requests at ``indices`` (any order, repeats allowed)."""
        index = np.asarray(indices, dtype=np.int64)
        return self._subset(index)

    def truncated(self, max_blocks: np.ndarray) -> BlockChains:
        """Each request cut to at most ``max_blocks[i]`` blocks (e.g. a clipped prompt)."""
        limit = np.minimum(self._num_blocks, np.asarray(max_blocks, dtype=np.int64))
        return BlockChains(self._keys, self._ends, self._start, self._stop, limit)

    # ------------------------------------------------------------------ internals

    def _subset(self, index: slice | np.ndarray) -> BlockChains:
        return BlockChains(
            self._keys,
            self._ends,
            self._start[index],
            self._stop[index],
            self._num_blocks[index],
        )

    def _expand(self, i: int) -> tuple[int, ...]:
        n = int(self._num_blocks[i])
        if n == 0:
            return ()
        s, e = int(self._start[i]), int(self._stop[i])
        if e - s > _FEW_SEGMENTS:
            ends = np.minimum(self._ends[s:e], n)  # segments past the prompt add nothing
            lengths = np.diff(ends, prepend=0)
            keys = np.repeat(self._keys[s:e], lengths)
            return tuple((keys * _MULTIPLIER + np.arange(n, dtype=np.int64)).tolist())
        # A few segments (sessions, programs): plain ints beat numpy's per-call overhead.
        out: list[int] = []
        done = 0  # blocks expanded so far
        for key, end in zip(self._keys[s:e].tolist(), self._ends[s:e].tolist(), strict=True):
            if end > done:
                end = min(end, n)
                base = key * _MULTIPLIER
                out.extend(range(base + done, base + end))
                done = end
                if done >= n:
                    break
        return tuple(out)

    def _validate(self) -> None:
        n = self._start.shape[0]
        if self._keys.shape != self._ends.shape:
            raise ValueError("BlockChains: keys and ends must have one entry per segment")
        if self._stop.shape[0] != n or self._num_blocks.shape[0] != n:
            raise ValueError("BlockChains: start, stop and num_blocks need one entry per request")
        if self._keys.size and (self._keys.min() < 0 or self._keys.max() > _MAX_KEY):
            raise ValueError(f"BlockChains: segment keys must be in [0, {_MAX_KEY}]")
        if np.any(self._num_blocks < 0) or np.any(self._num_blocks >= _MULTIPLIER):
            raise ValueError(f"BlockChains: num_blocks must be in [0, {_MULTIPLIER})")
        has_blocks = self._num_blocks > 0
        if not has_blocks.any():
            return
        start, stop = self._start[has_blocks], self._stop[has_blocks]
        if np.any(stop <= start) or start.min() < 0 or stop.max() > self._ends.size:
            raise ValueError("BlockChains: a request with blocks needs segments in range")
        if np.any(self._ends[stop - 1] < self._num_blocks[has_blocks]):
            raise ValueError("BlockChains: a request has more blocks than its segments cover")


def mooncake_segment_ends(num_ids: int, id_block_tokens: int, block_size: int) -> np.ndarray:
    """Block-count ends of ``num_ids`` coarse blocks of ``id_block_tokens`` tokens.

    Block ``j`` (tokens ``[j*b, (j+1)*b)``) takes the id of the coarse block holding its
    last token, so a block straddling two coarse blocks is shared only when both are:
    conservative, and exact when ``block_size`` divides ``id_block_tokens``. The end of
    coarse block ``k`` is ``floor((k+1) * id_block_tokens / block_size)``.
    """
    k = np.arange(1, num_ids + 1, dtype=np.int64)
    return (k * id_block_tokens) // block_size


def _frozen_int64(values: object) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype == np.int64 and not values.flags.writeable:
        return values  # already frozen (e.g. shared by a selection): share, don't copy
    array = np.array(values, dtype=np.int64)  # a private copy nobody else can write
    array.flags.writeable = False
    return array
