"""Aggregate a train.py sweep: mean and 95% confidence interval over seeds, table and plots.

    python experiments/aggregate.py multirun/train/<day>/<time>_<name>
    python experiments/aggregate.py <sweep dir> [<sweep dir> ...] --name admission_default
    python experiments/aggregate.py <sweep dir> --out results/train/my_sweep

Reads every job folder under the given folders (a folder with `metrics.json`; one with
`failed.json` or neither is listed as failed), and writes a new folder: by default
`<first sweep folder>/aggregate/` beside the jobs (outside the tracked `results/`; when it
exists, a re-run writes `aggregate_<UTC time>/` next to it, so re-runs succeed and never
overwrite), or `--out` (which must not exist: an aggregate is never overwritten, and the
command says so without a traceback):

* `summary.md`: the setting, the commands, and per policy the mean and 95% CI over seeds
  of goodput rate, SLO attainment, TTFT p99, TBT p99, E2E mean and throughput; failed
  jobs listed.
* `summary.csv`: the same numbers; `runs.csv`: one row per job x policy (per-seed values).
* `summary.png`: bars of the means with CI whiskers.
* `jobs/<job>/`: each job's metrics.json, comparison.md, eval.csv and training.png.

Definitions: a job's value of a metric is its mean over its evaluation windows. Jobs are
grouped by the overrides that vary across the jobs, minus the seed
(`servegym.agents.run_logger.run_group`). The learned agent of each group is one row, labelled by
the group; baselines are one row per policy and per setting (the group minus `agent...`
keys), so a sweep over agents on one setting shows each baseline once (every job
evaluates the baselines on the same windows for a given seed). CI: mean +- t(0.975, n-1)
x sample std / sqrt(n) over the n seeds (none for n = 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from servegym.agents.run_logger import run_group
from servegym.agents.training import AGENT_LABEL, override_key
from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]

METRICS = (
    ("serving/goodput_rps", "goodput (req/s)", 1.0, "{:.2f}"),
    ("serving/slo_attainment", "SLO attainment", 1.0, "{:.3f}"),
    ("serving/ttft_p99", "TTFT p99 (s)", 1.0, "{:.2f}"),
    ("serving/tbt_p99", "TBT p99 (ms)", 1000.0, "{:.0f}"),
    ("serving/e2e_mean", "E2E mean (s)", 1.0, "{:.2f}"),
    ("serving/throughput_rps", "throughput (req/s)", 1.0, "{:.2f}"),
)
# t(0.975, df) for df = 1..30; above 30 the normal quantile 1.96 is within 2%.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """t(0.975, df): two-sided 95%."""
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% CI of the mean; low = high = NaN for one value."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if data.size < 2:
        return mean, math.nan, math.nan
    half = t_quantile(data.size - 1) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean, mean - half, mean + half


def find_jobs(folders: Sequence[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """(metrics of completed jobs, folders of failed jobs) under `folders`."""
    jobs, failed = [], []
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder} is not a folder (give a multirun folder)")
        for config in sorted(Path(folder).rglob(".hydra/config.yaml")):
            job = config.parent.parent
            metrics = job / "metrics.json"
            if metrics.is_file():
                data = json.loads(metrics.read_text())
                data["_job"] = str(job)
                jobs.append(data)
            else:
                failed.append(job)
    if not jobs and not failed:
        raise FileNotFoundError(f"no train.py jobs under {[str(f) for f in folders]}")
    return jobs, failed


def varying(jobs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Each job's overrides that not every job shares (the sweep's axes), seed included."""
    common = set.intersection(*(set(job["overrides"]) for job in jobs))
    return [[o for o in job["overrides"] if o not in common] for job in jobs]


def setting_group(overrides: Sequence[str]) -> str:
    """The group of a job's baselines: its overrides minus the seed and agent settings."""
    return run_group([o for o in overrides if override_key(o) != "agent"])


