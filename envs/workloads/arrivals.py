"""Arrival processes: synthetic arrivals and rate rescaling of real traces.

Every process is parameterised by its long-run mean ``rate`` (requests per second) and
returns ``num_requests`` non-decreasing arrival times in seconds, the first one gap after
0. All randomness comes from the ``np.random.Generator`` passed in, so a seed fixes the
result bit for bit.

* :func:`poisson_arrivals`: exponential gaps (inter-arrival CV 1), optionally capped
  (``max_gap_s``, as Vidur caps them at 3 mean gaps).
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
    "vidur_capped_rate",
    "with_poisson_arrivals",
]


def poisson_arrivals(
    num_requests: int, rate: float, rng: np.random.Generator, max_gap_s: float | None = None
) -> np.ndarray:
    """Arrival times (seconds) of a Poisson process with ``rate`` requests per second.

    The times are cumulative sums of exponential gaps, so the first arrival is one gap
    after 0 (not at 0) and the array is non-decreasing.

    ``max_gap_s``: if given, every gap is capped at it (``None``, the default: no cap).
    Vidur's Poisson generator (Agrawal et al., MLSys 2024;
    ``poisson_request_interval_generator.py``) caps gaps at ``3 / rate``, which raises the
    realised rate by ``1 / (1 - e**-3)``, about 5.2 % (1.052 req/s at ``rate=1``), and makes
    arrivals less bursty. See :func:`vidur_capped_rate`.
    """
    n = _check_count(num_requests)
    scale = 1.0 / _check_rate(rate)
    _check_rng(rng)
    gaps = rng.exponential(scale=scale, size=n)
    if max_gap_s is not None:
        np.minimum(gaps, _positive("max_gap_s", max_gap_s), out=gaps)
    return np.cumsum(gaps)


def vidur_capped_rate(rate: float, cap_in_means: float = 3.0) -> float:
    """Long-run rate of exponential gaps of mean ``1 / rate`` capped at ``cap_in_means``
    means: ``rate / (1 - exp(-cap_in_means))`` (the capped gap's mean is
    ``(1 - e**-c) / rate``). Vidur's cap (3 means) at 1 req/s: 1.0524 req/s."""
    rate = _check_rate(rate)
    cap = _positive("cap_in_means", cap_in_means)
    return rate / -math.expm1(-cap)


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
