"""Shared plumbing of the trace loaders: finding, opening, parsing and reporting.

Every loader follows one pattern (the Azure loader's):

* the file is the shipped copy under ``envs/data/traces/<folder>/`` unless a ``path`` is
  given; a missing file raises :class:`TraceFileNotFoundError` naming the path;
* compression is detected from the content (gzip, xz or plain text), never from the name;
* a bad row raises :class:`WorkloadError` ``"<file>:<line>: <problem>; fix the row or pass
  on_error='skip'"`` with ``on_error="raise"``; with ``on_error="skip"`` it is left out and
  listed in the :class:`LoadReport`;
* a problem with the file itself (empty, wrong header, unreadable) always raises.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import lzma
import math
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

from envs.workloads.workload import WorkloadError, WorkloadWarning

__all__ = [
    "ON_ERROR",
    "READ_ERRORS",
    "LoadReport",
    "RowError",
    "RowProblems",
    "TraceFileNotFoundError",
    "check_on_error",
    "describe_non_count",
    "open_text",
    "parse_count",
    "trace_file",
    "unreadable",
    "warn_if_skipped",
]

ON_ERROR = ("raise", "skip")
# What reading a damaged or non-text file raises, turned into one WorkloadError.
READ_ERRORS = (csv.Error, UnicodeDecodeError, EOFError, OSError, zlib.error, lzma.LZMAError)
_INT64_MAX = 2**63 - 1


class TraceFileNotFoundError(WorkloadError, FileNotFoundError):
    """The trace file does not exist (also catchable as ``FileNotFoundError``)."""


class RowError(Exception):
    """One data row is bad; the caller adds file and line and decides raise or skip."""


@dataclass(frozen=True)
class LoadReport:
    """What a trace load kept and what it skipped.

    Attributes:
        path: the file read.
        rows_read: data rows in the file (header and blank lines not counted).
        rows_loaded: rows that became requests.
        problems: one ``"<file>:<line>: <problem>"`` per skipped row, in file order.
        notes: other things the loader changed or left out on purpose (one line each).
    """

    path: str
    rows_read: int
    rows_loaded: int
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def rows_skipped(self) -> int:
        return len(self.problems)

    def __str__(self) -> str:
        text = f"{self.path}: loaded {self.rows_loaded} of {self.rows_read} rows"
        if self.problems:
            shown = "\n  ".join(self.problems[:5])
            more = f"\n  ... and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
            text = f"{text}, skipped {self.rows_skipped} bad rows:\n  {shown}{more}"
        for note in self.notes:
            text = f"{text}\n  note: {note}"
        return text


@dataclass
class RowProblems:
    """Raises or records row problems according to ``on_error`` (local to one load)."""

    path: Path
    on_error: str
    problems: list[str] = field(default_factory=list)

    def bad(self, line: int, problem: object) -> None:
        """Raise for ``on_error='raise'``, else record ``"<file>:<line>: <problem>"``."""
        located = f"{self.path}:{line}: {problem}"
        if self.on_error == "raise":
            raise WorkloadError(f"{located}; fix the row or pass on_error='skip'") from None
        self.problems.append(located)

    def check_loaded(self, rows_read: int, rows_loaded: int) -> None:
        """An empty result is an error even when skipping: nothing would be simulated."""
        if rows_loaded:
            return
        if rows_read == 0:
            raise WorkloadError(f"{self.path}: no data rows; the trace has no requests")
        raise WorkloadError(
            f"{self.path}: all {rows_read} data rows are bad, nothing left to load; first "
            f"problem: {self.problems[0]}"
        )

    def report(self, rows_read: int, rows_loaded: int, notes: tuple[str, ...] = ()) -> LoadReport:
        return LoadReport(str(self.path), rows_read, rows_loaded, tuple(self.problems), notes)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise WorkloadError(f"on_error={on_error!r}: pass on_error='raise' or on_error='skip'")


def warn_if_skipped(report: LoadReport, stacklevel: int = 3) -> None:
    """Skipping is never silent: a load without a report returned warns with the count."""
    if report.rows_skipped:
        warnings.warn(str(report), WorkloadWarning, stacklevel=stacklevel)


# ---------------------------------------------------------------------- files


@contextlib.contextmanager
def trace_file(path: str | Path | None, shipped: str, hint: str) -> Iterator[Path]:
    """The file to read: ``path``, or the shipped ``envs/data/<shipped>`` as a real file.

    ``hint`` says what a user-given path should be; it ends the not-found message.
    """
    if path is not None:
        yield _existing(Path(path), hint)
        return
    resource = resources.files("envs.data").joinpath(*shipped.split("/"))
    # as_file gives a real path even when the package is installed as a zip.
    with resources.as_file(resource) as real_path:
        yield _existing(Path(real_path), None)


def _existing(path: Path, hint: str | None) -> Path:
    if path.is_file():
        return path
    fix = hint or "the package data is missing; reinstall servegym (pip install -e .)"
    what = "is a directory" if path.is_dir() else "no such file"
    raise TraceFileNotFoundError(f"{path}: {what}; {fix}")


def open_text(path: Path) -> TextIO:
    """Open gzip-, xz-compressed or plain UTF-8 text (a leading byte-order mark dropped)."""
    with path.open("rb") as raw:
        magic = raw.read(6)
    # utf-8-sig drops a byte-order mark that spreadsheet exports put before the header.
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def unreadable(path: Path, line: int, exc: BaseException, what: str) -> WorkloadError:
    """The error for a file that cannot be decoded as ``what`` (e.g. 'CSV', 'JSON lines')."""
    return WorkloadError(
        f"{path}: near line {line}: cannot read the file as a (compressed) {what} trace: "
        f"{exc}; check that the file is complete, UTF-8 text"
    )


# ---------------------------------------------------------------------- values


def parse_count(column: str, text: str) -> int:
    """A positive integer token count written as plain digits, or :class:`RowError`."""
    value = text.strip()
    if not value:
        raise RowError(f"{column} is empty")
    if value.isascii() and value.isdigit():
        count = int(value)
        if count == 0:
            raise RowError(f"{column} is 0; a request needs at least one token")
        if count > _INT64_MAX:
            raise RowError(f"{column} = {value} is too large")
        return count
    raise RowError(
        f"{column} = {value!r} is {describe_non_count(value)}; expected a positive integer"
    )


def describe_non_count(value: object) -> str:
    """Why ``value`` (text or number) is not a plain positive integer."""
    if isinstance(value, bool):
        return "a boolean"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "not a number"
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "infinite"
    if number < 0:
        return "negative"
    if number == 0:
        return "zero"
    if not number.is_integer():
        return "not a whole number"
    return "not written as a plain integer"