def collect(jobs: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """label -> seed -> metric -> value (each job's mean over its windows); labels use
    only the overrides that vary across the jobs."""
    axes = varying(jobs)
    multiple_settings = len({setting_group(a) for a in axes}) > 1
    table: dict[str, dict[int, dict[str, float]]] = {}
    for job, overrides in zip(jobs, axes, strict=True):
        group = run_group(overrides)
        setting = setting_group(overrides)
        for policy, means in job["eval"]["policies"].items():
            if policy == AGENT_LABEL or policy.startswith(f"{AGENT_LABEL}-"):
                # the agent's rows (headline, other mode, last model) belong to its group
                label = policy if group == "default" else f"{policy} [{group}]"
            else:
                label = f"{policy} [{setting}]" if multiple_settings else policy
            table.setdefault(label, {}).setdefault(int(job["seed"]), dict(means))
    return table


def summarize(table: Mapping[str, Mapping[int, Mapping[str, float]]]
              ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """label -> metric -> (mean, low, high) over seeds."""
    return {label: {metric: mean_ci([seeds[s][metric] for s in sorted(seeds)])
                    for metric, _, _, _ in METRICS}
            for label, seeds in table.items()}


def _cell(stats: tuple[float, float, float], scale: float, fmt: str) -> str:
    mean, low, high = (scale * value for value in stats)
    if math.isnan(low):
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format((high - low) / 2)}"


def markdown(jobs: Sequence[Mapping[str, Any]], failed: Sequence[Path],
             table: Mapping[str, Mapping[int, Any]],
             stats: Mapping[str, Mapping[str, tuple[float, float, float]]],
             commands: Sequence[str], name: str) -> str:
    first = jobs[0]
    order = sorted(stats, key=lambda label: -stats[label]["serving/slo_attainment"][0])
    lines = [f"# {name}: learned agents vs heuristics, mean ± 95% CI over seeds", ""]
    lines += [f"- {line}" for line in first.get("setting", []) if not line.startswith("agent")]
    evaluation = first["eval"]
    lines += [
        f"- evaluation: {evaluation['episodes']} windows of {evaluation['requests']} requests "
        f"from the {evaluation['split']} split per seed, identical for every policy of a seed",
        f"- jobs: {len(jobs)} completed, {len(failed)} failed; seeds "
        f"{sorted({int(j['seed']) for j in jobs})}",
    ]
    train = [j["train"] for j in jobs if j.get("train")]
    if train:
        wall = np.mean([t["wall_s"] for t in train])
        speed = np.mean([t["steps_per_s"] for t in train])
        lines.append(f"- training: {train[0]['timesteps']} timesteps per agent, "
                     f"{wall:.0f} s wall on average ({speed:.0f} steps/s)")
    lines += ["", "Commands:", "", "```bash", *commands, "```", ""]
    header = "| policy | seeds | " + " | ".join(title for _, title, _, _ in METRICS) + " |"
    lines += [header, "|---|---|" + "---|" * len(METRICS)]
    for label in order:
        cells = [_cell(stats[label][metric], scale, fmt) for metric, _, scale, fmt in METRICS]
        lines.append(f"| {label} | {len(table[label])} | " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "Failed jobs (no metrics.json):", ""]
        lines += [f"- {job}" for job in failed]
    lines += ["", "Plots: summary.png (means with 95% CI); per job: jobs/<job>/ (metrics.json, "
              "comparison.md, eval.csv, training.png).", ""]
    return "\n".join(lines)


def sweep_commands(folders: Sequence[Path], jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The `python train.py -m ...` command of each sweep folder (from Hydra's
    multirun.yaml), else each job's own command."""
    from omegaconf import OmegaConf

    commands = []
    for folder in folders:
        saved = Path(folder) / "multirun.yaml"
        if saved.is_file():
            task = OmegaConf.load(saved).hydra.overrides.task
            commands.append(" ".join(["python train.py -m", *[_quote(o) for o in task]]))
    return commands or sorted({job["command"] for job in jobs})


def _quote(override: str) -> str:
    return f"'{override}'" if any(c in override for c in "[]()\"' ") else override


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

    return atomic_write(path, write)


def aggregate(folders: Sequence[Path], out: Path | None = None, name: str | None = None
              ) -> Path:
    """Write the aggregate of the sweeps in `folders` to `out` (see the module docstring)."""
    from servegym.agents.plots import config_caption, plot_summary

    jobs, failed = find_jobs(folders)
    if not jobs:
        raise RuntimeError(f"every job failed: {[str(f) for f in failed]}")
    name = name or str(jobs[0]["name"])
    if out is None:
        out = Path(folders[0]) / "aggregate"
        if out.exists():  # a re-run: a new folder beside the first, never an overwrite
            out = out.with_name(f"aggregate_{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; aggregates are never overwritten: pass --out or "
                              "--name")
    table = collect(jobs)
    stats = summarize(table)
    out.mkdir(parents=True)
    commands = sweep_commands(folders, jobs)
    atomic_write(out / "summary.md",
                 lambda h: h.write(markdown(jobs, failed, table, stats, commands, name)))
    metric_names = [metric for metric, _, _, _ in METRICS]
    write_csv(out / "summary.csv",
              ["policy", "seeds", *[f"{m}_{s}" for m in metric_names for s in
                                    ("mean", "ci_low", "ci_high")]],
              [[label, len(table[label]),
                *[v for m in metric_names for v in stats[label][m]]] for label in stats])
    write_csv(out / "runs.csv", ["policy", "seed", *metric_names],
              [[label, seed, *[values[m] for m in metric_names]]
               for label, seeds in table.items() for seed, values in sorted(seeds.items())])
    plot_summary(out / "summary.png", stats, [(m, t, s) for m, t, s, _ in METRICS],
                 title=f"{name}: mean and 95% CI over seeds",
                 caption=config_caption(jobs[0].get("config") or {},
                                        seeds=[j["seed"] for j in jobs]),
                 seeds=[j["seed"] for j in jobs])
    for job in jobs:
        folder = Path(job["_job"])
        tag = folder.name if len(folders) == 1 else "_".join(folder.parts[-2:])
        (out / "jobs" / tag).mkdir(parents=True)
        for name in ("metrics.json", "comparison.md", "eval.csv", "training.png"):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, out / "jobs" / tag / name)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="multirun folder(s) of train.py")
    parser.add_argument("--name", help="results name (default: the runs' `name` setting)")
    parser.add_argument("--out", type=Path, help="output folder, which must not exist "
                        "(default <first sweep folder>/aggregate/)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder; pass train.py's multirun folder(s)")
    try:
        out = aggregate(args.folders, args.out, args.name)
    except (FileExistsError, RuntimeError) as error:
        parser.error(str(error))
    print((out / "summary.md").read_text())
    print(f"written to {out}")


if __name__ == "__main__":
    main()
