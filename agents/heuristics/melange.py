"""Mélange: request-size buckets, the cost-minimising GPU allocation, size-aware routing.

Reference: T. Griggs, X. Liu, J. Yu, D. Kim, W.-L. Chiang, A. Cheung, I. Stoica, "Mélange:
Cost Efficient Large Language Model Serving by Exploiting GPU Heterogeneity", 2024
(arXiv:2404.14527). Their finding: which GPU type serves a request most cheaply depends on
the request's size (prompt and output tokens), the rate and the SLO; small requests are
often cheapest on low-end GPUs, large ones on high-end GPUs. This module is written from the
paper's description; no code of theirs is copied.

Buckets
-------
`Buckets(prompt_edges, output_edges)`: bucket (i, j) holds the requests with
``prompt_edges[i] <= prompt < prompt_edges[i + 1]`` and likewise for the output (the last
edge of each axis is open-ended; edges are ascending and start at 0). Buckets are numbered
``i * len(output_edges) + j``; ``output_edges=(0,)`` (the default) buckets by prompt length
alone, which is what a router knows when a request arrives.

Allocation: Mélange's integer program (`solve_allocation`)
----------------------------------------------------------
Inputs: per bucket b its arrival rate ``lam[b]`` (req/s); per GPU type g its price ``c[g]``
(USD/h, envs/costs/prices.py) and per (g, b) the highest rate ``T[g, b]`` that one instance
of g sustains on requests of bucket b while meeting the SLO (Mélange's offline profile:
experiments/melange_allocation.py measures it with the simulator; 0 = g cannot meet the SLO
on b at all); optionally at most ``max_count[g]`` instances of g (availability). Each bucket
is cut into ``S = slice_factor`` equal slices of rate ``lam[b] / S``; a slice goes whole to
one GPU type, an instance of g is a bin of capacity 1 and a slice of b fills
``lam[b] / (S T[g, b])`` of it. Mélange's ILP has a binary per (slice, type); slices of one
bucket are interchangeable, so here the integer ``y[b, g]`` in 0..S counts the slices of b
given to g (the same program without its symmetric copies):

    minimise    sum_g c[g] n[g]
    subject to  sum_g y[b, g] = S                                   for every bucket b
                sum_b y[b, g] lam[b] / (S T[g, b]) <= n[g]          for every type g
                y[b, g] = 0 where T[g, b] = 0;  0 <= n[g] <= max_count[g]
                y, n integers

solved with HiGHS through `scipy.optimize.milp`. Output (`Allocation`): instances per type,
the share ``y[b, g] / S`` of each bucket each type serves, the cost per hour. A bucket no type
can serve under the SLO, or demand above what `max_count` allows, raises
`InfeasibleAllocationError` saying which bucket and what to change.

Routing
-------
* `MelangeRouting` ("melange"): Mélange's load balancer. A request goes to the GPU type that
  the allocation assigned its bucket to; a bucket split across types is dealt out in
  proportion to the shares by smooth weighted round-robin (per bucket a credit per type
  grows by its share each request, the type with the most credit is chosen and pays 1: no
  randomness, and every prefix of the stream is within one request of the shares). Within
  the type, the instance with the fewest outstanding requests (waiting + running + swapped;
  ties: lowest index). ``allocation`` maps GPU names to one share per bucket (e.g.
  `Allocation.shares()`, or experiments/melange_allocation.py's JSON ``shares``); without
  one, the router computes a default when an episode starts: the bucket mix of the
  simulated workload (`ClusterView.workload`, Mélange's offline histogram), a per
  (pool GPU, bucket) capacity estimate from the cost model (`estimated_rate`, at the
  bucket's mean lengths and median TPOT target; `tpot_slo` fixes one) and, since the
  cluster is given, the shares that minimise the highest utilisation over types and,
  among those, the price-weighted work (Mélange's load constraint and objective with the
  counts fixed: two linear programs, HiGHS through `scipy.optimize.linprog`;
  `balanced_shares`). Buckets by output length read the request's true output
  length (an oracle); the default buckets by prompt length only.
* `SizeIntervalRouting` ("size-interval"): a simple size-aware rule, size-interval task
  assignment (SITA; Harchol-Balter, Crovella, Murta, JPDC 1999) over GPU types. Types are
  ranked by price per instance (cheapest first; unpriced types after, by HBM bandwidth); the
  prompt-length axis is cut into one interval per type, the shortest prompts to the
  cheapest type and the longest to the most expensive (the highest bandwidth and compute
  of the three here: H100 > A100 > L40S). ``boundaries`` (ascending prompt lengths, one
  fewer than the types) sets the cuts; the default puts them where each type's share of the
  workload's tokens (prompt + output, from `ClusterView.workload`) equals its share of
  the cluster's HBM bandwidth (instances x GPUs x bandwidth). Within the type: fewest
  outstanding requests, ties by index.

On a cluster of one GPU type both reduce to least-outstanding-requests routing (`lor`).
Both read only the protocol views (envs/protocol.py) and are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegym.agents.heuristics.load_balance import outstanding
from servegym.envs.protocol import Decision

DEFAULT_PROMPT_EDGES: tuple[int, ...] = (0, 256, 512, 1024, 2048, 3072)
DEFAULT_OUTPUT_EDGES: tuple[int, ...] = (0,)
DEFAULT_SLICE_FACTOR = 8
DEFAULT_TPOT_SLO = 0.1  # s per output token: RewardConfig's default for requests without one
_TOLERANCE = 1e-9


class InfeasibleAllocationError(ValueError):
    """No GPU allocation serves every bucket's rate under the SLO."""


