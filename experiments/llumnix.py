"""Llumnix's claim, checked: tail TTFT and preemptions with and without live migration.

Llumnix (B. Sun et al., "Llumnix: Dynamic Scheduling for Large Language Model Serving",
OSDI 2024) migrates running requests between instances (envs/core/migration.py) and
reports large tail-latency gains over dispatch-only scheduling (the issue quotes up to
~10x on P99 first-token latency in its setting) and fewer preemptions. Here: 4 instances
of Llama-3-8B on H100s (roofline cost model), each with 1200 KV blocks (KV-bound, as
Llumnix's setting is), servegym/Migration-v0's bursty long-tailed load (gamma arrivals,
cv 3; prompts log-normal mean 600, outputs mean 400, both cv 1.5) at several rates;
dispatch round-robin (length-blind, so load drifts apart) or Llumnix's own freeness router
(`llumnix`, load-aware at arrival); migration never, Llumnix's virtual-usage balancing
(`migrate-balance`) or de-fragmentation (`migrate-defrag`), asked every 0.1 s. Each cell
is the mean over `--windows` workload seeds of `--requests` requests; SLOs TTFT 2 s,
TPOT 0.1 s.

    python experiments/llumnix.py                      # results/llumnix.md and .json
    python experiments/llumnix.py --rates 16,20 --requests 800 --name llumnix_quick

Writes `<out>/<name>.md` and `.json` atomically, never over an earlier run, with the
command at the top.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from servegym.agents.heuristics import make_policy
from servegym.envs.build import build_simulator
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.metrics import atomic_write, result_paths
from servegym.envs.costs import build_cost_model
from servegym.envs.protocol import DecisionKind
from servegym.envs.tasks import TASKS
from servegym.envs.workloads import build_workload

ROOT = Path(__file__).resolve().parents[1]
TASK = TASKS["servegym/Migration-v0"]
DISPATCH = ("rr", "llumnix")
MIGRATION = ("migrate-never", "migrate-balance", "migrate-defrag")
METRICS = ("serving/goodput_rps", "serving/slo_attainment", "serving/ttft_p50",
           "serving/ttft_p99", "serving/preemptions")


def run_one(rate: float, dispatch: str, migration: str, requests: int, seed: int,
            cost: Any) -> dict[str, float]:
    workload = build_workload(dict(TASK.workload["source"]), rate=rate, split="test",
                              num_requests=requests, ttft_slo=2.0, tpot_slo=0.1, seed=seed)
    policies = {**default_policies(), DecisionKind.ROUTE: make_policy(dispatch),
                DecisionKind.MIGRATE: make_policy(migration)}
    cluster = TASK.cluster
    sim = build_simulator(cost, cluster["num_instances"], dict(cluster["instance"]),
                          policies=policies, migration=dict(cluster["migration"]))
    summary = sim.run(workload, seed=seed).summary
    row = {key: float(summary[key]) for key in METRICS}
    stats = sim.migration.stats()
    row["migrations"] = stats["migrations"]
    row["aborted"] = stats["migrations_aborted"]
    row["stop_ms"] = 1e3 * stats["migration_stop_time_s"] / max(1.0, stats["migrations"])
    return row


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def markdown(command: str, stamp: str, cells: list[dict[str, Any]], args: Any) -> str:
    lines = [
        "# Llumnix: tail TTFT and preemptions with and without live migration",
        "",
        f"Command: `{command}`  ",
        f"Created {stamp}; {args.windows} windows x {args.requests} requests per cell "
        "(test split of servegym/Migration-v0's workload, seeds 0..), Llama-3-8B on 4 H100 "
        "(roofline), 1200 KV blocks each, migration asked every 0.1 s (up to 2 moves), "
        "SLOs TTFT 2 s / TPOT 0.1 s.",
        "",
        "| rate | dispatch | migration | goodput (req/s) | SLO att. | TTFT p50 (s) | "
        "TTFT p99 (s) | preemptions | migrations | aborted | stop (ms/migration) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        m = cell["mean"]
        lines.append(
            f"| {cell['rate']:g} | {cell['dispatch']} | {cell['migration']} | "
            f"{m['serving/goodput_rps']:.2f} | {m['serving/slo_attainment']:.3f} | "
            f"{m['serving/ttft_p50']:.3f} | {m['serving/ttft_p99']:.2f} | "
            f"{m['serving/preemptions']:.0f} | {m['migrations']:.0f} | {m['aborted']:.0f} | "
            f"{m['stop_ms']:.2f} |")
    lines += ["", "Gains of the best migration rule over `migrate-never` (same rate and "
              "dispatch): p99 TTFT ratio never / best, preemptions ratio.", "",
              "| rate | dispatch | best rule (p99 TTFT) | p99 TTFT never / best | "
              "preemptions never / best | goodput best / never |", "|---|---|---|---|---|---|"]
    for rate in sorted({c["rate"] for c in cells}):
        for dispatch in DISPATCH:
            group = {c["migration"]: c["mean"] for c in cells
                     if c["rate"] == rate and c["dispatch"] == dispatch}
            if "migrate-never" not in group:
                continue
            never = group["migrate-never"]
            best_name = min((k for k in group if k != "migrate-never"),
                            key=lambda k: group[k]["serving/ttft_p99"])
            best = group[best_name]
            lines.append(
                f"| {rate:g} | {dispatch} | {best_name} | "
                f"{never['serving/ttft_p99'] / best['serving/ttft_p99']:.2f}x | "
                f"{never['serving/preemptions'] / max(1.0, best['serving/preemptions']):.2f}x | "
                f"{best['serving/goodput_rps'] / max(1e-9, never['serving/goodput_rps']):.2f}x |")
    rr = [c for c in cells if c["dispatch"] == "rr"]
    ratios = []
    for cell in rr:
        if cell["migration"] == "migrate-never":
            others = [c["mean"]["serving/ttft_p99"] for c in rr
                      if c["rate"] == cell["rate"] and c["migration"] != "migrate-never"]
            ratios.append(cell["mean"]["serving/ttft_p99"] / min(others))
    def preemptions(rate: float, rule: str) -> float:
        return next(c["mean"]["serving/preemptions"] for c in rr
                    if c["rate"] == rate and c["migration"] == rule)

    preempt_line = "; ".join(
        f"{rate:g} req/s: never {preemptions(rate, 'migrate-never'):.0f}, balance "
        f"{preemptions(rate, 'migrate-balance'):.0f}, defrag "
        f"{preemptions(rate, 'migrate-defrag'):.0f}"
        for rate in sorted({c["rate"] for c in rr}))
    lines += [
        "",
        "## Beside the paper",
        "",
        "Llumnix (Sun et al., OSDI 2024) reports large tail-latency gains from migration "
        "over dispatch-only scheduling (the issue quotes up to ~10x on P99 first-token "
        "latency in its setting: LLaMA models on a 16-GPU cluster, bursty arrivals) and "
        "fewer preemptions.",
        "",
        f"- Agrees: with round-robin dispatch, migration cuts P99 TTFT by "
        f"{min(ratios):.1f}x to {max(ratios):.1f}x across these rates (the largest gain at "
        "the lightest load, where queues form only on the instances the dispatcher "
        "overfilled), and raises goodput and SLO attainment.",
        "- Smaller than the paper: beside Llumnix's own load-aware dispatcher (`llumnix` "
        "routing, freeness at arrival) the gain shrinks to the ratios in the table's "
        "`llumnix` rows; dispatch-time balancing already removes most of the imbalance "
        "here; the paper's gains are against its own baselines on a larger cluster.",
        f"- Mixed on preemptions (round-robin rows): {preempt_line}; moving requests "
        "fills the destinations, whose later growth preempts there, most with "
        "de-fragmentation, which moves large requests.",
        "- Not modelled: the copy's cost to the iterations of both instances, a fixed "
        "per-stage overhead (stop times here are the last block's transfer at NVLink-class "
        "bandwidth, microseconds; Llumnix reports a downtime that stays nearly constant "
        "with sequence length, not one this small), link contention between concurrent "
        "migrations.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="14,18,20", help="comma-separated req/s")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--windows", type=int, default=2, help="workload seeds per cell")
    parser.add_argument("--name", default="llumnix")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    try:
        rates = [float(x) for x in args.rates.split(",")]
    except ValueError:
        raise SystemExit(f"--rates must be comma-separated numbers, got {args.rates!r}") \
            from None
    if not rates or min(rates) <= 0 or args.requests < 50 or args.windows < 1:
        raise SystemExit("--rates must be positive, --requests >= 50, --windows >= 1")
    paths, existing = result_paths(args.out, args.name)
    if existing:
        raise SystemExit(f"{existing} exist; results are never overwritten: pass --name")
    command = shlex.join(["python", "experiments/llumnix.py",
                          *(sys.argv[1:] if argv is None else argv)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the roofline fallback, said in the table
        cost = build_cost_model("Llama-3-8B", "H100-80GB", 1, source="auto")
    started = time.perf_counter()
    cells = []
    for rate in rates:
        for dispatch in DISPATCH:
            for migration in MIGRATION:
                rows = [run_one(rate, dispatch, migration, args.requests, seed, cost)
                        for seed in range(args.windows)]
                cells.append({"rate": rate, "dispatch": dispatch, "migration": migration,
                              "mean": mean_rows(rows), "windows": rows})
                m = cells[-1]["mean"]
                print(f"rate {rate:g} {dispatch:8s} {migration:16s} goodput "
                      f"{m['serving/goodput_rps']:.2f} ttft_p99 {m['serving/ttft_p99']:.2f} "
                      f"preemptions {m['serving/preemptions']:.0f}", flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = markdown(command, stamp, cells, args)
    text += f"\nWall time {time.perf_counter() - started:.0f} s; cost model {cost.source}.\n"
    atomic_write(paths[1], lambda h: json.dump({"created": stamp, "command": command,
                                                "cells": cells}, h, indent=2))
    atomic_write(paths[0], lambda h: h.write(text))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
