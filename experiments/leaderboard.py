"""The leaderboard: every registered task x {learned agents, every relevant heuristic}.

    python experiments/leaderboard.py run                 # the multirun, then the table
    python experiments/leaderboard.py run --seeds 0,1,2 --jobs 2
    python experiments/leaderboard.py aggregate multirun/train/<day>/<time>_leaderboard
    python experiments/leaderboard.py run --experiments 'lb_heterogeneous_*' --jobs 2
    python experiments/leaderboard.py aggregate <earlier folder> <new folder>  # one table
    python experiments/leaderboard.py baselines --task preemption \
        --policies swap-always-most-blocks,preempt-least-progress   # heuristics added later
    python experiments/leaderboard.py aggregate results/leaderboard_jobs.json <new folder>
    python experiments/leaderboard.py aggregate <new folder> --carry results/leaderboard.json

`run` launches one Hydra multirun of train.py over the leaderboard jobs and the seeds:

    python train.py -m 'experiment=glob(lb_*)' seed=0,1,2

Each `conf/experiment/lb_<task>_<agent>.yaml` is one task x learned agent with its
training budget (all include `leaderboard_common.yaml`: held-out split, every heuristic
of the controlled decision kinds, 5 windows). Every job trains its agent, then evaluates
it (the best checkpoint by the periodic evaluation on training windows, greedy and
sampled, and the last model) beside the heuristics on the same held-out windows, which
for one seed are the same for every job of a task.

`aggregate` reads the job folders (`metrics.json`) and writes, per task, the mean and 95%
CI over seeds (t quantile, as experiments/aggregate.py) of the goodput rate
(`serving/goodput_rps`: requests meeting both SLOs per second of makespan) and SLO
attainment of every policy, the best heuristic, and each agent's gap to it:

* `results/leaderboard.md` and `.json` (the latest; the command that made them at the
  top) and `results/history/leaderboard_<stamp>.md` (never overwritten);
* `results/leaderboard.png`: goodput rate per task, agents beside the best heuristics;
* `results/leaderboard_jobs.json`: what every job it read contributes (task, algorithm,
  seed, budget, command, each policy's two metrics), committed with the table: a source
  `aggregate` reads like a folder, so the table can be made again, and extended with new
  jobs, on a machine where the job folders (multirun/, not in git) are gone. A job given
  again (same task, agent, headline mode and seed) replaces the earlier one: the last
  source wins, and the table names every replaced job.

`--carry <earlier leaderboard.json>` keeps the summaries of the tasks that no given job
covers, as that leaderboard computed them (its per-seed values were not kept before the
job store existed), and, for a task both have, its agent rows the jobs lack when every
heuristic both evaluated scored the same (same windows and code); the table names every
carried task and row and the leaderboard it comes from.

Verdicts (on each agent's headline row, the mode its job reports, greedy by default, so no
row is picked on the held-out windows): "wins" when its mean goodput rate is at least 5%
above the best heuristic's, "loses" when more than 5% below, "ties" otherwise (with 3
seeds the CIs say how much of the gap is noise). The other rows (sampled, last model) are
in the per-task tables.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregate import find_jobs, mean_ci, sweep_commands

from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]

HEADLINE = "serving/goodput_rps"
ATTAINMENT = "serving/slo_attainment"
AGENT_ROWS = {"agent": "best, greedy", "agent-best-sampled": "best, sampled",
              "agent-best-greedy": "best, greedy", "agent-last-greedy": "last, greedy",
              "agent-last-sampled": "last, sampled"}
MARGIN = 0.05
JOB_STORE_KIND = "servegym-leaderboard-jobs"


# ============================================================================ collect
def agent_name(job: Mapping[str, Any]) -> str:
    """A job's agent as the table names it: the algorithm, "+es" when the job ran the
    evolution stage after RL (agents/evolution.py)."""
    agent = job["config"]["agent"]
    evolved = (agent.get("evolution") or {}).get("iterations", 0)
    return f"{agent['algo']}+es" if evolved else str(agent["algo"])


def agent_mode(job: Mapping[str, Any], label: str) -> str:
    """The mode of the headline "agent" row follows the job's eval.deterministic."""
    if label != "agent":
        return AGENT_ROWS[label]
    greedy = bool(job["config"]["eval"].get("deterministic", True))
    return "best, greedy" if greedy else "best, sampled"


