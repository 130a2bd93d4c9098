"""Plots of an evaluation (matplotlib, Agg backend), written atomically as PNG.

Each figure can be read alone: a caption names the setting (the caller's `caption`: model,
GPU, trace, rates and seeds) and what the shading is; the legend has an entry for the band.

* `plot_vs_rate`: one line per policy, the mean over seeds against the request rate, shaded
  from the seed minimum to the seed maximum (clipped at 0); a dashed target line when given.
* `plot_latency_cdfs`: empirical CDFs of TTFT, time between tokens and E2E latency at one
  rate and seed, one line per policy.

`vs_rate_figure` and `latency_cdf_figure` return the Figure the `plot_*` functions save
(tests read its texts and band vertices).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from servegym.agents.plots import add_caption  # noqa: E402
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


def vs_rate_figure(means: Mapping[str, Mapping[float, tuple[float, float, float]]],
                   policies: Sequence[str], label: str, scale: float = 1.0,
                   target: float | None = None, caption: str | None = None,
                   seeds: int | None = None) -> plt.Figure:
    """The figure of `plot_vs_rate`; `seeds` is how many seeds each point averages."""
    figure, axes = plt.subplots(figsize=(7, 4.2))
    log = label.startswith(("TTFT", "TBT"))
    for index, policy in enumerate(policies):
        points = means.get(policy, {})
        if not points:
            continue
        rates = np.array(sorted(points))
        mean, low, high = (np.array([points[r][i] for r in rates], dtype=float) * scale
                           for i in range(3))
        low = np.clip(low, 0.0, None)
        (line,) = axes.plot(rates, mean, markersize=4, label=policy, **_style(index))
        axes.fill_between(rates, low, high, color=line.get_color(), alpha=0.15, linewidth=0,
                          gid=f"band:{policy}")
    if target is not None:
        axes.axhline(target, color="grey", linestyle="--", linewidth=1,
                     label=f"target {target:.0%}")
    count = f"{seeds} " if seeds else ""
    band = f"shaded: min-max over {count}seeds"
    handles, names = axes.get_legend_handles_labels()
    handles.append(Patch(color="grey", alpha=0.25, linewidth=0))
    names.append(band)
    axes.set_xlabel("mean request rate (req/s)")
    axes.set_ylabel(label)
    if log:
        axes.set_yscale("log")
    else:
        axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(handles, names, fontsize=7, ncol=2)
    add_caption(figure, caption, f"Lines: mean over {count}seeds at each rate; {band} "
                "(clipped at 0)" + ("; log scale" if log else "") + ".")
    return figure


def plot_vs_rate(path: Path, means: Mapping[str, Mapping[float, tuple[float, float, float]]],
                 policies: Sequence[str], label: str, scale: float = 1.0,
                 target: float | None = None, caption: str | None = None,
                 seeds: int | None = None) -> Path:
    """One line per policy: the seed mean vs rate, shaded between the seed min and max."""
    return _save(vs_rate_figure(means, policies, label, scale, target, caption, seeds), path)


def latency_cdf_figure(latencies: Mapping[str, Mapping[str, np.ndarray]],
                       policies: Sequence[str], rate: float, caption: str | None = None,
                       seed: int | None = None) -> plt.Figure:
    """The figure of `plot_latency_cdfs`."""
    panels = (("ttft", "TTFT (s)"), ("tbt", "time between tokens (s)"), ("e2e", "E2E (s)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for index, policy in enumerate(policies):
            values = np.sort(latencies.get(policy, {}).get(key, np.zeros(0)))
            if values.size:
                ax.plot(values, np.arange(1, values.size + 1) / values.size, label=policy,
                        linestyle=STYLES[index % len(STYLES)])
        ax.set_xscale("log")
        ax.set_xlabel(label + ", log scale")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    which = f", seed {seed}" if seed is not None else ""
    figure.suptitle(f"latency CDFs at {rate:g} req/s{which}")
    add_caption(figure, caption, f"Empirical CDFs of every finished request of one run at "
                f"{rate:g} req/s{which}: no averaging, no band.")
    return figure


def plot_latency_cdfs(path: Path, latencies: Mapping[str, Mapping[str, np.ndarray]],
                      policies: Sequence[str], rate: float, caption: str | None = None,
                      seed: int | None = None) -> Path:
    """Empirical CDFs of TTFT, TBT and end-to-end latency, one line per policy."""
    return _save(latency_cdf_figure(latencies, policies, rate, caption, seed), path)
