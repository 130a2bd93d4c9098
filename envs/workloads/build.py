"""The one workload builder behind every ``conf/workload/*.yaml``.

``build_workload(source, ...)`` makes the source's workload (a trace loader or a
generator, :mod:`servegym.envs.workloads.sources`) and then applies, in this order:

1. ``split``: ``"train"`` or ``"test"`` part by time (rule in
   :mod:`servegym.envs.workloads.transforms`: the first 70% of the source's time span is train);
2. ``window``: ``[start, end]`` seconds of what is left, shifted to start at 0;
3. ``num_requests``: the first N requests (closed loop: the programs lying wholly within
   them; split and window keep programs whole, by their first call);
4. ``rate``: compress or stretch time to this mean rate (burst shape kept);
5. ``max_total_tokens``: clip prompt + output to the model's context (count reported);
6. ``ttft_slo`` / ``tpot_slo``: the same targets for every request (None: keep).

All randomness comes from ``seed`` (one generator, spawned per source); the same
arguments give the same workload bit for bit. Rows skipped by a loader and clipped
requests are reported in a :class:`BuildReport` (``build_workload_with_report``) and,
from ``build_workload``, in a :class:`WorkloadWarning`: never silently.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegym.envs.workloads.arrivals import scale_to_rate
from servegym.envs.workloads.sources import SourceContext, make_source
from servegym.envs.workloads.spec import as_plain, number, positive_int
from servegym.envs.workloads.tracefiles import LoadReport
from servegym.envs.workloads.transforms import SPLITS, clip_to_context, split_by_time, time_window
from servegym.envs.workloads.workload import Workload, WorkloadError, WorkloadWarning

__all__ = ["BuildReport", "build_workload", "build_workload_with_report"]


@dataclass(frozen=True)
class BuildReport:
    """What a build loaded, skipped and changed.

    Attributes:
        loads: the loaders' reports (rows read, skipped rows, notes), in load order.
        steps: one line per transform applied, e.g. ``"split test: 5,810 of 19,366"``.
        clipped: requests whose prompt or output was shortened to ``max_total_tokens``.
        requests: requests in the result.
    """

    loads: tuple[LoadReport, ...]
    steps: tuple[str, ...]
    clipped: int
    requests: int

    @property
    def rows_skipped(self) -> int:
        return sum(load.rows_skipped for load in self.loads)

    def __str__(self) -> str:
        lines = [str(load) for load in self.loads]
        lines += [f"{step}" for step in self.steps]
        lines.append(f"result: {self.requests:,} requests")
        return "\n".join(lines)


def build_workload(
    source: Mapping[str, Any],
    rate: float | None = None,
    window: Sequence[float | None] | None = None,
    split: str | None = None,
    num_requests: int | None = None,
    max_total_tokens: int | None = None,
    ttft_slo: float | None = None,
    tpot_slo: float | None = None,
    seed: int = 0,
    block_size: int = 16,
    name: str | None = None,
) -> Workload:
    """Build a workload (see the module docstring); warns about skipped rows and clipping.

    Args:
        source: the source mapping (``kind`` and its options; see
            :mod:`servegym.envs.workloads.sources`).
        rate: target mean rate in requests/s (None: as the source made it).
        window: ``[start, end]`` in seconds (``end`` None: to the end).
        split: ``"train"``, ``"test"`` or None (everything).
        num_requests: keep the first N requests (None: all).
        max_total_tokens: clip every request to this context (None: no clipping).
        ttft_slo, tpot_slo: SLO targets in seconds for every request.
        seed: the one seed of every random draw.
        block_size: KV block size in tokens of prefix hashes (the instances' block size).
        name: the workload's name (None: derived from the source).
    """
    workload, report = build_workload_with_report(
        source, rate=rate, window=window, split=split, num_requests=num_requests,
        max_total_tokens=max_total_tokens, ttft_slo=ttft_slo, tpot_slo=tpot_slo, seed=seed,
        block_size=block_size, name=name,
    )
    if report.rows_skipped or report.clipped:
        warnings.warn(str(report), WorkloadWarning, stacklevel=2)
    return workload


def build_workload_with_report(
    source: Mapping[str, Any],
    rate: float | None = None,
    window: Sequence[float | None] | None = None,
    split: str | None = None,
    num_requests: int | None = None,
    max_total_tokens: int | None = None,
    ttft_slo: float | None = None,
    tpot_slo: float | None = None,
    seed: int = 0,
    block_size: int = 16,
    name: str | None = None,
) -> tuple[Workload, BuildReport]:
    """Like :func:`build_workload`, but return ``(workload, report)`` and never warn."""
    seed = positive_int("seed", seed, minimum=0)
    context = SourceContext(block_size=positive_int("block_size", block_size))
    workload = make_source(as_plain(source), np.random.default_rng(seed), context)
    steps: list[str] = []
    workload = _split(workload, split, steps)
    workload = _window(workload, as_plain(window), steps)
    workload = _head(workload, num_requests, steps)
    workload = _rate(workload, rate, steps)
    workload, clipped = _clip(workload, max_total_tokens, steps)
    workload = _slos(workload, ttft_slo, tpot_slo)
    if name is not None:
        workload = dataclasses.replace(workload, name=str(name))
    report = BuildReport(tuple(context.reports), tuple(steps), clipped, len(workload))
    return workload, report


def _split(workload: Workload, split: str | None, steps: list[str]) -> Workload:
    if split is None:
        return workload
    if split not in SPLITS:
        raise WorkloadError(f"split = {split!r}: choose 'train', 'test' or null (everything)")
    part = split_by_time(workload, split)
    steps.append(f"split {split}: {len(part):,} of {len(workload):,} requests "
                 "(train = first 70% of the time span)")
    return part


def _window(workload: Workload, window: Any, steps: list[str]) -> Workload:
    if window is None:
        return workload
    if isinstance(window, str | bytes | Mapping) or not isinstance(window, Sequence) or \
            len(window) != 2:
        raise WorkloadError(f"window = {window!r}: give [start, end] in seconds (end may be null)")
    part = time_window(workload, window[0], window[1])
    steps.append(f"window [{window[0]}, {window[1]}) s: {len(part):,} of {len(workload):,} "
                 "requests")
    if len(part) == 0:
        raise WorkloadError(f"window = {list(window)}: no request arrives in it (the workload "
                            f"spans {workload.summary()['duration']:.0f} s)")
    return part


def _head(workload: Workload, num_requests: int | None, steps: list[str]) -> Workload:
    if num_requests is None:
        return workload
    n = positive_int("num_requests", num_requests)
    if workload.parents is not None and n < len(workload):
        # Closed loop: the programs lying wholly within the first n requests.
        ids = workload.session_id
        cut = np.unique(ids[n:][ids[n:] >= 0])
        keep = np.flatnonzero(~np.isin(ids[:n], cut))
        steps.append(f"num_requests: the programs wholly within the first {n:,} requests: "
                     f"{keep.size:,} of {len(workload):,} requests")
        return workload.take(keep)
    if n < len(workload):
        steps.append(f"num_requests: first {n:,} of {len(workload):,} requests")
    return workload.head(n)


def _rate(workload: Workload, rate: float | None, steps: list[str]) -> Workload:
    if rate is None:
        return workload
    target = number("rate", rate, low=0.0, strict_low=True)
    before = workload.summary()["mean_rate"]
    scaled = scale_to_rate(workload, target)
    steps.append(f"rate: {before:.4g} -> {target:g} req/s (time compressed, burst shape kept)")
    return scaled


def _clip(workload: Workload, limit: int | None, steps: list[str]) -> tuple[Workload, int]:
    if limit is None:
        return workload, 0
    clipped, count = clip_to_context(workload, positive_int("max_total_tokens", limit, minimum=2))
    steps.append(f"clipped {count:,} of {len(workload):,} requests to {limit:,} total tokens")
    return clipped, count


def _slos(workload: Workload, ttft: float | None, tpot: float | None) -> Workload:
    changes = {}
    n = len(workload)
    for label, value in (("ttft_slo", ttft), ("tpot_slo", tpot)):
        if value is not None:
            changes[label] = np.full(n, number(label, value, low=0.0, strict_low=True))
    return dataclasses.replace(workload, **changes) if changes else workload
