"""Reading the shipped ServeGen (Alibaba Bailian) pool files: per-client rates and PMFs.

Files of a pool ``<category>/<model>`` (stem ``<category>_<model>``), in
``envs/data/traces/servegen_bailian/`` or a folder given as ``path``; compression (xz,
gzip or none) is detected from the content:

* ``<stem>_rates.csv.xz``: ``client_id,window_start_s,rate_rps,iat_cv,iat_dist,iat_param1,
  iat_param2``, one row per client and 600-s window, sorted by window within a client;
  ``iat_dist`` is ``Gamma``, ``Weibull`` or empty (no requests: rate 0);
* ``<stem>_pmfs.csv.xz``: ``client_id,window_start_s,field,values,weights``, one PMF per
  client, 6-hour window and field; space-separated values and weights (integer counts, or
  probabilities), see ``SOURCE.md``.

PMF fields (the ``field`` column) are :data:`PMF_FIELDS`: the prompt fields
:data:`PROMPT_FIELDS` (``input_tokens`` in language pools; ``text_tokens``,
``image_tokens``, ``audio_tokens``, ``video_tokens`` in multimodal ones), ``output_tokens``
and the multimodal ``*_count`` fields (read, not used for lengths). Another name (e.g.
``input`` or ``output``) is a bad row that names the expected fields.

Only rows of the requested windows are parsed in full (the client, window and field columns
of every row are read and checked, and the window order of rate rows); bad rows raise
``<file>:<line>: <problem>`` or are skipped and counted with ``on_error="skip"``.

Bounds (a row past one is a bad row naming the field and the bound): a rates row is at
most :data:`~envs.workloads.tracefiles.MAX_CSV_ROW_CHARS` characters (65,536), a PMF line
at most :data:`~envs.workloads.tracefiles.MAX_ROW_CHARS` (1 MiB; the longest shipped one
has 239,307); ``client_id`` is at most :data:`SERVEGEN_MAX_CLIENT_ID` (2**31 - 1; shipped
ids are below 200); ``window_start_s`` is below the pool's span (:data:`SERVEGEN_POOLS`;
at most 14 days); a PMF value (a token count) is at most
:data:`~envs.workloads.tracefiles.MAX_TOKENS` (10,000,000).
"""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from envs.workloads.tracefiles import (
    MAX_CSV_ROW_CHARS,
    MAX_ROW_CHARS,
    READ_ERRORS,
    BoundedLines,
    RowError,
    RowProblems,
    check_tokens,
    digits_value,
    open_text,
    trace_file,
    unreadable,
)
from envs.workloads.workload import WorkloadError

__all__ = [
    "DIST_GAMMA",
    "DIST_NONE",
    "DIST_WEIBULL",
    "LENGTH_WINDOW_S",
    "PMF_FIELDS",
    "PROMPT_FIELDS",
    "RATE_WINDOW_S",
    "SERVEGEN_MAX_CLIENT_ID",
    "SERVEGEN_POOLS",
    "Pmf",
    "PmfTable",
    "PoolRates",
    "read_pmfs",
    "read_rates",
]

# Pool -> span in seconds (rows cover windows [0, span)).
SERVEGEN_POOLS: Mapping[str, int] = MappingProxyType({
    "language/m-large": 14 * 86_400,
    "language/m-mid": 14 * 86_400,
    "language/m-small": 14 * 86_400,
    "multimodal/mm-image": 86_400,
})
_LONGEST_SPAN_S = max(SERVEGEN_POOLS.values())
RATE_WINDOW_S = 600
# Largest client id (int32, like a workload's tenant ids; shipped ids are below 200).
SERVEGEN_MAX_CLIENT_ID = 2**31 - 1
# Length fields: summed into the prompt (whichever a pool has), the output, and counts.
PROMPT_FIELDS = ("input_tokens", "text_tokens", "image_tokens", "audio_tokens", "video_tokens")
PMF_FIELDS = (*PROMPT_FIELDS, "output_tokens", "image_count", "audio_count", "video_count")
LENGTH_WINDOW_S = 21_600
DIST_NONE, DIST_GAMMA, DIST_WEIBULL = 0, 1, 2
_DISTS = MappingProxyType({"": DIST_NONE, "Gamma": DIST_GAMMA, "Weibull": DIST_WEIBULL})
_RATE_COLUMNS = ("client_id", "window_start_s", "rate_rps", "iat_cv", "iat_dist", "iat_param1",
                 "iat_param2")
