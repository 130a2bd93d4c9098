"""The disaggregated path of two commits side by side: speed of bench_sim case (d) and
result equality, in one run.

    python experiments/bench_disagg_change.py                       # 9c9792d vs HEAD
    python experiments/bench_disagg_change.py --before 9c9792d --after HEAD --rounds 3

Both commits are checked out into temporary git worktrees; every measurement runs in a
fresh process on one core (`taskset -c 0`) importing servegym from its tree (a meta-path
finder over the tree's pyproject package-dir, as experiments/bench_core_change.py does),
alternating old and new for `--rounds` rounds. Measured:

* speed: experiments/bench_sim.py case (d) (two prefill and two decode instances of
  Llama-3-8B on H100, roofline costs, Azure conversation lengths, Poisson at 90% of two
  instances' saturation) with `--requests` requests: simulated requests per CPU second of
  the loop, and the process's peak RSS;
* equality: a digest of disaggregated runs (the report's summary and counters, every
  request's status, instance and token times, every instance's KV samples) at 300 and 3000
  requests, case (d)'s setting plus an overloaded one with least-running placement: the
  same digest in both trees means the change moved no number.

Writes `results/bench_disagg_change.md` and `.json` (and copies under `results/history/`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "9c9792d"  # before the hand-off fast paths in envs/core/disagg.py

CHILD = r"""
import hashlib, importlib.abc, importlib.machinery, importlib.util, json, pathlib, resource
import sys, time, tomllib, warnings
warnings.simplefilter("ignore")
kind, requests, tree = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
dirs = tomllib.loads((tree / "pyproject.toml").read_text()).get("tool", {}).get(
    "setuptools", {}).get("package-dir", {})
roots = {name: tree / path for name, path in dirs.items() if name}
class TreeFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in roots:
            return importlib.util.spec_from_file_location(
                fullname, roots[fullname] / "__init__.py",
                submodule_search_locations=[str(roots[fullname])])
        if path is not None and any(fullname.startswith(name + ".") for name in roots):
            return importlib.machinery.PathFinder.find_spec(fullname, path)
        return None
sys.meta_path.insert(0, TreeFinder())
sys.path.insert(0, str(tree / "experiments"))
import numpy as np
import bench_sim
from servegym.agents.heuristics import make_policy
from servegym.envs.core import disagg
from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.simulator import Simulator
from servegym.envs.protocol import DecisionKind
if not pathlib.Path(disagg.__file__).resolve().is_relative_to(tree.resolve()):
    raise SystemExit(f"measured {disagg.__file__}, not the tree {tree}")
if kind == "speed":
    row = bench_sim.run_case("d", requests)
    print(json.dumps({"value": row["requests_per_s"], "peak_rss_mb": row["peak_rss_mb"]}))
else:
    cost, config = bench_sim.h100_setting()
    digest = hashlib.sha256()
    for n, rate, place in ((300, 32.5, None), (3000, 32.5, None),
                           (2000, 60.0, "place-least-running")):
        rng = np.random.default_rng(1)
        prompts, outputs = bench_sim.azure_conv_lengths(n, 8192)
        workload = bench_sim.Workload.from_lengths(
            np.cumsum(rng.exponential(1 / rate, n)), prompts, outputs, ttft_slo=0.5,
            tpot_slo=0.05)
        policies = default_policies()
        if place:
            policies[DecisionKind.PLACE] = make_policy(place)
        sim = Simulator(pools=[Pool("p", config, cost, 2, "prefill"),
                               Pool("d", config, cost, 2, "decode")], policies=policies,
                        debug_checks=n <= 300)
        report = sim.run(workload, seed=0)
        digest.update(repr(sorted(report.summary.items())).encode())
        digest.update(repr(sorted(report.counters.items())).encode())
        for r in sim.requests:
            digest.update(repr((r.rid, r.status, r.instance, r.first_token_time,
                                r.last_token_time, r.num_generated)).encode())
        for instance in sim.instances:
            digest.update(repr((list(instance.kv_times), list(instance.kv_used))).encode())
    print(json.dumps({"digest": digest.hexdigest()[:20]}))
"""


def measure(tree: Path, kind: str, requests: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    done = subprocess.run([*taskset, sys.executable, "-c", CHILD, kind, str(requests),
                           str(tree)], cwd=tree, env=env, capture_output=True, text=True,
                          check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def worktree(commit: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(folder),
                    commit], check=True, capture_output=True)
    return folder


def short(commit: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit],
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 100:
        raise SystemExit("--rounds must be >= 1 and --requests >= 100")
    before, after = short(args.before), short(args.after)
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"old": worktree(before, Path(scratch) / "old"),
                 "new": worktree(after, Path(scratch) / "new")}
        try:
            digests = {side: measure(tree, "digest", 0)["digest"] for side, tree in trees.items()}
            samples: dict[str, list[dict]] = {"old": [], "new": []}
            for _ in range(args.rounds):
                for side, tree in trees.items():
                    samples[side].append(measure(tree, "speed", args.requests))
                    print(side, f"{samples[side][-1]['value']:,.0f} req/s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], capture_output=True)
    median = {side: statistics.median(s["value"] for s in runs) for side, runs in samples.items()}
    peak = {side: max(s["peak_rss_mb"] for s in runs) for side, runs in samples.items()}
    equal = digests["old"] == digests["new"]
    table = "\n".join([
        "| measure | old | new | new / old |", "|---|---|---|---|",
        f"| case d sim req/s ({args.requests:,} requests, median of {args.rounds}) | "
        f"{median['old']:,.0f} | {median['new']:,.0f} | {median['new'] / median['old']:.3f} |",
        "| every round (req/s) | " + ", ".join(f"{s['value']:,.0f}" for s in samples["old"])
        + " | " + ", ".join(f"{s['value']:,.0f}" for s in samples["new"]) + " | |",
        f"| peak RSS (MB) | {peak['old']:.0f} | {peak['new']:.0f} | |",
        f"| result digest (300, 3000, 2000-overload runs) | {digests['old']} | "
        f"{digests['new']} | {'equal' if equal else 'DIFFERENT'} |"])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python experiments/bench_disagg_change.py " + " ".join(sys.argv[1:])
    text = (f"# Disaggregated path, side by side ({stamp})\n\nCommand: `{command.strip()}`\n\n"
            f"Old: `{before}`; new: `{after}`. {args.rounds} alternating rounds, each "
            "measurement a fresh process on one core, CPU time of the loop.\n\n"
            f"{table}\n")
    print(text)
    payload = {"created": stamp, "before": before, "after": after, "median": median,
               "peak_rss_mb": peak, "digests": digests, "equal": equal,
               "samples": samples, "requests": args.requests}
    out = Path(args.out)
    atomic_write(out / "history" / f"bench_disagg_change_{stamp}.md", lambda h: h.write(text))
    atomic_write(out / "bench_disagg_change.md", lambda h: h.write(text), overwrite=True)
    atomic_write(out / "bench_disagg_change.json", lambda h: json.dump(payload, h, indent=2),
                 overwrite=True)


if __name__ == "__main__":
    main()
