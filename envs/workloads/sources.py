"""Workload sources by ``kind``: the one dispatch the builder and every config use.

A source is a mapping with ``kind`` and that kind's options:

======== ======================================================================
kind     options (defaults)
======== ======================================================================
azure    ``trace`` (conv | code), ``path`` (None: shipped), ``on_error`` (raise)
mooncake ``arrivals`` (spread | batch), ``tick_s`` (3.0), ``path``, ``on_error``,
         ``sessions`` (false: open loop; true: closed-loop turns from the block ids),
         ``decode_s_per_token`` (0.02), ``max_branching`` (16)
sharegpt ``num_requests`` or ``duration_s``, ``arrivals`` (a process), ``order``
         (random | file): the ShareGPT length table paired with arrivals
arxiv    as ``sharegpt``, with the arXiv-summarisation length table
servegen ``pool`` (None: from ``path``'s file name, else language/m-large),
         ``start_s`` (0), ``duration_s`` (3600), ``rate_scale`` (1), ``clients``
         (None: all), ``max_clients`` (None), ``path`` (None: shipped; else a pool's
         ``<category>_<model>_rates.csv[.gz|.xz]``, ``..._lengths.csv[.gz|.xz]`` or
         ``..._pmfs.csv[.xz]`` file, or a folder with ``pool``), ``on_error``
synthetic see :mod:`servegym.envs.workloads.synthetic`
sessions see :mod:`servegym.envs.workloads.sessions` (``closed_loop``: true for closed loop)
programs see :mod:`servegym.envs.workloads.programs` (agentic programs, closed loop)
mix      ``tenants``: a list of ``{name, source, priority (0), ttft_slo, tpot_slo}``
         (SLOs None: keep the source's); every tenant's source is any kind above
======== ======================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from servegym.envs.workloads.azure import load_azure_2023_with_report
from servegym.envs.workloads.spec import number, options, text
from servegym.envs.workloads.synthetic import TraceData, synthetic_workload
from servegym.envs.workloads.tracefiles import LoadReport
from servegym.envs.workloads.transforms import merge
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = ["SOURCE_KINDS", "SourceContext", "make_source"]

SOURCE_KINDS = ("azure", "mooncake", "sharegpt", "arxiv", "servegen", "synthetic", "sessions",
                "programs", "mix")


@dataclass
class SourceContext:
    """What one build shares between its sources: block size, loaded traces, reports."""

    block_size: int = 16
    traces: TraceData = field(default_factory=TraceData)
    reports: list[LoadReport] = field(default_factory=list)


def make_source(
    spec: Mapping[str, Any], rng: np.random.Generator, context: SourceContext,
    where: str = "source",
) -> Workload:
    """The workload that the source ``spec`` describes (see the module docstring)."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise WorkloadError(f"{where} must be a mapping with 'kind' (one of "
                            f"{', '.join(SOURCE_KINDS)}), got {spec!r}")
    kind = text(f"{where}.kind", spec["kind"], SOURCE_KINDS)
    return _MAKERS[kind](spec, rng, context, where)


def _azure(spec: Mapping, rng: np.random.Generator, context: SourceContext,
           where: str) -> Workload:
    opts = options(spec, where, ("kind",), {"trace": "conv", "path": None, "on_error": "raise"})
    workload, report = load_azure_2023_with_report(opts["trace"], opts["path"],
                                                   on_error=opts["on_error"])
    context.reports.append(report)
    return workload


# The loaders of the kinds below are imported when a source of their kind is built, so a
# process reading one trace does not hold every loader's code.


def _mooncake(spec: Mapping, rng: np.random.Generator, context: SourceContext,
              where: str) -> Workload:
    opts = options(spec, where, ("kind",),
                   {"arrivals": "spread", "tick_s": 3.0, "path": None, "on_error": "raise",
                    "sessions": False, "decode_s_per_token": 0.02, "max_branching": 16})
    if not isinstance(opts["sessions"], bool):
        raise WorkloadError(f"{where}.sessions = {opts['sessions']!r}: must be true or false")
    from servegym.envs.workloads.mooncake import load_mooncake_with_report

    workload, report = load_mooncake_with_report(
        opts["path"], arrivals=opts["arrivals"], tick_s=opts["tick_s"], rng=rng,
        block_size=context.block_size, on_error=opts["on_error"], sessions=opts["sessions"],
        decode_s_per_token=opts["decode_s_per_token"], max_branching=opts["max_branching"],
    )
    context.reports.append(report)
    return workload


