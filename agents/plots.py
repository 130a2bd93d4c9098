"""Plots of a training run (matplotlib, Agg backend), written atomically as PNG.

Every figure can be read alone: a caption under it names the setting (model, GPU, trace,
rate, seeds) and says what the bars, bands and whiskers are; non-negative metrics are
clipped at 0 (a 95% CI over 2 seeds can reach below 0 s, a latency cannot).

* `plot_comparison`: one panel per metric of `servegym.agents.evaluation.TABLE_METRICS`, a
  horizontal bar per policy (the mean over evaluation windows; policy names once, on the
  left, so no tick label collides), whiskers from the window minimum to maximum.
* `plot_training`: the mean training-episode return (`rollout/ep_rew_mean`) and E2E
  latency (`rollout/e2e_mean`) against timesteps from SB3's `progress.csv`, and the
  serving metrics of the evaluations during training (SLO attainment on the left axis, E2E
  mean on the labelled right axis, one legend for both).
* `plot_summary`: mean and 95% confidence interval over seeds per policy
  (experiments/aggregate.py); whiskers are the CI, clipped at 0, absent for one seed.

Each `plot_*` has a `*_figure` twin that returns the matplotlib Figure (the tests read its
texts, ticks and whisker ends). Captions: `caption=` text, else `config_caption` of the run's
`resolved_config.yaml` beside the PNG when there is one. Long policy labels (Optuna's
override strings) are shortened by `short_labels` to the overrides that differ between the
labels, with keys cut to their last part and numbers to 3 significant digits.
"""

from __future__ import annotations

import csv
import io
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from servegym.agents.evaluation import TABLE_METRICS  # noqa: E402
from servegym.envs.core.metrics import atomic_write  # noqa: E402

RESOLVED_CONFIG = "resolved_config.yaml"  # as servegym.agents.config.RESOLVED_CONFIG
CAPTION_FONTSIZE = 7
LABEL_WIDTH = 26          # characters per line of a tick label
_OVERRIDE_SPLIT = re.compile(r",(?=[+~]?[\w./@-]+=)")  # a comma that starts the next override


def save_png(figure: Any, path: Path, overwrite: bool = False) -> Path:
    """`figure` as a PNG at `path`, atomically; `overwrite` only for a "latest" copy whose
    history is kept elsewhere (results/leaderboard.png)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    data = buffer.getvalue()
    return atomic_write(Path(path), lambda handle: handle.buffer.write(data),
                        overwrite=overwrite)


# ---------------------------------------------------------------------------------- captions

def _seeds_text(seeds: Sequence[Any]) -> str:
    unique = sorted({int(s) for s in seeds})
    if not unique:
        return "seeds ?"
    if len(unique) > 6 and unique == list(range(unique[0], unique[-1] + 1)):
        return f"seeds {unique[0]}-{unique[-1]} (n={len(unique)})"
    return f"seed{'s' if len(unique) > 1 else ''} {', '.join(map(str, unique))}"


def trace_name(workload: Mapping[str, Any]) -> str:
    """A readable name of a workload config: its `name`, else its source's name, else the
    source's kind and trace (`azure conv`)."""
    if workload.get("name"):
        return str(workload["name"])
    source = workload.get("source") or {}
    if not isinstance(source, Mapping):
        return str(source)
    if source.get("name"):
        return str(source["name"])
    parts = [str(source[k]) for k in ("kind", "trace", "path", "pool") if source.get(k)]
    return " ".join(parts) or "?"


def setting_caption(model: str = "?", gpu: str = "?", trace: str = "?",
                    rate: float | str | None = None, seeds: Sequence[Any] = (),
                    extra: Sequence[str] = ()) -> str:
    """`model Llama-3-8B on H100-80GB · trace azure conv · 4 req/s · seeds 0, 1`."""
    if rate is None:
        rate_text = "trace rate"
    elif isinstance(rate, int | float):
        rate_text = f"{rate:g} req/s"
    else:
        rate_text = str(rate)
    parts = [f"model {model} on {gpu}", f"trace {trace}", rate_text, _seeds_text(seeds),
             *extra]
    return " · ".join(parts)


