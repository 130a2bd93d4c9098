"""Shared plumbing of the trace loaders: finding, opening, parsing and reporting.

Every loader follows one pattern (the Azure loader's):

* the file is the shipped copy under ``envs/data/traces/<folder>/`` unless a ``path`` is
  given; a missing file raises :class:`TraceFileNotFoundError` naming the path;
* compression is detected from the content (gzip, xz or plain text), never from the name;
* a bad row raises :class:`WorkloadError` ``"<file>:<line>: <problem>; fix the row or pass
  on_error='skip'"`` with ``on_error="raise"``; with ``on_error="skip"`` it is left out and
  listed in the :class:`LoadReport` (problems in file order);
* a problem with the file itself (empty, wrong header, unreadable) always raises.

Bounds: what a loader reads is bounded, and a value past a bound is a bad row whose message
names the field and the bound (so it raises or is skipped like any other bad row):

* a row (line) is at most :data:`MAX_ROW_CHARS` (1 MiB: 1,048,576 characters; the longest
  shipped row, a ServeGen PMF, has 239,307) or, for loaders that parse rows with the
  :mod:`csv` module, :data:`MAX_CSV_ROW_CHARS` (65,536, well below csv's own field limit of
  131,072, so csv never refuses a field). :class:`BoundedLines` reads at most that much of
  a longer row and reports it; the rest of it is read in chunks and discarded, so a file
  without line breaks never fills memory;
* a token count (prompt or output length) is at most :data:`MAX_TOKENS` (10,000,000); a
  number with more digits than Python's int() takes (4,300) is reported as above the
  bound instead of raising :class:`ValueError` (:func:`digits_value`);
* arrival times span at most :data:`MAX_TRACE_SPAN_S` (365 days); each loader says how
  it applies this (from its time origin, or as the window holding most rows).

Time order: rows must be sorted by time. When they are not, :func:`out_of_order` chooses
the rows to drop: the kept rows are the longest subsequence whose times never decrease
(ties: the earliest rows win), so one mistyped row is the bad one, not every row after it.
A dropped row is reported as earlier than the previous kept row, or later than the next
kept row. Order is checked once the file is read, so with ``on_error="raise"`` a bad value
anywhere raises before an order problem.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import gzip
import lzma
import math
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

from servegym.envs.workloads.workload import WorkloadError, WorkloadWarning

__all__ = [
    "MAX_CSV_ROW_CHARS",
    "MAX_ROW_CHARS",
    "MAX_TOKENS",
    "MAX_TRACE_SPAN_S",
    "ON_ERROR",
    "READ_ERRORS",
    "BoundedLines",
    "LoadReport",
    "RowError",
    "RowProblems",
    "TraceFileNotFoundError",
    "check_on_error",
    "check_tokens",
    "describe_non_count",
    "digits_value",
    "open_text",
    "out_of_order",
    "parse_count",
    "trace_file",
    "unreadable",
    "warn_if_skipped",
]

ON_ERROR = ("raise", "skip")
# What reading a damaged or non-text file raises, turned into one WorkloadError.
READ_ERRORS = (csv.Error, UnicodeDecodeError, EOFError, OSError, zlib.error, lzma.LZMAError)
# Longest row (line, without its line break) in characters; 1 MiB of ASCII text.
MAX_ROW_CHARS = 1 << 20
# Longest row of a csv-parsed file: half csv's default field_size_limit (131,072).
MAX_CSV_ROW_CHARS = 1 << 16
# Most tokens of one prompt or one output (10 M: beyond any served context window).
MAX_TOKENS = 10**7
# Longest trace in seconds (365 days); the simulator refuses arrivals beyond 1e9 s.
MAX_TRACE_SPAN_S = 365 * 86_400
_INT_DIGITS = 4300  # int() of more digits raises ValueError (sys.get_int_max_str_digits)


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
    lines: list[int] = field(default_factory=list)  # the line of each problem

    def bad(self, line: int, problem: object) -> None:
        """Raise for ``on_error='raise'``, else record ``"<file>:<line>: <problem>"``.

        Problems stay in file order even when found late (order checks run after reading).
        """
        located = f"{self.path}:{line}: {problem}"
        if self.on_error == "raise":
            raise WorkloadError(f"{located}; fix the row or pass on_error='skip'") from None
        at = bisect.bisect_right(self.lines, line)
        self.lines.insert(at, line)
        self.problems.insert(at, located)

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
    resource = resources.files("servegym.envs.data").joinpath(*shipped.split("/"))
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


class BoundedLines:
    """The lines of ``text`` (an iterator of str), each at most ``limit`` characters long.

    A longer line is reported to ``problems`` as a bad row (``on_error="raise"`` raises)
    and replaced by an empty line, which every loader skips as blank; :attr:`too_long`
    counts them, for the loader's count of rows read. With ``header=True`` a too-long
    first line raises, as any bad header does. :attr:`line` is the number of the line last
    returned (1-based), which also is a :mod:`csv` reader's ``line_num`` over these lines.
    """

    def __init__(self, text: TextIO, problems: RowProblems, limit: int = MAX_ROW_CHARS,
                 *, header: bool = False) -> None:
        self._text = text
        self._problems = problems
        self._limit = limit
        self._header = header
        self.line = 0
        self.too_long = 0

    def __iter__(self) -> Iterator[str]:
        readline, size, limit = self._text.readline, self._limit + 2, self._limit
        while True:
            # A line of `limit` characters plus "\r\n" fits in limit + 2.
            line = readline(size)
            if not line:
                return
            self.line += 1
            if len(line) <= limit or len(line.rstrip("\r\n")) <= limit:
                yield line
            else:
                yield self._too_long(line)

    def __next__(self) -> str:
        return next(iter(self))

    def _too_long(self, line: str) -> str:
        content = len(line.rstrip("\r\n"))
        while not line.endswith(("\n", "\r")):
            line = self._text.readline(self._limit)
            if not line:
                break
            content += len(line.rstrip("\r\n"))
        problem = (f"row is {content:,} characters long; a row may have at most "
                   f"{self._limit:,} characters")
        if self._header and self.line == 1:
            raise WorkloadError(f"{self._problems.path}:1: header {problem}")
        self.too_long += 1
        self._problems.bad(self.line, problem)
        return "\n"


def unreadable(path: Path, line: int, exc: BaseException, what: str) -> WorkloadError:
    """The error for a file that cannot be decoded as ``what`` (e.g. 'CSV', 'JSON lines')."""
    return WorkloadError(
        f"{path}: near line {line}: cannot read the file as a (compressed) {what} trace: "
        f"{exc}; check that the file is complete, UTF-8 text"
    )


# ---------------------------------------------------------------------- values


def parse_count(column: str, text: str) -> int:
    """A token count in ``[1, MAX_TOKENS]`` written as plain digits, or :class:`RowError`."""
    value = text.strip()
    if not value:
        raise RowError(f"{column} is empty")
    if value.isascii() and value.isdigit():
        count = digits_value(value)
        if count == 0:
            raise RowError(f"{column} is 0; a request needs at least one token")
        check_tokens(column, count, value)
        return count
    raise RowError(
        f"{column} = {value!r} is {describe_non_count(value)}; expected a positive integer"
    )


def digits_value(digits: str) -> int:
    """The int that ASCII ``digits`` write, or ``2**63`` (above every bound) when they have
    more significant digits than Python's int() accepts (4,300)."""
    if len(digits) > _INT_DIGITS:
        digits = digits.lstrip("0") or "0"
        if len(digits) > _INT_DIGITS:
            return 2**63
    return int(digits)


