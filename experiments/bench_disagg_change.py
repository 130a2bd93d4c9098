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
  instances' saturation) with `--requests` requests, and any other `--cases` (colocated
  a, b, c: a at 10,000 and b at 20,000 requests as in bench_sim): simulated requests per
  CPU second of the loop, and the process's peak RSS;
* equality: a digest per run (the report's summary and counters, every request's status,
  instance and token times, every instance's KV samples, token gaps, busy time and
  iteration count; token timestamps where recorded) of disaggregated runs at 300 to 3000
  requests (case (d)'s setting, overloaded ones with least-running and first-fit
  placement, debug checks on some, token times on one) and colocated ones (4 instances,
  1 instance with token times, case (a)'s Vidur setting) and live-migration ones (4
  instances with migrate-balance, -defrag, -priority-headroom on Migration-v0's KV-bound
  setting written out, debug checks and token times on some, and case (g)'s Poisson
  load; every migration's record besides): the same digests in both trees mean the
  change moved no number. Cases g and h read TASKS["servegym/Migration-v0"] of each tree
  (bench_sim): compare commits with the same task setting.

Writes `results/<--name>.md` and `.json` (default bench_disagg_change; an existing file is
not overwritten) and a copy under `results/history/`.

    python experiments/bench_disagg_change.py --before 69603e2 --cases d,a,b,c \\
        --requests 40000 --name bench_disagg_lazy
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from commit_compare import TREE_FINDER, remove_worktree, run_child, short, worktree

from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "9c9792d"  # before the hand-off fast paths in envs/core/disagg.py
# Requests per timed case other than --requests (bench_sim's CASES sizes).
CASE_REQUESTS = {"a": 10_000, "b": 20_000}

CHILD_ARGS = r"""
import hashlib, json, pathlib, resource, sys, time, warnings
warnings.simplefilter("ignore")
kind, requests, tree = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
"""
CHILD = CHILD_ARGS + TREE_FINDER + r"""
install_tree_finder()
import numpy as np
bench_sim = import_tree_script("bench_sim")
def run_digest(sim, report, token_times, extra=None):
    # summary and counters, `extra` (a migration record) if given, every request's
    # timeline, every instance's KV samples and token gaps
    digest = hashlib.sha256()
    digest.update(repr(sorted(report.summary.items())).encode())
    digest.update(repr(sorted(report.counters.items())).encode())
    if extra is not None:
        digest.update(repr(extra).encode())
    for r in sim.requests:
        digest.update(repr((r.rid, r.status, r.instance, r.first_token_time,
                            r.last_token_time, r.num_generated,
                            r.token_times if token_times else None)).encode())
    for instance in sim.instances:
        gaps = instance.gaps
        digest.update(repr((list(instance.kv_times), list(instance.kv_used),
                            list(gaps.run_first), list(gaps.run_last),
                            list(gaps.run_count), list(gaps.run_weight),
                            list(gaps.singles), instance.busy_time,
                            instance.num_iterations)).encode())
    return digest.hexdigest()[:16]
from servegym.agents.heuristics import make_policy
from servegym.envs.core import disagg
from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.simulator import Simulator
from servegym.envs.protocol import DecisionKind
if not pathlib.Path(disagg.__file__).resolve().is_relative_to(tree.resolve()):
    raise SystemExit(f"measured {disagg.__file__}, not the tree {tree}")
if kind.startswith("speed"):
    row = bench_sim.run_case(kind.split(":")[1], requests)
    print(json.dumps({"value": row["requests_per_s"], "peak_rss_mb": row["peak_rss_mb"]}))
else:
    cost, config = bench_sim.h100_setting()
    digests = {}
    # (requests, rate, PLACE policy or None; None = default; "mixed:k" = k colocated
    # instances, round-robin; "vidur" = case (a)'s setting), debug checks, token times
    runs = ((300, 32.5, None, True, False), (3000, 32.5, None, False, False),
            (2000, 60.0, "place-least-running", False, False),
            (300, 60.0, "place-first-fit", True, False), (600, 40.0, None, False, True),
            (300, 100.0, "mixed:4", True, False), (3000, 100.0, "mixed:4", False, False),
            (2000, 30.0, "mixed:1", False, True), (1000, 1.0, "vidur", False, False))
    for n, rate, place, debug, token_times in runs:
        rng = np.random.default_rng(1)
        setting = (cost, config) if place != "vidur" else bench_sim.vidur_setting()
        prompts, outputs = bench_sim.azure_conv_lengths(n, 8192 if place != "vidur" else 4096)
        workload = bench_sim.Workload.from_lengths(
            np.cumsum(rng.exponential(1 / rate, n)), prompts, outputs, ttft_slo=0.5,
            tpot_slo=0.05)
        policies = default_policies()
        if place and place.startswith("place-"):
            policies[DecisionKind.PLACE] = make_policy(place)
        if place is None or place.startswith("place-"):
            pools = [Pool("p", config, cost, 2, "prefill"), Pool("d", config, cost, 2, "decode")]
        else:
            count = int(place.split(":")[1]) if ":" in place else 1
            pools = [Pool("m", setting[1], setting[0], count)]
        sim = Simulator(pools=pools, policies=policies, debug_checks=debug,
                        record_token_times=token_times)
        report = sim.run(workload, seed=0)
        digests[f"{n}/{rate:g}/{place or 'place-most-free-kv'}"] = run_digest(
            sim, report, token_times)
    # Live migration (envs/core/migration.py): 4 colocated instances, round-robin, a
    # MIGRATE policy every 0.1 s (up to 2 moves per tick); "kv": Migration-v0's KV-bound
    # setting (1200 blocks, bursty long-tailed load, spec written out here so a retuned
    # task does not move it), "poisson": case (g)'s (case c's load).
    from servegym.envs.workloads import build_workload
    bursty = {"kind": "synthetic", "name": "bursty_long_tail", "duration_s": 3600,
              "arrivals": {"process": "gamma", "rate": 16.0, "cv": 3.0},
              "prompt": {"dist": "lognormal", "mean": 600, "cv": 1.5, "high": 6000},
              "output": {"dist": "lognormal", "mean": 400, "cv": 1.5, "high": 3000}}
    migration_runs = ((1500, "kv", "migrate-balance", False, False),
                      (300, "kv", "migrate-balance", True, False),
                      (800, "kv", "migrate-defrag", False, False),
                      (800, "kv", "migrate-priority-headroom", True, False),
                      (400, "kv", "migrate-balance", False, True),
                      (1500, "poisson", "migrate-balance", False, False))
    for n, load, name, debug, token_times in migration_runs:
        if load == "kv":
            config = bench_sim.InstanceConfig(mode="vllm_v1", max_num_seqs=256,
                                              max_num_batched_tokens=8192, num_kv_blocks=1200)
            workload = build_workload(dict(bursty), rate=16.0, num_requests=n, seed=0)
        else:
            config = bench_sim.h100_setting()[1]
            workload = bench_sim.poisson_workload(n, 100.0, 8192, 0)
        policies = {**default_policies(), DecisionKind.MIGRATE: make_policy(name)}
        sim = Simulator(cost, config, num_instances=4, policies=policies, debug_checks=debug,
                        record_token_times=token_times,
                        migration={"interval_s": 0.1, "max_per_tick": 2})
        report = sim.run(workload, seed=0)
        migration = sim.migration
        moves = (sorted(migration.stats().items()), sorted(migration.aborts.items()),
                 [(m.number, m.request.rid, m.source.index, m.target.index, m.start,
                   m.end, m.outcome, m.copied, m.held, m.stages, m.stage_times)
                  for m in migration.ended])
        digests[f"{n}/{load}/{name}"] = run_digest(sim, report, token_times, moves)
    print(json.dumps({"digest": digests}))
"""


def measure(tree: Path, kind: str, requests: int) -> dict:
    return run_child(CHILD, [kind, str(requests), str(tree)], tree, timeout=600)






def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--cases", default="d",
                        help="bench_sim cases timed, comma-separated (d first: the target)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--name", default="bench_disagg_change",
                        help="results file stem (an existing one is not overwritten)")
    args = parser.parse_args()
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    if args.rounds < 1 or args.requests < 100 or not cases or \
            not set(cases) <= set("abcdefgh"):
        raise SystemExit("--rounds must be >= 1, --requests >= 100, --cases some of "
                         "a,b,c,d,e,f,g,h")
    out = Path(args.out)
    if (out / f"{args.name}.md").exists():
        raise SystemExit(f"{out / args.name}.md exists; results are never overwritten: pass "
                         "a new --name")
    before, after = short(args.before), short(args.after)
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"old": worktree(before, Path(scratch) / "old"),
                 "new": worktree(after, Path(scratch) / "new")}
        try:
            digests = {side: measure(tree, "digest", 0)["digest"] for side, tree in trees.items()}
            samples: dict[str, dict[str, list[dict]]] = {
                case: {"old": [], "new": []} for case in cases}
            for _ in range(args.rounds):
                for case in cases:
                    for side, tree in trees.items():
                        row = measure(tree, f"speed:{case}", CASE_REQUESTS.get(
                            case, args.requests))
                        samples[case][side].append(row)
                        print(case, side, f"{row['value']:,.0f} req/s", flush=True)
        finally:
            for tree in trees.values():
                remove_worktree(tree)
    lines = ["| measure | old | new | new / old |", "|---|---|---|---|"]
    median: dict[str, dict[str, float]] = {}
    for case in cases:
        runs = samples[case]
        median[case] = {side: statistics.median(s["value"] for s in runs[side])
                        for side in runs}
        peak = {side: max(s["peak_rss_mb"] for s in runs[side]) for side in runs}
        count = CASE_REQUESTS.get(case, args.requests)
        lines += [
            f"| case {case} sim req/s ({count:,} requests, median of {args.rounds}) | "
            f"{median[case]['old']:,.0f} | {median[case]['new']:,.0f} | "
            f"{median[case]['new'] / median[case]['old']:.3f} |",
            f"| case {case} every round (req/s) | "
            + ", ".join(f"{s['value']:,.0f}" for s in runs["old"]) + " | "
            + ", ".join(f"{s['value']:,.0f}" for s in runs["new"]) + " | |",
            f"| case {case} peak RSS (MB) | {peak['old']:.0f} | {peak['new']:.0f} | |"]
    equal = digests["old"] == digests["new"]
    for run, old in digests["old"].items():
        new = digests["new"].get(run)
        lines.append(f"| result digest {run} | {old} | {new} | "
                     f"{'equal' if old == new else 'DIFFERENT'} |")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python experiments/bench_disagg_change.py " + " ".join(sys.argv[1:])
    text = (f"# Disaggregated path, side by side ({stamp})\n\nCommand: `{command.strip()}`\n\n"
            f"Old: `{before}`; new: `{after}`. {args.rounds} alternating rounds, each "
            "measurement a fresh process on one core, CPU time of the loop. Result digests: "
            "requests/rate/setting (place-*: 2 prefill + 2 decode instances with that PLACE "
            "policy; mixed:k: k colocated instances; vidur: case a's setting; kv/poisson: 4 "
            "instances with live migration by that MIGRATE policy).\n\n"
            + "\n".join(lines) + "\n")
    print(text)
    payload = {"created": stamp, "before": before, "after": after, "median": median,
               "digests": digests, "equal": equal, "samples": samples,
               "requests": args.requests, "command": command.strip()}
    atomic_write(out / "history" / f"{args.name}_{stamp}.md", lambda h: h.write(text))
    atomic_write(out / f"{args.name}.md", lambda h: h.write(text))
    atomic_write(out / f"{args.name}.json", lambda h: json.dump(payload, h, indent=2))


if __name__ == "__main__":
    main()
