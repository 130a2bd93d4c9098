"""Env speed: steps/s with uniformly random valid actions, per registered id, one core.

"Moderate load" is half the saturation throughput of the env's cluster (measured here
with the default policies and every request waiting at time 0, as in bench_sim.py); the
registered defaults (near capacity) are measured too. Resets are included in the time.

    python experiments/bench_env.py            # writes results/bench_env.{json,md}
    python experiments/bench_env.py --steps 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import gymnasium as gym
import numpy as np

import servegym  # noqa: F401  (registers the ids)
from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]

IDS = ("servegym/Admission-v0", "servegym/Preemption-v0", "servegym/Routing-v0",
       "servegym/Serving-v0")
TARGET = {"servegym/Admission-v0": 25_000}


def saturation_rate(env_id: str) -> float:
    """Requests/s one cluster of this env serves when all requests wait from time 0."""
    import bench_sim

    from servegym.envs.workloads import Workload

    env = gym.make(env_id).unwrapped
    prompts, outputs = bench_sim.azure_conv_lengths(2000, 8192)
    burst = Workload.from_lengths(np.zeros(prompts.size), prompts, outputs)
    sim = env.sim
    from servegym.envs.core.decisions import default_policies
    from servegym.envs.core.simulator import Simulator

    full = Simulator(sim.cost, sim.config, num_instances=sim.num_instances,
                     policies=default_policies())
    return full.run(burst).summary["serving/throughput_rps"]


def measure(env_id: str, rate: float | None, steps: int, repeats: int = 3) -> dict:
    """Median over `repeats` timed runs (the machine is shared and noisy)."""
    runs = [measure_once(env_id, rate, steps, seed) for seed in range(repeats)]
    runs.sort(key=lambda row: row["steps_per_s"])
    median = runs[len(runs) // 2]
    median["steps_per_s_all"] = [row["steps_per_s"] for row in runs]
    return median


def measure_once(env_id: str, rate: float | None, steps: int, seed: int) -> dict:
    kwargs = {} if rate is None else {"rate": rate}
    env = gym.make(env_id, **kwargs)
    # The random policy's draws are made up front so the timing is the env's, not the policy's.
    uniforms = np.random.default_rng(seed).random(steps).tolist()
    _, info = env.reset(seed=seed)
    episodes = 0
    started = time.process_time()
    for uniform in uniforms:
        valid = np.flatnonzero(info["action_mask"])
        _, _, terminated, truncated, info = env.step(int(valid[int(uniform * valid.size)]))
        if terminated or truncated:
            episodes += 1
            _, info = env.reset()
    elapsed = time.process_time() - started
    return {"id": env_id, "rate_rps": env.unwrapped.rate, "steps": steps,
            "episodes": episodes, "cpu_s": elapsed, "steps_per_s": steps / elapsed,
            "target_steps_per_s": TARGET.get(env_id)}


def child(env_id: str, steps: int) -> list[dict]:
    moderate = 0.5 * saturation_rate(env_id)
    try:
        rows = [measure(env_id, moderate, steps) | {"load": "moderate (50% of saturation)"}]
    except RuntimeError as error:  # e.g. no preemption at all at this load
        rows = [{"id": env_id, "rate_rps": moderate, "steps": 0, "episodes": 0, "cpu_s": 0.0,
                 "steps_per_s": float("nan"), "target_steps_per_s": TARGET.get(env_id),
                 "load": f"moderate: not measurable ({error})"}]
    return rows + [measure(env_id, None, steps) | {"load": "registered default"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    rows = []
    for env_id in IDS:
        command = ["taskset", "-c", "0", sys.executable, __file__, "--child", env_id,
                   "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    lines = ["| id | load | rate (req/s) | steps/s (median of 3) | all runs | target | episodes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = f"{r['target_steps_per_s']:,}" if r["target_steps_per_s"] else ""
        runs = ", ".join(f"{v:,.0f}" for v in r.get("steps_per_s_all", []))
        lines.append(f"| {r['id']} | {r['load']} | {r['rate_rps']:.1f} "
                     f"| {r['steps_per_s']:,.0f} | {runs} | {target} | {r['episodes']} |")
    table = "\n".join(lines)
    print(table)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"created": stamp, "steps": args.steps, "rows": rows}
    out = Path(args.out)
    atomic_write(out / "history" / f"bench_env_{stamp}.json",
                 lambda h: json.dump(payload, h, indent=2))
    atomic_write(out / "bench_env.json", lambda h: json.dump(payload, h, indent=2),
                 overwrite=True)
    atomic_write(out / "bench_env.md", lambda h: h.write(
        f"# Env speed ({stamp})\n\nRandom valid actions (drawn up front), envs made with "
        f"`gym.make` (default wrappers), one core, CPU time, resets included, {args.steps} "
        f"steps per run, median of 3 runs with seeds 0-2.\n\n{table}\n"), overwrite=True)


if __name__ == "__main__":
    main()
