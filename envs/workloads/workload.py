"""Columnar, immutable request workloads: what the simulator replays.

A :class:`Workload` stores one numpy array per request attribute instead of one object
per request, so that traces with 50k+ requests cost a few arrays and the simulator can
read them without Python-level loops. All arrays are read-only after construction.

Optional per-request columns (``None`` when a workload has no such information, so
workloads without them are unchanged): ``prefix_hashes`` and ``reason_ratio``, the share
of a request's output tokens spent reasoning (ServeGen's reasoning pools). Slicing
(:meth:`Workload.head`, :meth:`Workload.take`, so splits and windows) keeps them aligned
with the requests; ``dataclasses.replace`` of other columns (rate scaling, SLOs) keeps them
as they are.

Closed-loop sessions and agentic programs (:mod:`servegym.envs.workloads.graph`) are five
more optional columns: ``session_id`` (int64, ``-1``: none), ``turn`` (int32),
``parents`` (per request, a tuple of the row indices it waits for), ``release_delay``
(float64 seconds after its last parent finished) and ``tool_kind`` (int32, the kind of the
tool called after this request finishes, ``-1``: none). A workload is closed-loop when
``parents`` is given; then a dependent request's ``arrival_time`` is nominal and the
simulator releases it when its parents have finished. Slicing a closed-loop workload
refuses to cut a program (a selected call whose parent is not selected); select whole
programs with :meth:`Workload.whole_programs`.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegym.envs.workloads import graph
from servegym.envs.workloads.prefix import BlockChains

__all__ = ["Workload", "WorkloadError", "WorkloadWarning"]


class WorkloadError(ValueError):
    """Invalid workload or trace; the message says where the problem is and how to fix it."""


class WorkloadWarning(UserWarning):
    """Something was dropped or changed while building a workload (never done silently)."""


# Columns in declaration order, with the dtype each is stored as.
_FLOAT_COLUMNS = ("arrival_time", "ttft_slo", "tpot_slo")
_INT_COLUMNS = {
    "prompt_len": np.int64,
    "output_len": np.int64,
    "tenant": np.int32,
    "priority": np.int32,
}
# Optional program columns sliced with the requests (``parents`` is renumbered apart).
_PROGRAM_COLUMNS = ("session_id", "turn", "release_delay", "tool_kind")


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array equality has no bool value
class Workload:
    """A set of requests, one array entry per request, sorted by arrival time.

    Attributes:
        arrival_time: float64 seconds, finite, >= 0 and non-decreasing.
        prompt_len: int64 prompt tokens, > 0.
        output_len: int64 output tokens (including the first), > 0.
        tenant: int32 index into ``tenant_names``.
        priority: int32, lower is more urgent (vLLM convention); 0 by default.
        ttft_slo: float64 time-to-first-token target in seconds (``np.inf``: none).
        tpot_slo: float64 seconds per output token after the first (``np.inf``: none).
        tenant_names: names of the tenants, indexed by ``tenant``.
        prefix_hashes: per request, chained hashes of its full prompt blocks of
            ``prefix_block_size`` tokens: two requests with the same i-th hash share their
            first i blocks. ``None`` when the workload has no prefix information. Either a
            tuple of int tuples, or a :class:`~servegym.envs.workloads.prefix.BlockChains` that
            stores them compactly and builds request ``i``'s tuple when it is read.
        prefix_block_size: tokens per hashed block.
        name: label used in logs and result tables.
        reason_ratio: per request, the share of its output tokens spent reasoning
            (float64 in ``[0, 1]``; NaN where unknown), or ``None`` when the workload has
            no reasoning information. About ``round(output_len * reason_ratio)`` of a
            request's output tokens are reasoning tokens. Clipping the output
            (:meth:`clip_total_tokens`) keeps the share. Set by ServeGen's reasoning pools
            (the ``reason_ratio`` length field, see :mod:`servegym.envs.workloads.servegen`).
        session_id: per request, its session or program (int64, ``-1``: none), or ``None``.
        turn: per request, its turn in the session / depth in the program (int32; with
            ``parents`` and no ``turn`` given, the depth in the graph), or ``None``.
        parents: per request, the rows it waits for (a tuple of ints, empty for a root),
            or ``None`` (open loop: every request arrives at its ``arrival_time``).
        release_delay: per request, seconds from its last parent's finish to its release
            (think or tool time; finite, >= 0 for dependent requests; NaN for roots).
            Required with ``parents``.
        tool_kind: per request, the kind of tool called after it finishes (int32, ``-1``:
            none or a human's think time), or ``None``.

    Arrays are coerced to the dtypes above and made read-only; an input array that is
    already read-only with the right dtype is shared rather than copied.
    """

    arrival_time: np.ndarray
    prompt_len: np.ndarray
    output_len: np.ndarray
    tenant: np.ndarray
    priority: np.ndarray
    ttft_slo: np.ndarray
    tpot_slo: np.ndarray
    tenant_names: tuple[str, ...] = ("default",)
    prefix_hashes: tuple[tuple[int, ...], ...] | BlockChains | None = None
    prefix_block_size: int = 16
    name: str = "workload"
    reason_ratio: np.ndarray | None = None
    session_id: np.ndarray | None = None
    turn: np.ndarray | None = None
    parents: tuple[tuple[int, ...], ...] | None = None
    release_delay: np.ndarray | None = None
    tool_kind: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._check_scalars()
        for column in _FLOAT_COLUMNS:
            self._set(column, _as_float_array(column, getattr(self, column)))
        for column, dtype in _INT_COLUMNS.items():
            self._set(column, _as_int_array(column, getattr(self, column), dtype))
        self._check_lengths()
        self._check_arrivals()
        self._check_values()
        if self.prefix_hashes is not None:
            self._set("prefix_hashes", _as_prefix_hashes(self.prefix_hashes, len(self)))
        if self.reason_ratio is not None:
            self._set("reason_ratio", _as_reason_ratio(self.reason_ratio, len(self)))
        self._check_programs()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_lengths(
        cls,
        arrival_time: Any,
        prompt_len: Any,
        output_len: Any,
        *,
        ttft_slo: Any = np.inf,
        tpot_slo: Any = np.inf,
        tenant: Any = None,
        priority: Any = None,
        tenant_names: Sequence[str] = ("default",),
        prefix_hashes: Sequence[Sequence[int]] | BlockChains | None = None,
        prefix_block_size: int = 16,
        name: str = "workload",
        reason_ratio: Any = None,
        session_id: Any = None,
        turn: Any = None,
        parents: Sequence[Sequence[int]] | None = None,
        release_delay: Any = None,
        tool_kind: Any = None,
    ) -> Workload:
        """Build a workload from per-request columns; scalars are repeated for every request.

        ``tenant`` and ``priority`` default to 0 for every request; ``reason_ratio`` to
        ``None`` (no reasoning information). The number of requests is the common length of
        the 1-D arguments (1 if all are scalars).
        """
        columns = {
            "arrival_time": arrival_time,
            "prompt_len": prompt_len,
            "output_len": output_len,
            "ttft_slo": ttft_slo,
            "tpot_slo": tpot_slo,
            "tenant": 0 if tenant is None else tenant,
            "priority": 0 if priority is None else priority,
        }
        if reason_ratio is not None:
            columns["reason_ratio"] = reason_ratio
        for key, value in (("session_id", session_id), ("turn", turn),
                           ("release_delay", release_delay), ("tool_kind", tool_kind)):
            if value is not None:
                columns[key] = value
        n = _common_length(columns)
        arrays = {key: _broadcast(value, n) for key, value in columns.items()}
        return cls(
            **arrays,
            tenant_names=tuple(tenant_names),
            prefix_hashes=_hashes_argument(prefix_hashes),
            prefix_block_size=prefix_block_size,
            name=name,
            parents=None if parents is None else tuple(tuple(p) for p in parents),
        )

    # ------------------------------------------------------------------ queries

    @property
    def closed_loop(self) -> bool:
        """Whether some requests wait for others (``parents`` given)."""
        return self.parents is not None

    def next_delay(self) -> np.ndarray:
        """Per request, seconds from its finish to its first child's release (the smallest
        ``release_delay`` of its children; NaN without a child or when open-loop)."""
        if self.parents is None:
            return np.full(len(self), np.nan)
        return graph.next_delay(self.parents, self.release_delay)

    def critical_path(self) -> np.ndarray:
        """Per request, the calls on the longest path from it to its program's end, itself
        included (1 for a request without children or an open-loop workload)."""
        if self.parents is None:
            return np.ones(len(self), dtype=np.int32)
        return graph.critical_path(self.parents, self.session_id)

    def whole_programs(self, indices: Any) -> np.ndarray:
        """The rows of the programs whose first calls (roots) are all among ``indices``
        (int array or mask), every call of them included, sorted: what to pass to
        :meth:`take` to slice a closed-loop workload without cutting a program. Requests
        without a program are kept when selected. Open-loop workloads: ``indices`` sorted."""
        index = self._index_array(indices, "whole_programs")
        if self.parents is None:
            return np.sort(index)
        return graph.whole_programs(self.parents, self.session_id, index)

    def __len__(self) -> int:
        return int(self.arrival_time.shape[0])

    def __repr__(self) -> str:
        # The dataclass repr would print every prefix hash: unreadable for real traces.
        span = float(self.arrival_time[-1] - self.arrival_time[0]) if len(self) else 0.0
        return (
            f"Workload(name={self.name!r}, requests={len(self)}, span={span:.3f}s, "
            f"tenants={len(self.tenant_names)}, prefix_hashes={self.prefix_hashes is not None})"
        )

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (all of them if ``n >= len(self)``); arrays are views."""
        n = _non_negative_int("n", n)
        return self._select(slice(0, n))

    def take(self, indices: Any, *, name: str | None = None) -> Workload:
        """The requests at ``indices`` (int array or boolean mask), in that order.

        The result must still be sorted by arrival time (validation says so otherwise).
        Tenant names, block size and, unless ``name`` is given, the name are kept.
        """
        selected = self._select(self._index_array(indices, "take"))
        return selected if name is None else dataclasses.replace(selected, name=name)

    def _index_array(self, indices: Any, method: str) -> np.ndarray:
        index = np.asarray(indices)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise WorkloadError(
                    f"Workload.{method}: a boolean mask needs {len(self)} entries, got "
                    f"{index.shape}"
                )
            index = np.flatnonzero(index)
        if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
            raise WorkloadError(f"Workload.{method}: pass a 1-D array of request indices or "
                                "a mask")
        return index.astype(np.int64, copy=False)

    def summary(self) -> dict[str, float | int | str]:
        """Count, duration, mean rate and prompt/output mean, p50, p99.

        ``duration`` is last minus first arrival and ``mean_rate = count / duration``
        (NaN when the duration is 0), the definition used in the traces' README.
        Percentiles use numpy's default linear interpolation.
        """
        n = len(self)
        duration = float(self.arrival_time[-1] - self.arrival_time[0]) if n else 0.0
        stats: dict[str, float | int | str] = {
            "name": self.name,
            "count": n,
            "duration": duration,
            "mean_rate": n / duration if duration > 0 else float("nan"),
        }
        for label, values in (("prompt", self.prompt_len), ("output", self.output_len)):
            stats.update(_length_stats(label, values))
        return stats

    # ------------------------------------------------------------------ transformations

    def clip_total_tokens(self, max_total_tokens: int) -> tuple[Workload, int]:
        """Fit every request into a context of ``max_total_tokens`` (prompt + output).

        The prompt is clipped to ``max_total_tokens - 1`` first, then the output to
        ``max_total_tokens - prompt``; so a prompt that fits is kept whole and only its
        output is shortened. Returns the clipped workload and the number of requests that
        changed (the workload itself when none did). Prefix hashes of clipped prompts are
        cut to the full blocks that remain.

        Like Vidur, this pre-clips a trace to the model's context length before the run,
        so that no request is unservable; the rule differs in detail: Vidur's trace replay
        takes the whole excess from the prompt, and its length generator takes it from
        prompt and output in proportion.
        """
        limit = _non_negative_int("max_total_tokens", max_total_tokens)
        if limit < 2:
            raise WorkloadError(
                f"max_total_tokens = {limit}: a request needs at least 1 prompt and 1 output "
                "token; pass max_total_tokens >= 2"
            )
        prompt = np.minimum(self.prompt_len, limit - 1)
        output = np.minimum(self.output_len, limit - prompt)
        changed = (prompt != self.prompt_len) | (output != self.output_len)
        count = int(np.count_nonzero(changed))
        if count == 0:
            return self, 0
        clipped = dataclasses.replace(
            self,
            prompt_len=prompt,
            output_len=output,
            prefix_hashes=self._clipped_prefix_hashes(prompt),
        )
        return clipped, count

    # ------------------------------------------------------------------ internals

    def _set(self, field_name: str, value: object) -> None:
        # The dataclass is frozen; validation is the one place allowed to normalise fields.
        object.__setattr__(self, field_name, value)

    def _select(self, index: slice | np.ndarray) -> Workload:
        columns = {c: getattr(self, c)[index] for c in (*_FLOAT_COLUMNS, *_INT_COLUMNS)}
        for column in _PROGRAM_COLUMNS:
            values = getattr(self, column)
            columns[column] = None if values is None else values[index]
        if self.parents is not None:
            rows = np.arange(len(self))[index] if isinstance(index, slice) else index
            try:
                columns["parents"] = graph.select_graph(self.parents, rows, self.session_id)
            except graph.GraphError as error:
                raise WorkloadError(str(error)) from None
        ratio = None if self.reason_ratio is None else self.reason_ratio[index]
        return dataclasses.replace(self, **columns, prefix_hashes=self._hashes_at(index),
                                   reason_ratio=ratio)

    def _check_programs(self) -> None:
        n = len(self)
        for column, dtype in (("session_id", np.int64), ("turn", np.int32),
                              ("tool_kind", np.int32)):
            values = getattr(self, column)
            if values is not None:
                array = _as_int_array(column, values, dtype)
                if array.shape[0] != n:
                    raise WorkloadError(f"Workload.{column} has {array.shape[0]} entries but "
                                        f"there are {n} requests; give one per request")
                self._set(column, array)
        if self.release_delay is not None:
            delay = _as_1d("release_delay", self.release_delay)
            if delay.shape[0] != n:
                raise WorkloadError(f"Workload.release_delay has {delay.shape[0]} entries but "
                                    f"there are {n} requests; give one per request")
            self._set("release_delay", _frozen(delay.astype(np.float64, copy=False),
                                               self.release_delay))
        if self.parents is None:
            if self.release_delay is not None:
                raise WorkloadError("Workload.release_delay needs parents (which requests "
                                    "each one waits for); give parents or drop release_delay")
            return
        parents = self.parents
        if isinstance(parents, str | bytes) or not isinstance(parents, Sequence) or \
                len(parents) != n:
            raise WorkloadError(f"Workload.parents must be a sequence of {n} tuples of row "
                                "indices (empty for a root), one per request")
        if not all(type(p) is tuple for p in parents):
            self._set("parents", tuple(tuple(operator.index(q) for q in p) for p in parents))
        if self.session_id is None or self.release_delay is None:
            raise WorkloadError("a closed-loop Workload (parents given) needs session_id (the "
                                "program of every call) and release_delay (think/tool seconds)")
        try:
            graph.check_graph(self.parents, self.session_id, self.release_delay)
            if self.turn is None:
                self._set("turn", graph.depth(self.parents, self.session_id))
        except graph.GraphError as error:
            raise WorkloadError(str(error)) from None

    def _hashes_at(self, index: slice | np.ndarray) -> tuple | BlockChains | None:
        hashes = self.prefix_hashes
        if hashes is None:
            return None
        if isinstance(index, slice):
            return hashes[index]
        if isinstance(hashes, BlockChains):
            return hashes.take(index)
        return tuple(hashes[i] for i in index.tolist())

    def _clipped_prefix_hashes(
        self, prompt: np.ndarray
    ) -> tuple[tuple[int, ...], ...] | BlockChains | None:
        if self.prefix_hashes is None:
            return None
        blocks = prompt // self.prefix_block_size
        if isinstance(self.prefix_hashes, BlockChains):
            return self.prefix_hashes.truncated(blocks)
        return tuple(
            hashes if new == old else hashes[: int(full)]
            for hashes, new, old, full in zip(
                self.prefix_hashes, prompt, self.prompt_len, blocks, strict=True
            )
        )

    def _check_scalars(self) -> None:
        if not isinstance(self.name, str):
            raise WorkloadError(f"Workload.name must be a str, got {type(self.name).__name__}")
        names = tuple(self.tenant_names)
        if not names or not all(isinstance(t, str) and t for t in names):
            raise WorkloadError(
                f"Workload.tenant_names = {names!r}: give at least one non-empty tenant name"
            )
        if len(set(names)) != len(names):
            raise WorkloadError(f"Workload.tenant_names = {names!r}: tenant names must be unique")
        self._set("tenant_names", names)
        size = self.prefix_block_size
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
            raise WorkloadError(
                f"Workload.prefix_block_size = {size!r}: must be a positive integer"
            )
        self._set("prefix_block_size", int(size))

    def _check_lengths(self) -> None:
        n = len(self)
        for column in (*_FLOAT_COLUMNS, *_INT_COLUMNS):
            size = getattr(self, column).shape[0]
            if size != n:
                raise WorkloadError(
                    f"Workload.{column} has {size} entries but arrival_time has {n}; "
                    "give every column one entry per request"
                )

    def _check_arrivals(self) -> None:
        times = self.arrival_time
        _fail_at(~np.isfinite(times), "arrival_time", times, "arrival times must be finite")
        _fail_at(times < 0, "arrival_time", times, "arrival times must be >= 0")
        decreasing = np.flatnonzero(times[1:] < times[:-1])
        if decreasing.size:
            i = int(decreasing[0]) + 1
            raise WorkloadError(
                f"Workload.arrival_time[{i}] = {times[i].item()!r} is earlier than "
                f"arrival_time[{i - 1}] = {times[i - 1].item()!r}; "
                "sort the requests by arrival time"
            )

    def _check_values(self) -> None:
        for column in ("prompt_len", "output_len"):
            values = getattr(self, column)
            _fail_at(values <= 0, column, values, "token counts must be positive")
        tenants = self.tenant
        _fail_at(
            (tenants < 0) | (tenants >= len(self.tenant_names)),
            "tenant",
            tenants,
            f"tenant indices must be in [0, {len(self.tenant_names)}) "
            f"(tenant_names has {len(self.tenant_names)} entries)",
        )
        for column in ("ttft_slo", "tpot_slo"):
            values = getattr(self, column)
            _fail_at(
                ~(values > 0), column, values, "SLOs must be > 0 seconds (np.inf for no target)"
            )