def config_caption(config: Mapping[str, Any], seeds: Sequence[Any] | None = None,
                   extra: Sequence[str] = ()) -> str:
    """The setting of a train.py run from its resolved config (dict of resolved_config.yaml
    or metrics.json's `config`); `seeds` default to the run's seed."""
    cost = config.get("cost") or {}
    env = config.get("env") or {}
    workload = config.get("workload") or {}
    gpu = str(cost.get("gpu", "?"))
    if cost.get("tensor_parallel") not in (None, 1):
        gpu += f" TP{cost['tensor_parallel']}"
    rate = (config.get("eval") or {}).get("rate") or env.get("rate") or workload.get("rate")
    env_id = env.get("id")
    return setting_caption(str(cost.get("model", "?")), gpu, trace_name(workload), rate,
                           seeds if seeds is not None else [config.get("seed", "?")]
                           if config.get("seed") is not None else [],
                           [*([f"env {env_id}"] if env_id else []), *extra])


def run_caption(folder: Path, seeds: Sequence[Any] | None = None) -> str | None:
    """`config_caption` of `folder/resolved_config.yaml`, or None when there is none."""
    import yaml

    path = Path(folder) / RESOLVED_CONFIG
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    return config_caption(config, seeds) if isinstance(config, Mapping) else None


def add_caption(figure: Any, *lines: str | None) -> Any:
    """Caption text under the figure, wrapped to its width; returns the Text artist."""
    width = max(40, int(figure.get_figwidth() * 17))
    text = "\n".join(textwrap.fill(line, width) for line in lines if line)
    # below everything drawn so far (tick labels included), so nothing overlaps it
    box = figure.get_tightbbox(figure.canvas.get_renderer())
    left = box.x0 / figure.get_figwidth()
    top = box.y0 / figure.get_figheight() - 0.02
    return figure.text(max(left, 0.0), top, text, ha="left", va="top",
                       fontsize=CAPTION_FONTSIZE, gid="caption")


def caption_text(figure: Any) -> str:
    """The caption `add_caption` put on `figure`, unwrapped ("" when none)."""
    return " ".join(" ".join(t.get_text().split()) for t in figure.texts
                    if t.get_gid() == "caption")


# -------------------------------------------------------------------------------- labels

def _split_label(label: str) -> tuple[str, list[str] | None]:
    match = re.fullmatch(r"(.*?) \[(.*)\]", label)
    if match is None:
        if "=" in label and " " not in label:
            return "", _OVERRIDE_SPLIT.split(label)
        return label, None
    return match.group(1), _OVERRIDE_SPLIT.split(match.group(2))


def _short_override(override: str, full_keys: bool) -> str:
    key, _, value = override.partition("=")
    if not full_keys:
        key = key.lstrip("+~").rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    try:
        number = float(value)
    except ValueError:
        return f"{key}={value}"
    if number.is_integer() and "e" not in value.lower() and "." not in value:
        return f"{key}={value}"
    return f"{key}={number:.3g}"


def short_labels(labels: Sequence[str], width: int = LABEL_WIDTH) -> list[str]:
    """Labels of the form `policy [k=v,k2=v2]` (or bare override lists) cut to the overrides
    that differ between the labels, keys to their last dotted part, numbers to 3 significant
    digits, wrapped at `width` characters. Keys stay whole where cutting them would make two
    labels, or two keys of one label, equal; labels stay whole where even that would."""
    parsed = [_split_label(label) for label in labels]
    lists = [set(parts) for _, parts in parsed if parts is not None]
    common = set.intersection(*lists) if len(lists) > 1 else set()
    for full_keys in (False, True):
        out, ambiguous = [], False
        for (head, parts), label in zip(parsed, labels, strict=True):
            if parts is None:
                out.append(label)
                continue
            kept = [_short_override(p, full_keys) for p in parts if p not in common]
            keys = [k.partition("=")[0] for k in kept]
            ambiguous |= len(set(keys)) < len(keys)
            body = ", ".join(kept)
            out.append(f"{head} [{body}]" if head and body else head or body or label)
        if len(set(out)) == len(set(labels)) and not ambiguous:
            return [textwrap.fill(text, width, break_on_hyphens=False) for text in out]
    return [textwrap.fill(text, width, break_on_hyphens=False) for text in labels]


def _steps_formatter(value: float, _position: Any) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def readable_steps_axis(axes: Any, bins: int = 5) -> None:
    """At most `bins` + 1 x ticks, written 25k / 1.5M, so tick labels never collide."""
    axes.xaxis.set_major_locator(MaxNLocator(nbins=bins, integer=True))
    axes.xaxis.set_major_formatter(FuncFormatter(_steps_formatter))


