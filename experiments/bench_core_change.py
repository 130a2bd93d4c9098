"""Old and new core side by side: simulator and env speed of two commits, in one run.

    python experiments/bench_core_change.py                      # c26b387 vs the work tree
    python experiments/bench_core_change.py --before fdd3302 --rounds 5

Each commit in `--before` is checked out into a temporary git worktree; every measurement
runs in a fresh subprocess on one core (`taskset -c 0`) with that tree first on
`PYTHONPATH`, alternating old and new for `--rounds` rounds so drifting machine load hits
both alike. Measured (CPU time of the loop only; workloads, costs and seeds identical):

* sim: Llama-3-8B on H100 (roofline), vllm_v1, 8192-token budget, Azure conversation
  lengths with Poisson arrivals at 28 req/s (about 90% of one instance's saturation),
  20,000 requests: simulated requests per CPU second, and the child's peak RSS.
* memory of that sim case, where a peak RSS difference comes from: the RSS once the
  modules are imported (before any workload), the peak RSS of the run, and the peak of
  the run's Python allocations by `tracemalloc` (a separate child per round, since
  tracing slows it; maxima over rounds).
* env: `servegym/Admission-v0` and `servegym/Serving-v0` with the same explicit arguments
  in both trees (rate 24 and 30 req/s, 1000-request episodes, goodput reward with
  `ttft_credit` 0.5, 16 slots: the ids' defaults changed between the trees), uniformly
  random valid actions drawn up front, 20,000 steps: env steps per CPU second.

The table gives the median of each side and new / old. The default `--before` is the
commit before the core redesign (issue 13: protocol module, pools, typed events); its
observation layout is already the current one, so the env ratio isolates the core.
Writes `results/bench_core_change.md` and `.json` (and a copy under `results/history/`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from commit_compare import TREE_FINDER, remove_worktree, run_child, worktree

from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "c26b387"

CHILD_ARGS = r"""
import importlib, json, pathlib, resource, sys, time
kind, pkg, tree = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
# pkg: the tree's module prefix (servegym.envs or envs: before 0.2 the top-level `envs`,
# imported from the tree itself, first on PYTHONPATH)
"""
CHILD = CHILD_ARGS + TREE_FINDER + r"""
if pkg.startswith("servegym"):
    install_tree_finder()
import numpy as np
def load(module, name):
    return getattr(importlib.import_module(f"{pkg}.{module}"), name)