def headline_labels(jobs: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """task -> the labels of its agents' headline rows (the jobs' "agent" rows)."""
    out: dict[str, set[str]] = {}
    for job in jobs:
        labels = out.setdefault(job["config"]["env"]["id"], set())
        if job["config"]["agent"]["algo"] != "heuristic":
            labels.add(f"{agent_name(job)} ({agent_mode(job, 'agent')})")
    return out


def load_jobs(sources: Sequence[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """Jobs from multirun folders (`find_jobs`) and job stores (`.json` files that
    `write_job_store` wrote), in the order given; failed jobs of the folders."""
    jobs: list[dict[str, Any]] = []
    failed: list[Path] = []
    folders = [Path(s) for s in sources if not str(s).endswith(".json")]
    for source in sources:
        if str(source).endswith(".json"):
            store = json.loads(Path(source).read_text())
            if store.get("kind") != JOB_STORE_KIND:
                raise SystemExit(f"{source} is not a leaderboard job store (no "
                                 f"kind={JOB_STORE_KIND!r}); give multirun folders or "
                                 "results/leaderboard_jobs.json")
            jobs += store["jobs"]
    if folders:
        found, failed = find_jobs(folders)
        commands = dict(zip(folders, sweep_commands_each(folders), strict=True))
        for job in found:
            job.setdefault("sweep_command", next(
                (c for f, c in commands.items() if c and str(job["_job"]).startswith(str(f))),
                None))
        jobs += found
    return jobs, failed


def supersede(jobs: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The jobs with each (task, agent, headline mode, seed) kept once: the last given, so
    `aggregate results/leaderboard_jobs.json <new folder>` replaces the rows a re-run job
    made again; and a line per job dropped, for the table's notes. Heuristic-only jobs
    are all kept (their rows must agree, `collect`)."""
    last: dict[tuple, int] = {}
    for index, job in enumerate(jobs):
        if job["config"]["agent"]["algo"] != "heuristic":
            last[_job_key(job)] = index
    kept, dropped = [], []
    for index, job in enumerate(jobs):
        if job["config"]["agent"]["algo"] == "heuristic" or last[_job_key(job)] == index:
            kept.append(job)
        else:
            later = jobs[last[_job_key(job)]]
            dropped.append(f"{job['config']['env']['id']} {agent_name(job)} seed "
                           f"{int(job['seed'])}: {job.get('_job', '?')} by "
                           f"{later.get('_job', '?')}")
    return kept, dropped


def _job_key(job: Mapping[str, Any]) -> tuple:
    return (job["config"]["env"]["id"], agent_name(job), agent_mode(job, "agent"),
            int(job["seed"]))


def sweep_commands_each(folders: Sequence[Path]) -> list[str | None]:
    """The multirun command of each folder (Hydra's multirun.yaml), None where absent."""
    return [next(iter(sweep_commands([f], [])), None) for f in folders]


def compact_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """What `collect`, `markdown` and the budgets read of a job's metrics.json."""
    config = job["config"]
    return {
        "_job": str(job.get("_job", "?")), "seed": int(job["seed"]),
        "command": job.get("command"), "sweep_command": job.get("sweep_command"),
        "overrides": list(job.get("overrides", [])),
        "config": {"env": {"id": config["env"]["id"]},
                   "agent": {"algo": config["agent"]["algo"],
                             "total_timesteps": config["agent"].get("total_timesteps", 0),
                             "evolution": {"iterations": (config["agent"].get("evolution")
                                                          or {}).get("iterations", 0)}},
                   "eval": {"deterministic": config["eval"].get("deterministic", True)}},
        "eval": {"policies": {label: {k: means.get(k, math.nan) for k in (HEADLINE, ATTAINMENT)}
                              for label, means in job["eval"]["policies"].items()}},
    }


def write_job_store(path: Path, jobs: Sequence[Mapping[str, Any]], stamp: str) -> None:
    payload = {"kind": JOB_STORE_KIND, "created": stamp,
               "jobs": [compact_job(job) for job in jobs]}
    atomic_write(path, lambda h: json.dump(payload, h, indent=1, default=float),
                 overwrite=True)


def carry(summaries: dict[str, Any], path: Path) -> dict[str, Any]:
    """`summaries` with an earlier leaderboard.json's tasks that they lack (whole, marked
    `carried_from`) and, for the tasks both have, the earlier agent rows they lack, when
    every heuristic both evaluated has the same mean there (the same windows and code;
    else nothing is merged and `carry_refused` says why). Carried rows keep their stats;
    their gap is taken to the current best heuristic."""
    earlier = json.loads(Path(path).read_text())
    if "tasks" not in earlier or "created" not in earlier:
        raise SystemExit(f"--carry {path}: not a leaderboard.json (no 'tasks'/'created')")
    stamp = earlier["created"]
    out = dict(summaries)
    for task, old in earlier["tasks"].items():
        if task not in out:
            out[task] = {**old, "carried_from": stamp}
            continue
        new = out[task]
        shared = [k for k in old["rows"] if k in new["rows"] and not is_agent(k)]
        differ = [k for k in shared if not math.isclose(
            old["rows"][k]["goodput_rps"][0], new["rows"][k]["goodput_rps"][0], rel_tol=1e-9)]
        missing = [k for k in old["rows"] if is_agent(k) and k not in new["rows"]]
        if not missing:
            continue
        if differ or not shared:
            out[task] = {**new, "carry_refused": f"the leaderboard of {stamp} scored "
                         f"{differ or 'no common heuristic'} differently: other windows or "
                         "code, its agent rows are not comparable"}
            continue
        best = new["rows"][new["best_heuristic"]]["goodput_rps"][0]
        rows = dict(new["rows"])
        for label in missing:
            row = dict(old["rows"][label])
            row["vs_best_heuristic"] = row["goodput_rps"][0] / best - 1 if best > 0 else math.nan
            rows[label] = row
        headline = sorted(set(new["headline_agents"]) | (set(old["headline_agents"])
                                                          & set(missing)))
        out[task] = {**new, "rows": rows, "headline_agents": headline,
                     "carried_rows": {"from": stamp, "rows": missing}}
    return out


def collect(jobs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[int, dict]]]:
    """task -> row label -> seed -> {metric: value}; agents are labelled by algorithm and
    mode, heuristics by name. A heuristic's values must be the same in every job of a task
    and seed (the same held-out windows and simulator seeds): a mismatch raises, so rows
    from jobs run apart (`baselines`) merge only when they are comparable. Jobs of
    `agent=heuristic` add their baseline rows only (their "agent" row is one of them)."""
    table: dict[str, dict[str, dict[int, dict]]] = {}
    for job in jobs:
        task = job["config"]["env"]["id"]
        algo = job["config"]["agent"]["algo"]
        seed = int(job["seed"])
        rows = table.setdefault(task, {})
        for label, means in job["eval"]["policies"].items():
            if label in AGENT_ROWS and algo == "heuristic":
                continue
            name = f"{agent_name(job)} ({agent_mode(job, label)})" if label in AGENT_ROWS \
                else label
            values = {k: means.get(k, math.nan) for k in (HEADLINE, ATTAINMENT)}
            seen = rows.setdefault(name, {}).setdefault(seed, values)
            if label not in AGENT_ROWS and not same_values(seen, values):
                raise ValueError(
                    f"{task} seed {seed}: heuristic {name} scored {seen} in one job and "
                    f"{values} in {job.get('_job', '?')}: the jobs evaluated different "
                    f"windows or code; aggregate only jobs of one evaluation setting")
    return table


def same_values(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12)
               or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def is_agent(label: str) -> bool:
    return label.endswith(")") and "(" in label


def stats(seeds: Mapping[int, Mapping[str, float]], metric: str) -> tuple[float, float, float]:
    return mean_ci([seeds[s][metric] for s in sorted(seeds)])


def task_summary(rows: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, Any]:
    """Per task: every row's stats, the best heuristic, and each agent row's gap to it."""
    out = {label: {"goodput_rps": stats(seeds, HEADLINE),
                   "slo_attainment": stats(seeds, ATTAINMENT), "seeds": sorted(seeds)}
           for label, seeds in rows.items()}
    heuristics = {k: v for k, v in out.items() if not is_agent(k)}
    best = max(heuristics, key=lambda k: _mean(heuristics[k]))
    worst = min(heuristics, key=lambda k: _mean(heuristics[k]))
    best_value = _mean(heuristics[best])
    for row in out.values():
        row["vs_best_heuristic"] = _mean(row) / best_value - 1 if best_value > 0 else math.nan
    spread = 1 - _mean(heuristics[worst]) / best_value if best_value > 0 else math.nan
    return {"rows": out, "best_heuristic": best, "worst_heuristic": worst,
            "heuristic_spread": spread}


def _mean(row: Mapping[str, Any]) -> float:
    value = row["goodput_rps"][0]
    return -math.inf if math.isnan(value) else value


def verdict(gap: float) -> str:
    if math.isnan(gap):
        return "no result"
    if gap >= MARGIN:
        return "wins"
    if gap < -MARGIN:
        return "loses"
    return "ties"


# ============================================================================ render
def cell(values: tuple[float, float, float], fmt: str) -> str:
    mean, low, high = values
    if math.isnan(mean):
        return "nan"
    if math.isnan(low):
        return fmt.format(mean)
    return f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"


def headline_table(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per task and learned agent: its headline row (the best checkpoint in the
    mode the job was configured to report, greedy by default; never the best of several
    rows picked on the held-out windows) against the best heuristic."""
    lines = ["| task | agent (headline row) | goodput (req/s) | SLO attainment | best heuristic "
             "| goodput (req/s) | vs best heuristic | verdict | heuristic spread |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, summary in summaries.items():
        rows = summary["rows"]
        best = summary["best_heuristic"]
        for label in sorted(k for k in summary["headline_agents"]):
            row = rows[label]
            gap = row["vs_best_heuristic"]
            lines.append(
                f"| {task} | {label} | {cell(row['goodput_rps'], '{:.2f}')} | "
                f"{cell(row['slo_attainment'], '{:.3f}')} | {best} | "
                f"{cell(rows[best]['goodput_rps'], '{:.2f}')} | {gap:+.1%} | {verdict(gap)} | "
                f"{summary['heuristic_spread']:.0%} |")
    return lines


def task_table(summary: Mapping[str, Any]) -> list[str]:
    rows = summary["rows"]
    lines = ["| policy | goodput (req/s) | SLO attainment | vs best heuristic | seeds |",
             "|---|---|---|---|---|"]
    for label in sorted(rows, key=lambda k: -_mean(rows[k])):
        row = rows[label]
        name = f"**{label}**" if is_agent(label) else label
        lines.append(f"| {name} | {cell(row['goodput_rps'], '{:.2f}')} | "
                     f"{cell(row['slo_attainment'], '{:.3f}')} | "
                     f"{row['vs_best_heuristic']:+.1%} | {len(row['seeds'])} |")
    return lines


def markdown(summaries: Mapping[str, Mapping[str, Any]], command: str, folders: Sequence[str],
             failed: Sequence[Path], stamp: str, jobs: Sequence[Mapping[str, Any]],
             superseded: Sequence[str] = ()) -> str:
    budgets = sorted({(j["config"]["env"]["id"], agent_name(j),
                       j["config"]["agent"].get("total_timesteps", 0)) for j in jobs
                      if j["config"]["agent"]["algo"] != "heuristic"})
    lines = [
        f"# Leaderboard ({stamp})", "",
        f"Command: `{command}`", "",
        *[f"Jobs made by: `{c}`" for c in job_commands(jobs)],
        "",
        *carried_note(summaries),
        *([f"Superseded by a later job of the same task, agent and seed ({len(superseded)}): "
           + "; ".join(superseded) + ".", ""] if superseded else []),
        f"Jobs: {', '.join(folders)}. Held-out split, 5 windows per seed, mean and 95% CI "
        "over seeds; goodput rate = requests meeting both SLOs (TTFT, TPOT) per second of "
        "makespan. Agents: the best checkpoint by the periodic evaluation on training "
        "windows (greedy and sampled) and the last model. Verdict: wins / loses when the "
        f"headline row's mean is {MARGIN:.0%} above / below the best heuristic's, else ties "
        "(the headline row is the mode each job reports, so nothing is picked on the "
        "held-out windows).", "",
        *headline_table(summaries), "",
        "Training budgets: " + "; ".join(f"{t} {a}: {s:,} steps" for t, a, s in budgets), "",
    ]
    if failed:
        lines += [f"Failed jobs ({len(failed)}): " + ", ".join(str(f) for f in failed), ""]
    for task, summary in summaries.items():
        lines += [f"## {task}", "", *task_table(summary), ""]
    return "\n".join(lines)


def job_commands(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each sweep's command once (in job order), else the job's own command."""
    seen: dict[str, None] = {}
    for job in jobs:
        command = job.get("sweep_command") or job.get("command")
        if command:
            seen.setdefault(command, None)
    return list(seen)


def carried_note(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    carried: dict[str, list[str]] = {}
    lines = []
    for task, summary in summaries.items():
        if "carried_from" in summary:
            carried.setdefault(summary["carried_from"], []).append(task)
        if "carried_rows" in summary:
            stamp = summary["carried_rows"]["from"]
            lines.append(f"{task}: rows {', '.join(summary['carried_rows']['rows'])} carried "
                         f"from the leaderboard of {stamp} (`results/history/leaderboard_"
                         f"{stamp}.md`), whose heuristic rows equal this one's.\n")
        if "carry_refused" in summary:
            lines.append(f"{task}: nothing carried: {summary['carry_refused']}.\n")
    return [f"Carried from the leaderboard of {stamp} (`results/history/leaderboard_{stamp}"
            f".md`: its jobs, commands and budgets; their folders are not on this machine): "
            f"{', '.join(tasks)}.\n" for stamp, tasks in carried.items()] + lines


def leaderboard_figure(summaries: Mapping[str, Mapping[str, Any]]) -> Any:
    """Goodput rate per task: the agents' best-checkpoint rows beside the 4 best heuristics,
    whiskers the 95% CI over seeds clipped at 0, and a caption saying so."""
    from servegym.agents.plots import add_caption, plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(4.2 * len(summaries), 4.2),
                             squeeze=False)
    seeds: set[int] = set()
    for ax, (task, summary) in zip(axes[0], summaries.items(), strict=True):
        rows = summary["rows"]
        agents = [k for k in rows if is_agent(k) and "last" not in k]
        heuristics = sorted((k for k in rows if not is_agent(k)),
                            key=lambda k: -_mean(rows[k]))[:4]
        labels = agents + heuristics
        for label in labels:
            seeds.update(rows[label]["seeds"])
        means = [rows[k]["goodput_rps"][0] for k in labels]
        lows = [rows[k]["goodput_rps"][1] for k in labels]
        highs = [rows[k]["goodput_rps"][2] for k in labels]
        errors = [[0.0 if math.isnan(lo) else m - max(lo, 0.0)
                   for m, lo in zip(means, lows, strict=True)],
                  [0.0 if math.isnan(hi) else hi - m for m, hi in zip(means, highs, strict=True)]]
        colors = ["tab:orange" if is_agent(k) else "tab:blue" for k in labels]
        ax.bar(range(len(labels)), means, yerr=errors, color=colors, capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(task.replace("servegym/", ""), fontsize=9)
        ax.set_ylabel("goodput (req/s)")
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    add_caption(fig, "Goodput rate (requests meeting both SLOs per second of makespan) on "
                "each task's held-out windows: mean over seeds "
                f"{', '.join(str(s) for s in sorted(seeds))}; whiskers: 95% t CI over seeds, "
                "clipped at 0. Orange: learned agents (best checkpoint by the periodic "
                "evaluation on training windows; greedy and sampled); blue: the 4 best "
                "heuristics. Each task's setting (model, GPU, trace, rate): the table in "
                "leaderboard.md.")
    return fig


def history_path(folder: Path, stamp: str) -> Path:
    """`leaderboard_<stamp>.md` in `folder`, or `_2`, `_3`, ... when one of that second
    exists (history is never overwritten, and two aggregations can share a second)."""
    path, number = folder / f"leaderboard_{stamp}.md", 1
    while path.exists():
        number += 1
        path = folder / f"leaderboard_{stamp}_{number}.md"
    return path


def plot(path: Path, summaries: Mapping[str, Mapping[str, Any]]) -> None:
    from servegym.agents.plots import save_png

    save_png(leaderboard_figure(summaries), path, overwrite=True)


# ============================================================================ commands
def aggregate(folders: Sequence[Path], out: Path, command: str,
              carry_from: Path | None = None) -> dict[str, Any]:
    jobs, failed = load_jobs(folders)
    if not jobs:
        raise SystemExit(f"no finished jobs under {[str(f) for f in folders]}; failed: "
                         f"{[str(f) for f in failed]}")
    jobs, superseded = supersede(jobs)
    table = collect(jobs)
    headlines = headline_labels(jobs)
    summaries = {task: {**task_summary(table[task]), "headline_agents": sorted(headlines[task])}
                 for task in table}
    if carry_from is not None:
        summaries = carry(summaries, carry_from)
    summaries = {task: summaries[task] for task in sorted(summaries)}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = markdown(summaries, command, [str(f) for f in folders], failed, stamp, jobs,
                    superseded)
    payload = {"created": stamp, "command": command, "tasks": summaries,
               "failed": [str(f) for f in failed]}
    atomic_write(history_path(out / "history", stamp), lambda h: h.write(text))
    atomic_write(out / "leaderboard.md", lambda h: h.write(text), overwrite=True)
    write_job_store(out / "leaderboard_jobs.json", jobs, stamp)
    atomic_write(out / "leaderboard.json",
                 lambda h: json.dump(payload, h, indent=2, default=float), overwrite=True)
    plot(out / "leaderboard.png", summaries)
    print(text)
    return payload


def run(seeds: str, jobs: int, extra: Sequence[str], experiments: str = "lb_*") -> Path:
    """The multirun of the jobs `experiments` matches (a glob over conf/experiment/);
    returns its folder."""
    if not experiments.startswith("lb_") or not list((ROOT / "conf" / "experiment")
                                                     .glob(f"{experiments}.yaml")):
        raise SystemExit(f"--experiments {experiments!r} matches no conf/experiment/lb_*.yaml")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d/%H-%M-%S")
    folder = ROOT / "multirun" / "leaderboard" / stamp
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment=glob({experiments})",
               f"seed={seeds}", f"hydra.sweep.dir={folder}", *extra]
    if jobs > 1:
        command.append("hydra/launcher=joblib_local")
        command.append(f"hydra.launcher.n_jobs={jobs}")
    print("running:", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return folder


def baselines(task: str, policies: Sequence[str], seeds: str, extra: Sequence[str]) -> Path:
    """Heuristic-only jobs for `task` (a conf/env option): `policies` evaluated on the
    leaderboard's held-out windows for `seeds`, no training, so heuristics added after a
    leaderboard run join its table. Include a heuristic the earlier jobs have: `collect`
    then checks that both evaluated the same windows (identical values) before merging."""
    if not (ROOT / "conf" / "env" / f"{task}.yaml").is_file():
        raise SystemExit(f"--task {task!r} is not a conf/env option")
    if not policies:
        raise SystemExit("--policies needs at least one heuristic spec")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d/%H-%M-%S")
    folder = ROOT / "multirun" / "leaderboard" / f"{stamp}_baselines_{task}"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=leaderboard_common",
               f"env={task}", "agent=heuristic", f"agent.policy={policies[0]}",
               f"eval.baselines=[{','.join(policies)}]", f"seed={seeds}",
               f"hydra.sweep.dir={folder}", *extra]
    print("running:", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="the multirun over lb_* jobs and seeds, then the table")
    run_p.add_argument("--seeds", default="0,1,2")
    run_p.add_argument("--jobs", type=int, default=1,
                       help="parallel jobs (2+ needs the joblib extra: pip install -e .[joblib])")
    run_p.add_argument("--experiments", default="lb_*",
                       help="glob of the jobs to run (e.g. 'lb_heterogeneous_*'); aggregate "
                       "the new folder with earlier ones for the full table")
    run_p.add_argument("overrides", nargs="*", help="extra train.py overrides for every job")
    agg_p = sub.add_parser("aggregate", help="the table from finished multirun folders")
    agg_p.add_argument("folders", nargs="+", type=Path,
                       help="multirun folders and job stores (results/leaderboard_jobs.json)")
    agg_p.add_argument("--carry", type=Path, default=None,
                       help="an earlier leaderboard.json: keep its tasks that no job covers")
    base_p = sub.add_parser("baselines", help="heuristic-only jobs for one task (no "
                            "training), to aggregate beside an earlier run")
    base_p.add_argument("--task", required=True, help="a conf/env option, e.g. preemption")
    base_p.add_argument("--policies", required=True,
                        help="comma-separated heuristic specs (include one the earlier "
                        "jobs have: the aggregation checks the values agree)")
    base_p.add_argument("--seeds", default="0,1,2")
    base_p.add_argument("overrides", nargs="*", help="extra train.py overrides")
    for p in (run_p, agg_p):
        p.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    if args.command == "baselines":
        print(baselines(args.task, [x for x in args.policies.split(",") if x], args.seeds,
                        args.overrides))
        return
    command = "python experiments/leaderboard.py " + shlex.join(
        sys.argv[1:] if argv is None else list(argv))
    folders = [run(args.seeds, args.jobs, args.overrides, args.experiments)] \
        if args.command == "run" else args.folders
    aggregate(folders, args.out, command, getattr(args, "carry", None))


if __name__ == "__main__":
    main()