# ---------------------------------------------------------------------- helpers


def _fail_at(bad: np.ndarray, column: str, values: np.ndarray, problem: str) -> None:
    """Raise naming the first request where ``bad`` holds."""
    hits = np.flatnonzero(bad)
    if hits.size:
        i = int(hits[0])
        raise WorkloadError(
            f"Workload.{column}[{i}] = {values[i].item()!r}: {problem} "
            f"({hits.size} bad entr{'y' if hits.size == 1 else 'ies'}); fix or drop request {i}"
        )


def _frozen(array: np.ndarray, original: object) -> np.ndarray:
    """Make ``array`` read-only without letting the caller keep a writable alias to it."""
    if array is original and not array.flags.writeable:
        return array  # e.g. a slice of another Workload: nobody can write to it, share it
    if array is original or array.base is not None:
        array = array.copy()  # the caller (or a view's owner) could still write to it
    array.flags.writeable = False
    return array


def _as_1d(column: str, value: object) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1:
        raise WorkloadError(
            f"Workload.{column} must be a 1-D array, got shape {array.shape}; "
            "use Workload.from_lengths to broadcast scalars"
        )
    if array.dtype.kind not in "iuf":
        raise WorkloadError(f"Workload.{column} must be numeric, got dtype {array.dtype}")
    return array


