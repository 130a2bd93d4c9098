"""Loader for the Mooncake FAST'25 conversation trace (Kimi; Apache-2.0).

Shipped verbatim under ``envs/data/traces/mooncake_fast25/`` (see its ``SOURCE.md``;
please cite Qin et al., "Mooncake", FAST 2025).

File format: JSON lines, optionally gzip- or xz-compressed, one object per request with
``timestamp`` (arrival, **milliseconds** from the trace start), ``input_length``,
``output_length`` and ``hash_ids`` (chained ids of the prompt's 512-token blocks: two
requests share a KV prefix for as many leading ids as they have in common). Other keys
are ignored; blank lines are skipped. Rows must be sorted by timestamp.

Bounds (a row past one is a bad row naming the field and the bound):

* a line is at most :data:`~servegym.envs.workloads.tracefiles.MAX_ROW_CHARS` characters (1 MiB)
  and its JSON nests at most :data:`MAX_JSON_DEPTH` (32) levels (a record nests 2), checked
  before parsing, so a deeply nested line cannot exhaust the recursion limit;
* ``timestamp`` is a finite number in ``[0, MOONCAKE_MAX_TIMESTAMP_MS]``: at most
  :data:`~servegym.envs.workloads.tracefiles.MAX_TRACE_SPAN_S` (365 days) after the trace start;
* ``input_length`` and ``output_length`` are whole numbers in ``[1, MAX_TOKENS]``
  (:data:`~servegym.envs.workloads.tracefiles.MAX_TOKENS`, 10,000,000 tokens);
* integers are written with at most 4,300 digits (Python's limit; such a row is bad).

Out-of-order rows: the kept rows are the longest run of rows whose timestamps never
decrease, the earliest rows winning ties (:func:`~servegym.envs.workloads.tracefiles.out_of_order`);
each other row is a bad row, "earlier than the previous kept row" or "later than the next
kept row". So one row dated far in the future is the bad row, not every row after it. The
order is checked after the whole file is read: with ``on_error="raise"`` a bad value
raises first, wherever it is.

Arrivals: the conversation trace's timestamps fall on ~3-second ticks (90% of gaps are
0). ``arrivals="batch"`` replays each tick as a batch at its timestamp, exactly as
recorded (the statistics of the traces' README use these times). ``arrivals="spread"``
(default) spreads the requests of a tick uniformly over ``[T, T + w)``, ``w`` =
``min(tick_s, next tick - T)``, with sorted uniform draws from ``rng`` so the file order
is kept: the same seed gives the same times.

Prefix hashes: each 512-token id becomes the hashes of the simulator's KV blocks
(``block_size`` tokens) inside it. Block ``j`` takes the id of the 512-token block that
holds its last token (:func:`servegym.envs.workloads.prefix.mooncake_segment_ends`); with a block
size dividing 512 each id expands into ``512 / block_size`` chained hashes. Only the
prompt's full blocks get hashes. They are stored compactly
(:class:`~servegym.envs.workloads.prefix.BlockChains`).

Sessions (``sessions=True``, closed loop, :mod:`servegym.envs.workloads.graph`): the trace
has no session ids, but its chained block ids give the turn structure. A conversation's
next turn resends the whole conversation, so its ids start with every *full* 512-token
block id of the previous turn's prompt (the last, partial block of the previous prompt
differs: more tokens fill it now). Request ``i``'s parent is the latest earlier request
``j`` whose last full block id is the longest such prefix of ``i``'s ids, each ``j``
continued by at most one later request (a conversation is a chain). The search stops at
an id followed by more than ``max_branching`` (16) distinct ids in the trace: a prefix
shared across conversations (in the shipped trace only id 0, the common head of all 12,031
prompts; every other id is followed by at most 11), not a turn. The shipped trace has
3,932 dependent turns among 12,031 requests (8,099 start sessions), gaps between a
turn's and its parent's arrival of 6 s to 50 min (median 123 s). The trace gives
that gap from arrival to arrival; the think time after the parent *finished* is taken as
``max(0, gap - decode_s_per_token * parent's output tokens)`` (default 0.02 s per token,
an 8B model's decode step at moderate batch), i.e. the recorded gap minus an estimate of
the parent's generation time; the rows keep the recorded times as nominal arrivals.

Bad rows follow the Azure loader: ``on_error="raise"`` names file, line and problem;
``"skip"`` leaves the row out and lists it in the :class:`LoadReport`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.workloads.prefix import BlockChains, mooncake_segment_ends
from servegym.envs.workloads.tracefiles import (
    MAX_ROW_CHARS,
    MAX_TRACE_SPAN_S,
    READ_ERRORS,
    BoundedLines,
    LoadReport,
    RowError,
    RowProblems,
    check_on_error,
    check_tokens,
    describe_non_count,
    open_text,
    out_of_order,
    trace_file,
    unreadable,
    warn_if_skipped,
)
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = [
    "MAX_JSON_DEPTH",
    "MOONCAKE_ARRIVALS",
    "MOONCAKE_BLOCK_TOKENS",
    "MOONCAKE_MAX_TIMESTAMP_MS",
    "load_mooncake",
    "load_mooncake_with_report",
    "spread_ticks",
]

MOONCAKE_BLOCK_TOKENS = 512
MOONCAKE_ARRIVALS = ("spread", "batch")
_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
_SHIPPED = "traces/mooncake_fast25/conversation_trace.jsonl.gz"
_MAX_ID = 2**39 - 1  # block hashes are id * 2**24 + j and must stay in int64
# Latest timestamp in ms: MAX_TRACE_SPAN_S (365 days) after the trace start.
MOONCAKE_MAX_TIMESTAMP_MS = MAX_TRACE_SPAN_S * 1000
# Deepest JSON nesting of a line (a record is an object holding a list: 2 levels).
MAX_JSON_DEPTH = 32
# A JSON string (to its closing quote, or to the end of an unterminated one) or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?|[\[\]{}]', re.DOTALL)


@dataclass
class _Rows:
    """Accepted rows while reading (local to one load)."""

    time_ms: list[float] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    num_ids: list[int] = field(default_factory=list)
    line: list[int] = field(default_factory=list)  # file line of each accepted row
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
    sessions: bool = False,
    decode_s_per_token: float = 0.02,
    max_branching: int = 16,
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
        sessions: closed-loop sessions from the block ids (see the module docstring).
        decode_s_per_token: with ``sessions``, the generation time per output token
            subtracted from a recorded gap to give the think time after the finish.
        max_branching: with ``sessions``, an id followed by more distinct ids than this
            is a prefix shared between conversations, not a turn.

    Returns:
        Workload ``"mooncake_conv"``: arrival times in seconds from the trace start
        (timestamp 0 ms is time 0), prefix hashes at ``block_size`` tokens.
    """
    workload, report = load_mooncake_with_report(
        path, arrivals=arrivals, tick_s=tick_s, rng=rng, block_size=block_size,
        on_error=on_error, ttft_slo=ttft_slo, tpot_slo=tpot_slo, sessions=sessions,
        decode_s_per_token=decode_s_per_token, max_branching=max_branching,
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
    sessions: bool = False,
    decode_s_per_token: float = 0.02,
    max_branching: int = 16,
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
    program: dict[str, Any] = {}
    notes_extra: tuple[str, ...] = ()
    if sessions:
        program = _sessions(rows, times, decode_s_per_token, max_branching)
        dependent = sum(1 for p in program["parents"] if p)
        notes_extra = (f"sessions: {dependent:,} turns follow an earlier one, "
                       f"{len(rows.prompt) - dependent:,} start a session",)
    workload = Workload.from_lengths(
        times,
        np.array(rows.prompt, dtype=np.int64),
        np.array(rows.output, dtype=np.int64),
        ttft_slo=ttft_slo,
        tpot_slo=tpot_slo,
        prefix_hashes=_chains(rows, block_size),
        prefix_block_size=block_size,
        name="mooncake_sessions" if sessions else "mooncake_conv",
        **program,
    )
    notes = (_hit_ratio_note(rows.ids), f"arrivals={arrivals!r} (tick_s={tick_s:g})",
             *notes_extra)
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
    with open_text(path) as text:
        lines = BoundedLines(text, problems, MAX_ROW_CHARS)
        try:
            for line in lines:
                if line.strip():
                    rows.rows_read += 1
                    _read_line(line, rows, problems, lines.line)
        except READ_ERRORS as exc:
            raise unreadable(path, lines.line + 1, exc, "JSON-lines") from exc
    if lines.line == 0:
        raise WorkloadError(
            f"{path}: file is empty; expected one JSON object per line with fields "
            f"{', '.join(_FIELDS)}"
        )
    rows.rows_read += lines.too_long
    rows = _in_order(rows, problems)
    problems.check_loaded(rows.rows_read, len(rows.prompt))
    return rows


def _read_line(line: str, rows: _Rows, problems: RowProblems, line_no: int) -> None:
    try:
        time_ms, prompt, output, ids = _parse(line)
    except RowError as problem:
        problems.bad(line_no, problem)
        return
    rows.time_ms.append(time_ms)
    rows.prompt.append(prompt)
    rows.output.append(output)
    rows.ids.extend(ids)
    rows.num_ids.append(len(ids))
    rows.line.append(line_no)


def _in_order(rows: _Rows, problems: RowProblems) -> _Rows:
    """``rows`` without its out-of-order rows, each reported (see the module docstring)."""
    dropped = out_of_order(rows.time_ms)
    if not dropped:
        return rows
    t, line = rows.time_ms, rows.line
    for i, earlier, other in dropped:
        if earlier:
            problem = (f"timestamp {t[i]:.15g} ms is earlier than the previous kept row's "
                       f"{t[other]:.15g} ms (line {line[other]}); rows must be sorted by time")
        else:
            problem = (f"timestamp {t[i]:.15g} ms is later than the next kept row's "
                       f"{t[other]:.15g} ms (line {line[other]}): this row is out of order; "
                       "rows must be sorted by time")
        problems.bad(line[i], problem)
    drop = {i for i, _, _ in dropped}
    kept = _Rows(rows_read=rows.rows_read)
    start = 0
    for i, count in enumerate(rows.num_ids):
        if i not in drop:
            kept.time_ms.append(t[i])
            kept.prompt.append(rows.prompt[i])
            kept.output.append(rows.output[i])
            kept.ids.extend(rows.ids[start:start + count])
            kept.num_ids.append(count)
            kept.line.append(line[i])
        start += count
    return kept


def _parse(line: str) -> tuple[float, int, int, list[int]]:
    _check_depth(line)
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer of over 4,300 digits
        raise RowError(f"not readable JSON: {exc}") from None
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


def _check_depth(line: str) -> None:
    """:class:`RowError` when the line's JSON nests deeper than :data:`MAX_JSON_DEPTH`."""
    if line.count("[") + line.count("{") <= MAX_JSON_DEPTH:
        return  # the common case: too few brackets to nest that deep
    depth = 0
    for match in _JSON_TOKEN.finditer(line):
        first = match.group()[0]
        if first in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise RowError(
                    f"JSON nesting is deeper than {MAX_JSON_DEPTH} levels, the bound "
                    "(MAX_JSON_DEPTH); a request record nests 2 levels"
                )
        elif first in "]}":
            depth -= 1


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text):,} characters)"


