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
  (4 instances, least-outstanding routing), colocated vLLM v0 ("colocated-v0": prefill-only
  iterations that stall every decode of the instance, the scheduler DistServe compared
  against), disaggregated 1P+3D, 2P+2D, 3P+1D (vLLM v1
  instances per role, TP 1, least-prefill routing, most-free-KV decode placement), and
  "distserve-search": the placement DistServe's search picks at each SLO scale
  (agents/heuristics/distserve.py: every prefill:decode ratio and per-pool TP in {1, 2}
  within the 4 GPUs, `--search-bisect` steps per candidate), then measured like the others
  and divided by the GPUs it uses;
* workload: the Azure 2023 conversation trace's lengths (first rows, clipped to 8192
  tokens), Poisson arrivals; base SLOs TTFT 0.5 s and TPOT 0.05 s (about 5x one H100's
  decode iteration), times the SLO scale;
* per-GPU goodput: a bisection over the rate (`--bisect` steps between 0.5 and 400
  req/s) for attainment >= 0.9 over `--requests` requests, divided by the system's GPUs.

    python experiments/distserve.py                  # writes results/distserve.{md,json,png}
    python experiments/distserve.py --requests 300 --bisect 4 --search-bisect 3 \
        --scales 1,0.5 --name distserve_quick

Writes results atomically and never overwrites (`--name` picks another stem); the plot
(goodput per GPU vs SLO scale, one line per system) goes beside the table.
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
from servegym.agents.heuristics.distserve import search_placement
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
SCALES = (2.0, 1.5, 1.0, 0.75, 0.5, 0.35, 0.25)
SYSTEMS = ("colocated-chunked", "colocated-nochunk", "colocated-v0", "disagg-1P3D",
           "disagg-2P2D", "disagg-3P1D", "distserve-search")
COLOCATED = ("colocated-chunked", "colocated-nochunk", "colocated-v0")
FIXED = ("disagg-1P3D", "disagg-2P2D", "disagg-3P1D")
RATE_RANGE = (0.5, 400.0)
SEARCH_TP = (1, 2)
MODEL, GPU = "Llama-3-8B", "H100-80GB"
PAPER_CLAIM = ("DistServe (OSDI 2024) reports up to 7.4x more requests, or 12.6x tighter "
               "SLOs, than vLLM at >= 90% SLO attainment (OPT-13B/66B/175B on A100-80GB "
               "nodes; chatbot, code completion and summarisation workloads; its Figures 8 "
               "and 9 plot per-GPU rate and SLO scale)")


def build(system: str, cost: Any, pools: tuple[Pool, Pool] | None = None) -> Simulator:
    policies = default_policies()
    if system.startswith("colocated"):
        config = InstanceConfig(mode="vllm_v0") if system == "colocated-v0" else \
            InstanceConfig(enable_chunked_prefill=system.endswith("chunked"))
        policies[DecisionKind.ROUTE] = make_policy("lor")
        return Simulator(cost, config, num_instances=GPUS, policies=policies)
    policies[DecisionKind.ROUTE] = make_policy("least-prefill")
    policies[DecisionKind.PLACE] = make_policy("place-most-free-kv")
    if pools is not None:  # the searched placement
        return Simulator(pools=list(pools), policies=policies)
    prefills = int(system.split("-")[1][0])
    config = InstanceConfig()
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
               rate: float, scale: float, seed: int,
               pools: tuple[Pool, Pool] | None = None) -> float:
    report = build(system, cost, pools).run(workload(prompts, outputs, rate, scale, seed),
                                            seed=seed)
    return float(report.summary["serving/slo_attainment"])


def max_rate(system: str, cost: Any, prompts: np.ndarray, outputs: np.ndarray,
             scale: float, steps: int, seed: int,
             pools: tuple[Pool, Pool] | None = None) -> float:
    """The highest rate (req/s) with attainment >= ATTAINMENT, by bisection (geometric);
    0 if even the lowest rate misses it."""
    low, high = RATE_RANGE
    if attainment(system, cost, prompts, outputs, low, scale, seed, pools) < ATTAINMENT:
        return 0.0
    for _ in range(steps):
        middle = (low * high) ** 0.5
        if attainment(system, cost, prompts, outputs, middle, scale, seed, pools) >= \
                ATTAINMENT:
            low = middle
        else:
            high = middle
    return low


