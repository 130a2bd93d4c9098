"""ServeGen pools (Alibaba Cloud Model Studio / Bailian; Apache-2.0) as multi-tenant workloads.

ServeGen publishes statistics, not requests (see ``envs/data/traces/servegen_bailian/
SOURCE.md``; cite Xiang et al., arXiv:2505.09999).

Which pool: ``pool="<category>/<model>"`` names a shipped pool (:data:`SERVEGEN_POOLS`:
``language/m-large``, ``language/m-mid``, ``language/m-small``, ``multimodal/mm-image``);
``path=`` loads any pool in the joined layout by path: a file
``<category>_<model>_rates.csv[.gz|.xz]`` (with ``..._lengths.csv[.gz|.xz]``, the raw layout
of the shared ``traces/servegen_bailian/`` folder, or ``..._pmfs.csv[.xz]``, the shipped
re-encoding, beside it), either of the length files, or a folder holding them together
with ``pool`` (rules and file layouts: :mod:`servegym.envs.workloads.servegen_data`). The
category and model come from the file name, e.g. ``reasoning_deepseek-r1_rates.csv`` is
pool ``reasoning/deepseek-r1``; a shipped pool's files loaded by path give the same
workload as the named pool. Through Hydra: ``workload=servegen_m_large
workload.source.pool=null workload.source.path=/abs/reasoning_deepseek-r1_rates.csv``
(a ``pool`` that differs from the file's raises; a pool not shipped usually needs its own
``workload.source.rate_scale``).

Requests are generated as ServeGen does:

* every client is a tenant (``"client_<id>"``);
* in each of its 600-s windows overlapping ``[start_s, start_s + duration_s)`` with rate
  ``r > 0``, a client's inter-arrival gaps are drawn from the fitted distribution's
  *shape* (``rng.gamma(a)`` or ``rng.weibull(c)``) and scaled so their mean is
  ``1 / (r * rate_scale)`` (upstream also rescales the fitted gaps to the target rate);
  arrivals start at the window's start and stop at its end;
* lengths come from the client's PMFs of the latest 6-hour window at or before the
  request's 600-s window (upstream's rule): ``input_tokens`` (language pools) or the sum
  of ``text_tokens``, ``image_tokens``, ``audio_tokens`` and ``video_tokens`` (multimodal;
  fields drawn independently), and ``output_tokens``. A drawn 0 becomes 1 (counted).
* reasoning share: where the PMF window has a ``reason_ratio`` PMF (reasoning pools), each
  request draws its share of output tokens spent reasoning from it (after its lengths,
  independently; upstream uses one uniform for all fields of a request) and the workload's
  :attr:`~servegym.envs.workloads.workload.Workload.reason_ratio` holds it (float64 in
  [0, 1]); requests of windows without one get NaN (counted in the report). A pool
  without the field gives ``reason_ratio=None``, so other pools are unchanged.

Clients with no length data at all are skipped and counted in the report; so are
client-windows without a PMF at or before them. Length fields the generator does not model
(the multimodal ``image_count``/``audio_count``/``video_count``: every ``*_tokens`` field is
drawn once per request, not once per item; or any other ``*_tokens``/``*_count``/``*_ratio``
field) are named in the report's notes. Times are seconds from ``start_s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from servegym.envs.workloads.servegen_data import (
    DIST_GAMMA,
    DIST_NONE,
    LENGTH_WINDOW_S,
    PROMPT_FIELDS,
    RATE_WINDOW_S,
    REASON_FIELD,
    SERVEGEN_POOLS,
    Pmf,
    PmfTable,
    PoolRates,
    PoolSpec,
    pool_file,
    read_pmfs,
    read_rates,
    resolve_pool,
    unmodelled_fields,
)
from servegym.envs.workloads.spec import number, positive_int
from servegym.envs.workloads.tracefiles import (
    LoadReport,
    RowProblems,
    check_on_error,
    warn_if_skipped,
)
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = ["SERVEGEN_POOLS", "generate_servegen", "generate_servegen_with_report"]

@dataclass
class _Parts:
    """Requests generated so far, one array per client-window (local to one call)."""

    times: list[np.ndarray] = field(default_factory=list)
    prompt: list[np.ndarray] = field(default_factory=list)
    output: list[np.ndarray] = field(default_factory=list)
    tenant: list[np.ndarray] = field(default_factory=list)
    reason: list[np.ndarray | None] = field(default_factory=list)  # None: no reason_ratio
    no_pmf_windows: int = 0
    no_pmf_requests: int = 0
    no_pmf_fields: set[str] = field(default_factory=set)  # fields those windows' clients had
    zero_lengths: int = 0


def generate_servegen(
    pool: str | None = None,
    *,
    start_s: float = 0.0,
    duration_s: float = 3600.0,
    rate_scale: float = 1.0,
    clients: Sequence[int] | None = None,
    max_clients: int | None = None,
    rng: np.random.Generator,
    path: str | Path | None = None,
    on_error: str = "raise",
) -> Workload:
    """Generate requests from a ServeGen pool (see the module docstring); warns on skips."""
    workload, report = generate_servegen_with_report(
        pool, start_s=start_s, duration_s=duration_s, rate_scale=rate_scale, clients=clients,
        max_clients=max_clients, rng=rng, path=path, on_error=on_error,
    )
    warn_if_skipped(report)
    return workload


def generate_servegen_with_report(
    pool: str | None = None,
    *,
    start_s: float = 0.0,
    duration_s: float = 3600.0,
    rate_scale: float = 1.0,
    clients: Sequence[int] | None = None,
    max_clients: int | None = None,
    rng: np.random.Generator,
    path: str | Path | None = None,
    on_error: str = "raise",
) -> tuple[Workload, LoadReport]:
    """Like :func:`generate_servegen`; also return a report of what was skipped and why.

    Args:
        pool: ``"<category>/<model>"``: a shipped pool (``"language/m-large"``,
            ``"language/m-mid"``, ``"language/m-small"``, ``"multimodal/mm-image"``) or, with
            a folder ``path``, the pool whose files it holds. ``None``: the pool ``path``'s
            file name says, else ``"language/m-large"``.
        start_s, duration_s: the span of the pool (seconds from its start) to generate.
        rate_scale: multiplies every client's rate (fewer requests over the same span).
        clients: client ids to use (default: every client with length data).
        max_clients: keep only this many clients, the busiest in the span first.
        rng: the generator all draws come from.
        path: the pool's files instead of the shipped ones: its rates or length file
            (``<category>_<model>_rates.csv[.gz|.xz]``, ``..._lengths.csv[.gz|.xz]`` or
            ``..._pmfs.csv[.xz]``, the other looked up beside it), or a folder holding them.
        on_error: ``"raise"`` on the first bad row, or ``"skip"`` bad rows (counted).
    """
    spec = resolve_pool(pool, path)
    pool = spec.pool
    span_end = _check_span(spec, start_s, duration_s)
    scale = number("rate_scale", rate_scale, low=0.0, strict_low=True)
    check_on_error(on_error)
    with pool_file(spec, "rates") as rates_path:
        rate_problems = RowProblems(rates_path, on_error)
        rates, rows_read, _ = read_rates(rates_path, rate_problems, start_s, span_end,
                                         span_s=spec.row_bound_s)
    if spec.span_s is None:
        span_end = _check_read_span(spec, rates, start_s, span_end)
    active = _client_requests(rates, start_s, span_end)
    with pool_file(spec, "lengths") as pmf_path:
        pmf_problems = RowProblems(pmf_path, on_error)
        wanted_windows = _length_windows(start_s, span_end)
        pmfs, with_lengths, _ = read_pmfs(
            pmf_path, pmf_problems, lambda c, w: w in wanted_windows and c in active,
            span_s=spec.row_bound_s,
        )
    chosen, notes = _choose_clients(rates, active, with_lengths, clients, max_clients)
    parts = _Parts()
    for tenant, client in enumerate(chosen):
        _generate_client(rates, pmfs, client, tenant, start_s, span_end, scale, rng, parts)
    workload = _assemble(parts, chosen, start_s, pool)
    notes += _part_notes(parts)
    notes += _file_notes(spec, pmf_path, pmfs)
    problems = tuple(rate_problems.problems + pmf_problems.problems)
    notes.insert(0, f"generated {len(workload):,} requests from {len(chosen)} clients over "
                    f"[{start_s:g}, {span_end:g}) s at rate_scale {scale:g}")
    kept = rows_read - len(rate_problems.problems)
    report = LoadReport(str(rates_path), rows_read, kept, problems, tuple(notes))
    return workload, report


# ---------------------------------------------------------------------- clients


def _check_span(spec: PoolSpec, start_s: float, duration_s: float) -> float:
    """The end of the span to generate (clipped to a shipped pool's span)."""
    start = number("start_s", start_s, low=0.0)
    span = spec.span_s
    if span is not None and start >= span:
        raise WorkloadError(f"start_s = {start:g}: pool {spec.pool} spans [0, {span}) seconds")
    duration = number("duration_s", duration_s, low=0.0, strict_low=True)
    return start + duration if span is None else min(start + duration, float(span))


def _check_read_span(spec: PoolSpec, rates: PoolRates, start: float, end: float) -> float:
    """A pool not shipped spans its rates file's windows: check the start against them."""
    span = rates.windows_end
    if start >= span:
        raise WorkloadError(
            f"start_s = {start:g}: pool {spec.pool} spans [0, {span}) seconds (where the last "
            "window of its rates file ends); pass a start_s below that"
        )
    return min(end, float(span))


def _length_windows(start: float, end: float) -> set[int]:
    """6-hour windows whose PMFs a 600-s window in ``[start, end)`` may use (and earlier
    ones, in case a client has no PMF for the current one)."""
    last = int(end // LENGTH_WINDOW_S)
    return {k * LENGTH_WINDOW_S for k in range(0, last + 1)}


def _client_requests(rates: PoolRates, start: float, end: float) -> dict[int, float]:
    """Expected requests of every client in ``[start, end)`` (before ``rate_scale``)."""
    overlap = np.minimum(rates.window + RATE_WINDOW_S, end) - np.maximum(rates.window, start)
    expected = rates.rate * np.clip(overlap, 0, None)
    totals: dict[int, float] = {}
    for client, value in zip(rates.client.tolist(), expected.tolist(), strict=True):
        totals[client] = totals.get(client, 0.0) + value
    return totals


def _choose_clients(
    rates: PoolRates,
    active: dict[int, float],
    with_lengths: set[int],
    clients: Sequence[int] | None,
    max_clients: int | None,
) -> tuple[list[int], list[str]]:
    if clients is None:
        candidates = sorted(c for c, expected in active.items() if expected > 0)
    else:
        candidates = sorted({positive_int("clients[]", c, minimum=0) for c in clients})
        unknown = [c for c in candidates if c not in rates.all_clients]
        if unknown:
            raise WorkloadError(f"clients {unknown} are not in the pool; known ids: "
                                f"{rates.all_clients[0]}..{rates.all_clients[-1]}")
    missing = [c for c in candidates if c not in with_lengths]
    kept = [c for c in candidates if c in with_lengths]
    notes = []
    if missing:
        lost = sum(active.get(c, 0.0) for c in missing)
        total = sum(active.get(c, 0.0) for c in candidates) or 1.0
        notes.append(
            f"skipped {len(missing)} client(s) without length data ({lost / total:.0%} of the "
            f"span's expected requests): {' '.join(map(str, missing))}"
        )
    if max_clients is not None:
        limit = positive_int("max_clients", max_clients)
        busiest = sorted(kept, key=lambda c: (-active.get(c, 0.0), c))[:limit]
        if len(busiest) < len(kept):
            notes.append(f"kept the {limit} busiest of {len(kept)} clients with length data")
        kept = sorted(busiest)
    if not kept:
        raise WorkloadError("no ServeGen client with length data has requests in the span; "
                            "widen the span or choose other clients")
    return kept, notes


# ---------------------------------------------------------------------- generation


def _generate_client(rates: PoolRates, pmfs: PmfTable, client: int, tenant: int, start: float,
                     end: float, scale: float, rng: np.random.Generator, parts: _Parts) -> None:
    rows = np.flatnonzero((rates.client == client) & (rates.dist != DIST_NONE) & (rates.rate > 0))
    for row in rows.tolist():
        window = int(rates.window[row])
        lo, hi = max(float(window), start), min(float(window + RATE_WINDOW_S), end)
        if hi <= lo:
            continue
        times = _window_arrivals(rates, row, lo, hi, scale, rng)
        if times.size == 0:
            continue
        lengths = _lengths_for(pmfs, client, window, times.size, rng, parts)
        if lengths is None:
            parts.no_pmf_windows += 1
            parts.no_pmf_requests += times.size
            parts.no_pmf_fields.update(_fields_before(pmfs, client, window))
            continue
        parts.times.append(times)
        parts.prompt.append(lengths[0])
        parts.output.append(lengths[1])
        parts.reason.append(lengths[2])
        parts.tenant.append(np.full(times.size, tenant, dtype=np.int32))


def _window_arrivals(rates: PoolRates, row: int, lo: float, hi: float, scale: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A renewal process from ``lo`` with the fitted shape and mean gap 1 / (rate*scale)."""
    rate = float(rates.rate[row]) * scale
    shape = float(rates.shape[row])
    gamma = int(rates.dist[row]) == DIST_GAMMA
    unit_mean = shape if gamma else math.gamma(1.0 + 1.0 / shape)
    factor = 1.0 / (rate * unit_mean)
    chunks: list[np.ndarray] = []
    now = lo
    while now < hi:
        size = int(rate * (hi - now) * 1.5) + 16
        draws = rng.gamma(shape, size=size) if gamma else rng.weibull(shape, size=size)
        times = now + np.cumsum(draws * factor)
        chunks.append(times)
        now = float(times[-1])
    times = np.concatenate(chunks)
    return times[times < hi]


def _lengths_for(
    pmfs: PmfTable, client: int, window: int, n: int, rng: np.random.Generator, parts: _Parts
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Prompt and output lengths of ``n`` requests, and their reasoning shares (or None)."""
    fields = _pmfs_at(pmfs, client, window)
    if fields is None:
        return None
    prompt = np.zeros(n, dtype=np.int64)
    for name in PROMPT_FIELDS:
        if name in fields:
            prompt += fields[name].sample(n, rng)
    output = fields["output_tokens"].sample(n, rng)
    # Drawn after the lengths, so pools without the field draw exactly as before.
    reason = fields[REASON_FIELD].sample(n, rng) if REASON_FIELD in fields else None
    zeros = (prompt == 0) | (output == 0)
    parts.zero_lengths += int(np.count_nonzero(zeros))
    return np.maximum(prompt, 1), np.maximum(output, 1), reason


def _pmfs_at(pmfs: PmfTable, client: int, window: int) -> dict[str, Pmf] | None:
    """The latest usable 6-hour PMFs at or before ``window`` (upstream's rule)."""
    k = window // LENGTH_WINDOW_S
    while k >= 0:
        fields = pmfs.fields(client, k * LENGTH_WINDOW_S)
        if fields and "output_tokens" in fields and any(f in fields for f in PROMPT_FIELDS):
            return fields
        k -= 1
    return None


def _fields_before(pmfs: PmfTable, client: int, window: int) -> set[str]:
    """The PMF field names of ``client`` at or before ``window`` (none usable)."""
    names: set[str] = set()
    for k in range(window // LENGTH_WINDOW_S + 1):
        names.update(pmfs.fields(client, k * LENGTH_WINDOW_S))
    return names


def _assemble(parts: _Parts, chosen: list[int], start: float, pool: str) -> Workload:
    if not parts.times and parts.no_pmf_windows:
        found = ", ".join(sorted(parts.no_pmf_fields)) or "none"
        raise WorkloadError(
            f"ServeGen {pool}: no requests in the span: {parts.no_pmf_windows} client-window(s) "
            f"with {parts.no_pmf_requests} request(s) have no usable length PMF at or before "
            "them; a PMF window needs the field output_tokens and a prompt field (one of "
            f"{', '.join(PROMPT_FIELDS)}); fields found there: {found}"
        )
    if not parts.times:
        raise WorkloadError(f"ServeGen {pool}: no requests in the span; widen it or raise "
                            "rate_scale")
    times = np.concatenate(parts.times) - start
    order = np.argsort(times, kind="stable")
    reason = None
    if any(r is not None for r in parts.reason):
        reason = np.concatenate([np.full(t.size, np.nan) if r is None else r
                                 for t, r in zip(parts.times, parts.reason, strict=True)])[order]
    return Workload.from_lengths(
        times[order],
        np.concatenate(parts.prompt)[order],
        np.concatenate(parts.output)[order],
        tenant=np.concatenate(parts.tenant)[order],
        tenant_names=[f"client_{c}" for c in chosen],
        name=f"servegen_{pool.replace('/', '_', 1)}",
        reason_ratio=reason,
    )


def _part_notes(parts: _Parts) -> list[str]:
    notes = []
    if parts.no_pmf_windows:
        notes.append(f"dropped {parts.no_pmf_requests} requests of {parts.no_pmf_windows} "
                     "client-window(s) with no length PMF at or before them")
    if parts.zero_lengths:
        notes.append(f"{parts.zero_lengths} request(s) drew a 0-token prompt or output from "
                     "the PMFs; set to 1 token")
    with_reason = [r is not None for r in parts.reason]
    if any(with_reason) and not all(with_reason):
        missing = sum(t.size for t, r in zip(parts.times, with_reason, strict=True) if not r)
        windows = with_reason.count(False)
        notes.append(f"{missing} request(s) of {windows} client-window(s) without a "
                     f"{REASON_FIELD} PMF have reason_ratio NaN (unknown)")
    return notes


def _file_notes(spec: PoolSpec, lengths_path: Path, pmfs: PmfTable) -> list[str]:
    """Which lengths file was read (a pool given by path), and the fields not modelled."""
    notes = []
    if spec.folder is not None:
        notes.append(f"pool {spec.pool}: lengths from {lengths_path}")
    unmodelled = unmodelled_fields(pmfs.field_names)
    if unmodelled:
        notes.append(
            f"length field(s) not modelled (read, not used): {'; '.join(unmodelled)}; each "
            "*_tokens prompt field is drawn once per request"
        )
    if REASON_FIELD in pmfs.field_names:
        notes.append(f"{REASON_FIELD} (share of output tokens spent reasoning) is carried "
                     "on the workload as Workload.reason_ratio")
    return notes
