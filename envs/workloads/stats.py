"""Workload statistics, and a command line that prints them for any workload config.

    python -m servegym.envs.workloads.stats workload=azure_conv
    python -m servegym.envs.workloads.stats workload=mooncake_conv workload.source.arrivals=batch
    python -m servegym.envs.workloads.stats workload=sharegpt workload.split=test --json

The arguments are Hydra overrides of ``conf/simulate.yaml`` (so ``seed`` and the cluster's
block size resolve as in a simulation). Definitions, as in the traces' README: span = last
minus first arrival; mean rate = rows / span; peak 1-minute rate = the most arrivals in a
60-s bin (bins start at the first arrival) / 60; CV of inter-arrival times = std / mean of
the gaps between consecutive arrivals (population std); length percentiles use numpy's
linear interpolation. ``prefix_hit_ratio`` (workloads with prefix hashes) is the share of
KV blocks whose hash appeared earlier: the hit ratio of an infinite prefix cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.workloads.prefix import BlockChains
from servegym.envs.workloads.workload import Workload

__all__ = ["format_stats", "main", "workload_stats"]

_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def workload_stats(workload: Workload, prefix: bool = True) -> dict[str, Any]:
    """The statistics of the module docstring (NaN where undefined, e.g. one request)."""
    times = workload.arrival_time
    n = len(workload)
    span = float(times[-1] - times[0]) if n else 0.0
    gaps = np.diff(times)
    peak = 0
    if n:
        bins = ((times - times[0]) // 60.0).astype(np.int64)
        peak = int(np.bincount(bins).max())
    stats: dict[str, Any] = {
        "name": workload.name,
        "rows": n,
        "tenants": len(workload.tenant_names),
        "span_s": span,
        "mean_rate": n / span if span > 0 else float("nan"),
        "peak_1min_count": peak,
        "peak_1min_rate": peak / 60.0,
        "iat_cv": float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else float(
            "nan"),
    }
    for label, values in (("input", workload.prompt_len), ("output", workload.output_len)):
        stats.update(_lengths(label, values))
    if prefix and workload.prefix_hashes is not None:
        stats["prefix_hit_ratio"] = _hit_ratio(workload)
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """A two-column markdown table of :func:`workload_stats`."""
    rows = [
        ("rows", f"{stats['rows']:,}"),
        ("tenants", f"{stats['tenants']:,}"),
        ("span (s)", f"{stats['span_s']:,.1f}"),
        ("mean arrival rate (req/s)", f"{stats['mean_rate']:.3f}"),
        ("peak 1-min rate (req/s)", f"{stats['peak_1min_rate']:.2f} "
                                    f"({stats['peak_1min_count']:,} in one minute)"),
        ("CV of inter-arrival times", f"{stats['iat_cv']:.2f}"),
        ("input tokens mean / p50 / p99", _triple(stats, "input")),
        ("output tokens mean / p50 / p99", _triple(stats, "output")),
    ]
    if "prefix_hit_ratio" in stats:
        rows.append(("infinite-cache prefix block hit ratio", f"{stats['prefix_hit_ratio']:.1%}"))
    lines = [f"| {stats['name']} | |", "|---|---:|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines)


def _lengths(label: str, values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"{label}_{k}": float("nan") for k in ("mean", "p50", "p99")}
    p50, p99 = np.percentile(values, [50, 99])
    return {f"{label}_mean": float(values.mean()), f"{label}_p50": float(p50),
            f"{label}_p99": float(p99)}


def _triple(stats: dict[str, Any], label: str) -> str:
    return " / ".join(f"{stats[f'{label}_{k}']:,.1f}" for k in ("mean", "p50", "p99"))


def _hit_ratio(workload: Workload) -> float:
    hashes = workload.prefix_hashes
    if isinstance(hashes, BlockChains):
        total = int(hashes.num_blocks.sum())
        return (total - hashes.distinct_blocks()) / total if total else float("nan")
    seen: set[int] = set()
    hits = total = 0
    for hashes in workload.prefix_hashes or ():
        total += len(hashes)
        before = len(seen)
        seen.update(hashes)
        hits += len(hashes) - (len(seen) - before)
    return hits / total if total else float("nan")


# ---------------------------------------------------------------------- command line


def load_from_overrides(overrides: list[str], config_dir: Path = _CONF_DIR) -> tuple[Workload, str]:
    """Compose ``simulate.yaml`` with ``overrides`` and build its workload (and a report)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import get_method, instantiate
    from omegaconf import OmegaConf

    from servegym.envs.tasks import register_resolver

    register_resolver()  # the task presets read their settings through it
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        cfg = compose(config_name="simulate", overrides=overrides)
    target = cfg.workload.get("_target_")
    if target is None or not str(target).endswith("build_workload"):
        return instantiate(cfg.workload), ""
    options = OmegaConf.to_container(cfg.workload, resolve=True)
    assert isinstance(options, dict)
    options.pop("_target_")
    builder = get_method(f"{target}_with_report")
    workload, report = builder(**options)
    return workload, str(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m servegym.envs.workloads.stats",
        description="Print a workload's statistics (rows, span, rates, CV, lengths).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. workload=azure_conv")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--config-dir", type=Path, default=_CONF_DIR, help="Hydra config folder")
    args = parser.parse_intermixed_args(argv)  # options may come between overrides
    workload, report = load_from_overrides(args.overrides, args.config_dir)
    stats = workload_stats(workload)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        if report:
            print(report)
        print(format_stats(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
