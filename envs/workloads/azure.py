"""Loader for the Azure LLM inference trace 2023 (Splitwise, ISCA'24).

The two traces ("code" and "conv") ship inside the package under
``envs/data/traces/azure_llm_2023/`` (see its ``SOURCE.md`` for origin, licence
CC-BY-4.0 and the citation that any use of them requires).

File format: CSV, optionally gzip-compressed (detected from the content, not the
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

import contextlib
import csv
import datetime as dt
import gzip
import math
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from envs.workloads.workload import Workload, WorkloadError, WorkloadWarning

__all__ = [
    "AZURE_2023_KINDS",
    "LoadReport",
    "TraceFileNotFoundError",
    "load_azure_2023",
    "load_azure_2023_with_report",
]

AZURE_2023_KINDS: tuple[str, ...] = ("code", "conv")
_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_ON_ERROR = ("raise", "skip")
_DATA_DIR = "traces/azure_llm_2023"
_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?", re.ASCII)
_INT64_MAX = int(np.iinfo(np.int64).max)
_NS_PER_S = 1_000_000_000
_S_PER_DAY = 86_400


class TraceFileNotFoundError(WorkloadError, FileNotFoundError):
    """The trace file does not exist (also catchable as ``FileNotFoundError``)."""


class _CsvReader(Protocol):
    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


class _RowError(Exception):
    """One data row is bad; the caller adds file and line and decides raise or skip."""


@dataclass(frozen=True)
class LoadReport:
    """What a trace load kept and what it skipped.

    Attributes:
        path: the file read.
        rows_read: data rows in the file (header and blank lines not counted).
        rows_loaded: rows that became requests.
        problems: one ``"<file>:<line>: <problem>"`` per skipped row, in file order.
    """

    path: str
    rows_read: int
    rows_loaded: int
    problems: tuple[str, ...] = ()

    @property
    def rows_skipped(self) -> int:
        return len(self.problems)

    def __str__(self) -> str:
        text = f"{self.path}: loaded {self.rows_loaded} of {self.rows_read} rows"
        if not self.problems:
            return text
        shown = "\n  ".join(self.problems[:5])
        more = f"\n  ... and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        return f"{text}, skipped {self.rows_skipped} bad rows:\n  {shown}{more}"


@dataclass
class _Columns:
    """Accumulates the accepted rows while reading (local to one load)."""

    time_ns: list[int]
    prompt: list[int]
    output: list[int]
    problems: list[str]
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
        path: a trace file to read instead of the shipped one (``.csv`` or ``.csv.gz``);
            ``kind`` then only names the workload.
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
    if report.rows_skipped:
        warnings.warn(str(report), WorkloadWarning, stacklevel=2)
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
    if on_error not in _ON_ERROR:
        raise WorkloadError(f"on_error={on_error!r}: pass on_error='raise' or on_error='skip'")
    with _trace_path(kind, path) as file_path:
        columns = _read(file_path, on_error)
    report = LoadReport(
        path=str(file_path),
        rows_read=columns.rows_read,
        rows_loaded=len(columns.time_ns),
        problems=tuple(columns.problems),
    )
    workload = Workload.from_lengths(
        _relative_seconds(columns.time_ns),
        np.array(columns.prompt, dtype=np.int64),
        np.array(columns.output, dtype=np.int64),
        ttft_slo=ttft_slo,
        tpot_slo=tpot_slo,
        name=f"azure_{kind}_2023",
    )
    return workload, report


# ---------------------------------------------------------------------- file access


def _kinds_text() -> str:
    return ", ".join(repr(k) for k in AZURE_2023_KINDS)


@contextlib.contextmanager
def _trace_path(kind: str, path: str | Path | None) -> Iterator[Path]:
    """The file to read: ``path``, or the shipped trace of ``kind`` as a real file."""
    if path is not None:
        yield _existing_file(Path(path), shipped=False)
        return
    resource = resources.files("envs.data") / _DATA_DIR / f"AzureLLMInferenceTrace_{kind}.csv.gz"
    # as_file gives a real path even when the package is installed as a zip.
    with resources.as_file(resource) as real_path:
        yield _existing_file(Path(real_path), shipped=True)


def _existing_file(path: Path, *, shipped: bool) -> Path:
    if path.is_file():
        return path
    if shipped:
        fix = "the package data is missing; reinstall servegym (pip install -e .)"
    else:
        fix = (
            "pass the path of an AzureLLMInferenceTrace_<kind>.csv or .csv.gz file, or "
            f"path=None to load a shipped trace (known kinds: {_kinds_text()})"
        )
    what = "is a directory" if path.is_dir() else "no such file"
    raise TraceFileNotFoundError(f"{path}: {what}; {fix}")


def _open_text(path: Path) -> TextIO:
    with path.open("rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
    # utf-8-sig drops a byte-order mark that spreadsheet exports put before the header.
    if is_gzip:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def _read(path: Path, on_error: str) -> _Columns:
    with _open_text(path) as text:
        reader = csv.reader(text)
        try:
            return _read_rows(path, reader, on_error)
        except (csv.Error, UnicodeDecodeError, EOFError, OSError, zlib.error) as exc:
            raise WorkloadError(
                f"{path}: near line {reader.line_num + 1}: cannot read the file as a "
                f"(gzip-compressed) CSV trace: {exc}; check that the file is a complete, "
                "UTF-8 text CSV"
            ) from exc


# ---------------------------------------------------------------------- parsing


def _read_rows(path: Path, reader: _CsvReader, on_error: str) -> _Columns:
    header = next(reader, None)
    if header is None:
        raise WorkloadError(
            f"{path}: file is empty; expected a header line {','.join(_COLUMNS)} and one "
            "row per request"
        )
    index = _column_index(path, header)
    columns = _Columns(time_ns=[], prompt=[], output=[], problems=[])
    last: tuple[int, str] | None = None  # last kept row's time and its text
    for row in reader:
        if not row:
            continue  # a blank line holds no request
        columns.rows_read += 1
        try:
            time_ns, prompt, output = _parse_row(row, index, len(header))
            _check_order(time_ns, last, row[index[0]])
        except _RowError as problem:
            located = f"{path}:{reader.line_num}: {problem}"
            if on_error == "raise":
                raise WorkloadError(f"{located}; fix the row or pass on_error='skip'") from None
            columns.problems.append(located)
            continue
        last = (time_ns, row[index[0]].strip())
        columns.time_ns.append(time_ns)
        columns.prompt.append(prompt)
        columns.output.append(output)
    _check_not_empty(path, columns)
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


def _check_not_empty(path: Path, columns: _Columns) -> None:
    if columns.time_ns:
        return
    if columns.rows_read == 0:
        raise WorkloadError(f"{path}: no data rows after the header; the trace has no requests")
    raise WorkloadError(
        f"{path}: all {columns.rows_read} data rows are bad, nothing left to load; first "
        f"problem: {columns.problems[0]}"
    )


def _parse_row(row: list[str], index: tuple[int, int, int], width: int) -> tuple[int, int, int]:
    if len(row) != width:
        missing = [_COLUMNS[k] for k, i in enumerate(index) if i >= len(row)]
        detail = f"; missing {', '.join(missing)}" if missing else ""
        raise _RowError(f"row has {len(row)} field(s) but the header has {width}{detail}")
    ts, ctx, gen = index
    return (
        _parse_timestamp_ns(row[ts]),
        _parse_count(_COLUMNS[1], row[ctx]),
        _parse_count(_COLUMNS[2], row[gen]),
    )


def _check_order(time_ns: int, last: tuple[int, str] | None, text: str) -> None:
    if last is not None and time_ns < last[0]:
        raise _RowError(
            f"TIMESTAMP {text.strip()!r} is earlier than the previous kept row's "
            f"{last[1]!r}; rows must be sorted by time"
        )


def _parse_timestamp_ns(text: str) -> int:
    """Nanoseconds since 0001-01-01 as an exact int (float64 would lose the 100-ns digits)."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise _RowError(f"TIMESTAMP {text!r} is not a timestamp like '2023-11-16 18:15:46.6805900'")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        days = dt.date(year, month, day).toordinal()
        dt.time(hour, minute, second)
    except ValueError as exc:
        raise _RowError(f"TIMESTAMP {text.strip()!r} is not a valid date/time: {exc}") from None
    seconds = days * _S_PER_DAY + hour * 3600 + minute * 60 + second
    # Digits beyond nanoseconds are below float64 resolution for any trace span: dropped.
    fraction = int(((match.group(7) or "") + "000000000")[:9])
    return seconds * _NS_PER_S + fraction


def _parse_count(column: str, text: str) -> int:
    value = text.strip()
    if not value:
        raise _RowError(f"{column} is empty")
    if value.isascii() and value.isdigit():
        count = int(value)
        if count == 0:
            raise _RowError(f"{column} is 0; a request needs at least one token")
        if count > _INT64_MAX:
            raise _RowError(f"{column} = {value} is too large")
        return count
    raise _RowError(
        f"{column} = {value!r} is {_describe_non_count(value)}; expected a positive integer"
    )


def _describe_non_count(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return "not a number"
    if math.isnan(number):
        return "NaN"
    if number < 0:
        return "negative"
    if not number.is_integer():
        return "not a whole number"
    return "not written as a plain integer"


def _relative_seconds(time_ns: list[int]) -> np.ndarray:
    """Seconds since the first kept row, rounded once from exact integer nanoseconds."""
    if not time_ns:
        return np.zeros(0)
    first = time_ns[0]
    offsets = np.array([t - first for t in time_ns], dtype=np.int64)
    return offsets / _NS_PER_S
