"""Where the simulator's time goes: cProfile of one bench_sim case, top functions by self time.

    python experiments/profile_sim.py --case a --requests 10000
    python experiments/profile_sim.py --case f --requests 3000   # sessions, tiers, retention

Cases a, b, c and the closed-loop sessions cases e (prefix caching) and f (prefix caching,
a 4000-block GPU cache over a 16000-block host tier, RETAIN by retain-continuum), set up
as experiments/bench_sim.py sets them up. Besides the top functions by self time, a table
of self time per source module (which file the time is spent in).

Writes `results/profile_sim_<case>.md` (the latest run; earlier runs are kept under
`results/history/`). Profiling slows Python down about 2x, calls more than loops; read the
shares, not the seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from datetime import UTC, datetime
from pathlib import Path

import bench_sim

from servegym.agents.heuristics import make_policy
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.metrics import atomic_write
from servegym.envs.core.simulator import Simulator
from servegym.envs.workloads.workload import Workload

ROOT = Path(__file__).resolve().parents[1]

def sessions_case(case: str, requests: int) -> tuple[Simulator, Workload]:
    """bench_sim case (e) or (f): closed-loop sessions on 4 instances (bench_sim.run_case)."""
    cost, config = bench_sim.h100_setting()
    rate = 0.9 * bench_sim.saturation_rate(cost, config, 2000) * 4
    workload = bench_sim.sessions_workload(requests, rate, bench_sim.SEED)
    if case == "e":
        config = InstanceConfig(mode="vllm_v1", max_num_seqs=256, max_num_batched_tokens=8192,
                                enable_prefix_caching=True)
        return Simulator(cost, config, num_instances=4), workload
    config = InstanceConfig(mode="vllm_v1", max_num_seqs=256, max_num_batched_tokens=8192,
                            enable_prefix_caching=True, num_kv_blocks=4000,
                            kv_tiers=({"name": "host", "capacity_blocks": 16000,
                                       "bandwidth_gb_s": 25.0, "latency_s": 1e-5},))
    return Simulator(cost, config, num_instances=4,
                     retention=make_policy("retain-continuum")), workload


def profile_case(case: str, requests: int, top: int) -> str:
    if case == "a":
        cost, config = bench_sim.vidur_setting()
        workload, instances = bench_sim.poisson_workload(requests, 1.0, 4096, bench_sim.SEED), 1
        sim = Simulator(cost, config, num_instances=instances)
    elif case in ("e", "f"):
        sim, workload = sessions_case(case, requests)
    else:
        cost, config = bench_sim.h100_setting()
        instances = 1 if case == "b" else 4
        rate = 0.9 * bench_sim.saturation_rate(cost, config, 2000) * instances
        workload = bench_sim.poisson_workload(requests, rate, 8192, bench_sim.SEED)
        sim = Simulator(cost, config, num_instances=instances)
    profiler = cProfile.Profile()
    profiler.enable()
    sim.run(workload, seed=bench_sim.SEED)
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = ["| function | calls | self s | self share | cumulative s |", "|---|---|---|---|---|"]
    for (filename, line, name), (_, calls, self_time, cumulative, _) in rows:
        where = f"{Path(filename).name}:{line}({name})"
        lines.append(f"| {where} | {calls:,} | {self_time:.3f} | {self_time / total:.1%} "
                     f"| {cumulative:.3f} |")
    modules: dict[str, float] = {}
    for (filename, _, name), (_, _, self_time, _, _) in stats.stats.items():
        where = Path(filename).name if filename.endswith(".py") else f"builtins ({name})"
        modules[where] = modules.get(where, 0.0) + self_time
    lines += ["", "| module | self s | self share |", "|---|---|---|"]
    for where, self_time in sorted(modules.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"| {where} | {self_time:.3f} | {self_time / total:.1%} |")
    return (f"{len(workload)} requests; total profiled time {total:.2f} s\n\n"
            + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="a", choices=["a", "b", "c", "e", "f"])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    table = profile_case(args.case, args.requests, args.top)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = (f"# Profile of bench_sim case {args.case}, {args.requests} requests ({stamp})\n\n"
            f"{table}\n")
    print(text)
    out = Path(args.out)
    atomic_write(out / "history" / f"profile_sim_{args.case}_{stamp}.md", lambda h: h.write(text))
    atomic_write(out / f"profile_sim_{args.case}.md", lambda h: h.write(text), overwrite=True)


if __name__ == "__main__":
    main()
