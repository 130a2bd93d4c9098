"""Lower tiers of a tiered KV cache (host memory, local SSD, a remote pool) and the host link.

Spec. An instance's KV cache is the GPU's paged blocks (envs/core/kv_cache.py,
`BlockManager`) plus, when `InstanceConfig.kv_tiers` names any, a stack of slower tiers
below it, fastest first (e.g. host DRAM, then local SSD or a Mooncake-style remote pool):

* Each tier (`KVTier`) has a capacity (`capacity_gb`, per GPU of the tensor-parallel
  group, or `capacity_blocks`), a bandwidth `bandwidth_gb_s` (gigabytes per second, per
  GPU, one way; e.g. 25 for PCIe 4 x16 host memory, 5 for an NVMe SSD) and a per-transfer
  `latency_s`. Zero, negative or non-finite bandwidth or capacity is refused at
  composition with a message naming the tier.
* Only prefix-cache blocks (named by their chained hash) live in lower tiers. When the
  GPU evicts an unreferenced cached block (its LRU order), the block moves to the top
  lower tier instead of vanishing; a tier over capacity moves its least recently used
  block one tier down; the bottom tier drops it. Each tier is LRU by itself. A block is in
  exactly one place: the GPU's prefix cache or one lower tier (a block recomputed and
  published on the GPU while a copy sits below drops the copy), which
  `TierStore.check` and `BlockManager.check` verify.
* On admission, the leading prompt blocks cached on the GPU are hits as before; the run of
  blocks right after them found in lower tiers is a *tier hit*. A policy decides: load
  them (each tier's latency + bytes / bandwidth, queued on the instance's host link) or
  recompute them (the cost model's prefill time for those tokens), whichever is cheaper
  (CacheGen, Liu et al., SIGCOMM 2024: load vs recompute by their delays; Mooncake, Qin
  et al., FAST 2025: a KV pool below GPU memory). A load is refused (recompute instead)
  when the loaded blocks plus the chunk after them would not fit the free GPU blocks.
* The host link (`HostLink`): one busy-until clock per instance. Tier loads and, when
  tiers are configured, swap-out / swap-in of preempted requests queue on it, so the two
  contend: a transfer starts when the link is free, and the iteration that needs it waits
  for its end. Transfers are synchronous with the iteration that issues them (as vLLM's
  swap is), so within one iteration they add up; nothing is prefetched.

Not modelled: the time to write evicted blocks down (offload is free and immediate, as if
overlapped with compute; Mooncake and LMCache offload asynchronously), compression
(CacheGen's codec), a tier shared between instances (each instance has its own tiers and
link), layer-wise pipelining of a load with the prefill, and private (non-prefix) blocks
in lower tiers (swap keeps its own space, `swap_space_blocks`).

This module holds plain state: `TierStore` is written only by the `BlockManager` that
owns it (the block manager remains the only writer of KV state).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TIER_KEYS = ("name", "capacity_gb", "capacity_blocks", "bandwidth_gb_s", "latency_s")


def _positive(value: Any, what: str, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive, finite number, got {value!r}; {hint}")


@dataclass(frozen=True)
class KVTier:
    """One lower KV tier: capacity, bandwidth (GB/s per GPU), latency per transfer."""

    name: str
    bandwidth_gb_s: float
    latency_s: float = 0.0
    capacity_gb: float | None = None
    capacity_blocks: int | None = None

    def __post_init__(self) -> None:
        where = f"kv_tiers[{self.name!r}]"
        _positive(self.bandwidth_gb_s, f"{where}.bandwidth_gb_s",
                  "a load over a zero-bandwidth tier would never end (GB/s per GPU: ~25 for "
                  "host memory over PCIe 4, ~5 for an NVMe SSD)")
        latency = self.latency_s
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or \
                not math.isfinite(latency) or latency < 0:
            raise ValueError(f"{where}.latency_s must be a finite number >= 0 seconds, "
                             f"got {latency!r}")
        if (self.capacity_gb is None) == (self.capacity_blocks is None):
            raise ValueError(f"{where}: give exactly one of capacity_gb (GB per GPU) and "
                             f"capacity_blocks, got capacity_gb={self.capacity_gb!r}, "
                             f"capacity_blocks={self.capacity_blocks!r}")
        if self.capacity_gb is not None:
            _positive(self.capacity_gb, f"{where}.capacity_gb",
                      "a tier holds at least one block (drop the tier to disable it)")
        else:
            if isinstance(self.capacity_blocks, bool) or \
                    not isinstance(self.capacity_blocks, int) or self.capacity_blocks < 1:
                raise ValueError(f"{where}.capacity_blocks must be an integer >= 1, got "
                                 f"{self.capacity_blocks!r} (drop the tier to disable it)")

    def blocks(self, block_bytes: int) -> int:
        """Capacity in KV blocks of `block_bytes` bytes (per GPU)."""
        if self.capacity_blocks is not None:
            return self.capacity_blocks
        count = int(self.capacity_gb * 1e9 // block_bytes)
        if count < 1:
            raise ValueError(f"kv_tiers[{self.name!r}]: capacity_gb={self.capacity_gb} holds "
                             f"no {block_bytes}-byte KV block; give more capacity")
        return count

    def load_time(self, num_blocks: int, block_bytes: int) -> float:
        """Seconds to bring `num_blocks` blocks up from this tier (one transfer)."""
        return self.latency_s + num_blocks * block_bytes / (self.bandwidth_gb_s * 1e9)


def tiers_from_config(specs: Iterable[Any] | None) -> tuple[KVTier, ...]:
    """`KVTier`s from `cluster.instance.kv_tiers` (mappings or `KVTier`s), every key
    checked; names must be distinct."""
    if specs is None:
        return ()
    if isinstance(specs, (str, bytes, Mapping)):
        raise ValueError("kv_tiers is a list of tiers, fastest first, e.g. "
                         "[{name: host, capacity_gb: 64, bandwidth_gb_s: 25, latency_s: 1e-5}]"
                         f"; got {specs!r}")
    tiers = []
    for number, spec in enumerate(specs):
        if isinstance(spec, KVTier):
            tiers.append(spec)
            continue
        if not isinstance(spec, Mapping):
            raise ValueError(f"kv_tiers[{number}] must be a mapping with keys {TIER_KEYS}, "
                             f"got {spec!r}")
        spec = dict(spec)
        unknown = set(spec) - set(TIER_KEYS)
        if unknown:
            raise ValueError(f"kv_tiers[{number}]: unknown key(s) {sorted(unknown)}; known: "
                             f"{list(TIER_KEYS)} (bandwidth is bandwidth_gb_s, GB/s per GPU)")
        if "bandwidth_gb_s" not in spec:
            raise ValueError(f"kv_tiers[{number}]: bandwidth_gb_s (GB/s per GPU) is required")
        spec.setdefault("name", f"tier{number + 1}")
        spec["name"] = str(spec["name"])
        tiers.append(KVTier(**spec))
    names = [tier.name for tier in tiers]
    if len(set(names)) != len(names):
        raise ValueError(f"kv_tiers: tier names must be distinct, got {names}")
    return tuple(tiers)


class HostLink:
    """An instance's link to its lower tiers and swap space: one busy-until clock."""

    __slots__ = ("busy_until", "busy_time")

    def __init__(self) -> None:
        self.busy_until = 0.0
        self.busy_time = 0.0

    def transfer(self, now: float, seconds: float) -> float:
        """Queue a transfer of `seconds` at `now`; its end time."""
        start = self.busy_until if self.busy_until > now else now
        self.busy_until = start + seconds
        self.busy_time += seconds
        return self.busy_until


