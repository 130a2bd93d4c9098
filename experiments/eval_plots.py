"""Plots of an evaluation (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from servegym.envs.core.metrics import atomic_write  # noqa: E402

STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "X")


def _style(index: int) -> dict[str, object]:
    """Distinct dashes and markers, so policies with identical curves stay visible."""
    return {"linestyle": STYLES[index % len(STYLES)], "marker": MARKERS[index % len(MARKERS)]}


def _save(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    data = buffer.getvalue()
    return atomic_write(path, lambda handle: handle.buffer.write(data))


def plot_vs_rate(path: Path, means: Mapping[str, Mapping[float, tuple[float, float, float]]],
                 policies: Sequence[str], label: str, scale: float = 1.0,
                 target: float | None = None) -> Path:
    """One line per policy: the seed mean vs rate, shaded between the seed min and max."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for index, policy in enumerate(policies):
        points = means.get(policy, {})
        if not points:
            continue
        rates = np.array(sorted(points))
        mean, low, high = (np.array([points[r][i] for r in rates]) * scale for i in range(3))
        (line,) = axes.plot(rates, mean, markersize=4, label=policy, **_style(index))
        axes.fill_between(rates, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    if target is not None:
        axes.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"{target:.0%}")
    axes.set_xlabel("mean request rate (req/s)")
    axes.set_ylabel(label)
    if label.startswith(("TTFT", "TBT")):
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    return _save(figure, path)


def plot_latency_cdfs(path: Path, latencies: Mapping[str, Mapping[str, np.ndarray]],
                      policies: Sequence[str], rate: float) -> Path:
    """Empirical CDFs of TTFT, TBT and end-to-end latency, one line per policy."""
    panels = (("ttft", "TTFT (s)"), ("tbt", "time between tokens (s)"), ("e2e", "E2E (s)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for index, policy in enumerate(policies):
            values = np.sort(latencies.get(policy, {}).get(key, np.zeros(0)))
            if values.size:
                ax.plot(values, np.arange(1, values.size + 1) / values.size, label=policy,
                        linestyle=STYLES[index % len(STYLES)])
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"latency CDFs at {rate:g} req/s")
    return _save(figure, path)
