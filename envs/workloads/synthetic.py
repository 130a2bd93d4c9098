"""Synthetic workloads: an arrival process paired with length distributions.

Config of a ``synthetic`` source (any mapping; Hydra passes one)::

    num_requests: 10000        # or duration_s: 3600 (exactly one of the two)
    arrivals: {process: poisson, rate: 5.0}
    prompt: {dist: lognormal, mean: 1000, cv: 1.0, high: 8000}
    output: {dist: uniform, low: 50, high: 500}
    # or, instead of prompt/output, joint (prompt, output) pairs of a trace:
    lengths: {dist: empirical, trace: sharegpt, order: random}

Arrival processes (``arrivals.process``; every one takes ``rate``, the mean req/s):
``poisson``; ``gamma`` (``cv``); ``onoff`` (``on_s``, ``off_s``); ``diurnal``
(``amplitude``, ``period_s``, ``phase``); ``trace`` (``trace``: the arrival times of a named
trace, rescaled to ``rate`` if given, repeated end to end when more are needed).
Length distributions: :mod:`servegym.envs.workloads.distributions`.

Named traces (``trace:``): ``azure_conv``, ``azure_code``, ``mooncake_conv`` (batch
arrivals), ``sharegpt``, ``arxiv`` (lengths only: no ``trace`` arrivals). Joint
``order``: ``random`` (rows drawn with replacement) or ``file`` (rows in file order,
cycled).

Independent generators are spawned for arrivals, prompt and output, so changing one
distribution does not change the draws of the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from servegym.envs.workloads.arrivals import (
    diurnal_arrivals,
    gamma_arrivals,
    onoff_arrivals,
    poisson_arrivals,
)
from servegym.envs.workloads.azure import load_azure_2023
from servegym.envs.workloads.distributions import sample_lengths
from servegym.envs.workloads.length_tables import LENGTH_TABLES, load_length_table
from servegym.envs.workloads.spec import number, options, positive_int, text
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = [
    "ARRIVAL_PROCESSES",
    "NAMED_TRACES",
    "TraceData",
    "arrival_times",
    "synthetic_workload",
]

ARRIVAL_PROCESSES = ("poisson", "gamma", "onoff", "diurnal", "trace")
NAMED_TRACES = ("azure_conv", "azure_code", "mooncake_conv", *LENGTH_TABLES)
_TIMED_TRACES = ("azure_conv", "azure_code", "mooncake_conv")


@dataclass
class TraceData:
    """Named traces loaded at most once per build (a per-call cache, never module-level)."""

    loaded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(
        default_factory=dict
    )

    def get(self, name: str, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(prompt_len, output_len, arrival_time or None)`` of trace ``name``."""
        if name not in NAMED_TRACES:
            raise WorkloadError(
                f"{where}: unknown trace {name!r}; choose one of {', '.join(NAMED_TRACES)}"
            )
        if name not in self.loaded:
            self.loaded[name] = _load_named(name)
        return self.loaded[name]

    def column(self, name: str, column: str) -> np.ndarray:
        prompt, output, _ = self.get(name, "empirical lengths")
        return prompt if column == "prompt" else output