def _timestamp(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"timestamp = {_shown(value)} is not a number of milliseconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError(f"timestamp = {value!r} is {'NaN' if math.isnan(value) else 'infinite'}")
    if value < 0:
        raise RowError(f"timestamp = {_shown(value)} is negative")
    if value > MOONCAKE_MAX_TIMESTAMP_MS:  # exact for ints of any size
        raise RowError(
            f"timestamp = {_shown(value)} ms is beyond the bound of "
            f"{MOONCAKE_MAX_TIMESTAMP_MS:,} ms (MOONCAKE_MAX_TIMESTAMP_MS: "
            f"{MAX_TRACE_SPAN_S // 86_400} days after the trace start)"
        )
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        check_tokens(name, value, _shown(value))
        return value
    if isinstance(value, float) and value.is_integer() and value > 0:
        check_tokens(name, int(value), repr(value))
        return int(value)
    raise RowError(
        f"{name} = {_shown(value)} is {describe_non_count(value)}; expected a positive integer"
    )


def _ids(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise RowError(f"hash_ids = {_shown(value)} is not a list of block ids")
    for position, block_id in enumerate(value):
        if isinstance(block_id, bool) or not isinstance(block_id, int):
            raise RowError(
                f"hash_ids[{position}] = {_shown(block_id)} is not an integer block id"
            )
        if not 0 <= block_id <= _MAX_ID:
            raise RowError(
                f"hash_ids[{position}] = {_shown(block_id)} is outside [0, {_MAX_ID}]"
            )
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


def _sessions(rows: _Rows, times: np.ndarray, decode_s_per_token: float,
              max_branching: int) -> dict[str, Any]:
    """Parents, sessions and think times from the chained block ids (module docstring)."""
    if isinstance(decode_s_per_token, bool) or not isinstance(decode_s_per_token, int | float) \
            or not math.isfinite(decode_s_per_token) or decode_s_per_token < 0:
        raise WorkloadError(f"decode_s_per_token={decode_s_per_token!r}: must be a finite "
                            "number of seconds >= 0")
    if isinstance(max_branching, bool) or not isinstance(max_branching, int) or \
            max_branching < 1:
        raise WorkloadError(f"max_branching={max_branching!r}: must be an integer >= 1")
    n = len(rows.prompt)
    bounds = np.r_[0, np.cumsum(rows.num_ids)].tolist()
    ids = rows.ids
    followers: dict[int, set[int]] = {}
    for k in range(n):
        chain = ids[bounds[k]:bounds[k + 1]]
        for a, b in zip(chain, chain[1:], strict=False):
            followers.setdefault(a, set()).add(b)
    shared = {a for a, after in followers.items() if len(after) > max_branching}
    last_full: dict[int, int] = {}  # id of a request's last full block -> the request
    used: set[int] = set()
    parents: list[tuple[int, ...]] = []
    for i in range(n):
        chain = ids[bounds[i]:bounds[i + 1]]
        parent = -1
        for block_id in reversed(chain):
            if block_id in shared:
                break
            j = last_full.get(block_id)
            if j is not None and j not in used:
                parent = j
                used.add(j)
                break
        parents.append(() if parent < 0 else (parent,))
        full = rows.prompt[i] // MOONCAKE_BLOCK_TOKENS
        if 1 <= full <= len(chain):
            last_full[chain[full - 1]] = i
    session = np.empty(n, dtype=np.int64)
    delay = np.full(n, np.nan)
    next_session = 0
    output = rows.output
    for i, p in enumerate(parents):
        if p:
            j = p[0]
            session[i] = session[j]
            delay[i] = max(0.0, float(times[i] - times[j]) - decode_s_per_token * output[j])
        else:
            session[i] = next_session
            next_session += 1
    return {"session_id": session, "parents": parents, "release_delay": delay}


def _hit_ratio_note(ids: list[int]) -> str:
    total = len(ids)
    hits = total - len(set(ids)) if total else 0
    # An id is a hit when it was seen earlier: total minus distinct ids.
    ratio = hits / total if total else float("nan")
    return (
        f"infinite-cache hit ratio of the 512-token block ids: {ratio:.1%} "
        f"({hits:,} / {total:,} blocks)"
    )