def _length_table(spec: Mapping, rng: np.random.Generator, context: SourceContext,
                  where: str) -> Workload:
    opts = options(spec, where, ("kind", "arrivals"),
                   {"num_requests": None, "duration_s": None, "order": "random"})
    synthetic = {
        "num_requests": opts["num_requests"], "duration_s": opts["duration_s"],
        "arrivals": opts["arrivals"], "name": opts["kind"],
        "lengths": {"dist": "empirical", "trace": opts["kind"], "order": opts["order"]},
    }
    return synthetic_workload(synthetic, rng, context.traces, where)


def _servegen(spec: Mapping, rng: np.random.Generator, context: SourceContext,
              where: str) -> Workload:
    opts = options(spec, where, ("kind",),
                   {"pool": None, "start_s": 0.0, "duration_s": 3600.0, "rate_scale": 1.0,
                    "clients": None, "max_clients": None, "path": None, "on_error": "raise"})
    from servegym.envs.workloads.servegen import generate_servegen_with_report

    workload, report = generate_servegen_with_report(
        opts["pool"], start_s=opts["start_s"], duration_s=opts["duration_s"],
        rate_scale=opts["rate_scale"], clients=opts["clients"], max_clients=opts["max_clients"],
        rng=rng, path=opts["path"], on_error=opts["on_error"],
    )
    context.reports.append(report)
    return workload


def _synthetic(spec: Mapping, rng: np.random.Generator, context: SourceContext,
               where: str) -> Workload:
    return synthetic_workload(spec, rng, context.traces, where)


def _sessions(spec: Mapping, rng: np.random.Generator, context: SourceContext,
              where: str) -> Workload:
    from servegym.envs.workloads.sessions import multi_turn_workload

    return multi_turn_workload(spec, rng, context.block_size, context.traces, where)


def _programs(spec: Mapping, rng: np.random.Generator, context: SourceContext,
              where: str) -> Workload:
    from servegym.envs.workloads.programs import agentic_program_workload

    return agentic_program_workload(spec, rng, context.block_size, context.traces, where)


def _mix(spec: Mapping, rng: np.random.Generator, context: SourceContext,
         where: str) -> Workload:
    opts = options(spec, where, ("kind", "tenants"), {"name": "multi_tenant"})
    tenants = opts["tenants"]
    if isinstance(tenants, str | bytes | Mapping) or not hasattr(tenants, "__len__") or \
            len(tenants) == 0:
        raise WorkloadError(f"{where}.tenants must be a non-empty list of tenant mappings")
    parts = [
        _tenant(tenant, child, context, f"{where}.tenants[{i}]")
        for i, (tenant, child) in enumerate(zip(tenants, rng.spawn(len(tenants)), strict=True))
    ]
    return merge(parts, name=str(opts["name"]))


def _tenant(spec: Any, rng: np.random.Generator, context: SourceContext,
            where: str) -> Workload:
    opts = options(spec, where, ("name", "source"),
                   {"priority": 0, "ttft_slo": None, "tpot_slo": None})
    part = make_source(opts["source"], rng, context, f"{where}.source")
    name = str(opts["name"])
    names = (name,) if len(part.tenant_names) == 1 else tuple(
        f"{name}/{t}" for t in part.tenant_names)
    n = len(part)
    priority = opts["priority"]
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise WorkloadError(f"{where}.priority = {priority!r}: must be an integer (lower is "
                            "more urgent)")
    changes: dict[str, Any] = {"tenant_names": names,
                               "priority": np.full(n, priority, dtype=np.int32)}
    for slo in ("ttft_slo", "tpot_slo"):
        if opts[slo] is not None:
            changes[slo] = np.full(n, number(f"{where}.{slo}", opts[slo], low=0.0,
                                             strict_low=True))
    return dataclasses.replace(part, **changes)


_MAKERS = MappingProxyType({
    "azure": _azure,
    "mooncake": _mooncake,
    "sharegpt": _length_table,
    "arxiv": _length_table,
    "servegen": _servegen,
    "synthetic": _synthetic,
    "sessions": _sessions,
    "programs": _programs,
    "mix": _mix,
})