def _load_named(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if name in LENGTH_TABLES:
        table = load_length_table(name)
        return table.prompt_len, table.output_len, None
    if name == "mooncake_conv":
        from servegym.envs.workloads.mooncake import load_mooncake  # only when named

        trace = load_mooncake(arrivals="batch")
    else:
        trace = load_azure_2023(name.removeprefix("azure_"))
    return trace.prompt_len, trace.output_len, trace.arrival_time


# ---------------------------------------------------------------------- arrivals


def arrival_times(
    spec: Mapping[str, Any], n: int, rng: np.random.Generator, where: str, traces: TraceData
) -> np.ndarray:
    """``n`` arrival times from the process ``spec`` names (see the module docstring)."""
    if not isinstance(spec, Mapping) or "process" not in spec:
        raise WorkloadError(f"{where} must be a mapping with 'process' (one of "
                            f"{', '.join(ARRIVAL_PROCESSES)}), got {spec!r}")
    process = text(f"{where}.process", spec["process"], ARRIVAL_PROCESSES)
    if process == "trace":
        opts = options(spec, where, ("process", "trace"), {"rate": None})
        return _trace_arrivals(opts, n, where, traces)
    opts = options(spec, where, *_PROCESS_OPTIONS[process])
    rate = number(f"{where}.rate", opts["rate"], low=0.0, strict_low=True)
    if process == "poisson":
        return poisson_arrivals(n, rate, rng)
    if process == "gamma":
        return gamma_arrivals(n, rate, number(f"{where}.cv", opts["cv"], low=0.0,
                                              strict_low=True), rng)
    if process == "onoff":
        return onoff_arrivals(n, rate, opts["on_s"], opts["off_s"], rng)
    amplitude = number(f"{where}.amplitude", opts["amplitude"], low=0.0, high=0.999999)
    phase = number(f"{where}.phase", opts["phase"])
    return diurnal_arrivals(n, rate, amplitude, opts["period_s"], rng, phase=phase)


_PROCESS_OPTIONS: Mapping[str, tuple[tuple[str, ...], dict[str, Any]]] = MappingProxyType({
    "poisson": (("process", "rate"), {}),
    "gamma": (("process", "rate", "cv"), {}),
    "onoff": (("process", "rate", "on_s", "off_s"), {}),
    "diurnal": (("process", "rate", "amplitude", "period_s"), {"phase": 0.0}),
})


def process_rate(spec: Mapping[str, Any], where: str, traces: TraceData) -> float:
    """The mean rate of an arrival spec (for sizing a generation by duration)."""
    if isinstance(spec, Mapping) and spec.get("process") == "trace" and spec.get("rate") is None:
        _, _, times = traces.get(str(spec.get("trace")), f"{where}.trace")
        if times is None or times.size < 2 or times[-1] <= times[0]:
            raise WorkloadError(f"{where}: trace {spec.get('trace')!r} has no arrival times")
        return times.size / float(times[-1] - times[0])
    if not isinstance(spec, Mapping) or "rate" not in spec:
        raise WorkloadError(f"{where}: give the arrival process a 'rate' (requests/s)")
    return number(f"{where}.rate", spec["rate"], low=0.0, strict_low=True)


def _trace_arrivals(opts: Mapping[str, Any], n: int, where: str, traces: TraceData) -> np.ndarray:
    name = str(opts["trace"])
    if name not in _TIMED_TRACES:
        raise WorkloadError(f"{where}.trace = {name!r}: arrival times exist only for "
                            f"{', '.join(_TIMED_TRACES)}")
    _, _, recorded = traces.get(name, f"{where}.trace")
    times = np.zeros(0) if recorded is None else recorded - recorded[0]
    if opts["rate"] is not None:
        rate = number(f"{where}.rate", opts["rate"], low=0.0, strict_low=True)
        times = times * (times.size / float(times[-1])) / rate  # mean rate as scale_to_rate
    span = float(times[-1]) + float(times[-1]) / max(times.size - 1, 1)  # one mean gap after
    repeats = math.ceil(n / times.size) if n else 0
    cycled = (times[None, :] + span * np.arange(repeats)[:, None]).ravel()
    return cycled[:n]


# ---------------------------------------------------------------------- workloads


def synthetic_workload(
    spec: Mapping[str, Any], rng: np.random.Generator, traces: TraceData | None = None,
    where: str = "source",
) -> Workload:
    """A synthetic workload from ``spec`` (see the module docstring)."""
    traces = traces or TraceData()
    opts = options(
        spec, where, ("arrivals",),
        {"kind": "synthetic", "num_requests": None, "duration_s": None, "prompt": None,
         "output": None, "lengths": None, "name": None},
    )
    arrival_rng, prompt_rng, output_rng = rng.spawn(3)
    times = sized_arrivals(opts, arrival_rng, where, traces,
                           lambda n, r: arrival_times(opts["arrivals"], n, r,
                                                      f"{where}.arrivals", traces))
    prompt, output = _lengths(opts, times.size, prompt_rng, output_rng, where, traces)
    name = opts["name"] or f"synthetic_{opts['arrivals'].get('process', '')}"
    return Workload.from_lengths(times, prompt, output, name=str(name))


def sized_arrivals(
    opts: Mapping[str, Any],
    rng: np.random.Generator,
    where: str,
    traces: TraceData,
    draw: Callable[[int, np.random.Generator], np.ndarray],
) -> np.ndarray:
    """Arrival times for ``num_requests`` requests, or all of those before ``duration_s``.

    By duration, the count is guessed from the mean rate and doubled until the last
    arrival passes the duration; every try restarts from the same generator state, so
    the result depends only on the seed.
    """
    count, duration = opts.get("num_requests"), opts.get("duration_s")
    if (count is None) == (duration is None):
        raise WorkloadError(f"{where}: give exactly one of num_requests and duration_s")
    if count is not None:
        return draw(positive_int(f"{where}.num_requests", count), rng)
    limit = number(f"{where}.duration_s", duration, low=0.0, strict_low=True)
    rate = process_rate(opts["arrivals"], f"{where}.arrivals", traces)
    state = rng.bit_generator.state
    guess = int(rate * limit * 1.2) + 32
    while True:
        rng.bit_generator.state = state
        times = draw(guess, rng)
        if times.size and times[-1] >= limit:
            return times[times < limit]
        guess *= 2


def _lengths(opts: Mapping[str, Any], n: int, prompt_rng: np.random.Generator,
             output_rng: np.random.Generator, where: str,
             traces: TraceData) -> tuple[np.ndarray, np.ndarray]:
    if opts["lengths"] is not None:
        if opts["prompt"] is not None or opts["output"] is not None:
            raise WorkloadError(f"{where}: give either lengths (joint) or prompt and output")
        return joint_lengths(opts["lengths"], n, prompt_rng, f"{where}.lengths", traces)
    if opts["prompt"] is None or opts["output"] is None:
        raise WorkloadError(f"{where}: give prompt and output distributions, or lengths "
                            "(e.g. {dist: empirical, trace: sharegpt})")
    prompt = sample_lengths(opts["prompt"], n, prompt_rng, f"{where}.prompt", traces.column)
    output = sample_lengths(opts["output"], n, output_rng, f"{where}.output", traces.column)
    return prompt, output


def joint_lengths(spec: Mapping[str, Any], n: int, rng: np.random.Generator, where: str,
                  traces: TraceData) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (prompt, output) pairs of a named trace: drawn at random or in file order."""
    opts = options(spec, where, ("dist", "trace"), {"order": "random"})
    text(f"{where}.dist", opts["dist"], ("empirical",))
    order = text(f"{where}.order", opts["order"], ("random", "file"))
    prompt, output, _ = traces.get(str(opts["trace"]), f"{where}.trace")
    # "file" cycles the rows in order; "random" draws them with replacement.
    rows = np.arange(n) % prompt.size if order == "file" else rng.integers(0, prompt.size, n)
    return prompt[rows], output[rows]
