"""The closed-loop sessions path with KV tiers and retention, two commits side by side:
speed of bench_sim case (f) and result equality, in one run.

    python experiments/bench_sessions_change.py --before a6e1b84 --after HEAD --rounds 3

Both commits are checked out into temporary git worktrees; every measurement runs in a
fresh process on one core (`taskset -c 0` where available) importing servegym from its
tree (a meta-path finder over the tree's pyproject package-dir, as
experiments/bench_disagg_change.py does), alternating old and new for `--rounds` rounds.
The setting is stated here, not read from either tree's bench_sim.py (the older tree may
lack case f); it is bench_sim case (f): closed-loop sessions (bench_sim.sessions_workload)
on four H100 instances of Llama-3-8B with prefix caching, 4000 GPU KV blocks each above a
16000-block host tier, RETAIN answered by retain-continuum. Measured:

* speed: simulated requests per CPU second of `Simulator.run`, and the process's peak RSS;
* equality: a digest of every request's status, instance, token times and prefix hits,
  the report's summary and counters, at 300 (with debug checks) and `--requests` requests
  for retain-continuum, and 2000 for retain-none and retain-oracle: the same digest in both
  trees means the change moved no number.

Writes `results/bench_sessions_change.md` and `.json` (never overwriting: `--name`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from commit_compare import TREE_FINDER, remove_worktree, run_child, short, worktree

from servegym.envs.core.metrics import atomic_write, result_paths

ROOT = Path(__file__).resolve().parents[1]

CHILD_ARGS = r"""
import hashlib, json, pathlib, resource, sys, time, warnings
warnings.simplefilter("ignore")
kind, requests, tree = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
"""
CHILD = CHILD_ARGS + TREE_FINDER + r"""
install_tree_finder()
bench_sim = import_tree_script("bench_sim")
from servegym.agents.heuristics import make_policy
from servegym.envs.core import retention
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator
if not pathlib.Path(retention.__file__).resolve().is_relative_to(tree.resolve()):
    raise SystemExit(f"measured {retention.__file__}, not the tree {tree}")
cost, base = bench_sim.h100_setting()
rate = 0.9 * bench_sim.saturation_rate(cost, base, 2000) * 4
config = InstanceConfig(mode="vllm_v1", max_num_seqs=256, max_num_batched_tokens=8192,
                        enable_prefix_caching=True, num_kv_blocks=4000,
                        kv_tiers=({"name": "host", "capacity_blocks": 16000,
                                   "bandwidth_gb_s": 25.0, "latency_s": 1e-5},))
def run(n, policy, debug=False):
    workload = bench_sim.sessions_workload(n, rate, bench_sim.SEED)
    sim = Simulator(cost, config, num_instances=4, retention=make_policy(policy),
                    debug_checks=debug)
    cpu = time.process_time()
    report = sim.run(workload, seed=bench_sim.SEED)
    return sim, report, len(workload) / (time.process_time() - cpu)
if kind == "speed":
    _, _, speed = run(requests, "retain-continuum")
    print(json.dumps({"value": speed,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
else:
    digest = hashlib.sha256()
    for n, policy, debug in ((300, "retain-continuum", True), (requests, "retain-continuum", False),
                             (2000, "retain-none", False), (2000, "retain-oracle", False)):
        sim, report, _ = run(n, policy, debug)
        digest.update(repr(sorted(report.summary.items())).encode())
        digest.update(repr(sorted(report.counters.items())).encode())
        for r in sim.requests:
            digest.update(repr((r.rid, r.status, r.instance, r.first_token_time,
                                r.last_token_time, r.num_generated,
                                r.prefix_hit_tokens)).encode())
    print(json.dumps({"digest": digest.hexdigest()[:20]}))
"""


def measure(tree: Path, kind: str, requests: int) -> dict:
    return run_child(CHILD, [kind, str(requests), str(tree)], tree, timeout=900)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--name", default="bench_sessions_change")
    args = parser.parse_args()
    (md_path, json_path), taken = result_paths(Path(args.out), args.name)
    if taken:
        parser.error(f"{', '.join(taken)} exist; results are never overwritten (--name)")
    commits = {"before": short(args.before), "after": short(args.after)}
    with tempfile.TemporaryDirectory(prefix="servegym_sessions_change_") as tmp:
        trees = {label: worktree(commit, Path(tmp) / label)
                 for label, commit in commits.items()}
        try:
            digests = {label: measure(tree, "digest", args.requests)["digest"]
                       for label, tree in trees.items()}
            speeds: dict[str, list[dict]] = {label: [] for label in trees}
            for _ in range(args.rounds):
                for label, tree in trees.items():
                    speeds[label].append(measure(tree, "speed", args.requests))
                    print(label, speeds[label][-1], flush=True)
        finally:
            for tree in trees.values():
                remove_worktree(tree)
    median = {label: statistics.median(r["value"] for r in rows)
              for label, rows in speeds.items()}
    command = "python experiments/bench_sessions_change.py " + " ".join(sys.argv[1:])
    lines = [
        "# Sessions with KV tiers and retention: two commits side by side", "",
        f"Command: `{command.strip()}`", "",
        "Setting: bench_sim case (f), closed-loop sessions on 4 H100 instances of Llama-3-8B "
        "(roofline), prefix caching, 4000 GPU KV blocks over a 16000-block host tier, "
        f"RETAIN by retain-continuum; speed at {args.requests} requests, one core, "
        f"{args.rounds} alternating rounds (simulated requests per CPU second).", "",
        "| commit | sim req/s (median) | rounds | peak RSS (MB) | result digest |",
        "|---|---|---|---|---|",
    ]
    for label, commit in commits.items():
        rounds = ", ".join(f"{r['value']:,.0f}" for r in speeds[label])
        rss = max(r["peak_rss_mb"] for r in speeds[label])
        lines.append(f"| {label} {commit} | {median[label]:,.0f} | {rounds} | {rss:.0f} | "
                     f"{digests[label]} |")
    same = digests["before"] == digests["after"]
    lines += ["", f"Speed ratio after / before: {median['after'] / median['before']:.2f}x; "
              f"results {'identical' if same else 'DIFFERENT'} (digests "
              f"{'equal' if same else 'differ'}).", ""]
    atomic_write(json_path, lambda h: h.write(json.dumps(
        {"command": command, "commits": commits, "digests": digests, "speeds": speeds,
         "median": median}, indent=1)))
    atomic_write(md_path, lambda h: h.write("\n".join(lines) + "\n"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
