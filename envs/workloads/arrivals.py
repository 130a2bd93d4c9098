"""Arrival processes: synthetic Poisson arrivals and rate rescaling of real traces.

All randomness comes from the ``np.random.Generator`` passed in, so a seed fixes the
result bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from envs.workloads.workload import Workload, WorkloadError

__all__ = ["poisson_arrivals", "scale_to_rate", "with_poisson_arrivals"]


def poisson_arrivals(num_requests: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (seconds) of a Poisson process with ``rate`` requests per second.

    The times are cumulative sums of exponential gaps, so the first arrival is one gap
    after 0 (not at 0) and the array is non-decreasing.
    """
    n = _check_count(num_requests)
    scale = 1.0 / _check_rate(rate)
    _check_rng(rng)
    return np.cumsum(rng.exponential(scale=scale, size=n))


def with_poisson_arrivals(
    workload: Workload, rate: float, rng: np.random.Generator, *, name: str | None = None
) -> Workload:
    """The same requests, in the same order, arriving as a Poisson process of ``rate``.

    Keeps lengths, tenants, priorities, SLOs and prefix hashes; only arrival times change.
    ``name`` defaults to the workload's name.
    """
    times = poisson_arrivals(len(workload), rate, rng)
    return dataclasses.replace(workload, arrival_time=times, name=name or workload.name)


def scale_to_rate(workload: Workload, rate: float) -> Workload:
    """Stretch or compress time so that the mean rate becomes ``rate`` requests/s.

    The mean rate is ``len / (last - first arrival)`` as in :meth:`Workload.summary`.
    Every gap is multiplied by the same factor, so the burst shape (gap ratios,
    inter-arrival CV) is kept; the first arrival time stays where it is.
    """
    target = _check_rate(rate)
    times = workload.arrival_time
    if len(workload) < 2 or times[-1] <= times[0]:
        raise WorkloadError(
            f"scale_to_rate: workload {workload.name!r} has {len(workload)} request(s) "
            "spanning 0 s, so it has no rate to rescale; use with_poisson_arrivals instead"
        )
    current = len(workload) / float(times[-1] - times[0])
    factor = current / target
    scaled = times[0] + (times - times[0]) * factor
    return dataclasses.replace(workload, arrival_time=scaled)


def _check_count(num_requests: int) -> int:
    valid = isinstance(num_requests, int | np.integer) and not isinstance(num_requests, bool)
    if not valid or num_requests < 0:
        raise WorkloadError(f"num_requests = {num_requests!r}: must be a non-negative integer")
    return int(num_requests)


def _check_rate(rate: float) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(rate, bool) or not (math.isfinite(value) and value > 0):
        raise WorkloadError(f"rate = {rate!r}: must be a finite number of requests per second > 0")
    return value


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "create one with numpy.random.default_rng(seed)"
        )
