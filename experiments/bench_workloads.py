"""Workload speed benchmark: loading the shipped traces and generating synthetic requests.

Targets (issue #3): loading the full Azure conversation trace under 1 s; generating one
million synthetic requests under 2 s. Each case runs `--repeats` times in this process
(pinned to one core where the OS allows); the table gives the best and the median wall
time, and requests per second from the median. Nothing is cached between repeats: every
repeat reads and parses the files again.

    python experiments/bench_workloads.py            # writes results/bench_workloads.{json,md}
    python experiments/bench_workloads.py --quick    # 10k-request generators, no files
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from servegym.envs.core.metrics import atomic_write
from servegym.envs.workloads import (
    Workload,
    build_workload,
    load_azure_2023,
    load_length_table,
    load_mooncake,
)

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {"azure_conv load": 1.0, "poisson + lognormal": 2.0}
MILLION = 1_000_000


def synthetic(arrivals: dict, prompt: dict, output: dict, n: int) -> Callable[[], Workload]:
    source = {"kind": "synthetic", "num_requests": n, "arrivals": arrivals, "prompt": prompt,
              "output": output}
    return lambda: build_workload(source, seed=0)


def cases(n: int) -> list[tuple[str, str, Callable[[], object]]]:
    """(name, what it does, callable) for every case; generators make `n` requests."""
    logn = {"dist": "lognormal", "mean": 1000, "cv": 1.5, "high": 7000}
    out = {"dist": "lognormal", "mean": 250, "cv": 1.0, "high": 1000}
    sessions = {"kind": "sessions", "num_sessions": n // 4,
                "arrivals": {"process": "poisson", "rate": 1.0},
                "turns": {"dist": "uniform", "low": 1, "high": 7},
                "think_time": {"dist": "exponential", "mean": 20.0},
                "first_prompt": logn, "user_prompt": {"dist": "lognormal", "mean": 120, "cv": 1},
                "output": out, "system_prompt_len": 256}
    return [
        ("azure_conv load", "load_azure_2023('conv'): parse the 19,366-row CSV",
         lambda: load_azure_2023("conv")),
        ("azure_code load", "load_azure_2023('code')", lambda: load_azure_2023("code")),
        ("mooncake load", "load_mooncake(): 12,031 JSON lines, spread ticks, prefix chains",
         lambda: load_mooncake()),
        ("sharegpt table", "load_length_table('sharegpt'): 30,731 rows",
         lambda: load_length_table("sharegpt")),
        ("servegen m-large 1 h", "1 h of language/m-large at rate_scale 1 (all clients)",
         lambda: build_workload({"kind": "servegen", "pool": "language/m-large"})),
        ("poisson + lognormal", f"{n:,} requests via build_workload",
         synthetic({"process": "poisson", "rate": 5.0}, logn, out, n)),
        ("poisson + fixed", f"{n:,} requests",
         synthetic({"process": "poisson", "rate": 5.0}, {"dist": "fixed", "value": 1024},
                   {"dist": "fixed", "value": 128}, n)),
        ("gamma cv4 + zipf", f"{n:,} requests",
         synthetic({"process": "gamma", "rate": 5.0, "cv": 4.0},
                   {"dist": "zipf", "a": 0.8, "low": 16, "high": 6000},
                   {"dist": "zipf", "a": 1.1, "high": 1000}, n)),
        ("onoff + uniform", f"{n:,} requests",
         synthetic({"process": "onoff", "rate": 5.0, "on_s": 20.0, "off_s": 40.0},
                   {"dist": "uniform", "low": 64, "high": 4096},
                   {"dist": "uniform", "low": 16, "high": 512}, n)),
        ("diurnal + empirical", f"{n:,} requests, lengths from the Azure conv trace",
         synthetic({"process": "diurnal", "rate": 5.0, "amplitude": 0.8, "period_s": 3600.0},
                   {"dist": "empirical", "trace": "azure_conv", "column": "prompt"},
                   {"dist": "empirical", "trace": "azure_conv", "column": "output"}, n)),
        ("multi-turn sessions", f"{n // 4:,} sessions (~{n:,} requests) with prefix chains",
         lambda: build_workload(sessions, seed=0)),
    ]


def measure(call: Callable[[], object], repeats: int) -> dict:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    requests = len(result) if hasattr(result, "__len__") else 0
    median = statistics.median(times)
    return {"requests": requests, "best_s": min(times), "median_s": median,
            "requests_per_s": requests / median if median > 0 else float("nan")}


def format_table(rows: list[dict]) -> str:
    lines = ["| case | what | requests | best (s) | median (s) | req/s | target |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        target = TARGETS.get(row["case"])
        verdict = "" if target is None else (
            f"< {target:g} s: {'met' if row['median_s'] < target else 'MISSED'}")
        lines.append(f"| {row['case']} | {row['what']} | {row['requests']:,} | "
                     f"{row['best_s']:.3f} | {row['median_s']:.3f} | "
                     f"{row['requests_per_s']:,.0f} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k-request generators, no files")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    n = 10_000 if args.quick else MILLION
    rows = []
    for name, what, call in cases(n):
        row = {"case": name, "what": what, **measure(call, args.repeats)}
        rows.append(row)
        print(f"{name}: median {row['median_s']:.3f} s", flush=True)
    table = format_table(rows)
    print(table)
    if args.quick:
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"created": stamp, "python": sys.version.split()[0], "repeats": args.repeats,
               "cpu_count": os.cpu_count(), "targets_s": TARGETS, "rows": rows}
    out = Path(args.out)
    # Keep every run; the plain name always points at the latest full run.
    atomic_write(out / "history" / f"bench_workloads_{stamp}.json",
                 lambda h: json.dump(payload, h, indent=2))
    atomic_write(out / "bench_workloads.json", lambda h: json.dump(payload, h, indent=2),
                 overwrite=True)
    atomic_write(out / "bench_workloads.md", lambda h: h.write(
        f"# Workload loading and generation speed ({stamp})\n\n"
        f"`python experiments/bench_workloads.py`: one core, {args.repeats} repeats per case, "
        "wall time per call (files re-read every time); req/s from the median.\n\n"
        + table + "\n"), overwrite=True)


if __name__ == "__main__":
    main()