class TierStore:
    """The lower tiers' contents: per tier an LRU of block hashes (written only by the
    owning `BlockManager`), and the statistics the report carries (`serving/kv_tier_*`)."""

    def __init__(self, tiers: tuple[KVTier, ...], block_bytes: int) -> None:
        if not tiers:
            raise ValueError("a TierStore needs at least one tier")
        if block_bytes <= 0:
            raise ValueError(f"block_bytes must be positive, got {block_bytes}")
        self.tiers = tiers
        self.block_bytes = block_bytes
        self.capacity = [tier.blocks(block_bytes) for tier in tiers]
        self.levels: list[OrderedDict[int, None]] = [OrderedDict() for _ in tiers]
        self.where: dict[int, int] = {}  # hash -> its tier's index
        self.link = HostLink()
        # Statistics (blocks unless named bytes).
        self.demoted = 0  # moved down from the GPU
        self.dropped = 0  # fell off the bottom tier
        self.discarded = 0  # stale copies dropped: the GPU recomputed the block
        self.hit_blocks = 0  # tier hits found at admission
        self.loaded_blocks = 0  # of which loaded
        self.recomputed_blocks = 0  # of which recomputed (cheaper, or no room to load)
        self.loaded_bytes = 0
        self.swap_bytes = 0  # swap traffic on the shared link
        self.load_time = 0.0

    def __len__(self) -> int:
        return len(self.where)

    def demote(self, block_hash: int, level: int = 0) -> None:
        """Put an evicted block at the top (most recent) of tier `level`, pushing each
        tier's overflow one tier down; the bottom tier drops it."""
        levels, capacity, where = self.levels, self.capacity, self.where
        if level == 0:
            self.demoted += 1
        while True:
            lru = levels[level]
            lru[block_hash] = None
            where[block_hash] = level
            if len(lru) <= capacity[level]:
                return
            block_hash, _ = lru.popitem(last=False)
            level += 1
            if level == len(levels):
                del where[block_hash]
                self.dropped += 1
                return

    def demote_all(self, hashes: list[int]) -> None:
        """`demote(h)` for each of `hashes` in order (the GPU's evictions of one take), a
        tier at a time: the blocks a tier overflows by are its oldest, whether it takes them
        one by one or all at once (the new ones are the youngest), so the contents, the
        order and the counters are the same."""
        levels, capacity, where = self.levels, self.capacity, self.where
        self.demoted += len(hashes)
        moving = hashes
        for level, lru in enumerate(levels):
            lru.update(dict.fromkeys(moving))
            where.update(dict.fromkeys(moving, level))
            over = len(lru) - capacity[level]
            if over <= 0:
                return
            popitem = lru.popitem
            moving = [popitem(last=False)[0] for _ in range(over)]
        for block_hash in moving:  # off the bottom tier
            del where[block_hash]
        self.dropped += len(moving)

    def discard(self, block_hash: int) -> None:
        """Drop the copy of `block_hash`, if any (it was recomputed on the GPU)."""
        level = self.where.pop(block_hash, None)
        if level is not None:
            del self.levels[level][block_hash]
            self.discarded += 1

    def run(self, hashes: Any, start: int, limit: int) -> list[int]:
        """Tier levels of the blocks `hashes[start:]` found below, up to `limit` blocks in
        all (the leading run only: a chain stops at its first miss)."""
        where = self.where
        found = []
        for index in range(start, limit):
            level = where.get(hashes[index])
            if level is None:
                break
            found.append(level)
        return found

    def load_seconds(self, levels: list[int]) -> float:
        """Seconds to load blocks from these levels (one transfer per tier involved)."""
        counts: dict[int, int] = {}
        for level in levels:
            counts[level] = counts.get(level, 0) + 1
        return sum(self.tiers[level].load_time(count, self.block_bytes)
                   for level, count in counts.items())

    def take(self, block_hash: int) -> None:
        """Remove `block_hash` from its tier (it is being loaded onto the GPU)."""
        level = self.where.pop(block_hash)
        del self.levels[level][block_hash]

    def check(self, gpu_hashes: Any) -> list[str]:
        """Problems with the tiers' books: counts over capacity, `where` disagreeing with
        the tiers, a block in two tiers or both on the GPU and below."""
        problems = []
        seen = 0
        where = self.where
        for level, lru in enumerate(self.levels):
            if len(lru) > self.capacity[level]:
                problems.append(f"tier {self.tiers[level].name} holds {len(lru)} blocks, "
                                f"capacity {self.capacity[level]}")
            booked = list(map(where.get, lru))  # each block's booked level, in C
            if booked.count(level) == len(booked):
                seen += len(booked)
                continue
            for index, (block_hash, booked_level) in enumerate(zip(lru, booked, strict=True)):
                if booked_level != level:  # the first one booked elsewhere
                    seen += index + 1
                    problems.append(f"block {block_hash} in tier {self.tiers[level].name} "
                                    "is booked elsewhere")
                    break
        if seen != len(where):
            problems.append(f"tiers hold {seen} blocks but {len(where)} are booked "
                            "(a block in two tiers)")
        if not where.keys().isdisjoint(gpu_hashes):
            both = [h for h in where if h in gpu_hashes]
            problems.append(f"{len(both)} block(s) both on the GPU and in a lower tier")
        return problems

    def stats(self) -> dict[str, float]:
        """The `kv_tier_*` counters of the report."""
        return {
            "kv_tier_hit_blocks": float(self.hit_blocks),
            "kv_tier_loaded_blocks": float(self.loaded_blocks),
            "kv_tier_recomputed_blocks": float(self.recomputed_blocks),
            "kv_tier_loaded_bytes": float(self.loaded_bytes),
            "kv_tier_swap_bytes": float(self.swap_bytes),
            "kv_tier_demoted_blocks": float(self.demoted),
            "kv_tier_dropped_blocks": float(self.dropped),
            "kv_tier_link_busy_s": float(self.link.busy_time),
        }


__all__ = ["TIER_KEYS", "HostLink", "KVTier", "TierStore", "tiers_from_config"]
