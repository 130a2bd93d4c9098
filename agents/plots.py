"""Plots of a training run (matplotlib, Agg backend), written atomically as PNG.

* `plot_comparison`: one panel per metric of `servegym.agents.evaluation.TABLE_METRICS`, a bar per
  policy (the mean over evaluation windows) with a min-max range.
* `plot_training`: the mean training-episode return (`rollout/ep_rew_mean`) and E2E
  latency (`rollout/e2e_mean`) against timesteps from SB3's `progress.csv`, and the
  serving metrics of the evaluations during training.
* `plot_summary`: mean and 95% confidence interval per policy (experiments/aggregate.py).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from servegym.agents.evaluation import TABLE_METRICS  # noqa: E402
from servegym.envs.core.metrics import atomic_write  # noqa: E402


def save_png(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    data = buffer.getvalue()
    return atomic_write(Path(path), lambda handle: handle.buffer.write(data))


def _bars(axes: Any, labels: Sequence[str], centre: np.ndarray, low: np.ndarray,
          high: np.ndarray, title: str) -> None:
    position = np.arange(len(labels))
    colours = ["tab:red" if label == "agent" else "tab:blue" for label in labels]
    axes.bar(position, centre, color=colours, alpha=0.8)
    axes.errorbar(position, centre, yerr=[centre - low, high - centre], fmt="none",
                  ecolor="black", capsize=2, linewidth=0.8)
    axes.set_xticks(position, labels, rotation=60, ha="right", fontsize=7)
    axes.set_title(title, fontsize=9)
    axes.grid(axis="y", alpha=0.3)


def plot_comparison(path: Path, rows: Sequence[Mapping[str, Any]], title: str = "") -> Path:
    """Bars of the mean over windows, whiskers from the min to the max."""
    labels = list(dict.fromkeys(row["policy"] for row in rows))
    figure, axes = plt.subplots(1, len(TABLE_METRICS), figsize=(3.2 * len(TABLE_METRICS), 3.6))
    for ax, (metric, name, scale, _) in zip(axes, TABLE_METRICS, strict=True):
        values = [np.array([r[metric] for r in rows if r["policy"] == label]) * scale
                  for label in labels]
        _bars(ax, labels, np.array([v.mean() for v in values]),
              np.array([v.min() for v in values]), np.array([v.max() for v in values]), name)
    figure.suptitle(title, fontsize=10)
    return save_png(figure, path)


def read_progress(path: Path) -> dict[str, np.ndarray]:
    """SB3's progress.csv as columns (missing cells are NaN)."""
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    keys = {key for record in records for key in record}

    def number(text: str | None) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {key: np.array([number(r.get(key)) for r in records]) for key in keys}


def plot_training(path: Path, progress_csv: Path,
                  periodic: Sequence[Mapping[str, float]] = ()) -> Path:
    """Training return and periodic serving metrics against timesteps."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    columns = read_progress(progress_csv) if Path(progress_csv).exists() else {}
    steps = columns.get("time/total_timesteps", np.zeros(0))
    for ax, key, label in ((axes[0], "rollout/ep_rew_mean", "mean episode return"),
                           (axes[1], "rollout/e2e_mean", "E2E mean (s), training episodes")):
        values = columns.get(key)
        if values is not None and steps.size:
            keep = ~np.isnan(values) & ~np.isnan(steps)
            ax.plot(steps[keep], values[keep], marker=".")
        ax.set_xlabel("timesteps")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    if periodic:
        x = [p["timesteps"] for p in periodic]
        axes[2].plot(x, [p["serving/slo_attainment"] for p in periodic], marker="o",
                     label="SLO attainment")
        twin = axes[2].twinx()
        twin.plot(x, [p["serving/e2e_mean"] for p in periodic], marker="s", color="tab:orange",
                  label="E2E mean (s)")
        twin.set_ylabel("E2E mean (s)")
        axes[2].legend(loc="lower left", fontsize=7)
    axes[2].set_title("evaluations during training (train split)", fontsize=9)
    axes[2].set_xlabel("timesteps")
    axes[2].grid(alpha=0.3)
    return save_png(figure, path)


def plot_summary(path: Path, table: Mapping[str, Mapping[str, tuple[float, float, float]]],
                 metrics: Sequence[tuple[str, str, float]], title: str = "") -> Path:
    """Bars of mean over seeds with 95% CI whiskers: table[label][metric] = (mean, lo, hi)."""
    labels = list(table)
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (metric, name, scale) in zip(axes, metrics, strict=True):
        stats = np.array([table[label].get(metric, (math.nan,) * 3) for label in labels])
        _bars(ax, labels, stats[:, 0] * scale, stats[:, 1] * scale, stats[:, 2] * scale, name)
    figure.suptitle(title, fontsize=10)
    return save_png(figure, path)


__all__ = ["plot_comparison", "plot_summary", "plot_training", "read_progress", "save_png"]
