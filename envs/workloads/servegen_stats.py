"""Pool-level statistics of ServeGen data, as defined in the traces' README.

A pool is named as for the generator (:func:`servegym.envs.workloads.generate_servegen`):
a shipped pool's name, or ``path=`` its rates or length file (or a folder with ``pool``).
A pool that is not shipped spans its rates file's windows.

* clients: every client with rate rows; ``clients_with_lengths``: those with PMFs;
* aggregate rate: the sum over clients of ``rate_rps`` per 600-s window (mean, peak and
  minimum over every window of the pool's span, empty windows counting as 0);
* mean IAT CV: the rate-weighted mean of the per-client-window CVs;
* ``share_with_lengths``: the share of requests (``rate * 600`` summed) from clients with PMFs;
* per length field (also ``reason_ratio`` and the fields the generator does not model):
  mean, p50 and p99 of the request-weighted mixture of the client PMFs, weight = the
  client's requests in that 6-hour window; a percentile is the smallest value whose
  cumulative share reaches it.

Used to check that the shipped re-encoding reproduces the README's table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.workloads.servegen_data import (
    LENGTH_WINDOW_S,
    RATE_WINDOW_S,
    PmfTable,
    pool_file,
    read_pmfs,
    read_rates,
    resolve_pool,
)
from servegym.envs.workloads.tracefiles import RowProblems

__all__ = ["servegen_pool_stats"]


def servegen_pool_stats(pool: str | None, path: str | Path | None = None) -> dict[str, Any]:
    """The statistics of the module docstring for ``pool`` (reads the whole pool)."""
    spec = resolve_pool(pool, path)
    pool = spec.pool
    with pool_file(spec, "rates") as rates_path:
        rates, _, _ = read_rates(rates_path, RowProblems(rates_path, "raise"), 0, float("inf"),
                                 span_s=spec.row_bound_s)
    span = rates.windows_end if spec.span_s is None else spec.span_s
    with pool_file(spec, "lengths") as pmf_path:
        pmfs, with_lengths, _ = read_pmfs(pmf_path, RowProblems(pmf_path, "raise"),
                                          lambda c, w: True, span_s=spec.row_bound_s)
    windows = np.bincount(rates.window // RATE_WINDOW_S, weights=rates.rate,
                          minlength=span // RATE_WINDOW_S)
    requests = rates.rate * RATE_WINDOW_S
    has_lengths = np.isin(rates.client, sorted(with_lengths))
    stats: dict[str, Any] = {
        "pool": pool,
        "clients": len(rates.all_clients),
        "clients_with_lengths": len(with_lengths),
        "rate_mean": float(windows.mean()),
        "rate_peak": float(windows.max()),
        "rate_min": float(windows.min()),
        "iat_cv_mean": float((rates.rate * rates.cv).sum() / rates.rate.sum()),
        "share_with_lengths": float(requests[has_lengths].sum() / requests.sum()),
    }
    stats.update(_mixture_stats(rates.client, rates.window, requests, pmfs))
    return stats


def _mixture_stats(client: np.ndarray, window: np.ndarray, requests: np.ndarray,
                   pmfs: PmfTable) -> dict[str, float]:
    weight: dict[tuple[int, int], float] = {}
    six_hour = (window // LENGTH_WINDOW_S) * LENGTH_WINDOW_S
    for c, w, r in zip(client.tolist(), six_hour.tolist(), requests.tolist(), strict=True):
        weight[(c, w)] = weight.get((c, w), 0.0) + r
    mixtures: dict[str, dict[int, float]] = {}
    for key in pmfs.pairs():
        share = weight.get(key, 0.0)
        if share <= 0:
            continue
        for name, pmf in pmfs.fields(*key).items():
            probs = np.diff(pmf.cdf, prepend=0.0) / pmf.cdf[-1]
            mixture = mixtures.setdefault(name, {})
            for value, p in zip(pmf.values.tolist(), (probs * share).tolist(), strict=True):
                mixture[value] = mixture.get(value, 0.0) + p
    out: dict[str, float] = {}
    for name, mixture in sorted(mixtures.items()):
        values = np.array(sorted(mixture))
        probs = np.array([mixture[v] for v in values.tolist()])
        cdf = np.cumsum(probs) / probs.sum()
        out[f"{name}_mean"] = float((values * probs).sum() / probs.sum())
        for q in (50, 99):
            out[f"{name}_p{q}"] = float(values[min(np.searchsorted(cdf, q / 100), values.size - 1)])
    return out