extra = {}
if kind in ("sim", "sim-traced"):
    InstanceConfig = load("core.instance", "InstanceConfig")
    Simulator = load("core.simulator", "Simulator")
    build_cost_model = load("costs", "build_cost_model")
    load_azure_2023 = load("workloads.azure", "load_azure_2023")
    Workload = load("workloads.workload", "Workload")
    extra["imports_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trace, _ = load_azure_2023("conv").clip_total_tokens(8192)
    n = 20_000
    index = np.arange(n) % len(trace)
    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(1.0 / 28.0, n))
    workload = Workload.from_lengths(arrivals, trace.prompt_len[index], trace.output_len[index])
    cost = build_cost_model("Llama-3-8B", "H100-80GB", 1, source="roofline")
    sim = Simulator(cost, InstanceConfig(mode="vllm_v1", max_num_batched_tokens=8192))
    if kind == "sim-traced":  # Python allocations only; slow, so not a speed sample
        import tracemalloc
        tracemalloc.start()
    started = time.process_time()
    sim.run(workload, seed=0)
    value = n / (time.process_time() - started)
    if kind == "sim-traced":
        extra["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
else:
    import gymnasium as gym
    importlib.import_module(pkg.split(".")[0])  # registers the ids
    rate = {"servegym/Admission-v0": 24.0, "servegym/Serving-v0": 30.0}[kind]
    # the pair both trees' tasks ran on before Admission-v0 moved to a measured one
    env = gym.make(kind, rate=rate, episode_requests=1000, reward="goodput", num_slots=16,
                   reward_options={"ttft_credit": 0.5}, model="Llama-3-8B", gpu="H100-80GB")
    steps = 20_000
    uniforms = np.random.default_rng(0).random(steps).tolist()
    _, info = env.reset(seed=0)
    started = time.process_time()
    for u in uniforms:
        valid = np.flatnonzero(info["action_mask"])
        _, _, terminated, truncated, info = env.step(int(valid[int(u * valid.size)]))
        if terminated or truncated:
            _, info = env.reset()
    value = steps / (time.process_time() - started)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
source = importlib.import_module(f"{pkg}.core.simulator").__file__
if not pathlib.Path(source).resolve().is_relative_to(tree.resolve()):
    raise SystemExit(f"measured {source}, not the tree {tree}")
print(json.dumps({"value": value, "peak_rss_mb": peak, **extra}))
"""

MEASURES = (("sim", "sim req/s (H100 v1, 20k requests)"),
            ("servegym/Admission-v0", "env steps/s, Admission-v0"),
            ("servegym/Serving-v0", "env steps/s, Serving-v0"))


def module_prefix(tree: Path) -> str:
    """How `tree` names its env package: `servegym.envs` since 0.2 (src/servegym), before
    that the top-level `envs` (imported from the tree itself, first on PYTHONPATH)."""
    return "servegym.envs" if (tree / "src" / "servegym").is_dir() else "envs"


def measure(tree: Path, kind: str) -> dict[str, float]:
    return run_child(CHILD, [kind, module_prefix(tree), str(tree)], tree,
                     env={"PYTHONPATH": str(tree)})




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        old = worktree(args.before, Path(scratch) / "before")
        try:
            for kind, label in MEASURES:
                samples: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
                for _ in range(args.rounds):
                    samples["old"].append(measure(old, kind))
                    samples["new"].append(measure(ROOT, kind))
                median = {side: statistics.median(s["value"] for s in runs)
                          for side, runs in samples.items()}
                peak = {side: max(s["peak_rss_mb"] for s in runs)
                        for side, runs in samples.items()}
                rows.append({"measure": label, "old": median["old"], "new": median["new"],
                             "ratio": median["new"] / median["old"],
                             "old_peak_rss_mb": peak["old"], "new_peak_rss_mb": peak["new"],
                             "old_all": [s["value"] for s in samples["old"]],
                             "new_all": [s["value"] for s in samples["new"]]})
                print(f"{label}: old {median['old']:,.0f}, new {median['new']:,.0f}, "
                      f"ratio {rows[-1]['ratio']:.3f}", flush=True)
            memory = {"old": [measure(old, "sim-traced") for _ in range(args.rounds)],
                      "new": [measure(ROOT, "sim-traced") for _ in range(args.rounds)]}
        finally:
            remove_worktree(old)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    lines = ["| measure | old (median) | new (median) | new / old | peak RSS old / new (MB) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['measure']} | {r['old']:,.0f} | {r['new']:,.0f} | "
                     f"{r['ratio']:.3f} | {r['old_peak_rss_mb']:.1f} / "
                     f"{r['new_peak_rss_mb']:.1f} |")
    speed_rows = {r["measure"]: r for r in rows}
    sim_row = speed_rows[MEASURES[0][1]]
    memory_rows = [
        ("RSS once imported", max(m["imports_rss_mb"] for m in memory["old"]),
         max(m["imports_rss_mb"] for m in memory["new"])),
        ("peak RSS of the sim run", sim_row["old_peak_rss_mb"], sim_row["new_peak_rss_mb"]),
        ("peak Python allocations of the run (tracemalloc)",
         max(m["traced_peak_mb"] for m in memory["old"]),
         max(m["traced_peak_mb"] for m in memory["new"])),
    ]
    lines += ["", "Memory of the sim case (MB; maxima over rounds):", "",
              "| measure | old | new | new - old |", "|---|---|---|---|"]
    lines += [f"| {name} | {o:.1f} | {n:.1f} | {n - o:+.1f} |" for name, o, n in memory_rows]
    table = "\n".join(lines)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python experiments/bench_core_change.py " + " ".join(sys.argv[1:])
    text = (f"# Core change, side by side ({stamp})\n\nCommand: `{command.strip()}`\n\n"
            f"Old: `{args.before}`; new: the work tree at `{head}`. {args.rounds} alternating "
            "rounds, each measurement a fresh process on one core, CPU time.\n\n"
            f"{table}\n")
    print(table)
    payload = {"created": stamp, "before": args.before, "after": head, "rows": rows,
               "memory": [{"measure": name, "old_mb": o, "new_mb": n}
                          for name, o, n in memory_rows]}
    out = Path(args.out)
    atomic_write(out / "history" / f"bench_core_change_{stamp}.md", lambda h: h.write(text))
    atomic_write(out / "bench_core_change.md", lambda h: h.write(text), overwrite=True)
    atomic_write(out / "bench_core_change.json", lambda h: json.dump(payload, h, indent=2),
                 overwrite=True)


if __name__ == "__main__":
    main()
