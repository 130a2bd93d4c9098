"""Simulator speed benchmark: simulated requests/s, iterations/s and peak memory.

Settings:
  a) Vidur's setting: Llama-2-70B on A100, tensor parallel 2, vllm_v0, batch cap 128,
     4096 tokens per batch, watermark 1%, Azure 2023 conversation lengths (clipped to the
     4096-token context as Vidur does, cycled past the trace's 19,366 rows), Poisson
     arrivals at 1 req/s; 10k and 50k requests.
  b) Llama-3-8B on H100, vllm_v1 with chunked prefill (8192-token budget), Azure conv
     lengths, Poisson arrivals at 90% of the measured saturation throughput.
  c) Four instances of (b) behind a round-robin router, at four times (b)'s rate.

Each case runs in its own subprocess on one core, so peak RSS is per case. The reference
figures for Vidur are those stated for this machine in the project's issue #2 (Vidur itself
is not installed here); the ratio column divides our figure by them.

    python experiments/bench_sim.py            # all cases, writes results/bench_sim.{json,md}
    python experiments/bench_sim.py --quick    # smaller cases, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.metrics import atomic_write
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import CostModel, build_cost_model
from servegym.envs.workloads.azure import load_azure_2023
from servegym.envs.workloads.workload import Workload

ROOT = Path(__file__).resolve().parents[1]

VIDUR_REFERENCE = {"requests_per_s": 920.0, "iterations_per_s": 8300.0, "peak_rss_mb": 1800.0}
SEED = 0


def azure_conv_lengths(num_requests: int, max_total_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    trace, _ = load_azure_2023("conv").clip_total_tokens(max_total_tokens)
    index = np.arange(num_requests) % len(trace)  # cycle, as Vidur's trace generator does
    return trace.prompt_len[index], trace.output_len[index]


def poisson_workload(num_requests: int, rate: float, max_total_tokens: int, seed: int) -> Workload:
    prompts, outputs = azure_conv_lengths(num_requests, max_total_tokens)
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, num_requests))
    return Workload.from_lengths(arrivals, prompts, outputs, name=f"azure_conv_poisson_{rate:g}")


def vidur_setting() -> tuple[CostModel, InstanceConfig]:
    # Vidur's own measured tables for this setting (source "measured").
    cost = build_cost_model("Llama-2-70B", "A100-80GB", tensor_parallel=2)
    config = InstanceConfig(mode="vllm_v0", max_num_seqs=128, max_num_batched_tokens=4096,
                            watermark=0.01)
    return cost, config


def h100_setting() -> tuple[CostModel, InstanceConfig]:
    cost = build_cost_model("Llama-3-8B", "H100-80GB", tensor_parallel=1)  # roofline: no table
    config = InstanceConfig(mode="vllm_v1", max_num_seqs=256, max_num_batched_tokens=8192)
    return cost, config


def saturation_rate(cost: CostModel, config: InstanceConfig, requests: int) -> float:
    """Throughput (req/s) of one instance when every request is already waiting."""
    prompts, outputs = azure_conv_lengths(requests, 8192)
    burst = Workload.from_lengths(np.zeros(requests), prompts, outputs)
    return Simulator(cost, config).run(burst).summary["serving/throughput_rps"]


def run_case(case: str, requests: int) -> dict:
    if case == "a":
        cost, config = vidur_setting()
        workload, instances, rate = poisson_workload(requests, 1.0, 4096, SEED), 1, 1.0
    else:
        cost, config = h100_setting()
        instances = 1 if case == "b" else 4
        rate = 0.9 * saturation_rate(cost, config, 2000) * instances
        workload = poisson_workload(requests, rate, 8192, SEED)
    sim = Simulator(cost, config, num_instances=instances)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    report = sim.run(workload, seed=SEED)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    iterations = report.counters["iterations"]
    summary = report.summary
    return {
        "case": case,
        "requests": requests,
        "instances": instances,
        "rate_rps": rate,
        "wall_s": wall,
        "cpu_s": cpu,
        "requests_per_s": requests / cpu,
        "iterations_per_s": iterations / cpu,
        "iterations": iterations,
        "decode_runs": report.counters["decode_runs"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "simulated_s": summary["serving/makespan_s"],
        "ttft_p99_s": summary["serving/ttft_p99"],
        "tbt_p99_s": summary["serving/tbt_p99"],
        "preemptions": summary["serving/preemptions"],
        "kv_blocks": report.counters["num_kv_blocks"],
        "cost_source": report.cost_source,
    }


CASES = (("a", 10_000), ("a", 50_000), ("b", 20_000), ("c", 40_000))
QUICK = (("a", 2_000), ("b", 2_000), ("c", 4_000))


def format_table(rows: list[dict]) -> str:
    header = ("| case | requests | inst | rate (req/s) | sim req/s | sim iter/s | peak RSS (MB) "
              "| x Vidur req/s | x Vidur iter/s | decode runs | iterations | simulated s |")
    lines = [header, "|" + "---|" * 12]
    for r in rows:
        if r["case"] == "a":
            ratios = (f"{r['requests_per_s'] / VIDUR_REFERENCE['requests_per_s']:.1f}",
                      f"{r['iterations_per_s'] / VIDUR_REFERENCE['iterations_per_s']:.1f}")
        else:
            ratios = ("n/a", "n/a")
        cells = (r["case"], r["requests"], r["instances"], f"{r['rate_rps']:.2f}",
                 f"{r['requests_per_s']:,.0f}", f"{r['iterations_per_s']:,.0f}",
                 f"{r['peak_rss_mb']:.0f}", *ratios, f"{r['decode_runs']:,.0f}",
                 f"{r['iterations']:,.0f}", f"{r['simulated_s']:,.0f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases (smoke run)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child process: one case
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.requests)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    for case, requests in QUICK if args.quick else CASES:
        # One core, as the target is stated for one core of this machine.
        command = [sys.executable, __file__, "--case", case, "--requests", str(requests)]
        if hasattr(os, "sched_setaffinity"):
            command = ["taskset", "-c", "0", *command]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"case {case} {requests}: {rows[-1]['requests_per_s']:,.0f} req/s", flush=True)
    table = format_table(rows)
    print(table)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"created": stamp, "vidur_reference": VIDUR_REFERENCE, "quick": args.quick,
               "python": sys.version.split()[0], "rows": rows}
    out = Path(args.out)
    name = "bench_sim_quick" if args.quick else "bench_sim"
    # Keep every run; the plain name always points at the latest full run.
    atomic_write(out / "history" / f"{name}_{stamp}.json",
                 lambda h: json.dump(payload, h, indent=2))
    atomic_write(out / f"{name}.json", lambda h: json.dump(payload, h, indent=2), overwrite=True)
    atomic_write(out / f"{name}.md", lambda h: h.write(
        f"# Simulator speed ({stamp})\n\nVidur reference on this machine (issue #2): "
        f"{VIDUR_REFERENCE['requests_per_s']:.0f} req/s, "
        f"{VIDUR_REFERENCE['iterations_per_s']:.0f} iter/s, "
        f"{VIDUR_REFERENCE['peak_rss_mb']:.0f} MB at 50k requests.\n"
        "Rates are per CPU second of the simulating process (one core).\n\n" + table + "\n"),
        overwrite=True)


if __name__ == "__main__":
    main()
