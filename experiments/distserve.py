"""DistServe's headline, in servegym: goodput per GPU, disaggregated vs colocated, as SLOs tighten.

DistServe (Y. Zhong et al., "DistServe: Disaggregating Prefill and Decoding for
Goodput-optimized Large Language Model Serving", OSDI 2024) measures *per-GPU goodput*: the
highest request rate a system sustains with at least 90% of requests meeting both their
TTFT and TPOT SLOs, divided by its GPUs; and plots it while the SLOs are scaled down
("SLO scale"). It reports up to 7.4x more requests, or 12.6x tighter SLOs, than vLLM
(colocated, no chunked prefill) on OPT-13B to OPT-175B on A100s. This experiment runs the
same measurement in the simulator (envs/core/disagg.py):

* model and GPUs: Llama-3-8B on 4 H100-80GB, one GPU per instance (roofline costs: no
  measured H100 table for this model; the transfer is the cost model's NVLink-class
  interconnect, `kv_transfer_time`);
* systems: colocated vLLM v1 with chunked prefill (8192-token budget) and without it
  (4 instances, least-outstanding routing), and disaggregated 1P+3D, 2P+2D, 3P+1D (vLLM v1
  instances per role, least-prefill routing, most-free-KV decode placement); the fixed
  prefill:decode ratios stand in for DistServe's placement search, which is not done here;
* workload: the Azure 2023 conversation trace's lengths (first rows, clipped to 8192
  tokens), Poisson arrivals; base SLOs TTFT 0.5 s and TPOT 0.05 s (about 5x one H100's
  decode iteration), times the SLO scale;
* per-GPU goodput: a bisection over the rate (`--bisect` steps between 0.5 and 400
  req/s) for attainment >= 0.9 over `--requests` requests, divided by 4.

    python experiments/distserve.py                  # writes results/distserve.{md,json}
    python experiments/distserve.py --requests 500 --bisect 6 --name distserve_quick

Writes results atomically and never overwrites (`--name` picks another stem).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from servegym.agents.heuristics import make_policy
from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.metrics import atomic_write, result_paths
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import build_cost_model
from servegym.envs.protocol import DecisionKind
from servegym.envs.workloads import load_azure_2023
from servegym.envs.workloads.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
GPUS = 4
BASE_TTFT_S = 0.5
BASE_TPOT_S = 0.05
ATTAINMENT = 0.9
SCALES = (2.0, 1.5, 1.0, 0.75, 0.5, 0.35)
SYSTEMS = ("colocated-chunked", "colocated-nochunk", "disagg-1P3D", "disagg-2P2D",
           "disagg-3P1D")
RATE_RANGE = (0.5, 400.0)


def build(system: str, cost: Any) -> Simulator:
    policies = default_policies()
    if system.startswith("colocated"):
        config = InstanceConfig(enable_chunked_prefill=system.endswith("chunked"))
        policies[DecisionKind.ROUTE] = make_policy("lor")
        return Simulator(cost, config, num_instances=GPUS, policies=policies)
    prefills = int(system.split("-")[1][0])
    config = InstanceConfig()
    policies[DecisionKind.ROUTE] = make_policy("least-prefill")
    policies[DecisionKind.PLACE] = make_policy("place-most-free-kv")
    return Simulator(pools=[Pool("prefill", config, cost, prefills, "prefill"),
                            Pool("decode", config, cost, GPUS - prefills, "decode")],
                     policies=policies)


def workload(prompts: np.ndarray, outputs: np.ndarray, rate: float, scale: float,
             seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, len(prompts)))
    return Workload.from_lengths(arrivals - arrivals[0], prompts, outputs,
                                 ttft_slo=BASE_TTFT_S * scale, tpot_slo=BASE_TPOT_S * scale)


def attainment(system: str, cost: Any, prompts: np.ndarray, outputs: np.ndarray,
               rate: float, scale: float, seed: int) -> float:
    report = build(system, cost).run(workload(prompts, outputs, rate, scale, seed), seed=seed)
    return float(report.summary["serving/slo_attainment"])


def max_rate(system: str, cost: Any, prompts: np.ndarray, outputs: np.ndarray,
             scale: float, steps: int, seed: int) -> float:
    """The highest rate (req/s) with attainment >= ATTAINMENT, by bisection (geometric);
    0 if even the lowest rate misses it."""
    low, high = RATE_RANGE
    if attainment(system, cost, prompts, outputs, low, scale, seed) < ATTAINMENT:
        return 0.0
    for _ in range(steps):
        middle = (low * high) ** 0.5
        if attainment(system, cost, prompts, outputs, middle, scale, seed) >= ATTAINMENT:
            low = middle
        else:
            high = middle
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--bisect", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="distserve")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    if args.requests < 50 or args.bisect < 1:
        raise SystemExit("--requests must be >= 50 and --bisect >= 1")
    paths, existing = result_paths(args.out, args.name)
    if existing:
        raise SystemExit(f"{existing} exist; results are never overwritten: pass --name")
    cost = build_cost_model("Llama-3-8B", "H100-80GB", 1, source="auto")
    trace, _ = load_azure_2023("conv").clip_total_tokens(8192)
    prompts = trace.prompt_len[: args.requests]
    outputs = trace.output_len[: args.requests]
    start = time.perf_counter()
    rows = []
    for scale in SCALES:
        row: dict[str, Any] = {"slo_scale": scale, "ttft_slo_s": BASE_TTFT_S * scale,
                               "tpot_slo_s": BASE_TPOT_S * scale}
        for system in SYSTEMS:
            rate = max_rate(system, cost, prompts, outputs, scale, args.bisect, args.seed)
            row[system] = rate / GPUS
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = "python experiments/distserve.py " + shlex.join(sys.argv[1:])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    header = "| SLO scale | TTFT / TPOT SLO (s) | " + " | ".join(SYSTEMS) + \
        " | best disagg / colocated-chunked | best disagg / colocated-nochunk |"
    lines = [header, "|" + "---|" * (len(SYSTEMS) + 4)]
    for row in rows:
        disagg = max(row[s] for s in SYSTEMS if s.startswith("disagg"))
        ratios = [f"{disagg / row[s]:.2f}x" if row[s] > 0 else "inf"
                  for s in ("colocated-chunked", "colocated-nochunk")]
        lines.append(f"| {row['slo_scale']} | {row['ttft_slo_s']:.3g} / {row['tpot_slo_s']:.3g} | "
                     + " | ".join(f"{row[s]:.2f}" for s in SYSTEMS) + " | "
                     + " | ".join(ratios) + " |")
    text = (f"# DistServe reproduction: per-GPU goodput vs SLO scale ({stamp})\n\n"
            f"Command: `{command}`\n\n"
            f"Llama-3-8B, {GPUS} x H100-80GB ({cost.source} costs), Azure 2023 conversation "
            f"lengths (first {args.requests} rows), Poisson arrivals (seed {args.seed}). "
            f"Per-GPU goodput = the highest rate (req/s, {args.bisect}-step geometric "
            f"bisection in {RATE_RANGE}) with >= {ATTAINMENT:.0%} of requests meeting both "
            f"SLOs, / {GPUS}. SLOs: TTFT {BASE_TTFT_S} s and TPOT {BASE_TPOT_S} s times the "
            "scale. Colocated: vLLM v1, least-outstanding routing. Disaggregated: "
            "least-prefill routing, most-free-KV placement, fixed prefill:decode ratios "
            "(no placement search). Wall time "
            f"{time.perf_counter() - start:.0f} s.\n\n" + "\n".join(lines) + "\n")
    atomic_write(paths[0], lambda h: h.write(text))
    atomic_write(paths[1], lambda h: json.dump({"created": stamp, "command": command,
                                                "rows": rows}, h, indent=2))
    print(text)


if __name__ == "__main__":
    main()
