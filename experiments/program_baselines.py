"""Program-aware admission against request-level admission on agentic programs.

Workload: ``conf/workload/agentic_programs.yaml`` (300 synthetic programs, 1,542 LLM
calls: planner, 1-3 parallel calls per middle stage, aggregator, tool steps between;
closed loop, envs/workloads/programs.py) with program starts at ``--rates`` per second,
SLOs TTFT 1 s and TPOT 50 ms on every call. Llama-3-8B on one H100 (roofline), vLLM v1
with chunked prefill and prefix caching, ``max_num_seqs`` from ``--seqs``: each setting is
a (rate, max_num_seqs) pair, loaded enough that admission order matters. Admission
policies (agents/heuristics): the request-level ``fcfs``, ``spf``, ``sjf-oracle`` (true
output lengths: a labelled reference) and the program-level ``program-las`` (Autellix's
least attained program service) and ``critical-path-first``. Metrics per setting, the
mean over ``--seeds`` (the workload's and the simulator's seed): goodput rate, call SLO
attainment, program attainment (every call met its SLOs) and job completion time
p50 / p99 (last call's finish - first call's arrival).

    python experiments/program_baselines.py [--settings 20:256,8:32] [--seeds 0,1]

writes results/program_baselines.md and .json (atomic, never overwriting; the command in
the header).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np

POLICIES = ("fcfs", "spf", "sjf-oracle", "program-las", "critical-path-first")
METRICS = ("goodput_rps", "slo_attainment", "program_attainment", "jct_p50", "jct_p99")


def run(rate: float, seqs: int, policy: str, seed: int) -> dict[str, float]:
    """One simulation; the summary's program and goodput metrics."""
    from servegym.agents.heuristics import make_policy
    from servegym.envs.core.decisions import default_policies
    from servegym.envs.core.instance import InstanceConfig
    from servegym.envs.core.simulator import Simulator
    from servegym.envs.costs import build_cost_model
    from servegym.envs.protocol import DecisionKind
    from servegym.envs.workloads.stats import load_from_overrides

    workload, _ = load_from_overrides([
        "workload=agentic_programs", f"workload.source.arrivals.rate={rate}",
        "workload.ttft_slo=1.0", "workload.tpot_slo=0.05", f"seed={seed}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the roofline fallback warning (reports say so)
        cost = build_cost_model("Llama-3-8B", "H100-80GB", 1)
    policies = default_policies()
    policies[DecisionKind.ADMIT] = make_policy(policy)
    config = InstanceConfig(enable_prefix_caching=True, max_num_seqs=seqs)
    summary = Simulator(cost, config, policies=policies).run(workload, seed=seed).summary
    return {key: summary[f"serving/{key}"] for key in METRICS} | {
        "calls": float(len(workload)), "cost_source": cost.source}


def main(argv: list[str] | None = None) -> int:
    from servegym.envs.core.metrics import atomic_write, result_paths

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="20:256,8:32",
                        help="rate:max_num_seqs pairs (program starts per second)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default="results")
    parser.add_argument("--name", default="program_baselines")
    args = parser.parse_args(argv)
    (md_path, json_path), existing = result_paths(args.out, args.name)
    if existing:
        raise SystemExit(f"{', '.join(existing)} exist; results are never overwritten: pass "
                         "--name")
    settings = [(float(r), int(s)) for r, s in (pair.split(":") for pair in
                                                args.settings.split(","))]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for rate, seqs in settings:
        for policy in POLICIES:
            runs = [run(rate, seqs, policy, seed) for seed in seeds]
            mean = {key: float(np.mean([r[key] for r in runs])) for key in METRICS}
            rows.append({"rate": rate, "max_num_seqs": seqs, "policy": policy, **mean,
                         "calls": runs[0]["calls"], "cost_source": runs[0]["cost_source"],
                         "per_seed": runs})
            print(f"{rate:g}/s seqs {seqs} {policy}: " + ", ".join(
                f"{key} {mean[key]:.3f}" for key in METRICS), flush=True)
    command = "python experiments/program_baselines.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    lines = [
        "# Program-aware admission on agentic programs", "",
        f"Command: `{command.strip()}`", "",
        "conf/workload/agentic_programs.yaml (300 programs, about 1,540 calls per seed), SLOs "
        "TTFT 1 s / TPOT 50 ms per call; Llama-3-8B, one H100 "
        f"({rows[0]['cost_source']}), vLLM v1, prefix caching; mean over seeds {seeds}.", "",
        "| programs/s | max_num_seqs | admission | goodput (req/s) | call attainment "
        "| program attainment | JCT p50 (s) | JCT p99 (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['rate']:g} | {r['max_num_seqs']} | `{r['policy']}` | "
                     f"{r['goodput_rps']:.2f} | {r['slo_attainment']:.3f} | "
                     f"{r['program_attainment']:.3f} | {r['jct_p50']:.1f} | "
                     f"{r['jct_p99']:.1f} |")
    atomic_write(json_path, lambda h: h.write(json.dumps(
        {"command": command, "seeds": seeds, "rows": rows}, indent=1)))
    atomic_write(md_path, lambda h: h.write("\n".join(lines) + "\n"))
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
