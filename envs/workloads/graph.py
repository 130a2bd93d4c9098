"""Dependencies between requests: closed-loop sessions and agentic programs.

A closed-loop workload (``Workload.parents`` is not ``None``) says, per request, which
earlier calls it waits for. Request ``i`` with parents ``P_i`` is *released* (arrives at
the serving system) ``release_delay[i]`` seconds after the last of ``P_i`` finished: a
user's think time between chat turns, or the duration of the tool call between two LLM
calls of an agent (Parrot, Lin et al., OSDI 2024; HEXGEN-Text2SQL's DAGs of dependent
calls). A request without parents is a *root*: it arrives at its ``arrival_time``. For a
dependent request ``arrival_time`` is nominal (an open-loop estimate used only to order
the rows and to split by time); the simulator sets the real arrival when it releases it.

Every request belongs to one program or session (``session_id``, ``-1``: none); parents
must be in the same program, and a program's graph must be acyclic. The helpers here
validate the graph (``check_graph``), remap it for a selection of requests
(``select_graph``: refuses a selection that cuts a dependency), and derive what
schedulers and retention policies read: ``next_delay`` (seconds from a call's finish to
the release of its first child; NaN without a child), ``depth`` (calls before it on the
longest path from a root) and ``critical_path`` (calls on the longest path from it to the
program's end, itself included).

All arrays are numpy; the graph is stored as per-request tuples of parent indices and
converted here to flat (CSR) arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["GraphError", "check_graph", "critical_path", "depth", "flat_parents",
           "next_delay", "select_graph", "topological_order", "whole_programs"]


class GraphError(ValueError):
    """A bad dependency graph (the Workload wraps it in a WorkloadError)."""


def flat_parents(parents: Sequence[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """(parent indices, child index of each) as flat int64 arrays, in row order."""
    counts = np.fromiter((len(p) for p in parents), dtype=np.int64, count=len(parents))
    total = int(counts.sum())
    flat = np.fromiter((q for p in parents for q in p), dtype=np.int64, count=total)
    child = np.repeat(np.arange(len(parents), dtype=np.int64), counts)
    return flat, child


def check_graph(parents: Sequence[tuple[int, ...]], session_id: np.ndarray,
                release_delay: np.ndarray) -> None:
    """Raise GraphError naming the first bad request (or program, for a cycle)."""
    n = len(parents)
    flat, child = flat_parents(parents)
    bad = np.flatnonzero((flat < 0) | (flat >= n))
    if bad.size:
        i = int(child[bad[0]])
        raise GraphError(f"Workload.parents[{i}] = {parents[i]!r}: parent indices must be in "
                         f"[0, {n}) (rows of this workload)")
    bad = np.flatnonzero(flat == child)
    if bad.size:
        i = int(child[bad[0]])
        raise GraphError(f"Workload.parents[{i}] = {parents[i]!r}: a request cannot be its own "
                         f"parent (program {int(session_id[i])} has a cycle)")
    bad = np.flatnonzero(session_id[flat] != session_id[child])
    if bad.size:
        i, p = int(child[bad[0]]), int(flat[bad[0]])
        raise GraphError(f"Workload.parents[{i}]: parent {p} is in program {int(session_id[p])}"
                         f" but request {i} in program {int(session_id[i])}; a call depends "
                         "only on calls of its own program")
    for i, p in enumerate(parents):
        if len(set(p)) != len(p):
            raise GraphError(f"Workload.parents[{i}] = {p!r}: a parent is listed twice")
    dependent = np.fromiter((len(p) > 0 for p in parents), dtype=bool, count=n)
    delay = release_delay[dependent]
    bad = np.flatnonzero(~(np.isfinite(delay) & (delay >= 0)))
    if bad.size:
        i = int(np.flatnonzero(dependent)[bad[0]])
        raise GraphError(f"Workload.release_delay[{i}] = {release_delay[i]!r}: think and tool "
                         "times must be finite and >= 0 seconds")
    orphan = session_id[dependent] < 0
    if orphan.any():
        i = int(np.flatnonzero(dependent)[np.flatnonzero(orphan)[0]])
        raise GraphError(f"Workload.session_id[{i}] = -1 but request {i} has parents; give "
                         "every call of a program its program's id (>= 0)")
    if not np.all(flat < child):  # parents listed after their child: check for cycles
        topological_order(parents, session_id)


def topological_order(parents: Sequence[tuple[int, ...]], session_id: np.ndarray) -> np.ndarray:
    """Request indices with every parent before its children (Kahn's algorithm); raises
    GraphError naming a program whose graph has a cycle."""
    n = len(parents)
    flat, child = flat_parents(parents)
    if np.all(flat < child):
        return np.arange(n, dtype=np.int64)
    pending = np.fromiter((len(p) for p in parents), dtype=np.int64, count=n)
    order_by_parent = np.argsort(flat, kind="stable")
    kids = child[order_by_parent]
    starts = np.searchsorted(flat[order_by_parent], np.arange(n + 1))
    pending_list = pending.tolist()
    ready = [i for i in range(n) if pending_list[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for k in kids[starts[i]:starts[i + 1]].tolist():
            pending_list[k] -= 1
            if pending_list[k] == 0:
                ready.append(k)
    if len(order) < n:
        stuck = sorted(set(range(n)) - set(order))
        program = int(session_id[stuck[0]])
        raise GraphError(f"program {program}: its calls' dependencies form a cycle (requests "
                         f"{stuck[:8]} wait for each other); a program graph must be acyclic")
    return np.asarray(order, dtype=np.int64)


def next_delay(parents: Sequence[tuple[int, ...]], release_delay: np.ndarray) -> np.ndarray:
    """Per request, the smallest release delay of its children (NaN without a child)."""
    flat, child = flat_parents(parents)
    out = np.full(len(parents), np.inf)
    np.minimum.at(out, flat, release_delay[child])
    out[np.isinf(out)] = np.nan
    return out


def depth(parents: Sequence[tuple[int, ...]], session_id: np.ndarray) -> np.ndarray:
    """Per request, the calls before it on the longest path from a root (roots: 0)."""
    out = [0] * len(parents)
    for i in topological_order(parents, session_id).tolist():
        p = parents[i]
        if p:
            out[i] = 1 + max(out[q] for q in p)
    return np.asarray(out, dtype=np.int32)


def critical_path(parents: Sequence[tuple[int, ...]], session_id: np.ndarray) -> np.ndarray:
    """Per request, the calls on the longest path from it to its program's end (>= 1)."""
    n = len(parents)
    out = [1] * n
    for i in reversed(topological_order(parents, session_id).tolist()):
        here = out[i] + 1
        for q in parents[i]:
            if out[q] < here:
                out[q] = here
    return np.asarray(out, dtype=np.int32)


def select_graph(parents: Sequence[tuple[int, ...]], index: np.ndarray,
                 session_id: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The parents of the requests at ``index``, renumbered to their new rows; raises
    GraphError when a selected request's parent is not selected (the slice would cut its
    program: select whole programs, see ``whole_programs``)."""
    new_row = np.full(len(parents), -1, dtype=np.int64)
    new_row[index] = np.arange(index.size)
    out = []
    for row, i in enumerate(index.tolist()):
        p = parents[i]
        if not p:
            out.append(())
            continue
        mapped = tuple(int(new_row[q]) for q in p)
        if min(mapped) < 0:
            missing = [q for q, m in zip(p, mapped, strict=True) if m < 0]
            raise GraphError(
                f"selecting these requests would cut program {int(session_id[i])}: request {i} "
                f"(new row {row}) waits for request(s) {missing}, which are not selected; select "
                "whole programs (Workload.whole_programs(indices) keeps the programs whose "
                "first call is selected)")
        out.append(mapped)
    return tuple(out)


def whole_programs(parents: Sequence[tuple[int, ...]], session_id: np.ndarray,
                   index: np.ndarray) -> np.ndarray:
    """Sorted rows of the programs whose roots are all among ``index`` (requests without a
    program count as their own program), every call of those programs included."""
    n = len(parents)
    chosen = np.zeros(n, dtype=bool)
    chosen[index] = True
    is_root = np.fromiter((len(p) == 0 for p in parents), dtype=bool, count=n)
    alone = session_id < 0
    programs = session_id[~alone]
    roots_in = np.unique(session_id[is_root & chosen & ~alone])
    roots_out = np.unique(session_id[is_root & ~chosen & ~alone])
    keep_programs = np.setdiff1d(roots_in, roots_out)
    keep = np.zeros(n, dtype=bool)
    keep[~alone] = np.isin(programs, keep_programs)
    keep |= alone & chosen
    return np.flatnonzero(keep)
