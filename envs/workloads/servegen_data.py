"""Reading ServeGen (Alibaba Bailian) pool files: per-client rates and length PMFs.

A pool ``<category>/<model>`` (e.g. ``language/m-large``, ``reasoning/deepseek-r1``) is two
files with the stem ``<category>_<model>`` (the category is the name's first
``_``-separated word, the model the rest; no list of categories is kept). Compression (xz,
gzip or none) is detected from the content, the lengths layout from the header:

* ``<stem>_rates.csv[.xz|.gz]``: ``client_id,window_start_s,rate_rps,iat_cv,iat_dist,
  iat_param1,iat_param2``, one row per client and 600-s window, sorted by window within a
  client; ``iat_dist`` is ``Gamma``, ``Weibull`` or empty (no requests: rate 0);
* the lengths, in one of two layouts:

  - ``<stem>_pmfs.csv[.xz|.gz]`` (the project's re-encoding, made by ``convert.py`` in
    ``envs/data/traces/servegen_bailian/``): ``client_id,window_start_s,field,values,
    weights``, one PMF per client, 6-hour window and field; space-separated values and
    weights (integer counts, or probabilities), see ``SOURCE.md``;
  - ``<stem>_lengths.csv[.gz|.xz]`` (the joined upstream layout of the shared trace folder
    ``traces/servegen_bailian/``): ``client_id,window_start_s,field,value,prob``, one row
    per value of a PMF (the rows of one PMF need not be adjacent).

Where the files are (:func:`resolve_pool`, then :func:`pool_file`):

* ``path=None``: the shipped copy in ``envs/data/traces/servegen_bailian/`` of one of
  :data:`SERVEGEN_POOLS` (``<stem>_rates.csv.xz`` and ``<stem>_pmfs.csv.xz``);
* ``path=`` a folder: the files of ``pool`` in it (rates: ``<stem>_rates.csv.xz``, then
  ``.csv.gz``, ``.csv``; lengths: ``<stem>_pmfs.csv.xz``, ``.csv.gz``, ``.csv``, then
  ``<stem>_lengths.csv.gz``, ``.csv.xz``, ``.csv``); with ``pool=None`` the folder must
  hold exactly one pool's rates file;
* ``path=`` a file named ``<category>_<model>_{rates,lengths,pmfs}.csv[.gz|.xz]``: the pool
  is the one its name says, and the other file is looked up beside it (same order as for
  a folder). A ``pool`` given as well must be that pool. A missing partner file, or a
  name that matches no layout, raises :class:`WorkloadError` naming the file.

PMF fields (the ``field`` column) are :data:`PMF_FIELDS`: the prompt fields
:data:`PROMPT_FIELDS` (``input_tokens`` in language and reasoning pools; ``text_tokens``,
``image_tokens``, ``audio_tokens``, ``video_tokens`` in multimodal ones), ``output_tokens``,
the multimodal ``*_count`` fields and :data:`REASON_FIELD` (``reason_ratio``, reasoning
pools: the share of output tokens spent reasoning). Any other field whose name ends in
``_tokens`` or ``_count`` (a count) or ``_ratio`` (a share) is read too; fields the
generator does not model (:data:`UNMODELLED_FIELDS` and such other names) are named in the
load report (:func:`unmodelled_fields`). Another name (e.g. ``input`` or ``output``) is a
bad row that names the expected fields. Values of a ``*_ratio`` field are floats in
``[0, 1]``; a NaN or a value outside is a bad row (in the lengths layout that one row; in
the PMF layout the PMF's line). Other values are non-negative integers.

Only rows of the requested windows are parsed in full (the client, window and field columns
of every row are read and checked, and the window order of rate rows); bad rows raise
``<file>:<line>: <problem>`` or are skipped and counted with ``on_error="skip"``. A lengths
row skipped this way leaves its PMF without that value; a PMF none of whose rows is left,
or whose probabilities sum to 0, is a bad row at its first line. A header other than the
layouts' columns (an unknown or missing column) always raises, naming the columns.

Bounds (a row past one is a bad row naming the field and the bound): a rates row is at
most :data:`~servegym.envs.workloads.tracefiles.MAX_CSV_ROW_CHARS` characters (65,536), a PMF
line or lengths row at most :data:`~servegym.envs.workloads.tracefiles.MAX_ROW_CHARS` (1 MiB;
the longest shipped one has 239,307); ``client_id`` is at most
:data:`SERVEGEN_MAX_CLIENT_ID` (2**31 - 1; shipped ids are below 200); ``window_start_s`` is
below the pool's span (:data:`SERVEGEN_POOLS`; at most 14 days) or, for a pool not shipped,
below :data:`~servegym.envs.workloads.tracefiles.MAX_TRACE_SPAN_S` (365 days; the pool's span
is then where its last rates window ends); a count value (e.g. a token count) is at most
:data:`~servegym.envs.workloads.tracefiles.MAX_TOKENS` (10,000,000).
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from servegym.envs.workloads.tracefiles import (
    MAX_CSV_ROW_CHARS,
    MAX_ROW_CHARS,
    MAX_TRACE_SPAN_S,
    READ_ERRORS,
    BoundedLines,
    RowError,
    RowProblems,
    TraceFileNotFoundError,
    check_tokens,
    digits_value,
    open_text,
    trace_file,
    unreadable,
)
from servegym.envs.workloads.workload import WorkloadError

__all__ = [
    "DIST_GAMMA",
    "DIST_NONE",
    "DIST_WEIBULL",
    "LENGTH_WINDOW_S",
    "PMF_FIELDS",
    "PROMPT_FIELDS",
    "RATE_WINDOW_S",
    "REASON_FIELD",
    "SERVEGEN_MAX_CLIENT_ID",
    "SERVEGEN_POOLS",
    "UNMODELLED_FIELDS",
    "Pmf",
    "PmfTable",
    "PoolRates",
    "PoolSpec",
    "pool_file",
    "read_pmfs",
    "read_rates",
    "resolve_pool",
    "unmodelled_fields",
]

# Shipped pool -> span in seconds (rows cover windows [0, span)).
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
# The share of a request's output tokens spent reasoning (ServeGen's reasoning pools).
REASON_FIELD = "reason_ratio"
PMF_FIELDS = (*PROMPT_FIELDS, "output_tokens", "image_count", "audio_count", "video_count",
              REASON_FIELD)
# Known fields that the generator reads but does not use, and why.
UNMODELLED_FIELDS: Mapping[str, str] = MappingProxyType({
    "image_count": "images per request",
    "audio_count": "audio clips per request",
    "video_count": "videos per request",
})
_MODELLED = frozenset((*PROMPT_FIELDS, "output_tokens", REASON_FIELD))
# Other field names accepted (read, reported as not modelled): counts and shares.
_OTHER_FIELD = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*_(?:tokens|count|ratio)")
LENGTH_WINDOW_S = 21_600
DIST_NONE, DIST_GAMMA, DIST_WEIBULL = 0, 1, 2
_DISTS = MappingProxyType({"": DIST_NONE, "Gamma": DIST_GAMMA, "Weibull": DIST_WEIBULL})
_RATE_COLUMNS = ("client_id", "window_start_s", "rate_rps", "iat_cv", "iat_dist", "iat_param1",
                 "iat_param2")
_PMF_COLUMNS = ("client_id", "window_start_s", "field", "values", "weights")
_LENGTH_COLUMNS = ("client_id", "window_start_s", "field", "value", "prob")
_FOLDER = "traces/servegen_bailian"
# File names of a pool, in lookup order (compression is detected from the content).
_RATES_NAMES = ("rates.csv.xz", "rates.csv.gz", "rates.csv")
_LENGTHS_NAMES = ("pmfs.csv.xz", "pmfs.csv.gz", "pmfs.csv", "lengths.csv.gz", "lengths.csv.xz",
                  "lengths.csv")
_FILE_NAME = re.compile(
    r"(?P<category>[A-Za-z0-9][A-Za-z0-9.-]*)_(?P<model>[A-Za-z0-9][A-Za-z0-9._-]*?)"
    r"_(?P<kind>rates|lengths|pmfs)\.csv(?:\.gz|\.xz)?"
)
_POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_LAYOUT_HINT = ("<category>_<model>_rates.csv[.xz|.gz] with <category>_<model>_lengths.csv"
                "[.gz|.xz] (the joined ServeGen layout) or <category>_<model>_pmfs.csv[.xz] "
                "(convert.py's re-encoding) beside it")


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
    windows_end: int = 0  # end of the file's last window (every good row, also out of range)


@dataclass(frozen=True, eq=False)
class Pmf:
    """One distribution: ``values`` with cumulative weights ``cdf`` (not normalised).

    Values are int64 counts (token counts, item counts) or, for a ``*_ratio`` field, float64
    shares in ``[0, 1]``.
    """

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


# ---------------------------------------------------------------------- files


@dataclass(frozen=True)
class PoolSpec:
    """Which pool to read and where its files are (see :func:`resolve_pool`).

    Attributes:
        pool: ``"<category>/<model>"``.
        span_s: the pool's span when it is a shipped pool (:data:`SERVEGEN_POOLS`), else
            ``None`` (the span is where the rates file's last window ends).
        folder: the folder holding the files, ``None`` for the shipped copy.
        given: the file that ``path`` named, ``None`` when ``path`` was a folder or None.
    """

    pool: str
    span_s: int | None
    folder: Path | None = None
    given: Path | None = None

    @property
    def stem(self) -> str:
        return self.pool.replace("/", "_", 1)

    @property
    def row_bound_s(self) -> int:
        """Every window starts below this (the span, or MAX_TRACE_SPAN_S if not shipped)."""
        return MAX_TRACE_SPAN_S if self.span_s is None else self.span_s


def pool_stem(pool: str) -> str:
    """``<category>_<model>`` of a shipped pool (:class:`WorkloadError` for another)."""
    if pool not in SERVEGEN_POOLS:
        raise WorkloadError(
            f"unknown ServeGen pool {pool!r}; shipped pools: {', '.join(SERVEGEN_POOLS)}; "
            "for another pool pass path= its rates file (or a folder holding its files)"
        )
    return pool.replace("/", "_")


def resolve_pool(pool: str | None, path: str | Path | None) -> PoolSpec:
    """The pool named by ``pool`` and ``path`` (rules in the module docstring).

    ``pool=None`` without ``path`` is ``"language/m-large"``.
    """
    if pool is not None and not isinstance(pool, str):
        raise WorkloadError(f"pool = {pool!r}: give a pool name such as 'language/m-large'")
    if path is None:
        name = "language/m-large" if pool is None else pool
        pool_stem(name)
        return PoolSpec(name, SERVEGEN_POOLS[name])
    where = Path(path)
    if where.is_dir():
        name = _check_pool_name(pool) if pool is not None else _only_pool(where)
        return PoolSpec(name, SERVEGEN_POOLS.get(name), where)
    fix = (f"pass path= a pool's file, named {_LAYOUT_HINT}, or a folder holding them "
           "(with pool='<category>/<model>')")
    if not where.is_file():
        raise TraceFileNotFoundError(f"{where}: no such file or folder; {fix}")
    match = _FILE_NAME.fullmatch(where.name)
    if match is None:
        raise WorkloadError(f"{where}: the file name matches no ServeGen layout; {fix}")
    name = f"{match['category']}/{match['model']}"
    if pool is not None and pool != name:
        raise WorkloadError(
            f"{where}: this file is pool {name!r} but pool = {pool!r}; pass pool={name!r} "
            "or pool=None (Hydra: workload.source.pool=null) to take it from the file name"
        )
    return PoolSpec(name, SERVEGEN_POOLS.get(name), where.parent, where)


def _check_pool_name(pool: str) -> str:
    if _POOL_NAME.fullmatch(pool) is None:
        raise WorkloadError(
            f"pool = {pool!r}: give '<category>/<model>' (letters, digits, '.', '-'; the "
            "category without '_'), e.g. 'reasoning/deepseek-r1'"
        )
    return pool


def _only_pool(folder: Path) -> str:
    found = sorted({f"{m['category']}/{m['model']}" for f in folder.iterdir()
                    if (m := _FILE_NAME.fullmatch(f.name)) and m["kind"] == "rates"})
    if len(found) == 1:
        return found[0]
    what = f"holds the pools {', '.join(found)}" if found else "holds no ServeGen rates file"
    raise WorkloadError(
        f"{folder}: pool=None but the folder {what}; pass pool='<category>/<model>' or "
        f"path= one pool's rates file ({_LAYOUT_HINT})"
    )


def pool_file(spec: PoolSpec, kind: str) -> contextlib.AbstractContextManager[Path]:
    """Context manager giving the ``kind`` file ('rates' or 'lengths': PMFs) of ``spec``."""
    names = _RATES_NAMES if kind == "rates" else _LENGTHS_NAMES
    if spec.folder is None:
        shipped = f"{spec.stem}_{'rates' if kind == 'rates' else 'pmfs'}.csv.xz"
        return trace_file(None, f"{_FOLDER}/{shipped}", "")
    given = spec.given
    if given is not None and (kind == "rates") == (_given_kind(given) == "rates"):
        return trace_file(given, "", f"pass path= an existing file named {_LAYOUT_HINT}")
    candidates = [spec.folder / f"{spec.stem}_{name}" for name in names]
    found = next((c for c in candidates if c.is_file()), None)
    if found is not None:
        return trace_file(found, "", "")
    listed = " or ".join(c.name for c in candidates)
    if given is not None:
        role = "lengths (PMF)" if kind != "rates" else "rates"
        raise TraceFileNotFoundError(
            f"{given}: no {role} file beside it; expected one of {listed} in {spec.folder}; "
            f"put the pool's {role} file there (a pool is {_LAYOUT_HINT})"
        )
    first = candidates[0]
    what = "is a directory" if first.is_dir() else "no such file"
    raise TraceFileNotFoundError(
        f"{first}: {what}; pass path= a folder holding {listed} (xz, gzip or plain CSV), "
        f"or a path to the pool's files ({_LAYOUT_HINT}), or path=None for the shipped data"
    )


def _given_kind(path: Path) -> str:
    match = _FILE_NAME.fullmatch(path.name)
    return "" if match is None else match["kind"]


def unmodelled_fields(names: Iterable[str]) -> list[str]:
    """``"<field> (<why>)"`` for every field in ``names`` that the generator does not use."""
    out = []
    for name in sorted(set(names) - _MODELLED):
        why = UNMODELLED_FIELDS.get(name, "not a field the generator knows")
        out.append(f"{name} ({why})")
    return out


# ---------------------------------------------------------------------- rates


def read_rates(
    path: Path, problems: RowProblems, start: float, end: float, *,
    span_s: int = _LONGEST_SPAN_S,
) -> tuple[PoolRates, int, int]:
    """Rate rows whose window overlaps ``[start, end)``; also rows read and kept.

    ``span_s`` is the pool's span (:attr:`PoolSpec.row_bound_s`): a window starting at or
    after it is a bad row. :attr:`PoolRates.windows_end` is where the file's last window
    ends (a pool's span when it is not a shipped one).
    """
    rows = _RateRows()
    with open_text(path) as text:
        lines = BoundedLines(text, problems, MAX_CSV_ROW_CHARS, header=True)
        reader = csv.reader(lines)
        try:
            _check_header(path, next(reader, None), {"rates": _RATE_COLUMNS})
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
        max(rows.last_window.values(), default=-RATE_WINDOW_S) + RATE_WINDOW_S,
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


# The text of one PMF as read: a PMF-layout line, or the rows of the lengths layout.
_PmfLine = tuple[int, str, str]  # line, values, weights


@dataclass
class _PmfRows:
    lines: list[int] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    probs: list[str] = field(default_factory=list)


class PmfTable:
    """The PMFs of the wanted (client, window) pairs, parsed on first use.

    Lines (PMF layout) or rows (lengths layout) are kept as text until :meth:`fields` asks
    for them, so a span late in a pool does not pay for parsing the earlier windows it only
    might fall back to. A bad line or row is reported (raised or skipped) when it is
    parsed, naming its file line. :attr:`field_names` holds every field name of the file.
    """

    def __init__(self, problems: RowProblems) -> None:
        self._problems = problems
        self._raw: dict[tuple[int, int], dict[str, _PmfLine | _PmfRows]] = {}
        self._parsed: dict[tuple[int, int], dict[str, Pmf]] = {}
        self.field_names: set[str] = set()

    def add(self, client: int, window: int, field: str, line: int, values: str,
            weights: str) -> None:
        """One PMF-layout line (a later line for the same PMF replaces it)."""
        self._raw.setdefault((client, window), {})[field] = (line, values, weights)

    def add_row(self, client: int, window: int, field: str, line: int, value: str,
                prob: str) -> None:
        """One lengths-layout row: one value of the PMF and its probability."""
        fields = self._raw.setdefault((client, window), {})
        rows = fields.get(field)
        if not isinstance(rows, _PmfRows):
            rows = fields[field] = _PmfRows()
        rows.lines.append(line)
        rows.values.append(value)
        rows.probs.append(prob)

    def pairs(self) -> list[tuple[int, int]]:
        """The (client, window) pairs with PMF lines."""
        return list(self._raw)

    def fields(self, client: int, window: int) -> dict[str, Pmf]:
        """The parsed PMFs of ``(client, window)`` by field (empty if none)."""
        key = (client, window)
        if key not in self._parsed:
            parsed = {}
            for name, raw in self._raw.get(key, {}).items():
                pmf = self._parse(name, raw)
                if pmf is not None:
                    parsed[name] = pmf
            self._parsed[key] = parsed
        return self._parsed[key]

    def _parse(self, name: str, raw: _PmfLine | _PmfRows) -> Pmf | None:
        if not isinstance(raw, _PmfRows):
            line, values, weights = raw
            try:
                return _pmf(name, values, weights)
            except RowError as problem:
                self._problems.bad(line, problem)
                return None
        kept_values, kept_weights = [], []
        for line, value, prob in zip(raw.lines, raw.values, raw.probs, strict=True):
            try:
                parsed = _values(name, [value])[0]
                weight = _prob(prob)
            except RowError as problem:
                self._problems.bad(line, problem)
                continue
            kept_values.append(parsed)
            kept_weights.append(weight)
        if not kept_values:
            return None  # every row was bad, and each was reported
        if sum(kept_weights) <= 0:
            self._problems.bad(raw.lines[0], RowError(
                f"the {len(kept_weights)} prob(s) of this {name} PMF sum to 0; a PMF needs "
                "positive mass"))
            return None
        dtype = np.float64 if _is_ratio(name) else np.int64
        return Pmf(np.array(kept_values, dtype=dtype), np.cumsum(kept_weights))


def read_pmfs(
    path: Path, problems: RowProblems, wanted: Callable[[int, int], bool], *,
    span_s: int = _LONGEST_SPAN_S,
) -> tuple[PmfTable, set[int], int]:
    """The PMFs for which ``wanted(client, window)``, as a lazily parsed table.

    The layout (PMF lines or lengths rows) is told by the header. Also returns every
    client id with a PMF, and the number of data rows read. Client, window (below
    ``span_s``, the pool's span) and field are checked on every row; values and weights
    when parsed.
    """
    table = PmfTable(problems)
    clients: set[int] = set()
    rows_read = 0
    with open_text(path) as text:
        lines = BoundedLines(text, problems, MAX_ROW_CHARS, header=True)
        try:
            header = next(lines, "").rstrip("\r\n")
            layout = _check_header(path, header.split(",") if header else None,
                                   {"pmfs": _PMF_COLUMNS, "lengths": _LENGTH_COLUMNS})
            add = table.add if layout == "pmfs" else table.add_row
            columns = _PMF_COLUMNS if layout == "pmfs" else _LENGTH_COLUMNS
            last: _Key | None = None  # the previous good row's key (rows of a PMF follow)
            for content in lines:
                if not content.strip():
                    continue
                rows_read += 1
                parts = content.rstrip("\r\n").split(",")
                if last is not None and len(parts) == 5 and parts[:3] == last.texts:
                    if last.wanted:
                        add(last.client, last.window, last.name, lines.line, parts[3],
                            parts[4])
                    continue
                last = _pmf_line(parts, lines.line, columns, add, table.field_names,
                                 clients, problems, wanted, span_s) or last
        except READ_ERRORS as exc:
            raise unreadable(path, lines.line + 1, exc, "CSV") from exc
    rows_read += lines.too_long
    problems.check_loaded(rows_read, rows_read - len(problems.problems))
    return table, clients, rows_read


@dataclass(frozen=True)
class _Key:
    """A good row's client, window and field (as written and as read)."""

    texts: list[str]
    client: int
    window: int
    name: str
    wanted: bool


def _pmf_line(parts: list[str], line: int, columns: tuple[str, ...],
              add: Callable[[int, int, str, int, str, str], None], names: set[str],
              clients: set[int], problems: RowProblems, wanted: Callable[[int, int], bool],
              span_s: int) -> _Key | None:
    """Check one row (PMF line or lengths row) and add it if wanted; its key, or None."""
    try:
        if len(parts) != len(columns):
            raise RowError(f"line has {len(parts)} field(s), expected {len(columns)}: "
                           f"{','.join(columns)}")
        client, window = _client_window(parts[0], parts[1], span_s)
        name = parts[2]
        if name not in names:
            _check_field(name)
    except RowError as problem:
        problems.bad(line, problem)
        return None
    names.add(name)
    clients.add(client)
    keep = wanted(client, window)
    if keep:
        add(client, window, name, line, parts[3], parts[4])
    return _Key(parts[:3], client, window, name, keep)


def _check_field(name: str) -> None:
    if not name:
        raise RowError("field is empty")
    if name not in PMF_FIELDS and _OTHER_FIELD.fullmatch(name) is None:
        raise RowError(
            f"field = {_shorter(name)!r} is not a known PMF field; expected one of "
            f"{', '.join(PMF_FIELDS)} (a client needs output_tokens and a prompt field: "
            "input_tokens, or text/image/audio/video_tokens; another name ending in _tokens, "
            "_count or _ratio is read and reported as not modelled)"
        )


def _is_ratio(name: str) -> bool:
    return name.endswith("_ratio")


def _pmf(name: str, values_text: str, weights_text: str) -> Pmf:
    value_tokens, weight_tokens = values_text.split(), weights_text.split()
    if not value_tokens:
        raise RowError("values is empty")
    if len(value_tokens) != len(weight_tokens):
        raise RowError(f"{len(value_tokens)} values but {len(weight_tokens)} weights")
    values = _values(name, value_tokens)
    weights = _weights(weight_tokens)
    return Pmf(values, np.cumsum(weights))


def _values(name: str, tokens: list[str]) -> np.ndarray:
    """The values of a ``name`` PMF: shares in [0, 1] (``*_ratio``) or counts."""
    if _is_ratio(name):
        return _ratios(name, tokens)
    try:
        numbers = [int(v) if len(v) <= 20 else _long_int(v) for v in tokens]
    except ValueError:
        raise RowError("values must be space-separated non-negative integers") from None
    lowest, highest = min(numbers), max(numbers)
    if lowest < 0:
        raise RowError(f"value {_shorter(tokens[numbers.index(lowest)])} is negative")
    check_tokens("value", highest, tokens[numbers.index(highest)])
    return np.array(numbers, dtype=np.int64)


def _ratios(name: str, tokens: list[str]) -> np.ndarray:
    what = ("the share of output tokens spent reasoning" if name == REASON_FIELD
            else "a share")
    try:
        values = np.array([float(v) for v in tokens])
    except ValueError:
        raise RowError(f"{name} values must be numbers in [0, 1] ({what})") from None
    bad = np.flatnonzero(~((values >= 0) & (values <= 1)))
    if bad.size:
        token = _shorter(tokens[int(bad[0])])
        problem = "NaN" if math.isnan(values[bad[0]]) else "outside [0, 1]"
        raise RowError(f"{name} value {token} is {problem}; a {name} is {what}, in [0, 1]")
    return values


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


def _prob(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RowError(f"prob = {_shorter(text.strip())!r} is not a number") from None
    if not math.isfinite(value):
        raise RowError(f"prob = {_shorter(text.strip())!r} is NaN or infinite")
    if value < 0:
        raise RowError(f"prob {value:g} is negative")
    return value


# ---------------------------------------------------------------------- helpers


def _check_header(path: Path, header: list[str] | None,
                  layouts: Mapping[str, tuple[str, ...]]) -> str:
    """The layout whose columns ``header`` has, in order; else :class:`WorkloadError`."""
    expected = " or ".join(repr(",".join(columns)) for columns in layouts.values())
    if header is None:
        plain = " or ".join(",".join(columns) for columns in layouts.values())
        raise WorkloadError(f"{path}: file is empty; expected the header {plain}")
    names = [h.strip() for h in header]
    for layout, columns in layouts.items():
        if names == list(columns):
            return layout
    known = {c for columns in layouts.values() for c in columns}
    unknown = [n for n in names if n not in known]
    closest = max(layouts.values(), key=lambda columns: len(set(columns) & set(names)))
    missing = [c for c in closest if c not in names]
    detail = "; ".join(part for part in (
        f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "",
        f"missing {', '.join(missing)}" if missing else "",
        "" if unknown or missing else "columns out of order",
    ) if part)
    kinds = " or ".join(layouts)
    raise WorkloadError(
        f"{path}:1: header is {','.join(header)!r}; expected {expected} ({detail}); this is "
        f"not a ServeGen {kinds} file: write exactly these columns, or pass the pool's "
        f"{kinds} file"
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
        what = ("bound of a pool's span" if span_s == MAX_TRACE_SPAN_S else "pool's span")
        raise RowError(f"window_start_s = {_shorter(window_text.strip())} is not below the "
                       f"{what} of {span_s:,} s (windows start in [0, {span_s:,}))")
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
