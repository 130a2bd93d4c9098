"""Loader for the Mooncake FAST'25 conversation trace (Kimi; Apache-2.0).

Shipped verbatim under ``envs/data/traces/mooncake_fast25/`` (see its ``SOURCE.md``;
please cite Qin et al., "Mooncake", FAST 2025).

File format: JSON lines, optionally gzip- or xz-compressed, one object per request with
``timestamp`` (arrival, **milliseconds** from the trace start), ``input_length``,
``output_length`` and ``hash_ids`` (chained ids of the prompt's 512-token blocks: two
requests share a KV prefix for as many leading ids as they have in common). Other keys
are ignored; blank lines are skipped. Rows must be sorted by timestamp.

Arrivals: the conversation trace's timestamps fall on ~3-second ticks (90% of gaps are
0). ``arrivals="batch"`` replays each tick as a batch at its timestamp, exactly as
recorded (the statistics of the traces' README use these times). ``arrivals="spread"``
(default) spreads the requests of a tick uniformly over ``[T, T + w)``, ``w`` =
``min(tick_s, next tick - T)``, with sorted uniform draws from ``rng`` so the file order
is kept: the same seed gives the same times.

Prefix hashes: each 512-token id becomes the hashes of the simulator's KV blocks
(``block_size`` tokens) inside it. Block ``j`` takes the id of the 512-token block that
holds its last token (:func:`envs.workloads.prefix.mooncake_segment_ends`); with a block
size dividing 512 each id expands into ``512 / block_size`` chained hashes. Only the
prompt's full blocks get hashes. They are stored compactly
(:class:`~envs.workloads.prefix.BlockChains`).

Bad rows follow the Azure loader: ``on_error="raise"`` names file, line and problem;
``"skip"`` leaves the row out and lists it in the :class:`LoadReport`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.workloads.prefix import BlockChains, mooncake_segment_ends
from envs.workloads.tracefiles import (
    READ_ERRORS,
    LoadReport,
    RowError,
    RowProblems,
    check_on_error,
    describe_non_count,
    open_text,
    trace_file,
    unreadable,
    warn_if_skipped,
)
from envs.workloads.workload import Workload, WorkloadError

__all__ = [
    "MOONCAKE_ARRIVALS",
    "MOONCAKE_BLOCK_TOKENS",
    "load_mooncake",
    "load_mooncake_with_report",
    "spread_ticks",
]

MOONCAKE_BLOCK_TOKENS = 512
MOONCAKE_ARRIVALS = ("spread", "batch")
_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_SHIPPED = "traces/mooncake_fast25/conversation_trace.jsonl.gz"
_MAX_ID = 2**39 - 1  # block hashes are id * 2**24 + j and must stay in int64


@dataclass
class _Rows:
    """Accepted rows while reading (local to one load)."""

    time_ms: list[float] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    num_ids: list[int] = field(default_factory=list)
    rows_read: int = 0


def load_mooncake(
    path: str | Path | None = None,
    *,
    arrivals: str = "spread",
    tick_s: float = 3.0,
    rng: np.random.Generator | int = 0,
    block_size: int = 16,
    on_error: str = "raise",
    ttft_slo: float = np.inf,
    tpot_slo: float = np.inf,
) -> Workload:
    """Load the Mooncake conversation trace (or ``path``) as a :class:`Workload`.

    Args:
        path: a trace file to read instead of the shipped one.
        arrivals: ``"spread"`` requests within their tick, or replay each tick as a
            ``"batch"`` (see the module docstring).
        tick_s: the tick length in seconds that ``"spread"`` spreads over at most.
        rng: the generator (or an int seed for one) that ``"spread"`` draws from.
        block_size: tokens per KV block of the simulated instances.
        on_error: ``"raise"`` on the first bad row, or ``"skip"`` bad rows (warned).
        ttft_slo, tpot_slo: SLOs in seconds for every request (``np.inf``: none).

    Returns:
        Workload ``"mooncake_conv"``: arrival times in seconds from the trace start
        (timestamp 0 ms is time 0), prefix hashes at ``block_size`` tokens.
    """
    workload, report = load_mooncake_with_report(
        path, arrivals=arrivals, tick_s=tick_s, rng=rng, block_size=block_size,
        on_error=on_error, ttft_slo=ttft_slo, tpot_slo=tpot_slo,
    )
    warn_if_skipped(report)
    return workload


def load_mooncake_with_report(
    path: str | Path | None = None,
    *,
    arrivals: str = "spread",
    tick_s: float = 3.0,
    rng: np.random.Generator | int = 0,
    block_size: int = 16,
    on_error: str = "raise",
    ttft_slo: float = np.inf,
    tpot_slo: float = np.inf,
) -> tuple[Workload, LoadReport]:
    """Like :func:`load_mooncake`, but return ``(workload, report)`` and never warn.

    The report's notes give the infinite-cache hit ratio of the 512-token block ids (the
    statistic in the traces' README).
    """
    _check_options(arrivals, tick_s, block_size)
    check_on_error(on_error)
    hint = "pass the path of a Mooncake trace (.jsonl, .jsonl.gz), or path=None for the shipped one"
    with trace_file(path, _SHIPPED, hint) as file_path:
        problems = RowProblems(file_path, on_error)
        rows = _read(file_path, problems)
    times = np.array(rows.time_ms, dtype=np.float64) / 1000.0
    if arrivals == "spread":
        times = spread_ticks(times, tick_s, _generator(rng))
    workload = Workload.from_lengths(
        times,
        np.array(rows.prompt, dtype=np.int64),
        np.array(rows.output, dtype=np.int64),
        ttft_slo=ttft_slo,
        tpot_slo=tpot_slo,
        prefix_hashes=_chains(rows, block_size),
        prefix_block_size=block_size,
        name="mooncake_conv",
    )
    notes = (_hit_ratio_note(rows.ids), f"arrivals={arrivals!r} (tick_s={tick_s:g})")
    return workload, problems.report(rows.rows_read, len(rows.prompt), notes)


def spread_ticks(times: np.ndarray, tick_s: float, rng: np.random.Generator) -> np.ndarray:
    """Spread requests sharing a timestamp uniformly over their tick, keeping their order.

    A tick at ``T`` spreads over ``[T, T + min(tick_s, T_next - T))``; the last tick over
    ``tick_s``. Draws are sorted within a tick, so the result is non-decreasing.
    """
    n = times.shape[0]
    if n == 0:
        return times.copy()
    first = np.flatnonzero(np.r_[True, times[1:] != times[:-1]])
    ticks = times[first]
    widths = np.minimum(np.diff(ticks, append=ticks[-1] + tick_s), tick_s)
    group = np.repeat(np.arange(first.size), np.diff(np.r_[first, n]))
    offsets = rng.random(n) * widths[group]
    offsets = offsets[np.lexsort((offsets, group))]  # ascending within each tick
    return times + offsets


# ---------------------------------------------------------------------- reading


def _check_options(arrivals: str, tick_s: float, block_size: int) -> None:
    if arrivals not in MOONCAKE_ARRIVALS:
        raise WorkloadError(
            f"arrivals={arrivals!r}: pass 'spread' (requests spread within their 3-s tick) "
            "or 'batch' (each tick replayed at once)"
        )
    if isinstance(tick_s, bool) or not (isinstance(tick_s, int | float) and tick_s > 0):
        raise WorkloadError(f"tick_s={tick_s!r}: must be a number of seconds > 0")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise WorkloadError(f"block_size={block_size!r}: must be a positive number of tokens")


def _generator(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}"
    )


def _read(path: Path, problems: RowProblems) -> _Rows:
    rows = _Rows()
    line_no = 0
    with open_text(path) as text:
        try:
            for line_no, line in enumerate(text, start=1):  # noqa: B007 - used after the loop
                if line.strip():
                    rows.rows_read += 1
                    _read_line(line, rows, problems, line_no)
        except READ_ERRORS as exc:
            raise unreadable(path, line_no + 1, exc, "JSON-lines") from exc
    if line_no == 0:
        raise WorkloadError(
            f"{path}: file is empty; expected one JSON object per line with fields "
            f"{', '.join(_FIELDS)}"
        )
    problems.check_loaded(rows.rows_read, len(rows.prompt))
    return rows


def _read_line(line: str, rows: _Rows, problems: RowProblems, line_no: int) -> None:
    try:
        time_ms, prompt, output, ids = _parse(line)
        if rows.time_ms and time_ms < rows.time_ms[-1]:
            raise RowError(
                f"timestamp {time_ms:g} ms is earlier than the previous kept row's "
                f"{rows.time_ms[-1]:g} ms; rows must be sorted by time"
            )
    except RowError as problem:
        problems.bad(line_no, problem)
        return
    rows.time_ms.append(time_ms)
    rows.prompt.append(prompt)
    rows.output.append(output)
    rows.ids.extend(ids)
    rows.num_ids.append(len(ids))


def _parse(line: str) -> tuple[float, int, int, list[int]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise RowError(f"expected a JSON object, got {type(record).__name__}")
    missing = [name for name in _FIELDS if name not in record]
    if missing:
        raise RowError(f"missing field(s) {', '.join(missing)}")
    return (
        _timestamp(record["timestamp"]),
        _count("input_length", record["input_length"]),
        _count("output_length", record["output_length"]),
        _ids(record["hash_ids"]),
    )


def _timestamp(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"timestamp = {value!r} is not a number of milliseconds")
    if not math.isfinite(value):
        raise RowError(f"timestamp = {value!r} is {'NaN' if math.isnan(value) else 'infinite'}")
    if value < 0:
        raise RowError(f"timestamp = {value!r} is negative")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    raise RowError(
        f"{name} = {value!r} is {describe_non_count(value)}; expected a positive integer"
    )


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise RowError(f"hash_ids = {value!r} is not a list of block ids")
    for position, block_id in enumerate(value):
        if isinstance(block_id, bool) or not isinstance(block_id, int):
            raise RowError(f"hash_ids[{position}] = {block_id!r} is not an integer block id")
        if not 0 <= block_id <= _MAX_ID:
            raise RowError(f"hash_ids[{position}] = {block_id} is outside [0, {_MAX_ID}]")
    return value


# ---------------------------------------------------------------------- prefix hashes


def _chains(rows: _Rows, block_size: int) -> BlockChains:
    num_ids = np.array(rows.num_ids, dtype=np.int64)
    stop = np.cumsum(num_ids)
    start = stop - num_ids
    # Segment k of every request ends at the same block count: one shared table, with
    # table[k] = the blocks covered by the first k ids.
    longest = int(num_ids.max(initial=0))
    table = np.r_[0, mooncake_segment_ends(longest, MOONCAKE_BLOCK_TOKENS, block_size)]
    position = np.arange(int(stop[-1]) if stop.size else 0) - np.repeat(start, num_ids)
    ends = table[position + 1]
    covered = table[num_ids]
    blocks = np.minimum(np.array(rows.prompt, dtype=np.int64) // block_size, covered)
    return BlockChains(np.array(rows.ids, dtype=np.int64), ends, start, stop, blocks)


def _hit_ratio_note(ids: list[int]) -> str:
    total = len(ids)
    hits = total - len(set(ids)) if total else 0
    # An id is a hit when it was seen earlier: total minus distinct ids.
    ratio = hits / total if total else float("nan")
    return (
        f"infinite-cache hit ratio of the 512-token block ids: {ratio:.1%} "
        f"({hits:,} / {total:,} blocks)"
    )
