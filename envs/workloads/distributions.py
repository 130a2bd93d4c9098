"""Length and duration distributions named by config mappings, sampled with numpy.

Token lengths (:func:`sample_lengths`, integers >= 1), ``{"dist": ..., options}``:

* ``fixed``: ``value``.
* ``uniform``: integers in ``[low, high]``, both included.
* ``zipf``: ``P(k) ~ k**-a`` on ``[low, high]`` (``low`` defaults to 1): a bounded Zipf,
  sampled by inverting its CDF.
* ``lognormal``: ``mean`` and ``cv`` of the continuous log-normal, rounded to the nearest
  integer and clipped to ``[low, high]`` (``low`` defaults to 1, ``high`` to none).
* ``empirical``: values of a column (``prompt`` or ``output``) of a named trace, drawn
  uniformly with replacement; the caller supplies the values (see
  :mod:`servegym.envs.workloads.synthetic` for the trace names).

Durations in seconds (:func:`sample_durations`, floats >= 0): ``fixed`` (``value``),
``exponential`` (``mean``), ``uniform`` (``low``, ``high``), ``lognormal``
(``mean``, ``cv``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from servegym.envs.workloads.spec import number, options, positive_int
from servegym.envs.workloads.workload import WorkloadError

__all__ = ["LENGTH_DISTS", "DURATION_DISTS", "sample_durations", "sample_lengths"]

LENGTH_DISTS = ("fixed", "uniform", "zipf", "lognormal", "empirical")
DURATION_DISTS = ("fixed", "exponential", "uniform", "lognormal")
_MAX_ZIPF_SUPPORT = 10_000_000

# Values of a named trace's column, for "empirical": (trace, column) -> int64 array.
EmpiricalValues = Callable[[str, str], np.ndarray]


def sample_lengths(
    spec: Mapping[str, Any],
    n: int,
    rng: np.random.Generator,
    where: str,
    empirical: EmpiricalValues | None = None,
) -> np.ndarray:
    """``n`` token lengths (int64, >= 1) from the distribution ``spec`` names."""
    kind = _kind(spec, where, LENGTH_DISTS)
    if kind == "fixed":
        opts = options(spec, where, ("dist", "value"))
        return np.full(n, positive_int(f"{where}.value", opts["value"]), dtype=np.int64)
    if kind == "uniform":
        opts = options(spec, where, ("dist", "low", "high"))
        low, high = _int_range(where, opts["low"], opts["high"])
        return rng.integers(low, high + 1, size=n, dtype=np.int64)
    if kind == "zipf":
        return _zipf(spec, n, rng, where)
    if kind == "lognormal":
        opts = options(spec, where, ("dist", "mean", "cv"), {"low": 1, "high": None})
        low = positive_int(f"{where}.low", opts["low"])
        high = None if opts["high"] is None else positive_int(f"{where}.high", opts["high"])
        if high is not None and high < low:
            raise WorkloadError(f"{where}: high = {high} is below low = {low}")
        values = np.rint(_lognormal(opts, n, rng, where))
        return np.clip(values, low, high).astype(np.int64)
    return _empirical(spec, n, rng, where, empirical)


def sample_durations(
    spec: Mapping[str, Any], n: int, rng: np.random.Generator, where: str
) -> np.ndarray:
    """``n`` durations in seconds (float64, >= 0) from the distribution ``spec`` names."""
    kind = _kind(spec, where, DURATION_DISTS)
    if kind == "fixed":
        opts = options(spec, where, ("dist", "value"))
        return np.full(n, number(f"{where}.value", opts["value"], low=0.0))
    if kind == "exponential":
        opts = options(spec, where, ("dist", "mean"))
        return rng.exponential(number(f"{where}.mean", opts["mean"], low=0.0, strict_low=True),
                               size=n)
    if kind == "uniform":
        opts = options(spec, where, ("dist", "low", "high"))
        low = number(f"{where}.low", opts["low"], low=0.0)
        high = number(f"{where}.high", opts["high"], low=low)
        return rng.uniform(low, high, size=n)
    return _lognormal(options(spec, where, ("dist", "mean", "cv")), n, rng, where)


def _kind(spec: Any, where: str, kinds: tuple[str, ...]) -> str:
    if not isinstance(spec, Mapping) or "dist" not in spec:
        raise WorkloadError(
            f"{where} must be a mapping with 'dist' (one of {', '.join(kinds)}), got {spec!r}"
        )
    if spec["dist"] not in kinds:
        raise WorkloadError(
            f"{where}.dist = {spec['dist']!r}: choose one of {', '.join(kinds)}"
        )
    return str(spec["dist"])


def _int_range(where: str, low: Any, high: Any) -> tuple[int, int]:
    lo = positive_int(f"{where}.low", low)
    hi = positive_int(f"{where}.high", high)
    if hi < lo:
        raise WorkloadError(f"{where}: high = {hi} is below low = {lo}")
    return lo, hi


def _lognormal(opts: Mapping[str, Any], n: int, rng: np.random.Generator, where: str) -> np.ndarray:
    mean = number(f"{where}.mean", opts["mean"], low=0.0, strict_low=True)
    cv = number(f"{where}.cv", opts["cv"], low=0.0)
    sigma2 = math.log1p(cv * cv)
    return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size=n)


def _zipf(spec: Mapping[str, Any], n: int, rng: np.random.Generator, where: str) -> np.ndarray:
    opts = options(spec, where, ("dist", "a", "high"), {"low": 1})
    a = number(f"{where}.a", opts["a"], low=0.0, strict_low=True)
    low, high = _int_range(where, opts["low"], opts["high"])
    if high - low + 1 > _MAX_ZIPF_SUPPORT:
        raise WorkloadError(f"{where}: support [low, high] is larger than {_MAX_ZIPF_SUPPORT:,}")
    support = np.arange(low, high + 1, dtype=np.float64)
    cdf = np.cumsum(support**-a)
    picks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return low + np.minimum(picks, support.size - 1).astype(np.int64)


def _empirical(
    spec: Mapping[str, Any],
    n: int,
    rng: np.random.Generator,
    where: str,
    empirical: EmpiricalValues | None,
) -> np.ndarray:
    opts = options(spec, where, ("dist", "trace", "column"))
    if opts["column"] not in ("prompt", "output"):
        raise WorkloadError(f"{where}.column = {opts['column']!r}: choose 'prompt' or 'output'")
    if empirical is None:
        raise WorkloadError(f"{where}: empirical lengths need trace data; none was supplied")
    values = empirical(str(opts["trace"]), str(opts["column"]))
    return values[rng.integers(0, values.size, size=n)]
