"""Tables and plots of an evaluation (`eval_core.EvalResult`), written atomically.

Files, in the run folder: `runs.csv` (one row per policy x rate x seed x phase, every
`serving/` metric), `goodput.csv`, `summary.md` (setting, goodput table, per-rate tables of
the seed means), `slo_attainment.png`, `ttft_p99.png`, `tbt_p99.png`, `latency_cdf.png`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.core.metrics import atomic_write

IDENTITY = ("policy", "rate", "seed", "phase", "requests", "wall_s")
RATE_TABLES = (
    ("serving/slo_attainment", "SLO attainment (both targets)", 1.0, "{:.3f}"),
    ("serving/ttft_p99", "TTFT p99 (s)", 1.0, "{:.2f}"),
    ("serving/tbt_p99", "TBT p99 (ms)", 1000.0, "{:.0f}"),
    ("serving/e2e_mean", "E2E latency mean (s)", 1.0, "{:.2f}"),
    ("serving/throughput_rps", "throughput (req/s)", 1.0, "{:.2f}"),
)


def seed_means(rows: Sequence[Mapping[str, Any]], metric: str, phase: str = "sweep"
               ) -> dict[str, dict[float, tuple[float, float, float]]]:
    """policy -> rate -> (mean, min, max) of `metric` over seeds, for runs of `phase`."""
    grouped: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        if row["phase"] == phase:
            grouped.setdefault(row["policy"], {}).setdefault(row["rate"], []).append(row[metric])
    return {policy: {rate: (float(np.mean(v)), float(np.min(v)), float(np.max(v)))
                     for rate, v in sorted(by_rate.items())}
            for policy, by_rate in grouped.items()}


def write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    metrics = sorted({key for row in rows for key in row if key.startswith("serving/")})
    header = [*IDENTITY, *metrics]

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(name, "") for name in header])

    return atomic_write(path, write)


def write_goodput_csv(path: Path, goodput: Sequence[Mapping[str, Any]]) -> Path:
    header = ["policy", "goodput_rps", "upper_rps", "target"]

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in goodput:
            writer.writerow([row[name] for name in header])

    return atomic_write(path, write)


def goodput_table(goodput: Sequence[Mapping[str, Any]], reference: str | None) -> str:
    base = next((g["goodput_rps"] for g in goodput if g["policy"] == reference), None)
    lines = ["| policy | goodput (req/s) | bracket (req/s) | vs " + (reference or "-") + " |",
             "|---|---|---|---|"]
    for g in sorted(goodput, key=lambda g: -g["goodput_rps"]):
        upper = "inf" if math.isinf(g["upper_rps"]) else f"{g['upper_rps']:.2f}"
        prefix = ">= " if math.isinf(g["upper_rps"]) else ""
        ratio = f"{g['goodput_rps'] / base:.2f}x" if base else "-"
        lines.append(f"| {g['policy']} | {prefix}{g['goodput_rps']:.2f} | "
                     f"[{g['goodput_rps']:.2f}, {upper}) | {ratio} |")
    return "\n".join(lines)


def rate_table(rows: Sequence[Mapping[str, Any]], metric: str, scale: float, fmt: str,
               policies: Sequence[str], rates: Sequence[float]) -> str:
    means = seed_means(rows, metric)
    lines = ["| policy | " + " | ".join(f"{r:g}" for r in rates) + " |",
             "|---|" + "---|" * len(rates)]
    for policy in policies:
        cells = [fmt.format(scale * means[policy][r][0]) if r in means.get(policy, {}) else "-"
                 for r in rates]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(result: Any, setting: Mapping[str, Any]) -> str:
    s = result.settings
    reference = "fcfs" if "fcfs" in s.policies else s.policies[0]
    parts = [
        f"# Evaluation: {setting.get('title', 'servegym')}",
        "",
        *[f"- {key}: {value}" for key, value in setting.items() if key != "title"],
        f"- seeds: {list(s.seeds)}; requests per run: {s.num_requests or 'all'} "
        f"({s.window} window of the trace, {s.arrivals} arrivals)",
        f"- SLO: TTFT <= {s.ttft_slo} s and TPOT <= {s.tpot_slo} s (requests without targets)",
        f"- saturation (FCFS throughput at 50x overload): {result.saturation_rps:.2f} req/s",
        f"- wall time: {result.wall_s:.0f} s for {len(result.rows)} simulations",
        "",
        f"## Goodput: highest rate with mean SLO attainment >= {s.goodput_target:.0%}",
        "",
        f"Search over rate scaling after the sweep: {s.goodput_iterations} step(s), each "
        "simulating every seed at the bracket's midpoint (or 1.5x its lower end while no "
        "tried rate failed); the bracket is [passes, fails).",
        "",
        goodput_table(result.goodput, reference),
    ]
    tables = list(RATE_TABLES)
    if any(row["serving/slo_attainment_worst_tenant"] != row["serving/slo_attainment"]
           for row in result.rows):
        tables.insert(1, ("serving/slo_attainment_worst_tenant",
                          "SLO attainment of the worst-served tenant", 1.0, "{:.3f}"))
    for metric, title, scale, fmt in tables:
        parts += ["", f"## {title} vs request rate (req/s), mean of {len(s.seeds)} seeds", "",
                  rate_table(result.rows, metric, scale, fmt, s.policies, result.rates)]
    parts += ["", "Plots: slo_attainment.png, ttft_p99.png, tbt_p99.png, latency_cdf.png "
              f"(CDFs at {result.cdf_rate:g} req/s, seed {s.seeds[0]}).", ""]
    return "\n".join(parts)


def write_all(out_dir: Path, result: Any, setting: Mapping[str, Any]) -> list[Path]:
    """Every table and plot of `result` into `out_dir` (refuses to overwrite)."""
    from eval_plots import plot_latency_cdfs, plot_vs_rate

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        write_rows_csv(out_dir / "runs.csv", result.rows),
        write_goodput_csv(out_dir / "goodput.csv", result.goodput),
        atomic_write(out_dir / "summary.md", lambda h: h.write(summary_markdown(result, setting))),
        atomic_write(out_dir / "setting.json", lambda h: json.dump(
            {"setting": dict(setting), "saturation_rps": result.saturation_rps,
             "rates": result.rates, "cdf_rate": result.cdf_rate,
             "goodput": result.goodput}, h, indent=2, default=str)),
    ]
    policies = result.settings.policies
    seeds = result.settings.seeds
    caption = (f"{setting.get('title', '?')} · rates {min(result.rates):g}-"
               f"{max(result.rates):g} req/s · seeds {', '.join(map(str, seeds))}")
    for metric, name, label, scale in (
        ("serving/slo_attainment", "slo_attainment.png", "SLO attainment", 1.0),
        ("serving/ttft_p99", "ttft_p99.png", "TTFT p99 (s)", 1.0),
        ("serving/tbt_p99", "tbt_p99.png", "TBT p99 (ms)", 1000.0),
    ):
        written.append(plot_vs_rate(out_dir / name, seed_means(result.rows, metric), policies,
                                    label, scale, result.settings.goodput_target
                                    if metric == "serving/slo_attainment" else None,
                                    caption=caption, seeds=len(seeds)))
    written.append(plot_latency_cdfs(out_dir / "latency_cdf.png", result.latencies, policies,
                                     result.cdf_rate, caption=caption, seed=seeds[0]))
    return written
