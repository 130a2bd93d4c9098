"""Loader for the Azure LLM inference trace 2023 (Splitwise, ISCA'24).

The two traces ("code" and "conv") ship inside the package under
``envs/data/traces/azure_llm_2023/`` (see its ``SOURCE.md`` for origin, licence
CC-BY-4.0 and the citation that any use of them requires).

File format: CSV, optionally gzip- or xz-compressed (detected from the content, not the
name), header ``TIMESTAMP,ContextTokens,GeneratedTokens`` (extra columns are ignored),
timestamps ``YYYY-MM-DD HH:MM:SS.fffffff``. Blank lines are ignored.

Bad rows: with ``on_error="raise"`` (default) the first bad row raises
:class:`WorkloadError` ``"<file>:<line>: <problem>; fix the row or pass on_error='skip'"``.
With ``on_error="skip"`` bad rows are left out and listed in a :class:`LoadReport`:
:func:`load_azure_2023_with_report` returns it, :func:`load_azure_2023` emits a
:class:`WorkloadWarning` with the count instead. A problem with the file itself
(missing, empty, wrong header, not CSV) always raises.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from envs.workloads.tracefiles import (
    READ_ERRORS,
    LoadReport,
    RowError,
    RowProblems,
    TraceFileNotFoundError,
    check_on_error,
    open_text,
    parse_count,
    trace_file,
    unreadable,
    warn_if_skipped,
)
from envs.workloads.workload import Workload, WorkloadError

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

    time_ns: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    rows_read: int = 0


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
        reader = csv.reader(text)
        try:
            return _read_rows(path, reader, problems)
        except READ_ERRORS as exc:
            raise unreadable(path, reader.line_num + 1, exc, "CSV") from exc


def _read_rows(path: Path, reader: _CsvReader, problems: RowProblems) -> _Columns:
    header = next(reader, None)
    if header is None:
        raise WorkloadError(
            f"{path}: file is empty; expected a header line {','.join(_COLUMNS)} and one "
            "row per request"
        )
    index = _column_index(path, header)
    columns = _Columns()
    last: tuple[int, str] | None = None  # last kept row's time and its text
    for row in reader:
        if not row:
            continue  # a blank line holds no request
        columns.rows_read += 1
        try:
            time_ns, prompt, output = _parse_row(row, index, len(header))
            _check_order(time_ns, last, row[index[0]])
        except RowError as problem:
            problems.bad(reader.line_num, problem)
            continue
        last = (time_ns, row[index[0]].strip())
        columns.time_ns.append(time_ns)
        columns.prompt.append(prompt)
        columns.output.append(output)
    problems.check_loaded(columns.rows_read, len(columns.time_ns))
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


def _check_order(time_ns: int, last: tuple[int, str] | None, text: str) -> None:
    if last is not None and time_ns < last[0]:
        raise RowError(
            f"TIMESTAMP {text.strip()!r} is earlier than the previous kept row's "
            f"{last[1]!r}; rows must be sorted by time"
        )


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