def searched(prompts: np.ndarray, outputs: np.ndarray, scale: float, steps: int,
             seed: int) -> Any:
    """DistServe's placement search at this SLO scale (agents/heuristics/distserve.py)."""
    return search_placement(MODEL, GPU, GPUS, prompts, outputs, BASE_TTFT_S * scale,
                            BASE_TPOT_S * scale, attainment=ATTAINMENT, tp_degrees=SEARCH_TP,
                            rate_range=(RATE_RANGE[0] / GPUS, RATE_RANGE[1] / GPUS),
                            bisect_steps=steps, seed=seed)


def plot(path: Path, rows: list[dict[str, Any]], caption: str) -> None:
    """Goodput per GPU vs SLO scale (tighter to the right), one line per system."""
    from servegym.agents.plots import add_caption, plt, save_png

    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    scales = [row["slo_scale"] for row in rows]
    styles = {"colocated-chunked": ("C0", "o", "-"), "colocated-nochunk": ("C1", "s", "--"),
              "colocated-v0": ("C7", "D", "--"), "disagg-1P3D": ("C2", "v", ":"),
              "disagg-2P2D": ("C3", "^", ":"),
              "disagg-3P1D": ("C4", "<", ":"), "distserve-search": ("C5", "*", "-")}
    for system in SYSTEMS:
        colour, marker, line = styles[system]
        axes.plot(scales, [row[system] for row in rows], color=colour, marker=marker,
                  linestyle=line, label=system)
    axes.set_xscale("log")
    axes.set_xticks(scales, [f"{s:g}" for s in scales])
    axes.minorticks_off()
    axes.invert_xaxis()
    axes.set_xlabel("SLO scale (TTFT 0.5 s and TPOT 0.05 s times this; tighter to the right)")
    axes.set_ylabel("goodput per GPU (req/s at 90% SLO attainment)")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    add_caption(figure, caption)
    save_png(figure, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--bisect", type=int, default=8)
    parser.add_argument("--search-bisect", type=int, default=6,
                        help="bisection steps per candidate inside the placement search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scales", default=",".join(f"{x:g}" for x in SCALES),
                        help="comma-separated SLO scales, loosest first")
    parser.add_argument("--name", default="distserve")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    if args.requests < 50 or args.bisect < 1 or args.search_bisect < 1:
        raise SystemExit("--requests must be >= 50, --bisect and --search-bisect >= 1")
    try:
        scales = [float(x) for x in args.scales.split(",")]
    except ValueError:
        raise SystemExit(f"--scales must be comma-separated numbers, got {args.scales!r}") \
            from None
    if not scales or min(scales) <= 0:
        raise SystemExit(f"--scales must be positive numbers, got {args.scales!r}")
    paths, existing = result_paths(args.out, args.name)
    png = Path(args.out) / f"{args.name}.png"
    if png.exists():
        existing.append(str(png))
    if existing:
        raise SystemExit(f"{existing} exist; results are never overwritten: pass --name")
    cost = build_cost_model(MODEL, GPU, 1, source="auto")
    trace, _ = load_azure_2023("conv").clip_total_tokens(8192)
    prompts = trace.prompt_len[: args.requests]
    outputs = trace.output_len[: args.requests]
    start = time.perf_counter()
    rows = []
    searches = []
    for scale in scales:
        row: dict[str, Any] = {"slo_scale": scale, "ttft_slo_s": BASE_TTFT_S * scale,
                               "tpot_slo_s": BASE_TPOT_S * scale}
        for system in SYSTEMS[:-1]:
            rate = max_rate(system, cost, prompts, outputs, scale, args.bisect, args.seed)
            row[system] = rate / GPUS
        search = searched(prompts, outputs, scale, args.search_bisect, args.seed)
        chosen = search.best.candidate
        rate = max_rate("distserve-search", cost, prompts, outputs, scale, args.bisect,
                        args.seed, search.pools)
        row["distserve-search"] = rate / chosen.gpus
        row["searched_placement"] = chosen.label
        row["searched_gpus"] = chosen.gpus
        searches.append({"slo_scale": scale, "chosen": chosen.label,
                         "candidates": search.table(), "skipped": search.skipped})
        print(json.dumps(row), flush=True)
        rows.append(row)
    wall = time.perf_counter() - start
    command = "python experiments/distserve.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    header = ("| SLO scale | TTFT / TPOT SLO (s) | " + " | ".join(SYSTEMS) +
              " | searched placement | " + " | ".join(f"search / {s}" for s in COLOCATED)
              + " | search / best fixed |")
    lines = [header, "|" + "---|" * (len(SYSTEMS) + 3 + len(COLOCATED) + 1)]
    for row in rows:
        best_fixed = max(row[s] for s in FIXED)
        ratios = [f"{row['distserve-search'] / row[s]:.2f}x" if row[s] > 0 else "inf"
                  for s in COLOCATED]
        ratios.append(f"{row['distserve-search'] / best_fixed:.2f}x" if best_fixed > 0
                      else "inf")
        lines.append(f"| {row['slo_scale']} | {row['ttft_slo_s']:.3g} / {row['tpot_slo_s']:.3g} | "
                     + " | ".join(f"{row[s]:.2f}" for s in SYSTEMS) + " | "
                     + f"{row['searched_placement']} | " + " | ".join(ratios) + " |")
    search_lines = ["| SLO scale | " + " | ".join(
        c["placement"] for c in searches[0]["candidates"]) + " | chosen |",
        "|" + "---|" * (len(searches[0]["candidates"]) + 2)]
    for entry in searches:
        search_lines.append(f"| {entry['slo_scale']} | " + " | ".join(
            f"{c['goodput_per_gpu']:.2f}" for c in entry["candidates"])
            + f" | {entry['chosen']} |")
    setting = (f"{MODEL}, {GPUS} x {GPU} ({cost.source} costs), Azure 2023 conversation "
               f"lengths (first {args.requests} rows), Poisson arrivals (seed {args.seed})")
    caption = (f"{setting}. Goodput per GPU: the highest rate with >= {ATTAINMENT:.0%} of "
               "requests meeting both SLOs, divided by the system's GPUs. "
               "distserve-search: the placement DistServe's search picks per scale "
               f"(prefill:decode ratio and TP in {SEARCH_TP}). Paper: {PAPER_CLAIM}. "
               f"Command: {command}")
    text = (f"# DistServe reproduction: per-GPU goodput vs SLO scale ({stamp})\n\n"
            f"Command: `{command}`\n\n"
            f"{setting}. Per-GPU goodput = the highest rate (req/s, {args.bisect}-step "
            f"geometric bisection in {RATE_RANGE}) with >= {ATTAINMENT:.0%} of requests "
            f"meeting both SLOs, / the system's GPUs ({GPUS}, or fewer for a searched "
            f"placement). SLOs: TTFT {BASE_TTFT_S} s and TPOT {BASE_TPOT_S} s times the "
            "scale. Colocated: vLLM v1 with and without chunked prefill, and vLLM v0 "
            "(prefill-only iterations), TP 1 x 4, least-outstanding routing. "
            "Disaggregated: least-prefill routing, most-free-KV placement; fixed "
            "prefill:decode ratios at TP 1, and DistServe's placement search "
            "(agents/heuristics/distserve.py: every ratio and per-pool TP in "
            f"{SEARCH_TP} within {GPUS} GPUs, {args.search_bisect}-step bisection of the "
            "per-GPU rate per candidate; the chosen placement is then measured with the "
            f"same bisection as the other systems). Wall time {wall:.0f} s.\n\n"
            "![goodput per GPU vs SLO scale](" + png.name + ")\n\n"
            + "\n".join(lines) + "\n\n"
            "Every candidate of the search (goodput per GPU, req/s, at the search's "
            "coarser bisection):\n\n" + "\n".join(search_lines) + "\n\n"
            f"Paper: {PAPER_CLAIM}.\n")
    plot(png, rows, caption)
    atomic_write(paths[0], lambda h: h.write(text))
    atomic_write(paths[1], lambda h: json.dump({"created": stamp, "command": command,
                                                "rows": rows, "searches": searches,
                                                "wall_s": wall}, h, indent=2))
    print(text)


if __name__ == "__main__":
    main()
