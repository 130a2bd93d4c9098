"""Simulator speed benchmark: simulated requests/s, iterations/s and peak memory.

Settings:
  a) Vidur's setting: Llama-2-70B on A100, tensor parallel 2, vllm_v0, batch cap 128,
     4096 tokens per batch, watermark 1%, Azure 2023 conversation lengths (clipped to the
     4096-token context), Poisson arrivals at 1 req/s; 10k and 50k requests. Past the
     trace's 19,366 rows the lengths are cycled: that is this benchmark's choice, not
     Vidur's (Vidur's trace length generator stops at the last row and crashes when asked
     for 20,000; its 50k reference below ran on the trace concatenated with itself).
  b) Llama-3-8B on H100, vllm_v1 with chunked prefill (8192-token budget), Azure conv
     lengths, Poisson arrivals at 90% of the measured saturation throughput.
  c) Four instances of (b) behind a round-robin router, at four times (b)'s rate.
  d) Four pools' worth of disaggregation (envs/core/disagg.py): two prefill and two
     decode instances of (b), round-robin routing among the prefill ones, decode placement
     by most free KV, KV transfers priced by the cost model's interconnect; at twice (b)'s
     rate (90% of two colocated instances' saturation).
  e) Closed-loop multi-turn sessions (envs/workloads/sessions.py, ``closed_loop: true``;
     envs/core/release.py): four instances of (b) with prefix caching behind round-robin,
     1-6 turns per session, each released 2 s (exponential mean) after the previous turn
     finished, every turn resending the conversation (shared prefix hashes); session
     starts at (c)'s request rate divided by the mean turns per session.
  f) (e) with the KV tiers and retention on: 4000 GPU KV blocks per instance (64k tokens,
     so contexts compete for the cache) above a host tier of 16000 blocks (25 GB/s,
     envs/core/kv_tiers.py), RETAIN asked at every turn that has a next one and answered
     by retain-continuum (memory-bounded TTL, agents/heuristics/retention.py; menu 1, 2,
     5, 10, 30 s); the issue's sessions speed case.
  g) Live migration (envs/core/migration.py): (c) with servegym/Migration-v0's controller
     on (MIGRATE every 0.1 s answered by migrate-balance, up to 2 moves per tick); the
     issue's migration speed case.
  h) Migration-v0's own KV-bound setting as envs/tasks.py states it (since 88ba7e0: eight
     instances of (b) with 800 KV blocks each, its bursty long-prompt load at its rate of
     13 req/s), round-robin, the controller of (g): many migrations, and short decode runs
     (little free KV per request). Before 88ba7e0 it was 4 x 1200 blocks at 16 req/s.

Each case runs in its own subprocess on one core, so peak RSS is per case.

The Vidur reference (:data:`VIDUR_REFERENCE`) is a side-by-side measurement recorded in the
project's issue 16, not re-run here (Vidur is not installed in this project): Vidur
(Agrawal et al., MLSys 2024) at microsoft/vidur@7d47513 and servegym in case (a), on the
same machine kind, one core each, alternating runs: Vidur's loop 576-685 req/s at 10,000
requests and 562-618 at 50,000, servegym 20.1-22.1k, so 30-37x; Vidur's peak RSS 430 MB at
10k, 618 MB at 50k, 807 MB with its random-forest predictor. Iterations/s were not measured
for Vidur, so no iterations ratio is printed. The "x Vidur" column divides this run's rate
by Vidur's measured range (slowest to fastest Vidur run); it is a like-for-like ratio only
when this run is on that machine kind, one core, as the side-by-side one was.

    python experiments/bench_sim.py            # all cases, writes results/bench_sim.{json,md}
    python experiments/bench_sim.py --quick    # smaller cases, for a smoke run
    python experiments/bench_sim.py --only d   # some cases (their table goes to
                                               # results/bench_sim_<cases>.md)
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
from typing import Any

import numpy as np

from servegym.envs.core.cluster import Pool
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.metrics import atomic_write
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import CostModel, build_cost_model
from servegym.envs.workloads.azure import load_azure_2023
from servegym.envs.workloads.workload import Workload

ROOT = Path(__file__).resolve().parents[1]

# Issue 16's side-by-side measurement (see the module docstring), per number of requests.
VIDUR_REFERENCE = {
    "commit": "microsoft/vidur@7d47513",
    "conditions": ("case (a), same machine kind, one core each, alternating runs with "
                   "servegym; 50k: the trace concatenated"),
    "requests_per_s": {10_000: (576.0, 685.0), 50_000: (562.0, 618.0)},
    "peak_rss_mb": {10_000: 430.0, 50_000: 618.0, "random_forest": 807.0},
    "servegym_requests_per_s": (20_100.0, 22_100.0),
    "measured_ratio": (30.0, 37.0),
}
SEED = 0


def azure_conv_lengths(num_requests: int, max_total_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    trace, _ = load_azure_2023("conv").clip_total_tokens(max_total_tokens)
    index = np.arange(num_requests) % len(trace)  # cycled (Vidur stops at the trace's end)
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


def sessions_workload(requests: int, rate: float, seed: int) -> Workload:
    """Closed-loop sessions of case (e): about `requests` turns, `rate` turns/s offered."""
    from servegym.envs.workloads.sessions import multi_turn_workload

    mean_turns = 3.5  # uniform 1..6
    spec = {
        "kind": "sessions", "closed_loop": True, "system_prompt_len": 256,
        "num_sessions": max(1, round(requests / mean_turns)),
        "arrivals": {"process": "poisson", "rate": rate / mean_turns},
        "turns": {"dist": "uniform", "low": 1, "high": 6},
        "think_time": {"dist": "exponential", "mean": 2.0},
        "first_prompt": {"dist": "lognormal", "mean": 400, "cv": 1.0, "high": 1500},
        "user_prompt": {"dist": "lognormal", "mean": 100, "cv": 1.0, "high": 300},
        "output": {"dist": "lognormal", "mean": 200, "cv": 0.8, "high": 600},
    }
    return multi_turn_workload(spec, np.random.default_rng(seed), block_size=16)


def run_case(case: str, requests: int) -> dict:
    if case == "a":
        cost, config = vidur_setting()
        workload, instances, rate = poisson_workload(requests, 1.0, 4096, SEED), 1, 1.0
    elif case == "d":
        cost, config = h100_setting()
        instances = 4
        rate = 0.9 * saturation_rate(cost, config, 2000) * 2
        workload = poisson_workload(requests, rate, 8192, SEED)
        sim = Simulator(pools=[Pool("prefill", config, cost, 2, "prefill"),
                               Pool("decode", config, cost, 2, "decode")])
    elif case == "e":
        cost, config = h100_setting()
        instances = 4
        rate = 0.9 * saturation_rate(cost, config, 2000) * instances
        workload = sessions_workload(requests, rate, SEED)
        requests = len(workload)
        config = InstanceConfig(mode="vllm_v1", max_num_seqs=256, max_num_batched_tokens=8192,
                                enable_prefix_caching=True)
    elif case == "f":
        from servegym.agents.heuristics import make_policy

        cost, config = h100_setting()
        instances = 4
        rate = 0.9 * saturation_rate(cost, config, 2000) * instances
        workload = sessions_workload(requests, rate, SEED)
        requests = len(workload)
        config = InstanceConfig(mode="vllm_v1", max_num_seqs=256, max_num_batched_tokens=8192,
                                enable_prefix_caching=True, num_kv_blocks=4000,
                                kv_tiers=({"name": "host", "capacity_blocks": 16000,
                                           "bandwidth_gb_s": 25.0, "latency_s": 1e-5},))
        sim = Simulator(cost, config, num_instances=instances,
                        retention=make_policy("retain-continuum"))
    elif case in ("g", "h"):
        from servegym.agents.heuristics import make_policy
        from servegym.envs.core.decisions import default_policies
        from servegym.envs.protocol import DecisionKind
        from servegym.envs.tasks import TASKS

        task = TASKS["servegym/Migration-v0"]
        cost, config = h100_setting()
        instances = 4
        if case == "g":
            rate = 0.9 * saturation_rate(cost, config, 2000) * instances
            workload = poisson_workload(requests, rate, 8192, SEED)
        else:  # Migration-v0's own setting: its instances, KV blocks, workload and rate
            from servegym.envs.workloads import build_workload

            instances, rate = task.cluster["num_instances"], task.rate
            config = InstanceConfig(mode="vllm_v1", max_num_seqs=256,
                                    max_num_batched_tokens=8192,
                                    num_kv_blocks=task.cluster["instance"]["num_kv_blocks"])
            workload = build_workload(dict(task.workload["source"]), rate=rate,
                                      num_requests=requests, seed=SEED)
        policies = {**default_policies(), DecisionKind.MIGRATE: make_policy("migrate-balance")}
        sim = Simulator(cost, config, num_instances=instances, policies=policies,
                        migration=dict(task.cluster["migration"]))
    else:
        cost, config = h100_setting()
        instances = 1 if case == "b" else 4
        rate = 0.9 * saturation_rate(cost, config, 2000) * instances
        workload = poisson_workload(requests, rate, 8192, SEED)
    if case not in ("d", "f", "g", "h"):
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
        "rejected": summary["serving/rejected"],
        "prefix_cache_hit_rate": summary["serving/prefix_cache_hit_rate"],
        "jct_p99_s": summary.get("serving/jct_p99", float("nan")),
        "retain_pinned": summary.get("serving/retain_pinned", 0.0),
        "kv_tier_hits": summary.get("serving/kv_tier_hit_blocks", 0.0),
        "digest": result_digest(report),
        "migrations": sim.migration.num_completed if sim.migration is not None else 0,
    }


def result_digest(report: Any) -> str:
    """A digest of every request's record (times, instance, prefix hits): equal digests
    mean a speed change moved no number."""
    import hashlib

    records = report.records
    h = hashlib.sha256()
    for column in ("rid", "first_token", "finish", "instance", "prefix_hit_tokens",
                   "preemptions"):
        h.update(np.ascontiguousarray(records[column]).tobytes())
    return h.hexdigest()[:16]


CASES = (("a", 10_000), ("a", 50_000), ("b", 20_000), ("c", 40_000), ("d", 40_000),
         ("e", 40_000), ("f", 40_000), ("g", 40_000), ("h", 40_000))
QUICK = (("a", 2_000), ("b", 2_000), ("c", 4_000), ("d", 4_000), ("e", 4_000), ("f", 4_000),
         ("g", 4_000), ("h", 4_000))


def format_table(rows: list[dict]) -> str:
    header = ("| case | requests | inst | rate (req/s) | sim req/s | sim iter/s | peak RSS (MB) "
              "| Vidur req/s (measured) | x Vidur req/s | Vidur RSS (MB) | decode runs "
              "| iterations | simulated s |")
    lines = [header, "|" + "---|" * 13]
    for r in rows:
        ref = VIDUR_REFERENCE["requests_per_s"].get(r["requests"]) if r["case"] == "a" else None
        if ref is not None:
            slow, fast = ref
            vidur = (f"{slow:.0f}-{fast:.0f}",
                     f"{r['requests_per_s'] / fast:.0f}-{r['requests_per_s'] / slow:.0f}",
                     f"{VIDUR_REFERENCE['peak_rss_mb'][r['requests']]:.0f}")
        else:
            vidur = ("n/a", "n/a", "n/a")  # Vidur was not measured at this size / setting
        cells = (r["case"], r["requests"], r["instances"], f"{r['rate_rps']:.2f}",
                 f"{r['requests_per_s']:,.0f}", f"{r['iterations_per_s']:,.0f}",
                 f"{r['peak_rss_mb']:.0f}", *vidur, f"{r['decode_runs']:,.0f}",
                 f"{r['iterations']:,.0f}", f"{r['simulated_s']:,.0f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def reference_text() -> str:
    """The Vidur reference with its conditions, as measured (printed and written)."""
    ref = VIDUR_REFERENCE
    (s10, f10), (s50, f50) = ref["requests_per_s"][10_000], ref["requests_per_s"][50_000]
    low, high = ref["measured_ratio"]
    ours_low, ours_high = ref["servegym_requests_per_s"]
    rss = ref["peak_rss_mb"]
    return (f"Vidur reference (issue 16, {ref['commit']}, {ref['conditions']}): Vidur "
            f"{s10:.0f}-{f10:.0f} req/s at 10k requests and {s50:.0f}-{f50:.0f} at 50k; "
            f"servegym {ours_low / 1000:.1f}-{ours_high / 1000:.1f}k req/s in the same runs: "
            f"{low:.0f}-{high:.0f}x measured side by side. Vidur peak RSS {rss[10_000]:.0f} MB "
            f"at 10k, {rss[50_000]:.0f} MB at 50k, {rss['random_forest']:.0f} MB with its "
            "random-forest predictor. The 'x Vidur' column divides this run by Vidur's range; "
            "it compares like with like only on that machine kind, one core.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases (smoke run)")
    parser.add_argument("--only", help="comma-separated cases to run, e.g. d")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child process: one case
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.requests)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    cases = QUICK if args.quick else CASES
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {case for case, _ in CASES}
        if unknown:
            raise SystemExit(f"--only: unknown case(s) {sorted(unknown)}; cases: "
                             "a, b, c, d, e, f, g, h")
        cases = tuple((case, n) for case, n in cases if case in wanted)
    for case, requests in cases:
        # One core, as the target is stated for one core of this machine.
        command = [sys.executable, __file__, "--case", case, "--requests", str(requests)]
        if hasattr(os, "sched_setaffinity"):
            command = ["taskset", "-c", "0", *command]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"case {case} {requests}: {rows[-1]['requests_per_s']:,.0f} req/s", flush=True)
    table = format_table(rows)
    print(reference_text())
    print(table)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"created": stamp, "vidur_reference": VIDUR_REFERENCE, "quick": args.quick,
               "python": sys.version.split()[0], "rows": rows}
    out = Path(args.out)
    name = "bench_sim_quick" if args.quick else "bench_sim"
    if args.only:
        name += "_" + "".join(sorted(set(args.only.split(","))))
    # Keep every run; the plain name always points at the latest full run.
    atomic_write(out / "history" / f"{name}_{stamp}.json",
                 lambda h: json.dump(payload, h, indent=2))
    atomic_write(out / f"{name}.json", lambda h: json.dump(payload, h, indent=2), overwrite=True)
    atomic_write(out / f"{name}.md", lambda h: h.write(
        f"# Simulator speed ({stamp})\n\n{reference_text()}\n"
        "Rates are per CPU second of the simulating process (one core).\n\n" + table + "\n"),
        overwrite=True)


if __name__ == "__main__":
    main()
