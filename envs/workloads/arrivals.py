"""Arrival processes: synthetic arrivals and rate rescaling of real traces.

Every process is parameterised by its long-run mean ``rate`` (requests per second) and
returns ``num_requests`` non-decreasing arrival times in seconds, the first one gap after
0. All randomness comes from the ``np.random.Generator`` passed in, so a seed fixes the
result bit for bit.

* :func:`poisson_arrivals`: exponential gaps (inter-arrival CV 1).
* :func:`gamma_arrivals`: Gamma gaps with a given CV (``cv > 1`` bursty, ``< 1`` regular).
* :func:`onoff_arrivals`: an interrupted Poisson process: ON periods (mean ``on_s``) with
  Poisson arrivals at ``rate * (on_s + off_s) / on_s`` alternate with silent OFF periods
  (mean ``off_s``), both exponentially long; it starts ON at time 0.
* :func:`diurnal_arrivals`: a Poisson process whose rate follows
  ``rate * (1 + amplitude * sin(2 pi t / period_s + phase))``, drawn by thinning.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = [
    "diurnal_arrivals",
    "gamma_arrivals",
    "onoff_arrivals",
    "poisson_arrivals",
    "scale_to_rate",
    "with_poisson_arrivals",
]


def poisson_arrivals(num_requests: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (seconds) of a Poisson process with ``rate`` requests per second.

    The times are cumulative sums of exponential gaps, so the first arrival is one gap
    after 0 (not at 0) and the array is non-decreasing.
    """
    n = _check_count(num_requests)
    scale = 1.0 / _check_rate(rate)
    _check_rng(rng)
    return np.cumsum(rng.exponential(scale=scale, size=n))


def gamma_arrivals(
    num_requests: int, rate: float, cv: float, rng: np.random.Generator
) -> np.ndarray:
    """A renewal process with Gamma gaps of mean ``1 / rate`` and coefficient of variation
    ``cv`` (shape ``1 / cv**2``); ``cv = 1`` is a Poisson process."""
    n = _check_count(num_requests)
    mean = 1.0 / _check_rate(rate)
    cv = _positive("cv", cv)
    _check_rng(rng)
    shape = 1.0 / (cv * cv)
    return np.cumsum(rng.gamma(shape, mean / shape, size=n))


def onoff_arrivals(
    num_requests: int, rate: float, on_s: float, off_s: float, rng: np.random.Generator
) -> np.ndarray:
    """An interrupted Poisson process (bursts): see the module docstring.

    Arrivals are a Poisson process in "ON time" at ``rate_on = rate * (on_s + off_s) /
    on_s``; each ON time is shifted by the OFF periods that precede it.
    """
    n = _check_count(num_requests)
    rate = _check_rate(rate)
    on_s, off_s = _positive("on_s", on_s), _positive("off_s", off_s)
    _check_rng(rng)
    rate_on = rate * (on_s + off_s) / on_s
    busy = np.cumsum(rng.exponential(1.0 / rate_on, size=n))  # position in ON time
    need = float(busy[-1]) if n else 0.0
    periods = max(16, math.ceil(1.2 * need / on_s) + 16)
    on = rng.exponential(on_s, size=periods)
    while on.sum() <= need:  # rare: draw more periods until the ON time covers every arrival
        on = np.concatenate([on, rng.exponential(on_s, size=periods)])
    off = rng.exponential(off_s, size=on.size)
    on_end = np.cumsum(on)
    period = np.searchsorted(on_end, busy, side="right")  # ON periods fully before each arrival
    off_before = np.r_[0.0, np.cumsum(off)][period]
    return busy + off_before


def diurnal_arrivals(
    num_requests: int,
    rate: float,
    amplitude: float,
    period_s: float,
    rng: np.random.Generator,
    phase: float = 0.0,
) -> np.ndarray:
    """A Poisson process with rate ``rate * (1 + amplitude * sin(2 pi t / period_s + phase))``.

    Thinning: candidates at the peak rate ``rate * (1 + amplitude)`` are kept with
    probability ``rate(t) / peak``; ``0 <= amplitude < 1``.
    """
    n = _check_count(num_requests)
    rate = _check_rate(rate)
    period_s = _positive("period_s", period_s)
    amplitude = _finite("amplitude", amplitude)
    if not 0 <= amplitude < 1:
        raise WorkloadError(f"amplitude = {amplitude!r}: must be in [0, 1)")
    phase = _finite("phase", phase)
    _check_rng(rng)
    peak = rate * (1.0 + amplitude)
    kept: list[np.ndarray] = []
    start, total = 0.0, 0
    while total < n:
        batch = int((n - total) * (1.0 + amplitude) * 1.1) + 64
        candidates = start + np.cumsum(rng.exponential(1.0 / peak, size=batch))
        ratio = (1.0 + amplitude * np.sin(2 * np.pi * candidates / period_s + phase)) / (
            1.0 + amplitude
        )
        accepted = candidates[rng.random(batch) < ratio]
        kept.append(accepted)
        total += accepted.size
        start = float(candidates[-1])
    return np.concatenate(kept)[:n] if kept else np.zeros(0)


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


def _finite(label: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise WorkloadError(f"{label} = {value!r}: must be a finite number")
    return number


def _positive(label: str, value: float) -> float:
    number = _finite(label, value) if not isinstance(value, bool) else math.nan
    if not number > 0:
        raise WorkloadError(f"{label} = {value!r}: must be a finite number > 0")
    return number


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "create one with numpy.random.default_rng(seed)"
        )
