"""Evaluation of schedulers on identical workloads: one path for learned agents and heuristics.

Definitions:

* Episode i of an evaluation (`evaluation_episodes`): a window of `num_requests`
  consecutive requests of the workload's `split` (train = first 70% of the trace's time
  span, test = the rest), cut exactly as `ServingEnv.reset` cuts a training episode
  (random start, arrivals shifted to 0, rescaled to `rate` req/s). Requests without SLO
  targets get the env's reward defaults (`default_ttft_slo`, `default_tpot_slo`; 2 s and
  0.1 s), as `experiments/evaluate.py` does. The start offsets and each episode's simulator
  seed come from one generator, `default_rng(SeedSequence([seed, stream]))`: every policy
  of a run sees the same windows and seeds; runs with the same `seed` see the same ones.
  `stream` separates the final evaluation (`FINAL`) from evaluations during training
  (`PERIODIC`) and from the choice of a warm-start teacher (`TEACHER`).
* A run (`run_episode`): `Simulator.run(workload, seed)` with one policy per decision kind;
  the controlled kinds are answered by the candidate (a `LearnedPolicy` or a heuristic),
  the others by the env's heuristics. The row holds every `serving/` summary metric.
  A learned agent that stalls (`servegym.agents.learned.AgentStalledError`: it keeps STOPping)
  abandons the window: its row has `stalled = 1` and NaN metrics.
* The table (`comparison_table`): per policy, the mean over episodes and, in brackets,
  the min and max (NaN when a window stalled).
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.build import build_simulator, simulator_kwargs
from servegym.envs.core.metrics import atomic_write
from servegym.envs.protocol import DecisionKind, Policy
from servegym.envs.workloads import Workload, scale_to_rate
from servegym.envs.workloads.transforms import split_by_time

FINAL = 1
PERIODIC = 2
TEACHER = 3  # windows that choose a warm-start teacher (agents/imitation.py)
TABLE_METRICS = (
    ("serving/goodput_rps", "goodput (req/s)", 1.0, "{:.2f}"),
    ("serving/slo_attainment", "SLO attainment", 1.0, "{:.3f}"),
    ("serving/ttft_p99", "TTFT p99 (s)", 1.0, "{:.2f}"),
    ("serving/tbt_p99", "TBT p99 (ms)", 1000.0, "{:.0f}"),
    ("serving/e2e_mean", "E2E mean (s)", 1.0, "{:.2f}"),
    ("serving/throughput_rps", "throughput (req/s)", 1.0, "{:.2f}"),
)
Factory = Callable[[], Mapping[DecisionKind, Policy]]


@dataclass(frozen=True)
class EvalEpisode:
    """One evaluation workload and the simulator seed it runs with."""

    index: int
    workload: Workload
    seed: int


def split_workload(workload: Workload, split: str) -> Workload:
    return workload if split == "all" else split_by_time(workload, split)


def evaluation_episodes(source: Workload, episodes: int, num_requests: int,
                        rate: float | None, seed: int, stream: int = FINAL,
                        ttft_slo: float = 2.0, tpot_slo: float = 0.1) -> list[EvalEpisode]:
    """The evaluation windows of `source` (already split); see the module docstring."""
    if num_requests > len(source):
        raise ValueError(f"eval windows of {num_requests} requests, but the split has only "
                         f"{len(source)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    out = []
    for index in range(episodes):
        start = int(rng.integers(0, len(source) - num_requests + 1))
        rows = np.arange(start, start + num_requests)
        if source.parents is not None:  # closed loop: the whole programs of the window
            rows = source.whole_programs(rows)
        episode = source.take(rows)
        episode = dataclasses.replace(
            episode, arrival_time=episode.arrival_time - episode.arrival_time[0],
            ttft_slo=np.where(np.isinf(episode.ttft_slo), ttft_slo, episode.ttft_slo),
            tpot_slo=np.where(np.isinf(episode.tpot_slo), tpot_slo, episode.tpot_slo))
        if rate is not None:
            episode = scale_to_rate(episode, rate)
        out.append(EvalEpisode(index, episode, int(rng.integers(2**31))))
    return out


def simulate(policies: Mapping[DecisionKind, Policy], workload: Workload, seed: int,
             cost: Any, cluster: Mapping[str, Any]) -> tuple[Any, float]:
    """(report, wall seconds) of `policies` on `workload`: the simulator of a `cluster`
    config (`num_instances` and `instance`, or `pools`) run to the end. Every harness
    (this module's episodes, experiments/eval_core.py's rate sweeps) runs through here."""
    sim = build_simulator(cost, policies=policies, **simulator_kwargs(cluster))
    started = time.perf_counter()
    report = sim.run(workload, seed=seed)
    return report, time.perf_counter() - started


def run_episode(policies: Mapping[DecisionKind, Policy], episode: EvalEpisode, cost: Any,
                cluster: Mapping[str, Any]) -> dict[str, Any]:
    """Simulate one episode; the row has the episode's identity, wall time and summary."""
    from servegym.agents.learned import AgentStalledError

    started = time.perf_counter()
    identity = {"episode": episode.index, "seed": episode.seed,
                "requests": len(episode.workload)}
    try:
        report, wall = simulate(policies, episode.workload, episode.seed, cost, cluster)
    except AgentStalledError:
        return {**identity, "wall_s": time.perf_counter() - started, "stalled": 1,
                **dict.fromkeys(stalled_metrics(), float("nan"))}
    return {**identity, "wall_s": wall, "stalled": 0, **report.summary}


