"""DistServe's placement search: the prefill:decode instance ratio and per-pool tensor
parallelism that maximise goodput per GPU under TTFT and TPOT SLOs.

Reference: Y. Zhong, S. Liu, J. Chen, J. Hu, Y. Zhu, X. Liu, X. Jin, H. Zhang, "DistServe:
Disaggregating Prefill and Decoding for Goodput-optimized Large Language Model Serving",
OSDI 2024, Section 4 (Algorithms 1 and 2) and its simulator-driven search
(LLMServe/DistServe, simdistserve/benchmarks/search_configs.py and search_binary.py: every
parallelism configuration of one prefill and one decode instance is simulated, and a
bisection over the per-GPU arrival rate finds the highest rate whose P90 TTFT and P90 TPOT
meet their targets). Written from the paper and that repository's description; no code is
copied.

The search here (`search_placement`)
------------------------------------
Inputs: a model, a GPU type, a cluster budget of `budget_gpus` GPUs, the workload's request
lengths (`prompts`, `outputs`), the TTFT and TPOT SLOs, and the attainment target
(default 0.9). Output: a `PlacementSearch` with the chosen pools (`Pool` objects for the
simulator, envs/core/cluster.py) and a row for every candidate evaluated.

1. TP degrees: `tp_degrees` (default 1, 2, 4, 8), each kept where `build_cost_model(model,
   gpu, tp, source)` gives a cost model (`source="measured"` keeps only the TP degrees
   with measured tables, conf/cost/ and envs/data/calibration/; "auto" falls back to the
   roofline where a table is missing, as everywhere in servegym) and the model's weights
   fit that many GPUs with room for KV (else the candidate is dropped with its reason in
   `skipped`).
2. Candidates (`placement_candidates`): every (prefill instances p, prefill TP tp_p,
   decode instances d, decode TP tp_d) with p, d >= 1 and ``p tp_p + d tp_d <= budget``:
   DistServe's enumeration of per-phase parallelism, with the instance counts (the
   prefill:decode ratio) searched jointly instead of replicating a fixed 1P+1D segment.
   Pipeline parallelism is not modelled in servegym, so it is not searched. The count is
   bounded by `max_candidates` (an error says to narrow `tp_degrees` or the budget).
3. Inner evaluator: servegym's simulator (envs/core/disagg.py) on the workload's lengths
   with Poisson arrivals (one seeded stream of unit exponentials, scaled to each rate:
   every candidate sees the same arrival pattern), least-prefill-tokens routing and
   most-free-KV placement. A rate passes when at least `attainment` of the requests meet
   *both* SLOs (servegym's `serving/slo_attainment`; DistServe's own search checks the
   TTFT and TPOT percentiles separately, each at 90%, which is a looser test).
4. Per candidate, a geometric bisection over the per-GPU rate in `rate_range` for
   `bisect_steps` steps (DistServe bisects linearly to a 0.5 req/s tolerance): its
   goodput per GPU is the highest passing per-GPU rate (0 if the lowest fails).
5. Choice: the highest goodput per GPU; ties by the higher total rate (more of the budget
   used), then by enumeration order (fewer prefill GPUs first). Every loop is bounded
   (candidates, bisection steps); given the same inputs the result is the same.

Goodput per GPU is DistServe's objective: a placement that uses fewer GPUs than the budget
can win (the rest of the budget would hold further replicas of it, as DistServe replicates
its chosen segment to meet a larger rate).

Not modelled: pipeline parallelism, DistServe's low-node-affinity variant (Algorithm 2:
prefill and decode stages co-located per node to keep the KV transfer on NVLink; here a
transfer costs the same between any two instances, the cost model's interconnect or a
`Network`), and the search's re-run on workload shifts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_TP_DEGREES: tuple[int, ...] = (1, 2, 4, 8)
DEFAULT_RATE_RANGE: tuple[float, float] = (0.125, 100.0)  # req/s per GPU
DEFAULT_BISECT_STEPS = 7
MAX_BISECT_STEPS = 30
DEFAULT_MAX_CANDIDATES = 64


@dataclass(frozen=True)
class PlacementCandidate:
    """`prefill_instances` instances of TP `prefill_tp` and `decode_instances` of TP
    `decode_tp`."""

    prefill_instances: int
    prefill_tp: int
    decode_instances: int
    decode_tp: int

    @property
    def gpus(self) -> int:
        return self.prefill_instances * self.prefill_tp + self.decode_instances * self.decode_tp

    @property
    def label(self) -> str:
        """e.g. "2P(TP1)+1D(TP2)"."""
        return (f"{self.prefill_instances}P(TP{self.prefill_tp})+"
                f"{self.decode_instances}D(TP{self.decode_tp})")


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's search: its highest passing total rate (req/s), that per GPU, the
    attainment measured there, and how many simulations it took."""

    candidate: PlacementCandidate
    max_rate_rps: float
    goodput_per_gpu: float
    attainment: float
    simulations: int

    def row(self) -> dict[str, Any]:
        c = self.candidate
        return {"placement": c.label, "prefill_instances": c.prefill_instances,
                "prefill_tp": c.prefill_tp, "decode_instances": c.decode_instances,
                "decode_tp": c.decode_tp, "gpus": c.gpus, "max_rate_rps": self.max_rate_rps,
                "goodput_per_gpu": self.goodput_per_gpu, "attainment": self.attainment,
                "simulations": self.simulations}