def _as_float_array(column: str, value: object) -> np.ndarray:
    array = _as_1d(column, value)
    return _frozen(array.astype(np.float64, copy=False), value)


def _as_int_array(column: str, value: object, dtype: type[np.integer]) -> np.ndarray:
    array = _as_1d(column, value)
    if array.dtype.kind == "f":
        whole = np.isfinite(array) & (array == np.round(array))
        _fail_at(~whole, column, array, "must be a whole number")
    info = np.iinfo(dtype)
    _fail_at(
        (array < info.min) | (array > info.max),
        column,
        array,
        f"does not fit in {np.dtype(dtype).name}",
    )
    return _frozen(array.astype(dtype, copy=False), value)


def _as_reason_ratio(value: object, n: int) -> np.ndarray:
    array = _as_1d("reason_ratio", value)
    if array.shape[0] != n:
        raise WorkloadError(
            f"Workload.reason_ratio has {array.shape[0]} entries but there are {n} requests; "
            "give one reasoning share per request (NaN where unknown), or None for none"
        )
    array = _frozen(array.astype(np.float64, copy=False), value)
    _fail_at((array < 0) | (array > 1), "reason_ratio", array,
             "reasoning shares must be in [0, 1] (NaN: unknown)")
    return array


def _hashes_argument(hashes: object) -> object:
    if hashes is None or isinstance(hashes, BlockChains):
        return hashes
    if isinstance(hashes, str | bytes) or not isinstance(hashes, Sequence):
        return hashes  # validation names the problem
    return tuple(tuple(h) if isinstance(h, Sequence) else h for h in hashes)