# ============================================================================ buckets
def _edges(edges: Sequence[int], name: str) -> tuple[int, ...]:
    values = tuple(int(e) for e in edges)
    if not values or values[0] != 0 or any(b <= a for a, b in zip(values, values[1:],
                                                                   strict=False)):
        raise ValueError(f"{name} must be strictly ascending token counts starting at 0, "
                         f"got {list(edges)}")
    return values


@dataclass(frozen=True)
class Buckets:
    """Request-size buckets: prompt-length x output-length ranges (module docstring)."""

    prompt_edges: tuple[int, ...] = DEFAULT_PROMPT_EDGES
    output_edges: tuple[int, ...] = DEFAULT_OUTPUT_EDGES

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_edges", _edges(self.prompt_edges, "prompt_edges"))
        object.__setattr__(self, "output_edges", _edges(self.output_edges, "output_edges"))

    def __len__(self) -> int:
        return len(self.prompt_edges) * len(self.output_edges)

    @property
    def by_output(self) -> bool:
        """Whether the buckets split output lengths (then routing reads the true output)."""
        return len(self.output_edges) > 1

    def index(self, prompt: np.ndarray | int, output: np.ndarray | int) -> np.ndarray | int:
        """The bucket number of requests with these prompt and output lengths."""
        i = np.searchsorted(self.prompt_edges, prompt, side="right") - 1
        j = np.searchsorted(self.output_edges, output, side="right") - 1
        out = i * len(self.output_edges) + j
        return int(out) if np.ndim(out) == 0 else out

    def labels(self) -> list[str]:
        """"prompt [a, b) x output [c, d)" per bucket (output part left out by prompt only)."""
        def span(edges: tuple[int, ...], k: int) -> str:
            return f"[{edges[k]}, {edges[k + 1]})" if k + 1 < len(edges) else f">= {edges[k]}"

        return [f"prompt {span(self.prompt_edges, i)}"
                + (f" x output {span(self.output_edges, j)}" if self.by_output else "")
                for i in range(len(self.prompt_edges)) for j in range(len(self.output_edges))]


@dataclass(frozen=True)
class BucketProfile:
    """Per bucket of a workload: request count, rate (count / arrival span), mean prompt
    and output lengths (NaN where empty)."""

    buckets: Buckets
    counts: np.ndarray
    rates: np.ndarray
    mean_prompt: np.ndarray
    mean_output: np.ndarray


