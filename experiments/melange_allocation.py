"""Mélange's GPU allocation for a task's workload: profile, then solve the integer program.

Mélange (T. Griggs et al., "Mélange: Cost Efficient Large Language Model Serving by
Exploiting GPU Heterogeneity", 2024) picks the cheapest mix of GPU types for an LLM service
in two steps, both done here with servegym's own pieces:

1. **Profile.** Cut requests into size buckets (prompt x output tokens,
   `servegym.agents.heuristics.melange.Buckets`). For every (GPU type, bucket), find the
   highest Poisson arrival rate one instance sustains with at least `--attainment` (0.9) of
   the requests meeting both their TTFT and TPOT SLOs: requests drawn (with replacement,
   seeded) from the task workload's training split in that bucket, their own SLOs kept,
   simulated on one instance of that GPU (the task's instance settings, the cost model of
   `--model` on that GPU: measured tables where they exist, else the roofline, as the
   table says). A probe is steady state: `--duration` (60) seconds of arrivals (at
   least `--requests`, at most 30,000 requests), judged on those arriving after the first
   20% (a burst that fits in one batch would pass at any rate). The search starts at the
   cost model's estimate (`estimated_rate`), doubles or halves until the pass/fail
   boundary is bracketed, then bisects it geometrically `--steps` (6) times (to ~1%); a
   bucket that fails even at 1/64 req/s gets 0 (the GPU cannot serve it under the SLO).
   The same requests and arrival gaps (scaled to each rate) are used for every GPU and
   rate, so rates compare like for like.
2. **Allocate.** For each provisioned rate in `--rates` (req/s in total, split over the
   buckets as the workload's mix), solve Mélange's integer program (`solve_allocation`:
   minimum cost per hour, each bucket's slices assigned to GPU types, instances per type
   integer; HiGHS through `scipy.optimize.milp`) at the prices of envs/costs/prices.py (a
   dated snapshot; `--price GPU=USD` per GPU-hour overrides, `--max-count GPU=N` caps a
   type). Beside it: the cheapest single-type allocation (the same program with one type),
   and the saving.

    python experiments/melange_allocation.py                        # Heterogeneous-v0
    python experiments/melange_allocation.py --rates 4 32 --price H100-80GB=2.99 --name x
    python experiments/melange_allocation.py --gpus A100-80GB L40S --output-edges 0 256

Writes `results/<name>.md` and `.json` (default name `melange_allocation`) atomically with
the command that made them and a UTC timestamp, and never overwrites an earlier run (choose
another `--name`). The JSON's `shares` per rate is the `allocation` argument of the
`melange` router (`make_policy("melange", allocation=..., prompt_edges=...,
output_edges=...)`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from servegym.agents.heuristics.melange import (
    Allocation,
    Buckets,
    InfeasibleAllocationError,
    bucket_profile,
    solve_allocation,
)
from servegym.envs.core.metrics import atomic_write, result_paths

ROOT = Path(__file__).resolve().parents[1]
TASK = "servegym/Heterogeneous-v0"
DEFAULT_RATES = (2.0, 4.0, 8.0, 12.0, 20.0, 24.0, 32.0, 48.0, 64.0)
DEFAULT_PROMPT_EDGES = (0, 256, 1024, 2048, 3072)
DEFAULT_OUTPUT_EDGES = (0, 256)
START_RATE = 1.0
MIN_RATE = 1 / 64
MAX_RATE = 1024.0
MAX_REQUESTS = 30_000    # per probe
WARMUP = 0.2             # of the probe's arrival span, not judged (the system filling up)
DEFAULT_TTFT_SLO, DEFAULT_TPOT_SLO = 2.0, 0.1  # RewardConfig's, for requests without one


# ============================================================================ inputs
def task_inputs(env_id: str) -> tuple[Any, dict[str, Any], list[str], str]:
    """(training split of the task's workload, instance settings, pool GPUs, model)."""
    import servegym  # noqa: F401  (registers the ids)
    from servegym.envs.tasks import TASKS, thaw
    from servegym.envs.workloads import build_workload
    from servegym.envs.workloads.transforms import split_by_time

    if env_id not in TASKS:
        raise SystemExit(f"unknown task {env_id!r}; choose one of {sorted(TASKS)}")
    task = TASKS[env_id]
    if isinstance(task.workload, str):
        from servegym.envs.serving_env import resolve_workload

        workload = resolve_workload(task.workload)
    else:
        workload = build_workload(**thaw(task.workload))
    cluster = thaw(task.cluster)
    pools = cluster.get("pools") or [{}]
    gpus = [p.get("cost", {}).get("gpu", "H100-80GB") for p in pools]
    model = pools[0].get("cost", {}).get("model", "Llama-3-8B")
    return split_by_time(workload, "train"), dict(cluster.get("instance") or {}), gpus, model


def parse_pairs(items: Sequence[str], kind: str, flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} {item!r}: write GPU={kind}, e.g. {flag} H100-80GB=2.99")
        out[name] = value
    return out


def as_number(text: str) -> float | str:
    """`text` as a float if it reads as one (the price check then judges it), else as is."""
    try:
        return float(text)
    except ValueError:
        return text


# ============================================================================ profile
class Prober:
    """Simulates one instance of a GPU on a bucket's requests at a given rate, in steady
    state: `duration_s` of Poisson arrivals (at least `min_requests`, at most
    `MAX_REQUESTS`), judged on the requests arriving after the first `WARMUP` of it."""

    def __init__(self, workload: Any, buckets: Buckets, instance: Mapping[str, Any],
                 model: str, min_requests: int, duration_s: float, attainment: float,
                 seed: int) -> None:
        self.workload, self.buckets, self.instance = workload, buckets, dict(instance)
        self.model, self.min_requests, self.duration_s = model, min_requests, duration_s
        self.attainment = attainment
        self.index = np.asarray(buckets.index(workload.prompt_len, workload.output_len))
        self.seed = seed
        self.simulations = 0
        self._pools: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}

    def draws(self, bucket: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The bucket's request rows and unit-rate arrival gaps (seeded; None: empty)."""
        if bucket not in self._pools:
            members = np.flatnonzero(self.index == bucket)
            if members.size == 0:
                self._pools[bucket] = None
            else:
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, bucket]))
                self._pools[bucket] = (rng.choice(members, size=MAX_REQUESTS, replace=True),
                                       rng.exponential(1.0, size=MAX_REQUESTS))
        return self._pools[bucket]

    def probe_workload(self, bucket: int, rate: float) -> Any | None:
        """The probe's requests at `rate` (None: the bucket is empty)."""
        from servegym.envs.workloads import Workload

        drawn = self.draws(bucket)
        if drawn is None:
            return None
        rows, gaps = drawn
        n = int(min(MAX_REQUESTS, max(self.min_requests, math.ceil(rate * self.duration_s))))
        chosen, arrival = rows[:n], np.cumsum(gaps[:n]) / rate
        w = self.workload
        ttft = np.where(np.isinf(w.ttft_slo[chosen]), DEFAULT_TTFT_SLO, w.ttft_slo[chosen])
        tpot = np.where(np.isinf(w.tpot_slo[chosen]), DEFAULT_TPOT_SLO, w.tpot_slo[chosen])
        return Workload.from_lengths(arrival - arrival[0], w.prompt_len[chosen],
                                     w.output_len[chosen], ttft_slo=ttft, tpot_slo=tpot,
                                     name=f"bucket{bucket}")

    def simulator(self, gpu: str) -> Any:
        from servegym.envs.build import build_simulator
        from servegym.envs.costs import RooflineFallbackWarning, build_cost_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RooflineFallbackWarning)
            cost = build_cost_model(self.model, gpu, block_size=int(
                self.instance.get("block_size", 16)))
        return build_simulator(cost, 1, self.instance)

    def passes(self, sim: Any, bucket: int, rate: float) -> bool:
        """Whether at least `attainment` of the steady-state requests meet both SLOs."""
        workload = self.probe_workload(bucket, rate)
        self.simulations += 1
        r = sim.run(workload, seed=self.seed).records
        finished = r["status"] == "finished"
        ttft = r["first_token"] - r["arrival"]
        outputs = np.maximum(r["output_tokens"] - 1, 1)
        tpot = np.where(r["output_tokens"] > 1, (r["finish"] - r["first_token"]) / outputs, 0.0)
        met = finished & (ttft <= r["ttft_slo"]) & (tpot <= r["tpot_slo"])
        steady = r["arrival"] >= WARMUP * float(r["arrival"].max())
        return bool(met[steady].mean() >= self.attainment)

    def start_rate(self, sim: Any, bucket: int) -> float:
        """The cost model's steady-state estimate (`estimated_rate`) for the bucket's mean
        request and median TPOT target: where the search starts."""
        from servegym.agents.heuristics.melange import estimated_rate

        rows = self.draws(bucket)[0][:1000]
        w = self.workload
        tpot = w.tpot_slo[rows]
        tpot = float(np.median(tpot[np.isfinite(tpot)])) if np.isfinite(tpot).any() \
            else DEFAULT_TPOT_SLO
        guess = estimated_rate(sim.cost, sim.config, sim.pool_kv_blocks[0],
                               float(w.prompt_len[rows].mean()),
                               float(w.output_len[rows].mean()), tpot)
        return guess if guess > 0 else START_RATE

    def max_rate(self, gpu: str, bucket: int, steps: int) -> float:
        """The highest rate (req/s) found to pass; 0.0 if even `MIN_RATE` fails; NaN for
        an empty bucket. Doubling or halving from `start_rate` brackets it, `steps`
        geometric bisections narrow it."""
        if self.draws(bucket) is None:
            return math.nan
        sim = self.simulator(gpu)
        rate = min(max(self.start_rate(sim, bucket), MIN_RATE), MAX_RATE)
        if self.passes(sim, bucket, rate):
            while rate < MAX_RATE and self.passes(sim, bucket, rate * 2):
                rate *= 2
            low, high = rate, rate * 2
        else:
            while True:
                rate /= 2
                if rate < MIN_RATE:
                    return 0.0
                if self.passes(sim, bucket, rate):
                    break
            low, high = rate, rate * 2
        for _ in range(steps):
            mid = math.sqrt(low * high)
            low, high = (mid, high) if self.passes(sim, bucket, mid) else (low, mid)
        return float(low)


