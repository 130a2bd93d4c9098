"""Workload transforms: time windows, the train/test split, merging, context clipping.

Rate scaling (compress or stretch time, burst shape kept) is
:func:`servegym.envs.workloads.arrivals.scale_to_rate`.

The split rule (one rule for every trace and generator, deterministic, no randomness):
the cut is ``t0 + TRAIN_FRACTION * (t_last - t0)`` over the workload's own time span
(``t0`` and ``t_last`` its first and last arrival, ``TRAIN_FRACTION = 0.7``); requests
arriving at or before the cut are ``"train"``, the others ``"test"``. Test arrival times
are shifted by ``-cut`` so the held-out part starts near 0; train times are unchanged.

Closed-loop workloads (sessions, agentic programs: ``Workload.parents``) are split and
windowed by whole programs: a program goes where its first call (its root) arrives, with
all its calls, so no dependency is cut (a program's later calls may lie past the cut or
the window's end in nominal time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from servegym.envs.workloads.prefix import BlockChains
from servegym.envs.workloads.spec import number
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = ["SPLITS", "TRAIN_FRACTION", "clip_to_context", "merge", "split_by_time", "time_window"]

TRAIN_FRACTION = 0.7
SPLITS = ("train", "test")


def split_by_time(
    workload: Workload, part: str, train_fraction: float = TRAIN_FRACTION
) -> Workload:
    """The ``"train"`` or ``"test"`` part of ``workload`` by the rule in the module docstring."""
    if part not in SPLITS:
        raise WorkloadError(f"split = {part!r}: choose 'train' or 'test' (or None for all)")
    fraction = number("train_fraction", train_fraction, low=0.0, high=1.0, strict_low=True)
    times = workload.arrival_time
    if len(workload) == 0:
        raise WorkloadError(f"split: workload {workload.name!r} has no requests to split")
    cut = float(times[0] + fraction * (times[-1] - times[0]))
    boundary = int(np.searchsorted(times, cut, side="right"))
    if part == "train":
        return workload.take(_programs_of(workload, np.arange(boundary)),
                             name=f"{workload.name}[train]")
    test = workload.take(_programs_of(workload, np.arange(boundary, len(workload))),
                         name=f"{workload.name}[test]")
    return dataclasses.replace(test, arrival_time=np.maximum(test.arrival_time - cut, 0.0))


def time_window(workload: Workload, start: float, end: float | None) -> Workload:
    """Requests arriving in ``[start, end)`` (``end=None``: to the end), times shifted by
    ``-start`` so the window starts at 0."""
    lo = number("window start", start, low=0.0)
    hi = None if end is None else number("window end", end, low=lo, strict_low=True)
    times = workload.arrival_time
    first = int(np.searchsorted(times, lo, side="left"))
    last = len(workload) if hi is None else int(np.searchsorted(times, hi, side="left"))
    label = f"{workload.name}[{lo:g}:{'' if hi is None else f'{hi:g}'}]"
    selected = workload.take(_programs_of(workload, np.arange(first, last)), name=label)
    return dataclasses.replace(selected, arrival_time=selected.arrival_time - lo)


def _programs_of(workload: Workload, rows: np.ndarray) -> np.ndarray:
    """``rows``, or for a closed-loop workload the whole programs whose roots they hold."""
    return rows if workload.parents is None else workload.whole_programs(rows)


def clip_to_context(workload: Workload, max_total_tokens: int) -> tuple[Workload, int]:
    """Clip prompt + output to ``max_total_tokens``; also return how many requests changed.

    The rule is :meth:`Workload.clip_total_tokens` (prompt first cut to the limit - 1, then
    the output to what is left; prefix hashes cut to the remaining full blocks).
    """
    return workload.clip_total_tokens(max_total_tokens)


def merge(parts: Sequence[Workload], name: str = "merged") -> Workload:
    """All requests of ``parts`` in one workload, sorted by arrival (stable: ties keep the
    order of ``parts``).

    Tenants are concatenated: part ``k``'s tenant ``t`` becomes ``offset_k + t``; the
    tenant names must be unique across parts. Prefix hashes of different parts never
    collide (see :meth:`BlockChains.concat`); parts with hashes must share a block size.
    The reasoning share (``reason_ratio``) is kept when any part has one, NaN (unknown)
    for the requests of parts without it. Sessions and programs (``session_id``,
    ``parents``, ...) are kept when any part has them: each part's program ids are shifted
    past the earlier parts', parents renumbered to the merged rows; requests of parts
    without them have no program (-1) and no parents.
    """
    if not parts:
        raise WorkloadError("merge: give at least one workload")
    names = tuple(n for part in parts for n in part.tenant_names)
    if len(set(names)) != len(names):
        raise WorkloadError(f"merge: tenant names {names} repeat; give every part unique names")
    offsets = np.cumsum([0, *(len(part.tenant_names) for part in parts[:-1])])
    arrival = np.concatenate([p.arrival_time for p in parts])
    order = np.argsort(arrival, kind="stable")
    columns = {
        c: np.concatenate([getattr(p, c) for p in parts])[order]
        for c in ("arrival_time", "prompt_len", "output_len", "priority", "ttft_slo", "tpot_slo")
    }
    tenant = np.concatenate([p.tenant + off for p, off in zip(parts, offsets, strict=True)])
    hashes, block_size = _merged_hashes(parts)
    reason = None
    if any(p.reason_ratio is not None for p in parts):
        reason = np.concatenate([p.reason_ratio if p.reason_ratio is not None
                                 else np.full(len(p), np.nan) for p in parts])[order]
    return Workload(
        **columns,
        **_merged_programs(parts, order),
        reason_ratio=reason,
        tenant=tenant[order],
        tenant_names=names,
        prefix_hashes=None if hashes is None else _reorder(hashes, order),
        prefix_block_size=block_size,
        name=name,
    )


def _merged_programs(parts: Sequence[Workload], order: np.ndarray) -> dict:
    if all(p.session_id is None and p.parents is None for p in parts):
        return {}
    sessions, turns, tools, delays, parents = [], [], [], [], []
    session_offset, row_offset = 0, 0
    closed = any(p.parents is not None for p in parts)
    for p in parts:
        n = len(p)
        ids = p.session_id if p.session_id is not None else np.full(n, -1)
        sessions.append(np.where(ids >= 0, ids + session_offset, -1))
        session_offset += int(ids.max(initial=-1)) + 1
        turns.append(p.turn if p.turn is not None else np.zeros(n, dtype=np.int32))
        tools.append(p.tool_kind if p.tool_kind is not None else np.full(n, -1))
        delays.append(p.release_delay if p.release_delay is not None else np.full(n, np.nan))
        rows = p.parents if p.parents is not None else ((),) * n
        parents.extend(tuple(q + row_offset for q in r) for r in rows)
        row_offset += n
    new_row = np.empty(order.size, dtype=np.int64)
    new_row[order] = np.arange(order.size)
    merged: dict = {
        "session_id": np.concatenate(sessions)[order],
        "turn": np.concatenate(turns)[order],
        "tool_kind": np.concatenate(tools)[order],
    }
    if closed:
        merged["parents"] = tuple(tuple(int(new_row[q]) for q in parents[i])
                                  for i in order.tolist())
        merged["release_delay"] = np.concatenate(delays)[order]
    return merged


def _merged_hashes(parts: Sequence[Workload]) -> tuple[BlockChains | tuple | None, int]:
    with_hashes = [p for p in parts if p.prefix_hashes is not None]
    if not with_hashes:
        return None, parts[0].prefix_block_size
    sizes = {p.prefix_block_size for p in with_hashes}
    if len(sizes) > 1:
        raise WorkloadError(f"merge: parts hash prefixes at different block sizes {sorted(sizes)}")
    if all(isinstance(p.prefix_hashes, BlockChains) or p.prefix_hashes is None for p in parts):
        chains = [
            p.prefix_hashes if p.prefix_hashes is not None else BlockChains.empty(len(p))
            for p in parts
        ]
        return BlockChains.concat(chains), sizes.pop()
    # Explicit hash tuples (small, hand-made workloads): keep them as they are.
    flat = tuple(h for p in parts for h in (p.prefix_hashes or ((),) * len(p)))
    return flat, sizes.pop()


def _reorder(hashes: BlockChains | tuple, order: np.ndarray) -> BlockChains | tuple:
    if isinstance(hashes, BlockChains):
        return hashes.take(order)
    return tuple(hashes[i] for i in order.tolist())