def bucket_profile(prompt: np.ndarray, output: np.ndarray, arrival: np.ndarray | None,
                   buckets: Buckets, rate: float | None = None) -> BucketProfile:
    """The bucket histogram of requests with these lengths: rates scale to `rate` req/s in
    total if given, else the arrivals' own rate (count / span)."""
    prompt, output = np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64)
    index = buckets.index(prompt, output)
    size = len(buckets)
    counts = np.bincount(index, minlength=size).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prompt = np.bincount(index, prompt, minlength=size) / counts
        mean_output = np.bincount(index, output, minlength=size) / counts
    total = counts.sum()
    if rate is None:
        span = float(np.ptp(arrival)) if arrival is not None and len(arrival) > 1 else 0.0
        rate = total / span if span > 0 else total
    rates = counts / total * rate if total else counts
    return BucketProfile(buckets, counts, rates, mean_prompt, mean_output)


# ============================================================================ allocation
@dataclass(frozen=True)
class Allocation:
    """A solved allocation: `counts[g]` instances of `gpus[g]`, `fractions[b, g]` = share of
    bucket b's requests served by type g, `cost_per_hour` = sum_g counts[g] x prices[g]."""

    gpus: tuple[str, ...]
    counts: tuple[int, ...]
    fractions: np.ndarray
    prices: tuple[float, ...]
    cost_per_hour: float
    utilisation: tuple[float, ...]  # per type: its load / its count (0 where count is 0)

    def shares(self) -> dict[str, list[float]]:
        """{GPU: share per bucket}: the `allocation` argument of `MelangeRouting`."""
        return {gpu: [float(v) for v in self.fractions[:, g]] for g, gpu in enumerate(self.gpus)}