_PMF_COLUMNS = ("client_id", "window_start_s", "field", "values", "weights")
_FOLDER = "traces/servegen_bailian"


@dataclass(frozen=True, eq=False)
class PoolRates:
    """Rate rows of one pool (one entry per client and 600-s window), file order."""

    client: np.ndarray  # int64
    window: np.ndarray  # int64 window start, seconds from the pool start
    rate: np.ndarray  # float64 requests per second
    cv: np.ndarray  # float64 inter-arrival CV
    dist: np.ndarray  # int8 DIST_*
    shape: np.ndarray  # float64 fitted shape (Gamma a, Weibull c)
    scale: np.ndarray  # float64 fitted scale
    all_clients: tuple[int, ...]  # every client id of the file, also those out of range


@dataclass(frozen=True, eq=False)
class Pmf:
    """One length distribution: ``values`` with cumulative weights ``cdf`` (not normalised)."""

    values: np.ndarray
    cdf: np.ndarray

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        picks = np.searchsorted(self.cdf, rng.random(n) * self.cdf[-1], side="right")
        return self.values[np.minimum(picks, self.values.size - 1)]

    def mean(self) -> float:
        weights = np.diff(self.cdf, prepend=0.0)
        return float((self.values * weights).sum() / self.cdf[-1])


@dataclass
class _RateRows:
    columns: list[list[float]] = field(default_factory=lambda: [[] for _ in range(7)])
    clients: set[int] = field(default_factory=set)
    last_window: dict[int, int] = field(default_factory=dict)
    rows_read: int = 0
    rows_kept: int = 0


def pool_stem(pool: str) -> str:
    if pool not in SERVEGEN_POOLS:
        raise WorkloadError(
            f"unknown ServeGen pool {pool!r}; shipped pools: {', '.join(SERVEGEN_POOLS)}"
        )
    return pool.replace("/", "_")


def pool_file(
    path: str | Path | None, pool: str, kind: str
) -> contextlib.AbstractContextManager[Path]:
    """Context manager giving the ``kind`` ('rates' or 'pmfs') file of ``pool``."""
    name = f"{pool_stem(pool)}_{kind}.csv.xz"
    user = None if path is None else Path(path) / name
    hint = (f"pass path= a folder holding {name} (xz, gzip or plain CSV), or None for the "
            "shipped data")
    return trace_file(user, f"{_FOLDER}/{name}", hint)


# ---------------------------------------------------------------------- rates


def read_rates(
    path: Path, problems: RowProblems, start: float, end: float, *,
    span_s: int = _LONGEST_SPAN_S,
) -> tuple[PoolRates, int, int]:
    """Rate rows whose window overlaps ``[start, end)``; also rows read and kept.

    ``span_s`` is the pool's span: a window starting at or after it is a bad row.
    """
    rows = _RateRows()
    with open_text(path) as text:
        lines = BoundedLines(text, problems, MAX_CSV_ROW_CHARS, header=True)
        reader = csv.reader(lines)
        try:
            _check_header(path, next(reader, None), _RATE_COLUMNS)
            for row in reader:
                if row:
                    _rate_row(row, reader.line_num, rows, problems, start, end, span_s)
        except READ_ERRORS as exc:
            raise unreadable(path, reader.line_num + 1, exc, "CSV") from exc
    rows.rows_read += lines.too_long
    problems.check_loaded(rows.rows_read, rows.rows_read - len(problems.problems))
    c = rows.columns
    rates = PoolRates(
        np.array(c[0], dtype=np.int64), np.array(c[1], dtype=np.int64), np.array(c[2]),
        np.array(c[3]), np.array(c[4], dtype=np.int8), np.array(c[5]), np.array(c[6]),
        tuple(sorted(rows.clients)),
    )
    return rates, rows.rows_read, rows.rows_kept


def _rate_row(row: list[str], line: int, rows: _RateRows, problems: RowProblems,
              start: float, end: float, span_s: int) -> None:
    rows.rows_read += 1
    try:
        if len(row) != len(_RATE_COLUMNS):
            raise RowError(f"row has {len(row)} field(s), expected {len(_RATE_COLUMNS)}: "
                           f"{','.join(_RATE_COLUMNS)}")
        client, window = _client_window(row[0], row[1], span_s)
        previous = rows.last_window.get(client)
        if previous is not None and window <= previous:
            raise RowError(f"window_start_s {window} of client {client} is not after its "
                           f"previous window {previous}; rows must be sorted by window")
        rows.last_window[client] = window
        rows.clients.add(client)
        if window + RATE_WINDOW_S <= start or window >= end:
            return  # outside the requested span: order checked, values not needed
        values = _rate_values(row)
    except RowError as problem:
        problems.bad(line, problem)
        return
    for column, value in zip(rows.columns, (client, window, *values), strict=True):
        column.append(value)
    rows.rows_kept += 1