# ---------------------------------------------------------------------------------- bars

def _bars_figure(labels: Sequence[str], panels: int, panel_width: float = 2.7) -> Any:
    """One row of `panels` panels sharing a policy axis (horizontal bars, labels once)."""
    lines = sum(label.count("\n") + 1 for label in short_labels(labels))
    height = max(2.4, 0.22 * lines + 0.3 * len(labels) + 1.0)
    figure, axes = plt.subplots(1, panels, figsize=(panel_width * panels + 1.6, height),
                                sharey=True, squeeze=False)
    return figure, axes[0]


def _bars(axes: Any, labels: Sequence[str], centre: np.ndarray, low: np.ndarray,
          high: np.ndarray, title: str, show_labels: bool = True) -> None:
    """Horizontal bars at `centre`, whiskers from `low` to `high` clipped at 0 (NaN: no
    whisker); the policies read top to bottom in the given order."""
    position = np.arange(len(labels))
    colours = ["tab:red" if label.startswith("agent") else "tab:blue" for label in labels]
    axes.barh(position, centre, color=colours, alpha=0.8)
    low = np.clip(np.where(np.isnan(low), centre, low), 0.0, None)
    high = np.where(np.isnan(high), centre, high)
    container = axes.errorbar(centre, position, xerr=[np.clip(centre - low, 0, None),
                                                      np.clip(high - centre, 0, None)],
                              fmt="none", ecolor="black", capsize=2, linewidth=0.8)
    for collection in container.lines[2]:
        collection.set_gid("whiskers")
    axes.set_yticks(position, short_labels(labels), fontsize=7)
    axes.tick_params(axis="y", labelleft=show_labels)
    if show_labels:
        axes.set_ylim(len(labels) - 0.5, -0.5)  # first label on top (shared by the row)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=4))
    axes.tick_params(axis="x", labelsize=7)
    axes.set_title(title, fontsize=9)
    axes.set_xlim(left=0)
    axes.grid(axis="x", alpha=0.3)


def whisker_ranges(figure: Any) -> list[np.ndarray]:
    """Per panel, the (low, high) ends of each whisker `_bars` drew (n x 2)."""
    ranges = []
    for axes in figure.axes:
        for collection in axes.collections:
            if collection.get_gid() == "whiskers":
                segments = collection.get_segments()
                ranges.append(np.array([[min(s[:, 0]), max(s[:, 0])] for s in segments]))
    return ranges


def comparison_figure(rows: Sequence[Mapping[str, Any]], title: str = "",
                      caption: str | None = None) -> Any:
    """The figure of `plot_comparison`."""
    labels = list(dict.fromkeys(row["policy"] for row in rows))
    figure, axes = _bars_figure(labels, len(TABLE_METRICS))
    for index, (ax, (metric, name, scale, _)) in enumerate(zip(axes, TABLE_METRICS,
                                                               strict=True)):
        values = [np.array([r[metric] for r in rows if r["policy"] == label], dtype=float)
                  * scale for label in labels]
        _bars(ax, labels, np.array([np.nanmean(v) for v in values]),
              np.array([np.nanmin(v) for v in values]), np.array([np.nanmax(v) for v in values]),
              name, show_labels=index == 0)
    windows = max((sum(r["policy"] == label for r in rows) for label in labels), default=0)
    figure.suptitle(title, fontsize=10)
    add_caption(figure, caption or "setting: see comparison.md",
                f"Bars: mean over {windows} evaluation window(s), the same windows for every "
                "policy; whiskers: minimum to maximum over the windows. Red: the trained "
                "agent; blue: baselines.")
    return figure


def plot_comparison(path: Path, rows: Sequence[Mapping[str, Any]], title: str = "",
                    caption: str | None = None) -> Path:
    """Bars of the mean over windows, whiskers from the min to the max; the caption is
    `caption`, else the setting of the run folder's resolved config."""
    path = Path(path)
    return save_png(comparison_figure(rows, title, caption or run_caption(path.parent)), path)


# ------------------------------------------------------------------------------ training

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