def _as_matrix(max_rates: Any, gpus: Sequence[str], size: int) -> np.ndarray:
    if isinstance(max_rates, Mapping):
        missing = [g for g in gpus if g not in max_rates]
        if missing:
            raise ValueError(f"max_rates has no row for {missing}; rows: {list(max_rates)}")
        max_rates = [max_rates[g] for g in gpus]
    matrix = np.asarray(max_rates, dtype=np.float64)
    if matrix.shape != (len(gpus), size):
        raise ValueError(f"max_rates must be one row per GPU type ({len(gpus)}) of one rate "
                         f"per bucket ({size}), got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError("max_rates must be finite and >= 0 (0: the type cannot meet the SLO "
                         f"on that bucket), got {matrix.tolist()}")
    return matrix


def solve_allocation(
    rates: Sequence[float],
    max_rates: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
    prices: Mapping[str, float],
    *,
    slice_factor: int = DEFAULT_SLICE_FACTOR,
    max_counts: Mapping[str, int] | None = None,
    labels: Sequence[str] | None = None,
    time_limit_s: float = 60.0,
) -> Allocation:
    """Mélange's minimum-cost allocation (module docstring): GPU counts per type and the
    share of each bucket per type, for bucket `rates` (req/s), per-type `max_rates` (one
    row per GPU of `prices`, one sustainable rate per bucket) and `prices` (GPU -> USD per
    instance-hour, in the order the types are listed). `labels` name buckets in errors."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    from servegym.envs.costs.prices import check_price

    gpus = tuple(prices)
    if not gpus:
        raise ValueError("prices must name at least one GPU type")
    cost = np.array([check_price(prices[g], f"price of {g}") for g in gpus])
    lam = np.asarray(rates, dtype=np.float64)
    if lam.ndim != 1 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError(f"rates must be one finite, non-negative req/s per bucket, got {rates}")
    if isinstance(slice_factor, bool) or not isinstance(slice_factor, int) or slice_factor < 1:
        raise ValueError(f"slice_factor must be a positive integer, got {slice_factor!r}")
    names = list(labels) if labels is not None else [f"bucket {b}" for b in range(lam.size)]
    capacity = _as_matrix(max_rates, gpus, lam.size)          # (G, B)
    caps = np.full(len(gpus), np.inf)
    for gpu, count in (max_counts or {}).items():
        if gpu not in gpus:
            raise ValueError(f"max_counts names {gpu!r}, which is not a priced GPU type "
                             f"{list(gpus)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"max_counts[{gpu!r}] must be a non-negative integer, got {count!r}")
        caps[gpus.index(gpu)] = count
    for b in np.flatnonzero(lam > 0):
        if not np.any(capacity[:, b] > 0):
            profiled = dict(zip(gpus, capacity[:, b].tolist(), strict=True))
            raise InfeasibleAllocationError(
                f"{names[b]} arrives at {lam[b]:.3g} req/s but no GPU type sustains any rate "
                f"of it under the SLO (max rates: {profiled}); relax the SLO, add a faster "
                "GPU type, or drop these requests")
    active = np.flatnonzero(lam > 0)
    G, B, S = len(gpus), active.size, slice_factor
    # Variables: y[b, g] for the active buckets (row-major), then n[g].
    lower = np.zeros(B * G + G)
    upper = np.concatenate([np.where(capacity[:, active].T > 0, S, 0).ravel(), caps])
    objective = np.concatenate([np.zeros(B * G), cost])
    assign = np.zeros((B, B * G + G))
    for k in range(B):
        assign[k, k * G:(k + 1) * G] = 1.0
    load = np.zeros((G, B * G + G))
    for k, b in enumerate(active):
        for g in range(G):
            if capacity[g, b] > 0:
                load[g, k * G + g] = lam[b] / (S * capacity[g, b])
    load[:, B * G:] = -np.eye(G)
    constraints = [LinearConstraint(load, -np.inf, 0.0)]
    if B:
        constraints.append(LinearConstraint(assign, S, S))
    result = milp(objective, constraints=constraints, integrality=np.ones(B * G + G),
                  bounds=Bounds(lower, upper),
                  options={"time_limit": time_limit_s, "mip_rel_gap": 0.0})
    if result.status == 2 or result.x is None:
        demand = {gpus[g]: float(sum(lam[b] / capacity[g, b] for b in active
                                     if capacity[g, b] > 0)) for g in range(G)}
        raise InfeasibleAllocationError(
            f"no allocation serves the rates {lam.tolist()} req/s within max_counts "
            f"{ {g: c for g, c in zip(gpus, caps.tolist(), strict=True) if math.isfinite(c)} }: "
            f"the demand is above what the allowed GPUs can serve (instances each type would "
            f"need alone: { {g: round(v, 2) for g, v in demand.items()} }); raise max_counts, "
            f"lower the rates or relax the SLO (HiGHS: {result.message})")
    if result.status != 0:
        raise RuntimeError(f"HiGHS did not prove an optimal allocation within "
                           f"{time_limit_s} s: {result.message}")
    x = np.rint(result.x).astype(np.int64)
    y, counts = x[:B * G].reshape(B, G), x[B * G:]
    fractions = np.zeros((lam.size, G))
    fractions[active] = y / S
    for b in np.flatnonzero(lam == 0):  # idle buckets: the bought type that serves them best
        bought = np.where(counts > 0, capacity[:, b], -1.0)
        fractions[b, int(np.argmax(bought if bought.max() > 0 else capacity[:, b]))] = 1.0
    loads = (load[:, :B * G] @ x[:B * G].astype(np.float64))
    utilisation = tuple(float(loads[g] / counts[g]) if counts[g] else 0.0 for g in range(G))
    return Allocation(gpus, tuple(int(c) for c in counts), fractions, tuple(cost.tolist()),
                      float(cost @ counts), utilisation)


def balanced_shares(shares: np.ndarray, capacity: np.ndarray, counts: np.ndarray,
                    prices: np.ndarray | None = None) -> np.ndarray:
    """Fractions (B x G) of each bucket per type for a *given* cluster, by two linear
    programs: (1) the lowest achievable highest utilisation u* = min u s.t.
    sum_b shares[b] f[b, g] / capacity[g, b] <= u counts[g], sum_g f[b, g] = 1, f >= 0
    (f[b, g] = 0 where capacity is 0); (2) among those, the cheapest work: min
    sum_g prices[g] load[g] with every load[g] <= u* counts[g] (Mélange's cost objective
    with the counts fixed; prices None or NaN: 1). A bucket no type can serve goes to the
    type with the most total capacity (it will miss its SLO anywhere)."""
    from scipy.optimize import linprog

    G, B = capacity.shape
    shares = np.asarray(shares, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if G == 1:
        return np.ones((B, 1))
    weight = np.ones(G) if prices is None else np.asarray(prices, dtype=np.float64)
    weight = np.where(np.isfinite(weight) & (weight > 0), weight, 1.0)
    out = np.zeros((B, G))
    servable = capacity.max(axis=0) > 0
    strongest = int(np.argmax((capacity * counts[:, None]).sum(axis=1)))
    out[~servable, strongest] = 1.0
    for b in np.flatnonzero(servable & (shares <= 0)):  # no traffic: the most capacity
        out[b, int(np.argmax(capacity[:, b] * counts))] = 1.0
    active = np.flatnonzero(servable & (shares > 0))
    if active.size == 0:
        return out
    n = active.size * G                      # f[b, g] for the active buckets
    load = np.zeros((G, n))
    for k, b in enumerate(active):
        for g in range(G):
            if capacity[g, b] > 0:
                load[g, k * G + g] = shares[b] / capacity[g, b]
    a_eq = np.zeros((active.size, n + 1))
    for k in range(active.size):
        a_eq[k, k * G:(k + 1) * G] = 1.0
    bounds = [(0.0, 1.0 if capacity[g, b] > 0 else 0.0) for b in active for g in range(G)]
    objective = np.zeros(n + 1)
    objective[-1] = 1.0
    first = linprog(objective, A_ub=np.hstack([load, -counts[:, None]]), b_ub=np.zeros(G),
                    A_eq=a_eq, b_eq=np.ones(active.size), bounds=[*bounds, (0.0, None)],
                    method="highs")
    if first.status != 0:
        raise RuntimeError(f"balancing the buckets over the cluster failed: {first.message}")
    cap = first.x[-1] * (1 + 1e-7) + 1e-12
    second = linprog(weight @ load, A_ub=load, b_ub=cap * counts, A_eq=a_eq[:, :n],
                     b_eq=np.ones(active.size), bounds=bounds, method="highs")
    x = second.x if second.status == 0 else first.x[:-1]
    out[active] = np.clip(x.reshape(active.size, G), 0.0, 1.0)
    return out / out.sum(axis=1, keepdims=True)


# ============================================================================ capacity
def _prefill_time(cost: Any, prompt: int, budget: int, batch: int, context: int) -> float:
    """Marginal seconds that prefilling `prompt` tokens adds to decode iterations of
    `batch` requests with total `context`, chunked to the token budget left beside them."""
    chunk = max(budget - batch, 1)
    base = cost.iteration_time([], batch, context) if batch else 0.0
    total, done = 0.0, 0
    while done < prompt:
        size = min(chunk, prompt - done)
        total += cost.iteration_time([(size, done)], batch, context) - base
        done += size
    return total


def estimated_rate(cost: Any, config: Any, kv_blocks: int, prompt: float, output: float,
                   tpot_slo: float = DEFAULT_TPOT_SLO) -> float:
    """Requests/s one instance sustains on requests of `prompt` and `output` tokens while
    their TPOT stays within `tpot_slo`: a steady-state estimate from the cost model, the
    default profile of `MelangeRouting` (the measured one: experiments/melange_allocation.py).

    With B requests decoding (at most `max_num_seqs`, and as many as the KV cache holds at
    their mean context), a decode iteration takes t(B) and each new request's prefill adds
    P (chunked beside the decodes); a request occupies the batch for `output` iterations,
    so the rate is B / (output t(B) + B P) and each output token waits t(B) + B P / output.
    The largest B whose TPOT fits gives the rate; 0 if not even one request meets it."""
    prompt, output = max(int(round(prompt)), 1), max(int(round(output)), 1)
    block = int(getattr(config, "block_size", 16))
    blocks_each = -(-(prompt + output) // block)
    limit = min(int(config.max_num_seqs), max(int(kv_blocks) // max(blocks_each, 1), 0))
    if limit < 1:
        return 0.0
    budget = int(config.max_num_batched_tokens)
    context_each = prompt + output // 2

    def timing(batch: int) -> tuple[float, float]:
        step = cost.iteration_time([], batch, batch * context_each)
        prefill = _prefill_time(cost, prompt, budget, batch, batch * context_each)
        return step + batch * prefill / output, batch / (output * step + batch * prefill)

    if timing(1)[0] > tpot_slo:
        return 0.0
    low, high = 1, limit  # the TPOT grows with B: the largest B that fits
    while low < high:
        mid = (low + high + 1) // 2
        if timing(mid)[0] <= tpot_slo:
            low = mid
        else:
            high = mid - 1
    return float(timing(low)[1])


# ============================================================================ routers
def _gpu_key(pool: Any) -> str:
    """A pool's GPU type: the canonical GPU name of its cost model, else the pool's name."""
    from servegym.envs.costs.prices import pool_gpu_name

    return pool_gpu_name(pool) or str(pool.name)


class _ByType:
    """Instances grouped by GPU type (in order of first appearance), built per episode."""

    def __init__(self) -> None:
        self._key: int | None = None

    def reset(self, rng: np.random.Generator | None = None) -> None:
        """A new episode: the grouping and shares are rebuilt at its first decision."""
        self._key = None

    def _ensure(self, decision: Decision) -> None:
        cluster = decision.cluster
        key = id(getattr(cluster, "workload", None))  # the episode's (kept across views)
        if key == self._key:
            return
        self._key = key
        pools = list(cluster.pools) if cluster is not None else []
        instances = decision.candidates
        keys = [_gpu_key(pools[i.pool]) if pools else "all" for i in instances]
        self.types = list(dict.fromkeys(keys))
        self.members = [[n for n, k in enumerate(keys) if k == t] for t in self.types]
        self.pools = [pools[instances[m[0]].pool] if pools else None for m in self.members]
        self._build(decision)

    def _build(self, decision: Decision) -> None:
        raise NotImplementedError

    @staticmethod
    def _least_outstanding(decision: Decision, members: Sequence[int]) -> int:
        instances = decision.candidates
        return min(members, key=lambda i: (outstanding(instances[i]), i))


def _workload_lengths(decision: Decision) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    workload = getattr(decision.cluster, "workload", None)
    if workload is None or len(workload) == 0:
        return None
    return (np.asarray(workload.prompt_len), np.asarray(workload.output_len),
            np.asarray(workload.arrival_time))


class MelangeRouting(_ByType):
    """Mélange's router (module docstring): bucket -> GPU type by the allocation's shares
    (smooth weighted round-robin), fewest outstanding requests within the type."""

    def __init__(self, allocation: Mapping[str, Sequence[float]] | None = None,
                 prompt_edges: Sequence[int] = DEFAULT_PROMPT_EDGES,
                 output_edges: Sequence[int] = DEFAULT_OUTPUT_EDGES,
                 tpot_slo: float | None = None) -> None:
        super().__init__()
        self.buckets = Buckets(tuple(prompt_edges), tuple(output_edges))
        self.tpot_slo = tpot_slo
        self.allocation: dict[str, np.ndarray] | None = None
        if allocation is not None:
            self.allocation = self._check_allocation(allocation)

    def _check_allocation(self, allocation: Mapping[str, Sequence[float]]
                          ) -> dict[str, np.ndarray]:
        from servegym.envs.costs.specs import UnknownSpecError, get_gpu

        out: dict[str, np.ndarray] = {}
        for name, shares in allocation.items():
            try:
                gpu = get_gpu(str(name)).name
            except UnknownSpecError as error:
                raise ValueError(f"melange allocation: {error}") from None
            values = np.asarray(list(shares), dtype=np.float64)
            if values.shape != (len(self.buckets),) or not np.all(np.isfinite(values)) \
                    or np.any(values < 0):
                raise ValueError(f"melange allocation[{name!r}]: one non-negative share per "
                                 f"bucket ({len(self.buckets)}: {self.buckets.labels()}) "
                                 f"expected, got {list(shares)}")
            out[gpu] = values
        if not out:
            raise ValueError("melange allocation names no GPU type")
        totals = np.sum(list(out.values()), axis=0)
        if np.any(totals <= 0):
            empty = [self.buckets.labels()[b] for b in np.flatnonzero(totals <= 0)]
            raise ValueError(f"melange allocation gives no GPU type to {empty}")
        return out

    def _build(self, decision: Decision) -> None:
        if self.allocation is not None:
            missing = sorted(set(self.allocation) - set(self.types))
            if missing:
                raise ValueError(f"melange allocation routes to {missing}, which this cluster "
                                 f"does not have (its GPU types: {self.types})")
            fractions = np.stack([self.allocation.get(t, np.zeros(len(self.buckets)))
                                  for t in self.types], axis=1)
        else:
            fractions = self.default_fractions(decision)
        self.fractions = fractions / fractions.sum(axis=1, keepdims=True)
        self.credit = np.zeros_like(self.fractions)

    def default_fractions(self, decision: Decision) -> np.ndarray:
        """Shares (buckets x types) for this cluster and workload (module docstring)."""
        size = len(self.buckets)
        if len(self.types) == 1:
            return np.ones((size, 1))
        lengths = _workload_lengths(decision)
        if lengths is None:
            shares = np.full(size, 1.0 / size)
            mean_prompt = np.array([self._mid(self.buckets.prompt_edges, i)
                                    for i in range(len(self.buckets.prompt_edges))
                                    for _ in self.buckets.output_edges], dtype=np.float64)
            mean_output = np.full(size, 128.0)
        else:
            profile = bucket_profile(*lengths, self.buckets)
            shares = profile.counts / max(profile.counts.sum(), 1.0)
            mean_prompt = np.where(np.isnan(profile.mean_prompt), 1.0, profile.mean_prompt)
            mean_output = np.where(np.isnan(profile.mean_output), 1.0, profile.mean_output)
        tpot = np.full(size, DEFAULT_TPOT_SLO if self.tpot_slo is None else self.tpot_slo)
        if self.tpot_slo is None and lengths is not None:  # each bucket's median target
            slo = np.asarray(decision.cluster.workload.tpot_slo, dtype=np.float64)
            index = self.buckets.index(lengths[0], lengths[1])
            for b in range(size):
                finite = slo[(index == b) & np.isfinite(slo)]
                if finite.size:
                    tpot[b] = float(np.median(finite))
        instances = decision.candidates
        capacity = np.zeros((len(self.types), size))
        for g, members in enumerate(self.members):
            instance = instances[members[0]]
            for b in range(size):
                if shares[b] > 0:
                    capacity[g, b] = estimated_rate(instance.cost, instance.config,
                                                    instance.bm.num_blocks, mean_prompt[b],
                                                    mean_output[b], float(tpot[b]))
        counts = np.array([len(m) for m in self.members], dtype=np.float64)
        from servegym.envs.costs.prices import pool_price

        prices = np.array([pool_price(p)[0] if p is not None else math.nan
                           for p in self.pools])
        fractions = balanced_shares(shares, capacity, counts, prices)
        zero = fractions.sum(axis=1) <= 0
        fractions[zero] = counts / counts.sum()
        return fractions

    @staticmethod
    def _mid(edges: tuple[int, ...], i: int) -> float:
        return (edges[i] + edges[i + 1]) / 2 if i + 1 < len(edges) else edges[i] * 1.25 + 1

    def decide(self, decision: Decision) -> int:
        self._ensure(decision)
        request = decision.request
        output = request.output_len if self.buckets.by_output else 0
        bucket = self.buckets.index(request.prompt_len, output)
        credit = self.credit[bucket]
        credit += self.fractions[bucket]
        chosen = int(np.argmax(credit))
        credit[chosen] -= 1.0
        return self._least_outstanding(decision, self.members[chosen])


class SizeIntervalRouting(_ByType):
    """Prompt-length intervals per GPU type, shortest to the cheapest (module docstring)."""

    def __init__(self, boundaries: Sequence[int] | None = None) -> None:
        super().__init__()
        self.boundaries = None if boundaries is None else [int(b) for b in boundaries]
        if self.boundaries is not None and any(
                b <= a for a, b in zip(self.boundaries, self.boundaries[1:], strict=False)):
            raise ValueError(f"size-interval boundaries must be strictly ascending prompt "
                             f"lengths, got {list(boundaries)}")

    def _build(self, decision: Decision) -> None:
        from servegym.envs.costs.prices import pool_price

        def bandwidth(pool: Any) -> float:
            gpu = getattr(getattr(pool, "cost", None), "gpu", None)
            per_gpu = getattr(gpu, "hbm_bandwidth", None)
            if per_gpu is None and gpu is not None:
                from servegym.envs.costs.specs import UnknownSpecError, get_gpu
                try:
                    per_gpu = get_gpu(str(gpu)).hbm_bandwidth
                except UnknownSpecError:
                    per_gpu = None
            tp = int(getattr(getattr(pool, "cost", None), "tensor_parallel", 1) or 1)
            return float(per_gpu or 1.0) * tp

        prices = [pool_price(p)[0] if p is not None else math.nan for p in self.pools]
        speed = [bandwidth(p) for p in self.pools]
        order = sorted(range(len(self.types)), key=lambda t: (
            math.isnan(prices[t]), prices[t] if not math.isnan(prices[t]) else 0.0,
            speed[t], t))
        self.ranked = order                     # cheapest first
        if self.boundaries is not None:
            if len(self.boundaries) != len(order) - 1:
                raise ValueError(f"size-interval boundaries {self.boundaries} cut the prompt "
                                 f"lengths into {len(self.boundaries) + 1} intervals, but the "
                                 f"cluster has {len(order)} GPU types {self.types}: give "
                                 f"{len(order) - 1} boundaries (or none: sized to capacity)")
            self.cuts = list(self.boundaries)
            return
        weights = np.array([speed[t] * len(self.members[t]) for t in order])
        self.cuts = self.capacity_cuts(_workload_lengths(decision), weights)

    @staticmethod
    def capacity_cuts(lengths: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                      weights: np.ndarray) -> list[int]:
        """Prompt lengths cutting the workload's tokens in the proportions of `weights`
        (the ranked types' capacities): with prompts sorted, each cut is placed after the
        prompt length where the cumulative share of tokens (prompt + output) comes nearest
        the cumulative capacity share of the types below it (requests of one length are
        never split)."""
        if len(weights) < 2:
            return []
        if lengths is None:
            return [int(256 * 4 ** k) for k in range(len(weights) - 1)]
        prompt, output, _ = lengths
        values, inverse = np.unique(prompt, return_inverse=True)
        work = np.cumsum(np.bincount(inverse, prompt + output).astype(np.float64))
        work /= work[-1]          # share of the tokens in prompts <= values[k]
        targets = np.cumsum(weights / weights.sum())[:-1]
        cuts: list[int] = []
        for target in targets:    # the cut whose share below is nearest the target
            k = int(np.argmin(np.abs(work - target)))
            cuts.append(max(int(values[k]) + 1, cuts[-1] + 1 if cuts else 1))
        return cuts

    def decide(self, decision: Decision) -> int:
        self._ensure(decision)
        tier = int(np.searchsorted(self.cuts, decision.request.prompt_len, side="right"))
        chosen = self.ranked[min(tier, len(self.ranked) - 1)]
        return self._least_outstanding(decision, self.members[chosen])


__all__ = [
    "DEFAULT_OUTPUT_EDGES", "DEFAULT_PROMPT_EDGES", "DEFAULT_SLICE_FACTOR", "Allocation",
    "BucketProfile", "Buckets", "InfeasibleAllocationError", "MelangeRouting",
    "SizeIntervalRouting", "balanced_shares", "bucket_profile", "estimated_rate",
    "solve_allocation",
]