def stalled_metrics() -> list[str]:
    """The `serving/` keys of a summary (NaN in the row of a stalled window)."""
    from servegym.envs.core.metrics import PERCENTILES

    names = ["requests", "makespan_s", "throughput_rps", "output_tokens_per_s",
             "total_tokens_per_s", "slo_attainment", "goodput_rps", "finished", "rejected",
             "preemptions", "swaps", "recomputed_tokens", "kv_utilisation_mean",
             "kv_utilisation_peak", "prefix_cache_hit_rate", "iterations", "fairness_jain",
             "cost_per_hour", "goodput_per_dollar", "kv_bound_seqs_max_len",
             "kv_bound_seqs_mean_len", "max_num_seqs"]
    for metric in ("ttft", "tpot", "e2e", "queueing", "tbt"):
        names += [f"{metric}_p{p}" for p in PERCENTILES] + [f"{metric}_mean"]
    return [f"serving/{name}" for name in names]


def compare(candidates: Mapping[str, Factory], episodes: Sequence[EvalEpisode], cost: Any,
            cluster: Mapping[str, Any], progress: bool = False,
            desc: str = "evaluation") -> list[dict[str, Any]]:
    """Every candidate (label -> fresh policies per episode) on every episode, in order."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(candidates) * len(episodes), desc=desc, unit="episode")
    rows = []
    try:
        for label, factory in candidates.items():
            for episode in episodes:
                rows.append({"policy": label, **run_episode(factory(), episode, cost, cluster)})
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def policy_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """policy -> metric -> mean over episodes, for every `serving/` metric."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["policy"], []).append(row)
    return {policy: {key: float(np.mean([r[key] for r in group]))
                     for key in group[0] if key.startswith("serving/")}
            for policy, group in grouped.items()}


def comparison_table(rows: Sequence[Mapping[str, Any]], order: Sequence[str] | None = None
                     ) -> str:
    """Markdown: one row per policy, mean [min, max] over episodes of `TABLE_METRICS`."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["policy"], []).append(row)
    lines = ["| policy | " + " | ".join(title for _, title, _, _ in TABLE_METRICS) + " |",
             "|---|" + "---|" * len(TABLE_METRICS)]
    for policy in order or list(grouped):
        cells = []
        for metric, _, scale, fmt in TABLE_METRICS:
            values = np.array([r[metric] for r in grouped[policy]]) * scale
            cells.append(f"{fmt.format(values.mean())} [{fmt.format(values.min())}, "
                         f"{fmt.format(values.max())}]")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One row per policy x episode with every `serving/` metric (atomic, no overwrite)."""
    identity = ["policy", "episode", "seed", "requests", "wall_s", "stalled"]
    metrics = sorted({key for row in rows for key in row if key.startswith("serving/")})
    header = identity + metrics

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(name, "") for name in header])

    return atomic_write(Path(path), write)


__all__ = ["FINAL", "PERIODIC", "EvalEpisode", "compare", "comparison_table",
           "evaluation_episodes", "policy_means", "run_episode", "split_workload",
           "write_rows_csv"]
