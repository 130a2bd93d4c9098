"""An upper bound on the goodput rate any scheduler can reach on a workload.

`goodput_ceiling(workload, cost_models)` bounds `serving/goodput_rps` (requests meeting
both SLOs per second of makespan, `servegym.envs.core.metrics`) from above, whatever the
policy: admission order, preemption victims, routing and cluster size do not enter. It
answers "is there room above the best heuristic at all?" before anyone trains an agent.

Per request, the fastest it could possibly be served is alone on the fastest pool:

* first token: one iteration that prefills every prompt token not possibly cached
  (`iteration_time([(new, cached)], 0, 0)`), where a leading block counts as possibly
  cached when an earlier request of the window has the same block hash (its KV may be in
  the prefix cache; with prefix caching off the bound is only looser);
* each later token: a decode iteration of batch size 1, `base + slope * context`, so the
  time per output token is `base + slope * (prompt + output / 2)` on average.

A request is *feasible* when those minima meet its TTFT and TPOT targets, and cannot
finish before `arrival + ttft_min + (output - 1) * tpot_min`. A policy that meets the SLOs
of k requests ends its makespan no earlier than the k-th smallest such finish among the
feasible requests, and the makespan starts at the first arrival, so

    goodput_rps <= max_k k / (f_(k) - first arrival)

over the feasible requests' earliest finishes `f` in ascending order. The bound assumes
that batching never makes a request's own iterations faster than running it alone, which
holds for every servegym cost model (iteration time grows with the batch). It ignores
capacity (GPU time, KV memory), so it is loose under overload and tight where the load is
light and the tail of arrivals decides the makespan: there it shows when even a perfect
scheduler has less than a few percent to gain over the best heuristic.

`drained_goodput_ceiling(workload, cost_models, must_finish)` is the bound for runs that
serve every request to its end, as the evaluation harness does (`Simulator.run` drains the
window; no policy can drop a request it admitted). Then the makespan runs at least to the
latest earliest finish among the requests that must finish (`must_finish`: those no
instance rejects on arrival; a request some instance would reject may go unserved, so it
does not bound the makespan, but it still counts as possibly met), so

    goodput_rps <= min(the bound above, feasible / (max f over must_finish - first arrival)).

It is never looser than `goodput_ceiling` and is much tighter where the last arrivals
include a long request: the makespan cannot end before it does, met or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegym.envs.workloads.workload import Workload


@dataclass(frozen=True)
class Ceiling:
    """`goodput_rps`: the bound; `feasible`: requests whose SLOs can be met at all;
    `requests`: the window's size; `min_makespan_s`: the makespan at the bound."""

    goodput_rps: float
    feasible: int
    requests: int
    min_makespan_s: float


def uncached_tokens(workload: Workload) -> np.ndarray:
    """Per request, prompt tokens no earlier request of the window shares a block with."""
    prompt = workload.prompt_len.astype(np.int64)
    if workload.prefix_hashes is None:
        return prompt.copy()
    seen: set[int] = set()
    out = prompt.copy()
    size = workload.prefix_block_size
    for i in range(len(workload)):
        hashes = workload.prefix_hashes[i]
        shared = 0
        for h in hashes:
            if h not in seen:
                break
            shared += 1
        seen.update(hashes)
        out[i] = max(int(prompt[i]) - shared * size, 1)
    return out


def service_minima(workload: Workload, cost: Any, new_tokens: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(ttft_min, tpot_min) per request alone on `cost`'s hardware (module docstring)."""
    prompt = workload.prompt_len.astype(np.int64)
    output = workload.output_len.astype(np.int64)
    ttft = np.array([cost.iteration_time([(int(n), int(p - n))], 0, 0)
                     for n, p in zip(new_tokens, prompt, strict=True)])
    base, slope = cost.decode_coeffs(1)
    tpot = np.where(output > 1, base + slope * (prompt + output / 2.0), 0.0)
    return ttft, tpot


def earliest_finishes(workload: Workload, cost_models: Sequence[Any]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(feasible, earliest finish) per request, each alone on the fastest of `cost_models`:
    feasible when its minima meet both SLO targets (module docstring)."""
    new = uncached_tokens(workload)
    minima = [service_minima(workload, cost, new) for cost in cost_models]
    ttft = np.min([m[0] for m in minima], axis=0)
    tpot = np.min([m[1] for m in minima], axis=0)
    feasible = (ttft <= workload.ttft_slo) & (tpot <= workload.tpot_slo)
    return feasible, workload.arrival_time + ttft + (workload.output_len - 1) * tpot


def goodput_ceiling(workload: Workload, cost_models: Sequence[Any]) -> Ceiling:
    """The upper bound of the module docstring, over the fastest of `cost_models`."""
    if not len(workload):
        raise ValueError("goodput_ceiling needs a non-empty workload")
    if not cost_models:
        raise ValueError("goodput_ceiling needs at least one cost model (one per pool)")
    feasible, finish = earliest_finishes(workload, cost_models)
    start = float(workload.arrival_time.min())
    ends = np.sort(finish[feasible]) - start
    if not ends.size:
        return Ceiling(0.0, 0, len(workload), float("nan"))
    rates = np.arange(1, ends.size + 1) / np.maximum(ends, 1e-12)
    best = int(np.argmax(rates))
    return Ceiling(float(rates[best]), int(feasible.sum()), len(workload), float(ends[best]))


def drained_goodput_ceiling(workload: Workload, cost_models: Sequence[Any],
                            must_finish: np.ndarray | None = None) -> Ceiling:
    """The bound for runs that serve every request (module docstring). `must_finish`: a
    boolean mask of the requests that no instance rejects on arrival (None: all of them);
    `min_makespan_s` is then the makespan floor the bound divides by."""
    general = goodput_ceiling(workload, cost_models)
    mask = np.ones(len(workload), dtype=bool) if must_finish is None else \
        np.asarray(must_finish, dtype=bool)
    if mask.shape != (len(workload),):
        raise ValueError(f"must_finish has shape {mask.shape}; give one flag per request "
                         f"({len(workload)})")
    if not mask.any() or not general.feasible:
        return general
    _, finish = earliest_finishes(workload, cost_models)
    floor = float(finish[mask].max() - workload.arrival_time.min())
    drained = general.feasible / max(floor, 1e-12)
    if drained >= general.goodput_rps:
        return general
    return Ceiling(float(drained), general.feasible, general.requests, floor)