def cost_sources(gpus: Sequence[str], model: str) -> dict[str, str]:
    from servegym.envs.costs import RooflineFallbackWarning, build_cost_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RooflineFallbackWarning)
        return {gpu: build_cost_model(model, gpu).source for gpu in gpus}


# ============================================================================ allocate
def allocate(rates: np.ndarray, max_rates: np.ndarray, prices: Mapping[str, float],
             labels: Sequence[str], slice_factor: int, max_counts: Mapping[str, int]
             ) -> dict[str, Any]:
    """Mélange's allocation and the cheapest single-type one for bucket `rates`."""
    gpus = list(prices)
    capacity = np.nan_to_num(max_rates, nan=0.0)
    result: dict[str, Any] = {"bucket_rates": rates.tolist()}
    try:
        best = solve_allocation(rates, capacity, prices, slice_factor=slice_factor,
                                max_counts=max_counts, labels=labels)
    except InfeasibleAllocationError as error:
        result["error"] = str(error)
        return result
    result["melange"] = summary_of(best)
    singles = {}
    for g, gpu in enumerate(gpus):
        try:
            single = solve_allocation(rates, capacity[g:g + 1], {gpu: prices[gpu]},
                                      slice_factor=slice_factor,
                                      max_counts={k: v for k, v in max_counts.items()
                                                  if k == gpu}, labels=labels)
            singles[gpu] = summary_of(single)
        except InfeasibleAllocationError as error:
            singles[gpu] = {"error": str(error)}
    result["single_type"] = singles
    costs = {gpu: s["cost_per_hour"] for gpu, s in singles.items() if "cost_per_hour" in s}
    if costs:
        cheapest = min(costs, key=costs.get)
        result["best_single_type"] = cheapest
        result["saving"] = 1.0 - best.cost_per_hour / costs[cheapest]
    return result