def check_tokens(name: str, count: int, text: str | None = None) -> None:
    """:class:`RowError` when a token count is above :data:`MAX_TOKENS`.

    ``text`` is the count as written, shown instead of ``count`` (shortened when long).
    """
    if count <= MAX_TOKENS:
        return
    shown = text if text is not None else str(count)
    if len(shown) > 24:
        shown = f"{shown[:12]}... ({len(shown):,} characters)"
    raise RowError(f"{name} = {shown} is above the bound of {MAX_TOKENS:,} tokens (MAX_TOKENS)")


def describe_non_count(value: object) -> str:
    """Why ``value`` (text or number) is not a plain positive integer."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):  # exact, also beyond float range
        return "negative" if value < 0 else "zero" if value == 0 else "too large"
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


# ---------------------------------------------------------------------- time order


def out_of_order(times: Sequence[float]) -> list[tuple[int, bool, int]]:
    """The rows to drop so that the rest is sorted, with the kept row each one breaks.

    The kept rows are the longest subsequence of ``times`` that never decreases; of
    several, the one whose rows come first in the file. Returns ``(row, earlier, other)``
    per dropped row, in row order: ``earlier`` is True when ``times[row]`` is earlier than
    the previous kept row ``other``, False when it is later than the next kept row
    ``other``. Sorted input returns ``[]`` at once.
    """
    n = len(times)
    if all(times[i] <= times[i + 1] for i in range(n - 1)):
        return []
    # longest[i]: length of the longest non-decreasing run of rows starting at row i, found
    # right to left by patience sorting -times (a run read backwards never increases).
    longest = [0] * n
    tails: list[float] = []
    for i in range(n - 1, -1, -1):
        k = bisect.bisect_right(tails, -times[i])
        if k == len(tails):
            tails.append(-times[i])
        else:
            tails[k] = -times[i]
        longest[i] = k + 1
    # Greedy from the top: the first row that can still start a longest run is kept.
    need, last = len(tails), -math.inf
    kept: list[int] = []
    for i in range(n):
        if need and longest[i] == need and times[i] >= last:
            kept.append(i)
            need -= 1
            last = times[i]
    dropped: list[tuple[int, bool, int]] = []
    k = 0  # kept[k] is the first kept row after i
    for i in range(n):
        while k < len(kept) and kept[k] < i:
            k += 1
        if k < len(kept) and kept[k] == i:
            continue
        # Maximality: i is either earlier than the previous kept row or later than the next.
        if k > 0 and times[i] < times[kept[k - 1]]:
            dropped.append((i, True, kept[k - 1]))
        else:
            dropped.append((i, False, kept[k]))
    return dropped
