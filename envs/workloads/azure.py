"""Loader for the Azure LLM inference trace 2023 (Splitwise, ISCA'24).

The two traces ("code" and "conv") ship inside the package under
``envs/data/traces/azure_llm_2023/`` (see its ``SOURCE.md`` for origin, licence
CC-BY-4.0 and the citation that any use of them requires).

File format: CSV, optionally gzip- or xz-compressed (detected from the content, not the
name), header ``TIMESTAMP,ContextTokens,GeneratedTokens`` (extra columns are ignored),
timestamps ``YYYY-MM-DD HH:MM:SS.fffffff``. Blank lines are ignored. Rows must be sorted
by time.

Bounds (a row past one is a bad row naming the field and the bound):

* a row is at most :data:`~servegym.envs.workloads.tracefiles.MAX_CSV_ROW_CHARS`
  characters (65,536);
* ``ContextTokens`` and ``GeneratedTokens`` are in ``[1, MAX_TOKENS]``
  (:data:`~servegym.envs.workloads.tracefiles.MAX_TOKENS`, 10,000,000 tokens);
* the trace spans at most :data:`~servegym.envs.workloads.tracefiles.MAX_TRACE_SPAN_S` (365 days):
  the kept rows are those in the 365-day window that holds the most rows (of several, the
  earliest), and a row outside it is out of range, e.g. a typo year 9023 in a 2023 trace.
  So one mistyped date is the bad row, whether it is the first row, the last or any other.

Out-of-order rows: of the rows in range, the kept rows are the longest run of rows whose
timestamps never decrease, the earliest rows winning ties
(:func:`~servegym.envs.workloads.tracefiles.out_of_order`); each other row is a bad row, "earlier
than the previous kept row" or "later than the next kept row". So a row dated in the
future (within the span) is the bad row, and the rows after it, in order with the last
good row, are kept. Range and order are checked after the whole file is read: with
``on_error="raise"`` a bad value (a length, a malformed date) raises first, wherever it is.

Bad rows: with ``on_error="raise"`` (default) the first bad row raises
:class:`WorkloadError` ``"<file>:<line>: <problem>; fix the row or pass on_error='skip'"``.
With ``on_error="skip"`` bad rows are left out and listed in a :class:`LoadReport`:
:func:`load_azure_2023_with_report` returns it, :func:`load_azure_2023` emits a
:class:`WorkloadWarning` with the count instead. A problem with the file itself
(missing, empty, wrong header, not CSV) always raises.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from servegym.envs.workloads.tracefiles import (
    MAX_CSV_ROW_CHARS,
    MAX_TRACE_SPAN_S,
    READ_ERRORS,
    BoundedLines,
    LoadReport,
    RowError,
    RowProblems,
    TraceFileNotFoundError,
    check_on_error,
    open_text,
    out_of_order,
    parse_count,
    trace_file,
    unreadable,
    warn_if_skipped,
)
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = [
    "AZURE_2023_KINDS",
    "LoadReport",
    "TraceFileNotFoundError",
    "load_azure_2023",
    "load_azure_2023_with_report",
]

AZURE_2023_KINDS: tuple[str, ...] = ("code", "conv")
_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_DATA_DIR = "traces/azure_llm_2023"
_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?", re.ASCII)
_NS_PER_S = 1_000_000_000
_S_PER_DAY = 86_400


class _CsvReader(Protocol):
    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


@dataclass
class _Columns:
    """Accumulates the accepted rows while reading (local to one load)."""

    # Exact ints: nanoseconds since year 1 can pass int64 (a typo year is reported, not
    # wrapped). The bounded columns are int64 arrays, 8 bytes a row instead of an int
    # object and a pointer (a trace's load peaks while they are all held).
    time_ns: list[int] = field(default_factory=list)
    prompt: array = field(default_factory=lambda: array("q"))  # tokens, <= MAX_TOKENS
    output: array = field(default_factory=lambda: array("q"))
    line: array = field(default_factory=lambda: array("q"))  # file line of each row
    rows_read: int = 0

    def keep(self, drop: set[int]) -> _Columns:
        """These columns without the rows at the indices in ``drop``."""
        kept = _Columns(rows_read=self.rows_read)
        for i, row in enumerate(zip(self.time_ns, self.prompt, self.output, self.line,
                                    strict=True)):
            if i not in drop:
                for column, value in zip((kept.time_ns, kept.prompt, kept.output, kept.line),
                                         row, strict=True):
                    column.append(value)
        return kept


def load_azure_2023(
    kind: str = "conv",
    path: str | Path | None = None,
    *,
    on_error: str = "raise",
    ttft_slo: float | np.ndarray = np.inf,
    tpot_slo: float | np.ndarray = np.inf,
) -> Workload:
    """Load an Azure LLM inference 2023 trace as a :class:`Workload`.

    Args:
        kind: ``"conv"`` (conversation service) or ``"code"`` (coding assistant).
        path: a trace file to read instead of the shipped one (``.csv``, ``.csv.gz`` or
            ``.csv.xz``); ``kind`` then only names the workload.
        on_error: ``"raise"`` on the first bad row, or ``"skip"`` bad rows; skipped rows
            are reported in a :class:`WorkloadWarning` (use
            :func:`load_azure_2023_with_report` to get them as a :class:`LoadReport`).
        ttft_slo, tpot_slo: SLOs in seconds given to every request (``np.inf``: none).

    Returns:
        Workload named ``"azure_<kind>_2023"``. Arrival times are seconds since the first
        kept row, so they start at 0; token counts are taken as they are.
    """
    workload, report = load_azure_2023_with_report(
        kind, path, on_error=on_error, ttft_slo=ttft_slo, tpot_slo=tpot_slo
    )
    warn_if_skipped(report)
    return workload


def load_azure_2023_with_report(
    kind: str = "conv",
    path: str | Path | None = None,
    *,
    on_error: str = "raise",
    ttft_slo: float | np.ndarray = np.inf,
    tpot_slo: float | np.ndarray = np.inf,
) -> tuple[Workload, LoadReport]:
    """Like :func:`load_azure_2023`, but return ``(workload, report)`` and never warn."""
    if kind not in AZURE_2023_KINDS:
        raise WorkloadError(f"unknown Azure 2023 trace kind {kind!r}; known kinds: {_kinds_text()}")
    check_on_error(on_error)
    hint = (
        "pass the path of an AzureLLMInferenceTrace_<kind>.csv or .csv.gz file, or "
        f"path=None to load a shipped trace (known kinds: {_kinds_text()})"
    )
    shipped = f"{_DATA_DIR}/AzureLLMInferenceTrace_{kind}.csv.gz"
    with trace_file(path, shipped, hint) as file_path:
        problems = RowProblems(file_path, on_error)
        columns = _read(file_path, problems)
    report = problems.report(columns.rows_read, len(columns.time_ns))
    workload = Workload.from_lengths(
        _relative_seconds(columns.time_ns),
        np.array(columns.prompt, dtype=np.int64),
        np.array(columns.output, dtype=np.int64),
        ttft_slo=ttft_slo,
        tpot_slo=tpot_slo,
        name=f"azure_{kind}_2023",
    )
    return workload, report


def _kinds_text() -> str:
    return ", ".join(repr(k) for k in AZURE_2023_KINDS)


# ---------------------------------------------------------------------- parsing


def _read(path: Path, problems: RowProblems) -> _Columns:
    with open_text(path) as text:
        lines = BoundedLines(text, problems, MAX_CSV_ROW_CHARS, header=True)
        reader = csv.reader(lines)
        try:
            columns = _read_rows(path, reader, problems)
        except READ_ERRORS as exc:
            raise unreadable(path, reader.line_num + 1, exc, "CSV") from exc
    columns.rows_read += lines.too_long
    columns = _in_span(columns, problems)
    columns = _in_order(columns, problems)
    problems.check_loaded(columns.rows_read, len(columns.time_ns))
    return columns


def _read_rows(path: Path, reader: _CsvReader, problems: RowProblems) -> _Columns:
    header = next(reader, None)
    if header is None:
        raise WorkloadError(
            f"{path}: file is empty; expected a header line {','.join(_COLUMNS)} and one "
            "row per request"
        )
    index = _column_index(path, header)
    columns = _Columns()
    for row in reader:
        if not row:
            continue  # a blank line holds no request
        columns.rows_read += 1
        try:
            time_ns, prompt, output = _parse_row(row, index, len(header))
        except RowError as problem:
            problems.bad(reader.line_num, problem)
            continue
        columns.time_ns.append(time_ns)
        columns.prompt.append(prompt)
        columns.output.append(output)
        columns.line.append(reader.line_num)
    return columns


def _column_index(path: Path, header: list[str]) -> tuple[int, int, int]:
    names = [name.strip() for name in header]
    missing = [column for column in _COLUMNS if column not in names]
    if missing:
        raise WorkloadError(
            f"{path}:1: header lacks column(s) {', '.join(missing)} (found: "
            f"{', '.join(repr(n) for n in names)}); the first line must be the header "
            f"{','.join(_COLUMNS)}: fix or rename the columns"
        )
    ts, ctx, gen = (names.index(column) for column in _COLUMNS)
    return ts, ctx, gen


def _parse_row(row: list[str], index: tuple[int, int, int], width: int) -> tuple[int, int, int]:
    if len(row) != width:
        missing = [_COLUMNS[k] for k, i in enumerate(index) if i >= len(row)]
        detail = f"; missing {', '.join(missing)}" if missing else ""
        raise RowError(f"row has {len(row)} field(s) but the header has {width}{detail}")
    ts, ctx, gen = index
    return (
        _parse_timestamp_ns(row[ts]),
        parse_count(_COLUMNS[1], row[ctx]),
        parse_count(_COLUMNS[2], row[gen]),
    )


def _in_span(columns: _Columns, problems: RowProblems) -> _Columns:
    """Drop (and report) the rows outside the 365-day window holding the most rows."""
    times = columns.time_ns
    span = MAX_TRACE_SPAN_S * _NS_PER_S
    if not times or max(times) - min(times) <= span:
        return columns
    ordered = sorted(times)
    # The window [ordered[i], ordered[i] + span] holding the most rows; the earliest of ties.
    best, lo = -1, ordered[0]
    for i, start in enumerate(ordered):
        count = bisect.bisect_right(ordered, start + span) - i
        if count > best:
            best, lo = count, start
    hi = lo + span
    drop = set()
    for i, time_ns in enumerate(times):
        if not lo <= time_ns <= hi:
            drop.add(i)
            problems.bad(columns.line[i], (
                f"TIMESTAMP {_format_ns(time_ns)!r} is outside {_format_ns(lo)!r} to "
                f"{_format_ns(hi)!r}, the window holding most rows; a trace may span at most "
                f"{MAX_TRACE_SPAN_S // _S_PER_DAY} days (MAX_TRACE_SPAN_S = "
                f"{MAX_TRACE_SPAN_S:,} s)"
            ))
    return columns.keep(drop)


def _in_order(columns: _Columns, problems: RowProblems) -> _Columns:
    """Drop (and report) the rows out of time order (see the module docstring)."""
    dropped = out_of_order(columns.time_ns)
    if not dropped:
        return columns
    times, line = columns.time_ns, columns.line
    for i, earlier, other in dropped:
        relation = "earlier than the previous" if earlier else "later than the next"
        problem = (f"TIMESTAMP {_format_ns(times[i])!r} is {relation} kept row's "
                   f"{_format_ns(times[other])!r} (line {line[other]})")
        if not earlier:
            problem += ": this row is out of order"
        problems.bad(line[i], f"{problem}; rows must be sorted by time")
    return columns.keep({i for i, _, _ in dropped})


def _format_ns(time_ns: int) -> str:
    """A timestamp in the trace's format (7 fraction digits, 9 when they are needed)."""
    seconds, fraction = divmod(time_ns, _NS_PER_S)
    days, second_of_day = divmod(seconds, _S_PER_DAY)
    clock = dt.time(second_of_day // 3600, second_of_day // 60 % 60, second_of_day % 60)
    digits = f"{fraction:09d}" if fraction % 100 else f"{fraction // 100:07d}"
    return f"{dt.date.fromordinal(days).isoformat()} {clock.isoformat()}.{digits}"


def _parse_timestamp_ns(text: str) -> int:
    """Nanoseconds since 0001-01-01 as an exact int (float64 would lose the 100-ns digits)."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise RowError(f"TIMESTAMP {text!r} is not a timestamp like '2023-11-16 18:15:46.6805900'")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        days = dt.date(year, month, day).toordinal()
        dt.time(hour, minute, second)
    except ValueError as exc:
        raise RowError(f"TIMESTAMP {text.strip()!r} is not a valid date/time: {exc}") from None
    seconds = days * _S_PER_DAY + hour * 3600 + minute * 60 + second
    # Digits beyond nanoseconds are below float64 resolution for any trace span: dropped.
    fraction = int(((match.group(7) or "") + "000000000")[:9])
    return seconds * _NS_PER_S + fraction


def _relative_seconds(time_ns: list[int]) -> np.ndarray:
    """Seconds since the first kept row, rounded once from exact integer nanoseconds."""
    if not time_ns:
        return np.zeros(0)
    first = time_ns[0]
    offsets = np.array([t - first for t in time_ns], dtype=np.int64)
    return offsets / _NS_PER_S