def _rate_values(row: list[str]) -> tuple[float, float, int, float, float]:
    rate = _finite("rate_rps", row[2], minimum=0.0)
    cv = _finite("iat_cv", row[3], minimum=0.0)
    if row[4] not in _DISTS:
        raise RowError(f"iat_dist = {row[4]!r} is not Gamma, Weibull or empty")
    dist = _DISTS[row[4]]
    shape = _finite("iat_param1", row[5], minimum=0.0)
    scale = _finite("iat_param2", row[6], minimum=0.0)
    if dist == DIST_NONE and rate > 0:
        raise RowError(f"rate_rps = {rate:g} > 0 but iat_dist is empty; name the fitted "
                       "distribution (Gamma or Weibull)")
    if dist != DIST_NONE and (shape <= 0 or scale <= 0):
        raise RowError(f"{row[4]} parameters ({row[5]}, {row[6]}) must both be > 0")
    return rate, cv, dist, shape, scale


# ---------------------------------------------------------------------- PMFs


class PmfTable:
    """The PMF lines of the wanted (client, window) pairs, parsed on first use.

    Lines are kept as text until :meth:`fields` asks for them, so a span late in a pool
    does not pay for parsing the earlier windows it only might fall back to. A bad line
    is reported (raised or skipped) when it is parsed, naming its file line.
    """

    def __init__(self, problems: RowProblems) -> None:
        self._problems = problems
        self._raw: dict[tuple[int, int], dict[str, tuple[int, str, str]]] = {}
        self._parsed: dict[tuple[int, int], dict[str, Pmf]] = {}

    def add(self, client: int, window: int, field: str, line: int, values: str,
            weights: str) -> None:
        self._raw.setdefault((client, window), {})[field] = (line, values, weights)

    def pairs(self) -> list[tuple[int, int]]:
        """The (client, window) pairs with PMF lines."""
        return list(self._raw)

    def fields(self, client: int, window: int) -> dict[str, Pmf]:
        """The parsed PMFs of ``(client, window)`` by field (empty if none)."""
        key = (client, window)
        if key not in self._parsed:
            parsed = {}
            for name, (line, values, weights) in self._raw.get(key, {}).items():
                try:
                    parsed[name] = _pmf(values, weights)
                except RowError as problem:
                    self._problems.bad(line, problem)
            self._parsed[key] = parsed
        return self._parsed[key]


def read_pmfs(
    path: Path, problems: RowProblems, wanted: Callable[[int, int], bool], *,
    span_s: int = _LONGEST_SPAN_S,
) -> tuple[PmfTable, set[int], int]:
    """The PMF lines for which ``wanted(client, window)``, as a lazily parsed table.

    Also returns every client id with a PMF line, and the number of lines read. Client,
    window (below ``span_s``, the pool's span) and field are checked on every line; values
    and weights when parsed.
    """
    table = PmfTable(problems)
    clients: set[int] = set()
    rows_read = 0
    with open_text(path) as text:
        lines = BoundedLines(text, problems, MAX_ROW_CHARS, header=True)
        try:
            header = next(lines, "").rstrip("\r\n")
            _check_header(path, header.split(",") if header else None, _PMF_COLUMNS)
            for content in lines:
                if content.strip():
                    rows_read += 1
                    _pmf_line(content, lines.line, table, clients, problems, wanted, span_s)
        except READ_ERRORS as exc:
            raise unreadable(path, lines.line + 1, exc, "CSV") from exc
    rows_read += lines.too_long
    problems.check_loaded(rows_read, rows_read - len(problems.problems))
    return table, clients, rows_read


