"""Where the simulator's time goes: cProfile of one bench_sim case, top functions by self time.

    python experiments/profile_sim.py --case a --requests 10000

Writes `results/profile_sim_<case>.md` (the latest run; earlier runs are kept under
`results/history/`). Profiling slows Python down about 2x; read the shares, not the seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from datetime import UTC, datetime
from pathlib import Path

import bench_sim

from servegym.envs.core.metrics import atomic_write
from servegym.envs.core.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]

def profile_case(case: str, requests: int, top: int) -> str:
    if case == "a":
        cost, config = bench_sim.vidur_setting()
        workload, instances = bench_sim.poisson_workload(requests, 1.0, 4096, bench_sim.SEED), 1
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
    return f"total profiled time {total:.2f} s\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="a", choices=["a", "b", "c"])
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