@dataclass(frozen=True)
class PlacementSearch:
    """The search's answer: the best candidate, its pools, and every candidate evaluated
    (in enumeration order); `skipped` names TP degrees left out and why."""

    best: CandidateResult
    pools: tuple[Any, Any]  # (prefill Pool, decode Pool)
    results: tuple[CandidateResult, ...]
    skipped: dict[int, str] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per candidate evaluated (`CandidateResult.row`)."""
        return [result.row() for result in self.results]


def placement_candidates(budget_gpus: int, tp_degrees: Sequence[int],
                         max_candidates: int = DEFAULT_MAX_CANDIDATES
                         ) -> list[PlacementCandidate]:
    """Every (p, tp_p, d, tp_d) with p, d >= 1 within the budget (module docstring, 2), in
    order of prefill TP, prefill count, decode TP, decode count."""
    if not isinstance(budget_gpus, (int, np.integer)) or budget_gpus < 2:
        raise ValueError(f"budget_gpus must be an integer >= 2 (one prefill and one decode "
                         f"GPU at least), got {budget_gpus!r}")
    degrees = sorted(set(int(t) for t in tp_degrees))
    if not degrees or degrees[0] < 1:
        raise ValueError(f"tp_degrees must be positive integers, got {list(tp_degrees)}")
    smallest = degrees[0]
    if 2 * smallest > budget_gpus:
        raise ValueError(
            f"a budget of {budget_gpus} GPU(s) is smaller than one prefill and one decode "
            f"instance at the smallest usable TP degree {smallest} ({2 * smallest} GPUs); "
            "raise budget_gpus or allow a smaller TP degree")
    out = []
    for tp_p in degrees:
        for p in range(1, budget_gpus // tp_p + 1):
            left = budget_gpus - p * tp_p
            for tp_d in degrees:
                for d in range(1, left // tp_d + 1):
                    out.append(PlacementCandidate(p, tp_p, d, tp_d))
                    if len(out) > max_candidates:
                        raise ValueError(
                            f"more than max_candidates={max_candidates} placements for a "
                            f"budget of {budget_gpus} GPUs at TP {degrees}; narrow tp_degrees, "
                            "lower the budget or raise max_candidates")
    return out


def _check_inputs(prompts: np.ndarray, outputs: np.ndarray, ttft_slo: float,
                  tpot_slo: float, attainment: float, rate_range: tuple[float, float],
                  bisect_steps: int) -> None:
    if prompts.ndim != 1 or prompts.shape != outputs.shape or len(prompts) == 0:
        raise ValueError(f"prompts and outputs must be 1-d arrays of one length >= 1, got "
                         f"shapes {prompts.shape} and {outputs.shape}")
    if prompts.min() < 1 or outputs.min() < 1:
        raise ValueError("every prompt and output length must be >= 1 token")
    for name, value in (("ttft_slo", ttft_slo), ("tpot_slo", tpot_slo)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if not 0 < attainment <= 1:
        raise ValueError(f"attainment is a fraction in (0, 1], got {attainment!r}")
    low, high = rate_range
    if not 0 < low < high or not math.isfinite(high):
        raise ValueError(f"rate_range must be (low, high) per-GPU req/s with 0 < low < high, "
                         f"got {rate_range!r}")
    if not isinstance(bisect_steps, int) or not 1 <= bisect_steps <= MAX_BISECT_STEPS:
        raise ValueError(f"bisect_steps must be an integer in 1..{MAX_BISECT_STEPS}, "
                         f"got {bisect_steps!r}")


def _usable_degrees(model: str, gpu: str, budget_gpus: int, tp_degrees: Sequence[int],
                    source: str, config: Any) -> tuple[dict[int, Any], dict[int, str]]:
    """{tp: cost model} for the TP degrees with a cost model whose weights fit, and
    {tp: why not} for the others."""
    from servegym.envs.costs import build_cost_model
    from servegym.envs.costs.specs import kv_capacity_blocks

    costs: dict[int, Any] = {}
    skipped: dict[int, str] = {}
    for tp in sorted(set(int(t) for t in tp_degrees)):
        if tp < 1:
            raise ValueError(f"tp_degrees must be positive integers, got {list(tp_degrees)}")
        if tp >= budget_gpus:
            skipped[tp] = f"TP{tp} leaves no GPU of a {budget_gpus}-GPU budget for the other phase"
            continue
        try:
            cost = build_cost_model(model, gpu, tp, source=source)
            if config.num_kv_blocks is None:
                blocks = kv_capacity_blocks(cost.model, cost.gpu, tp,
                                            block_size=config.block_size,
                                            gpu_memory_utilization=config.gpu_memory_utilization)
                if blocks < 1:
                    raise ValueError(f"no KV room on {gpu} at TP{tp} ({blocks} blocks)")
        except (ValueError, KeyError, LookupError, FileNotFoundError) as error:
            skipped[tp] = f"{type(error).__name__}: {error}"
            continue
        costs[tp] = cost
    return costs, skipped


def _simulator(candidate: PlacementCandidate, costs: dict[int, Any], config: Any) -> Any:
    from servegym.agents.heuristics import make_policy
    from servegym.envs.core.cluster import Pool
    from servegym.envs.core.decisions import default_policies
    from servegym.envs.core.simulator import Simulator
    from servegym.envs.protocol import DecisionKind

    policies = default_policies()
    policies[DecisionKind.ROUTE] = make_policy("least-prefill")
    policies[DecisionKind.PLACE] = make_policy("place-most-free-kv")
    pools = (Pool("prefill", config, costs[candidate.prefill_tp], candidate.prefill_instances,
                  "prefill"),
             Pool("decode", config, costs[candidate.decode_tp], candidate.decode_instances,
                  "decode"))
    return Simulator(pools=list(pools), policies=policies), pools


def search_placement(
    model: str,
    gpu: str,
    budget_gpus: int,
    prompts: Sequence[int] | np.ndarray,
    outputs: Sequence[int] | np.ndarray,
    ttft_slo: float,
    tpot_slo: float,
    *,
    attainment: float = 0.9,
    tp_degrees: Sequence[int] = DEFAULT_TP_DEGREES,
    source: str = "auto",
    config: Any = None,
    rate_range: tuple[float, float] = DEFAULT_RATE_RANGE,
    bisect_steps: int = DEFAULT_BISECT_STEPS,
    seed: int = 0,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> PlacementSearch:
    """DistServe's placement search (module docstring). `config`: the `InstanceConfig` of
    every instance (default: vLLM v1, 8192-token budget); `rate_range`: per-GPU req/s."""
    from servegym.envs.core.instance import InstanceConfig
    from servegym.envs.workloads.workload import Workload

    prompts = np.asarray(prompts, dtype=np.int64)
    outputs = np.asarray(outputs, dtype=np.int64)
    _check_inputs(prompts, outputs, ttft_slo, tpot_slo, attainment, rate_range, bisect_steps)
    config = config if config is not None else InstanceConfig()
    if not isinstance(budget_gpus, (int, np.integer)) or budget_gpus < 2:
        raise ValueError(f"budget_gpus must be an integer >= 2 (one prefill and one decode "
                         f"GPU at least), got {budget_gpus!r}")
    costs, skipped = _usable_degrees(model, gpu, int(budget_gpus), tp_degrees, source, config)
    if not costs:
        reasons = "; ".join(f"TP{tp}: {why}" for tp, why in skipped.items()) or "none given"
        raise ValueError(f"no TP degree of {list(tp_degrees)} has a cost model for {model} on "
                         f"{gpu} (source={source!r}) within a {budget_gpus}-GPU budget: "
                         f"{reasons}. Use source='auto' (roofline where no table exists) or "
                         "a model/GPU with measured tables (conf/cost/)")
    candidates = placement_candidates(int(budget_gpus), tuple(costs), max_candidates)
    unit = np.cumsum(np.random.default_rng(seed).standard_exponential(len(prompts)))
    unit -= unit[0]

    def attained(candidate: PlacementCandidate, per_gpu: float) -> float:
        rate = per_gpu * candidate.gpus
        workload = Workload.from_lengths(unit / rate, prompts, outputs, ttft_slo=ttft_slo,
                                         tpot_slo=tpot_slo)
        sim, _ = _simulator(candidate, costs, config)
        return float(sim.run(workload, seed=seed).summary["serving/slo_attainment"])

    results = []
    for candidate in candidates:
        low, high = rate_range
        measured = attained(candidate, low)
        runs = 1
        if measured < attainment:
            results.append(CandidateResult(candidate, 0.0, 0.0, measured, runs))
            continue
        for _ in range(bisect_steps):
            middle = math.sqrt(low * high)
            value = attained(candidate, middle)
            runs += 1
            if value >= attainment:
                low, measured = middle, value
            else:
                high = middle
        results.append(CandidateResult(candidate, low * candidate.gpus, low, measured, runs))
    # Highest goodput per GPU; ties: higher total rate; then enumeration order (stable).
    best = max(results, key=lambda r: (r.goodput_per_gpu, r.max_rate_rps))
    _, pools = _simulator(best.candidate, costs, config)
    return PlacementSearch(best, pools, tuple(results), skipped)


__all__ = ["DEFAULT_TP_DEGREES", "CandidateResult", "PlacementCandidate", "PlacementSearch",
           "placement_candidates", "search_placement"]