def training_figure(progress_csv: Path, periodic: Sequence[Mapping[str, float]] = (),
                    caption: str | None = None) -> Any:
    """The figure of `plot_training`."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    figure.subplots_adjust(wspace=0.32)  # room for each panel's y label
    columns = read_progress(progress_csv) if Path(progress_csv).exists() else {}
    steps = columns.get("time/total_timesteps", np.zeros(0))
    for ax, key, label, unit in (
            (axes[0], "rollout/ep_rew_mean", "mean episode return", "return"),
            (axes[1], "rollout/e2e_mean", "E2E mean (s), training episodes", "E2E mean (s)")):
        values = columns.get(key)
        if values is not None and steps.size:
            keep = ~np.isnan(values) & ~np.isnan(steps)
            ax.plot(steps[keep], values[keep], marker=".")
        ax.set_xlabel("timesteps")
        ax.set_ylabel(unit)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        readable_steps_axis(ax)
    axes[1].set_ylim(bottom=0)
    if periodic:
        x = [p["timesteps"] for p in periodic]
        left = axes[2].plot(x, [p["serving/slo_attainment"] for p in periodic], marker="o",
                            label="SLO attainment (left)")
        axes[2].set_ylim(0, 1.05)
        twin = axes[2].twinx()
        right = twin.plot(x, [p["serving/e2e_mean"] for p in periodic], marker="s",
                          color="tab:orange", label="E2E mean, s (right)")
        twin.set_ylim(bottom=0)
        twin.set_ylabel("E2E mean (s)", color="tab:orange")
        twin.tick_params(axis="y", colors="tab:orange")
        lines = left + right
        axes[2].legend(lines, [line.get_label() for line in lines], loc="lower left",
                       fontsize=7)
    axes[2].set_ylabel("SLO attainment")
    axes[2].set_title("evaluations during training (train split)", fontsize=9)
    axes[2].set_xlabel("timesteps")
    axes[2].grid(alpha=0.3)
    readable_steps_axis(axes[2])
    episodes = int(periodic[0].get("episodes", 0)) if periodic else 0
    add_caption(figure, caption or "setting: see comparison.md",
                "Left, middle: SB3's rollout means over the last 100 training episodes "
                "(no band). Right: each point is the mean over "
                + (f"{episodes} " if episodes else "")
                + "windows of the train split (eval.freq_episodes), the agent in its "
                "eval.deterministic mode.")
    return figure


def plot_training(path: Path, progress_csv: Path,
                  periodic: Sequence[Mapping[str, float]] = (),
                  caption: str | None = None) -> Path:
    """Training return and periodic serving metrics against timesteps."""
    path = Path(path)
    return save_png(training_figure(progress_csv, periodic,
                                    caption or run_caption(path.parent)), path)


# ------------------------------------------------------------------------------- summary

def summary_figure(table: Mapping[str, Mapping[str, tuple[float, float, float]]],
                   metrics: Sequence[tuple[str, str, float]], title: str = "",
                   caption: str | None = None, seeds: Sequence[Any] = ()) -> Any:
    """The figure of `plot_summary`."""
    labels = list(table)
    figure, axes = _bars_figure(labels, len(metrics))
    for index, (ax, (metric, name, scale)) in enumerate(zip(axes, metrics, strict=True)):
        stats = np.array([table[label].get(metric, (math.nan,) * 3) for label in labels],
                         dtype=float).reshape(len(labels), 3)
        _bars(ax, labels, stats[:, 0] * scale, stats[:, 1] * scale, stats[:, 2] * scale, name,
              show_labels=index == 0)
    figure.suptitle(title, fontsize=10)
    count = f"{len(set(seeds))} " if seeds else ""
    add_caption(figure, caption,
                f"Bars: mean over {count}seeds; whiskers: 95% confidence interval of the mean "
                "(Student t, n-1 degrees of freedom), clipped at 0; no whisker for one seed. "
                "Labels keep only the overrides that differ (summary.md has them whole).")
    return figure


def plot_summary(path: Path, table: Mapping[str, Mapping[str, tuple[float, float, float]]],
                 metrics: Sequence[tuple[str, str, float]], title: str = "",
                 caption: str | None = None, seeds: Sequence[Any] = ()) -> Path:
    """Bars of mean over seeds with 95% CI whiskers: table[label][metric] = (mean, lo, hi)."""
    return save_png(summary_figure(table, metrics, title, caption, seeds), path)


__all__ = ["add_caption", "caption_text", "comparison_figure", "config_caption",
           "plot_comparison", "plot_summary", "plot_training", "read_progress",
           "readable_steps_axis", "run_caption", "save_png", "setting_caption",
           "short_labels", "summary_figure", "trace_name", "training_figure",
           "whisker_ranges"]