def _as_prefix_hashes(hashes: object, n: int) -> tuple[tuple[int, ...], ...] | BlockChains:
    if isinstance(hashes, BlockChains):
        if len(hashes) != n:
            raise WorkloadError(
                f"Workload.prefix_hashes has {len(hashes)} entries but there are {n} requests; "
                "give one chain of block hashes per request"
            )
        return hashes
    if isinstance(hashes, str | bytes) or not isinstance(hashes, Sequence):
        raise WorkloadError(
            f"Workload.prefix_hashes must be a sequence of per-request hash tuples or None, "
            f"got {type(hashes).__name__}"
        )
    if len(hashes) != n:
        raise WorkloadError(
            f"Workload.prefix_hashes has {len(hashes)} entries but there are {n} requests; "
            "give one tuple of block hashes per request (empty tuple for none)"
        )
    return tuple(_hash_tuple(i, entry) for i, entry in enumerate(hashes))


def _hash_tuple(i: int, entry: object) -> tuple[int, ...]:
    if type(entry) is tuple and all(type(h) is int for h in entry):
        return entry  # fast path: already normalised (e.g. taken from another Workload)
    try:
        return tuple(operator.index(h) for h in entry)  # type: ignore[union-attr]
    except TypeError:
        raise WorkloadError(
            f"Workload.prefix_hashes[{i}] = {entry!r}: must be a sequence of integer block hashes"
        ) from None


def _common_length(columns: dict[str, object]) -> int:
    sizes = {}
    for key, value in columns.items():
        array = np.asarray(value)
        if array.ndim > 1:
            raise WorkloadError(f"{key} must be a scalar or 1-D array, got shape {array.shape}")
        if array.ndim == 1:
            sizes[key] = array.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{key}={size}" for key, size in sizes.items())
        raise WorkloadError(f"columns have different lengths ({listing}); make them equal")
    return next(iter(sizes.values()), 1)


def _broadcast(value: object, n: int) -> np.ndarray:
    array = np.asarray(value)
    return np.full(n, array) if array.ndim == 0 else array


def _non_negative_int(label: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise WorkloadError(f"{label} = {value!r}: must be a non-negative integer")
    return int(value)


def _length_stats(label: str, values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        nan = float("nan")
        return {f"{label}_mean": nan, f"{label}_p50": nan, f"{label}_p99": nan}
    p50, p99 = np.percentile(values, [50, 99])
    return {
        f"{label}_mean": float(values.mean()),
        f"{label}_p50": float(p50),
        f"{label}_p99": float(p99),
    }