def summary_of(allocation: Allocation) -> dict[str, Any]:
    return {"counts": dict(zip(allocation.gpus, allocation.counts, strict=True)),
            "cost_per_hour": allocation.cost_per_hour,
            "utilisation": dict(zip(allocation.gpus, allocation.utilisation, strict=True)),
            "shares": allocation.shares()}


# ============================================================================ report
def markdown(payload: Mapping[str, Any]) -> str:
    gpus, labels = payload["gpus"], payload["bucket_labels"]
    lines = [f"# Mélange allocation ({payload['created']})", "",
             f"Command: `{payload['command']}`", "",
             f"Task workload {payload['task']} (training split, {payload['workload_requests']} "
             f"requests), model {payload['model']}; profile: one instance per GPU type, "
             f"{payload['duration_s']:g} s of Poisson arrivals per probe (>= "
             f"{payload['requests']} requests), SLO attainment >= {payload['attainment']} "
             f"after the first {100 * WARMUP:.0f}%, "
             f"{payload['simulations']} simulations in {payload['profile_wall_s']:.0f} s. "
             "Prices: USD per GPU-hour, a dated snapshot (envs/costs/prices.py) unless "
             "overridden.", "",
             "| GPU | price ($/h) | price source | cost model |", "|---|---|---|---|"]
    for gpu in gpus:
        price = payload["prices"][gpu]
        lines.append(f"| {gpu} | {price['price_per_hour']:.4f} | {price['source']} "
                     f"{price['date']} | {payload['cost_sources'][gpu]} |")
    lines += ["", "Max sustainable rate per instance (req/s) under the SLO:", "",
              "| bucket | share | mean prompt | mean output | "
              + " | ".join(gpus) + " |", "|---|---|---|---|" + "---|" * len(gpus)]
    profile = payload["profile"]
    for b, label in enumerate(labels):
        rates = " | ".join("-" if profile["max_rates"][gpu][b] is None
                           else f"{profile['max_rates'][gpu][b]:.2f}" for gpu in gpus)
        lines.append(f"| {label} | {profile['shares'][b]:.3f} | "
                     f"{profile['mean_prompt'][b]:.0f} | {profile['mean_output'][b]:.0f} | "
                     f"{rates} |")
    lines += ["", "Allocations (instances per GPU type) minimising cost per hour:", "",
              "| rate (req/s) | Mélange: " + " / ".join(gpus)
              + " | Mélange $/h | best single type | its $/h | saving |",
              "|---|---|---|---|---|---|"]
    for row in payload["allocations"]:
        if "error" in row:
            lines.append(f"| {row['rate']:g} | infeasible: {row['error']} | | | | |")
            continue
        mel = row["melange"]
        counts = " / ".join(str(mel["counts"][g]) for g in gpus)
        best = row.get("best_single_type")
        single = row["single_type"].get(best, {}) if best else {}
        lines.append(f"| {row['rate']:g} | {counts} | {mel['cost_per_hour']:.2f} | "
                     f"{best or '-'} x {single.get('counts', {}).get(best, '-')} | "
                     f"{single.get('cost_per_hour', math.nan):.2f} | "
                     f"{100 * row.get('saving', math.nan):.1f}% |")
    lines += ["", "Which GPU type serves which bucket (Mélange; a share below 1 in brackets):",
              ""]
    short = short_labels(payload["buckets"])
    for row in payload["allocations"]:
        if "melange" not in row:
            continue
        mel = row["melange"]
        parts = []
        for gpu in gpus:
            served = [f"{short[b]}" + (f" ({s:.2f})" if s < 1 else "")
                      for b, s in enumerate(mel["shares"][gpu])
                      if s > 0 and payload["profile"]["shares"][b] > 0]
            if served:
                every = len(served) == sum(1 for s in payload["profile"]["shares"] if s > 0) \
                    and all("(" not in s for s in served)
                parts.append(f"{gpu} x {mel['counts'][gpu]}: "
                             + ("every bucket" if every else ", ".join(served)))
        lines.append(f"- {row['rate']:g} req/s: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def short_labels(buckets: Mapping[str, Sequence[int]]) -> list[str]:
    """"p256-1024/o0-256"-style bucket names (the output part only with output buckets)."""
    def spans(edges: Sequence[int]) -> list[str]:
        return [f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)] + [f">={edges[-1]}"]

    prompts, outputs = spans(buckets["prompt_edges"]), spans(buckets["output_edges"])
    return [f"p{p}" + (f"/o{o}" if len(outputs) > 1 else "") for p in prompts for o in outputs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default=TASK, help="the task whose workload is profiled")
    parser.add_argument("--gpus", nargs="*", help="GPU types (default: the task's pools')")
    parser.add_argument("--model", help="model (default: the task's pools')")
    parser.add_argument("--rates", nargs="*", type=float, default=list(DEFAULT_RATES),
                        help="total req/s to provision for")
    parser.add_argument("--prompt-edges", nargs="*", type=int,
                        default=list(DEFAULT_PROMPT_EDGES))
    parser.add_argument("--output-edges", nargs="*", type=int,
                        default=list(DEFAULT_OUTPUT_EDGES))
    parser.add_argument("--requests", type=int, default=200,
                        help="at least this many requests per probe")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of arrivals per probe (steady state)")
    parser.add_argument("--attainment", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=6, help="bisection steps per bucket")
    parser.add_argument("--slice-factor", type=int, default=8)
    parser.add_argument("--price", action="append", default=[],
                        help="GPU=USD per GPU-hour over the table (repeatable)")
    parser.add_argument("--max-count", action="append", default=[],
                        help="GPU=N: at most N instances of that type (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--name", default="melange_allocation", help="file stem")
    args = parser.parse_args(argv)

    from servegym.envs.costs.prices import price_table
    from servegym.envs.costs.specs import UnknownSpecError, get_gpu

    out = Path(args.out)
    paths, taken = result_paths(out, args.name)
    if taken:  # before minutes of work, not after
        parser.error(f"{', '.join(taken)} exist; results are never overwritten, "
                     "choose another --name")
    if args.requests < 10 or args.steps < 0 or not 0 < args.attainment <= 1 or \
            not args.duration > 0:
        parser.error("--requests must be >= 10, --steps >= 0, --attainment in (0, 1], "
                     "--duration > 0")
    if not args.rates or any(not (r > 0 and math.isfinite(r)) for r in args.rates):
        parser.error(f"--rates must be positive req/s, got {args.rates}")
    workload, instance, task_gpus, task_model = task_inputs(args.task)
    try:
        gpus = [get_gpu(g).name for g in (args.gpus or task_gpus)]
        overrides = {k: as_number(v)
                     for k, v in parse_pairs(args.price, "USD", "--price").items()}
        prices = price_table(overrides, gpus)
        caps = {get_gpu(k).name: int(v) for k, v in
                parse_pairs(args.max_count, "N", "--max-count").items()}
        buckets = Buckets(tuple(args.prompt_edges), tuple(args.output_edges))
    except (ValueError, UnknownSpecError) as error:
        parser.error(str(error))
    model = args.model or task_model
    command = shlex.join(["python", "experiments/melange_allocation.py",
                          *(sys.argv[1:] if argv is None else argv)])

    profile = bucket_profile(workload.prompt_len, workload.output_len, workload.arrival_time,
                             buckets)
    shares = profile.counts / profile.counts.sum()
    prober = Prober(workload, buckets, instance, model, args.requests, args.duration,
                    args.attainment, args.seed)
    started = time.perf_counter()
    max_rates = np.full((len(gpus), len(buckets)), np.nan)
    for b in range(len(buckets)):
        if profile.counts[b] == 0:
            continue
        for g, gpu in enumerate(gpus):
            max_rates[g, b] = prober.max_rate(gpu, b, args.steps)
        print(f"{buckets.labels()[b]}: " + ", ".join(
            f"{gpu} {max_rates[g, b]:.2f}" for g, gpu in enumerate(gpus)) + " req/s",
            flush=True)
    wall = time.perf_counter() - started
    labels = buckets.labels()
    priced = {gpu: prices[gpu].price_per_hour for gpu in gpus}
    allocations = []
    for rate in args.rates:
        row = allocate(shares * rate, max_rates, priced, labels, args.slice_factor, caps)
        allocations.append({"rate": rate, **row})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {
        "created": stamp, "command": command, "task": args.task, "model": model,
        "gpus": gpus, "instance": instance, "workload_requests": len(workload),
        "buckets": {"prompt_edges": list(buckets.prompt_edges),
                    "output_edges": list(buckets.output_edges)},
        "bucket_labels": labels, "requests": args.requests, "duration_s": args.duration,
        "attainment": args.attainment,
        "steps": args.steps, "slice_factor": args.slice_factor, "seed": args.seed,
        "prices": {gpu: {"price_per_hour": prices[gpu].price_per_hour,
                         "source": prices[gpu].source, "date": prices[gpu].date}
                   for gpu in gpus},
        "max_counts": caps, "cost_sources": cost_sources(gpus, model),
        "profile": {"shares": shares.tolist(),
                    "mean_prompt": np.nan_to_num(profile.mean_prompt).tolist(),
                    "mean_output": np.nan_to_num(profile.mean_output).tolist(),
                    "max_rates": {gpu: [None if math.isnan(v) else v for v in max_rates[g]]
                                  for g, gpu in enumerate(gpus)}},
        "simulations": prober.simulations, "profile_wall_s": wall,
        "allocations": allocations, "python": platform.python_version(),
    }
    text = markdown(payload)
    print(text)
    atomic_write(paths[1], lambda h: json.dump(payload, h, indent=2))
    atomic_write(paths[0], lambda h: h.write(text))
    return 0 if all("melange" in row for row in allocations) else 1


if __name__ == "__main__":
    raise SystemExit(main())