def _pmf_line(content: str, line: int, table: PmfTable, clients: set[int],
              problems: RowProblems, wanted: Callable[[int, int], bool], span_s: int) -> None:
    parts = content.rstrip("\r\n").split(",")
    try:
        if len(parts) != len(_PMF_COLUMNS):
            raise RowError(f"line has {len(parts)} field(s), expected {len(_PMF_COLUMNS)}: "
                           f"{','.join(_PMF_COLUMNS)}")
        client, window = _client_window(parts[0], parts[1], span_s)
        if not parts[2]:
            raise RowError("field is empty")
        if parts[2] not in PMF_FIELDS:
            raise RowError(
                f"field = {_shorter(parts[2])!r} is not a known PMF field; expected one of "
                f"{', '.join(PMF_FIELDS)} (a client needs output_tokens and a prompt field: "
                "input_tokens, or text/image/audio/video_tokens)"
            )
    except RowError as problem:
        problems.bad(line, problem)
        return
    clients.add(client)
    if wanted(client, window):
        table.add(client, window, parts[2], line, parts[3], parts[4])


def _pmf(values_text: str, weights_text: str) -> Pmf:
    value_tokens, weight_tokens = values_text.split(), weights_text.split()
    if not value_tokens:
        raise RowError("values is empty")
    if len(value_tokens) != len(weight_tokens):
        raise RowError(f"{len(value_tokens)} values but {len(weight_tokens)} weights")
    try:
        numbers = [int(v) if len(v) <= 20 else _long_int(v) for v in value_tokens]
    except ValueError:
        raise RowError("values must be space-separated non-negative integers") from None
    lowest, highest = min(numbers), max(numbers)
    if lowest < 0:
        raise RowError(f"value {_shorter(value_tokens[numbers.index(lowest)])} is negative")
    check_tokens("value", highest, value_tokens[numbers.index(highest)])
    values = np.array(numbers, dtype=np.int64)
    weights = _weights(weight_tokens)
    return Pmf(values, np.cumsum(weights))


def _long_int(token: str) -> int:
    """A long integer token (int() refuses over 4,300 digits: see digits_value)."""
    digits = token[1:] if token[:1] in "+-" else token
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(token)
    return -digits_value(digits) if token[0] == "-" else digits_value(digits)


def _weights(tokens: list[str]) -> np.ndarray:
    try:
        weights = np.array([float(w) for w in tokens])
    except ValueError:
        raise RowError("weights must be space-separated numbers") from None
    if not np.all(np.isfinite(weights)):
        raise RowError("weights contain NaN or infinity")
    if weights.min() < 0:
        raise RowError(f"weight {weights.min():g} is negative")
    if weights.sum() <= 0:
        raise RowError("weights sum to 0; a PMF needs positive mass")
    return weights


# ---------------------------------------------------------------------- helpers


def _check_header(path: Path, header: list[str] | None, columns: Iterable[str]) -> None:
    expected = list(columns)
    if header is None:
        raise WorkloadError(f"{path}: file is empty; expected the header {','.join(expected)}")
    if [h.strip() for h in header] != expected:
        raise WorkloadError(
            f"{path}:1: header is {','.join(header)!r}; expected {','.join(expected)!r}"
        )


def _client_window(client_text: str, window_text: str, span_s: int) -> tuple[int, int]:
    """The row's client id and window start, checked against their bounds."""
    c, w = client_text.strip(), window_text.strip()
    # Fast path (every row of a good file): 9 digits at most are below the client bound.
    if len(c) <= 9 and len(w) <= 9 and c.isdigit() and w.isdigit() and (c + w).isascii():
        window = int(w)
        if window < span_s:
            return int(c), window
    client = _plain_int("client_id", client_text)
    if client > SERVEGEN_MAX_CLIENT_ID:
        raise RowError(f"client_id = {_shorter(client_text.strip())} is above the bound of "
                       f"{SERVEGEN_MAX_CLIENT_ID:,} (SERVEGEN_MAX_CLIENT_ID)")
    window = _plain_int("window_start_s", window_text)
    if window >= span_s:
        raise RowError(f"window_start_s = {_shorter(window_text.strip())} is not below the "
                       f"pool's span of {span_s:,} s (windows start in [0, {span_s:,}))")
    return client, window


def _plain_int(name: str, text: str) -> int:
    """A non-negative integer written as plain digits (see digits_value), or RowError."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise RowError(f"{name} = {_shorter(value)!r} is not a non-negative integer")
    return digits_value(value)


def _shorter(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text):,} characters)"


def _finite(name: str, text: str, minimum: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RowError(f"{name} = {text!r} is not a number") from None
    if math.isnan(value):
        raise RowError(f"{name} is NaN")
    if not math.isfinite(value):
        raise RowError(f"{name} = {text!r} is infinite")
    if value < minimum:
        raise RowError(f"{name} = {value:g} is negative")
    return value
