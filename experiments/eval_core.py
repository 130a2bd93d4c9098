"""The evaluation harness's engine: policies x request rates x seeds, goodput search, tables.

Kept free of Hydra so tests and notebooks can call it; `experiments/evaluate.py` is the
command-line front end. Every run goes through `servegym.agents.evaluation.simulate`, the path
train.py's evaluations take, so both harnesses simulate a policy the same way (pools
included). Definitions:

* A run simulates one policy spec (see `servegym.agents.build_scheduler`) on one workload at
  one mean request rate with one seed and yields every `serving/` summary metric of its report. A
  policy label `spec@preset` runs the spec on another cluster preset (`conf/cluster/`), so
  batching presets compare in one table (`fcfs@vllm_v0`, `fcfs@sarathi`); `clusters` maps
  each preset name to its settings.
* Workload of seed s: a window of `num_requests` consecutive requests of the workload (of seed
  s's realisation, for generated workloads) starting at an offset drawn from
  `default_rng(s)` (`window="random"`) or at the start (`"head"`);
  arrivals are the window's own, time-scaled to the rate (`arrivals="trace"`, keeps the
  burst shape), or Poisson at the rate (`"poisson"`, drawn from the same generator).
  Requests without SLO targets get `ttft_slo` / `tpot_slo`. Every policy sees the same
  workloads; the simulator's seed is s too (it seeds the policies' generators).
* Saturation: the throughput (finished requests per second over the makespan) of FCFS when
  the whole window arrives at 50x the trace's mean rate, on seed 0's window; the swept rates
  default to fractions of it.
* `serving/slo_attainment_worst_tenant`: the lowest per-tenant SLO attainment (the harness
  adds it to each run's summary; equal to `serving/slo_attainment` with one tenant).
* Goodput of a policy: the highest rate at which the mean SLO attainment over seeds is at
  least `goodput_target` (0.9: 90% of requests meet both their TTFT and TPOT targets). The
  sweep brackets it (the last rate of the first passing run of rates and the next one); then
  `goodput_iterations` steps, each simulating every seed at the bracket's midpoint (bisection),
  or at 1.5x the bracket's lower end while no failing rate is known. Reported with its
  bracket [goodput, upper); `upper = inf` when no tried rate failed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servegym.agents import build_scheduler
from servegym.agents.evaluation import simulate
from servegym.envs.costs.base import CostModel
from servegym.envs.workloads import Workload, scale_to_rate, with_poisson_arrivals

WINDOWS = ("random", "head")
ARRIVALS = ("trace", "poisson")
SATURATION_OVERLOAD = 50.0
EXPAND = 1.5  # goodput search step above the sweep when every swept rate passed


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate; see the module docstring for the definitions."""

    policies: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    num_requests: int | None = 2000
    window: str = "random"
    arrivals: str = "trace"
    rates: tuple[float, ...] | None = None
    rate_fractions: tuple[float, ...] = (0.25, 0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.6)
    ttft_slo: float = 2.0
    tpot_slo: float = 0.1
    goodput_target: float = 0.9
    goodput_iterations: int = 5
    cdf_fraction: float = 0.9
    jobs: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.policies:
            raise ValueError("give at least one policy to evaluate")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"policies are listed twice: {list(self.policies)}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {ARRIVALS}, got {self.arrivals!r}")
        if self.num_requests is not None and self.num_requests < 2:
            raise ValueError(f"num_requests must be >= 2 (or None: all), got {self.num_requests}")
        rates = self.rates if self.rates is not None else self.rate_fractions
        if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
            raise ValueError(f"rates / rate_fractions must be positive and finite, got {rates}")
        if not 0 < self.goodput_target <= 1:
            raise ValueError(f"goodput_target is a fraction in (0, 1], got {self.goodput_target}")
        if self.goodput_iterations < 0 or self.jobs < 1:
            raise ValueError("goodput_iterations must be >= 0 and jobs >= 1")
        for label in self.policies:
            build_scheduler(split_label(label)[0])  # fail before any simulation on a bad spec


@dataclass(frozen=True)
class RunTask:
    """One simulation: picklable, so runs can go to worker processes."""

    policy: str
    rate: float
    seed: int
    phase: str
    workload: Workload
    cost: CostModel
    cluster: Mapping[str, Any]
    keep_latencies: bool = False


@dataclass
class EvalResult:
    settings: EvalSettings
    saturation_rps: float
    rates: list[float]
    rows: list[dict[str, Any]]  # sweep and goodput-search runs, one per policy x rate x seed
    goodput: list[dict[str, Any]]
    cdf_rate: float
    latencies: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    wall_s: float = 0.0


def split_label(label: str) -> tuple[str, str | None]:
    """`"spec@preset"` -> (spec, preset); a label without `@` -> (label, None)."""
    spec, at, preset = label.rpartition("@")
    if not at or "(" in preset or ")" in preset:
        return label, None
    if not spec or not preset:
        raise ValueError(f"policy label {label!r}: write spec@cluster_preset")
    return spec, preset


# ====================================================================== workloads
def with_default_slos(workload: Workload, ttft_slo: float, tpot_slo: float) -> Workload:
    """Give requests without a target (infinite) the default TTFT / TPOT targets."""
    ttft = np.where(np.isinf(workload.ttft_slo), ttft_slo, workload.ttft_slo)
    tpot = np.where(np.isinf(workload.tpot_slo), tpot_slo, workload.tpot_slo)
    return dataclasses.replace(workload, ttft_slo=ttft, tpot_slo=tpot)


def window(workload: Workload, start: int, count: int) -> Workload:
    """Requests [start, start + count), arrivals shifted so the first is at 0."""
    stop = start + count
    columns = {name: getattr(workload, name)[start:stop]
               for name in ("arrival_time", "prompt_len", "output_len", "tenant", "priority",
                            "ttft_slo", "tpot_slo")}
    columns["arrival_time"] = columns["arrival_time"] - columns["arrival_time"][0]
    hashes = None if workload.prefix_hashes is None else workload.prefix_hashes[start:stop]
    return dataclasses.replace(workload, **columns, prefix_hashes=hashes)


def seed_window(workload: Workload, settings: EvalSettings, seed: int) -> Workload:
    count = len(workload) if settings.num_requests is None else settings.num_requests
    if count > len(workload):
        raise ValueError(f"num_requests={count} but the workload {workload.name!r} has only "
                         f"{len(workload)} requests")
    start = 0
    if settings.window == "random" and count < len(workload):
        start = int(np.random.default_rng(seed).integers(0, len(workload) - count + 1))
    return window(workload, start, count)


def at_rate(base: Workload, rate: float, seed: int, arrivals: str) -> Workload:
    if arrivals == "poisson":
        # A generator of its own, so the window draw and the arrivals do not interact.
        return with_poisson_arrivals(base, rate, np.random.default_rng([seed, 1]))
    return scale_to_rate(base, rate)


def mean_rate(workload: Workload) -> float:
    span = float(workload.arrival_time[-1] - workload.arrival_time[0])
    return len(workload) / span if span > 0 else float("nan")


# ====================================================================== runs
def run_one(task: RunTask) -> dict[str, Any]:
    """Simulate one task; the row has its identity, wall time and the summary metrics."""
    policies = build_scheduler(split_label(task.policy)[0])
    report, wall = simulate(policies, task.workload, task.seed, task.cost, task.cluster)
    row: dict[str, Any] = {
        "policy": task.policy, "rate": task.rate, "seed": task.seed, "phase": task.phase,
        "requests": len(task.workload), "wall_s": wall,
        **report.summary,
        "serving/slo_attainment_worst_tenant": min(tenant_attainment(report.records).values()),
    }
    if task.keep_latencies:
        r = report.records
        finished = r["status"] == "finished"
        row["_latencies"] = {
            "ttft": (r["first_token"] - r["arrival"])[finished],
            "e2e": (r["finish"] - r["arrival"])[finished],
            "tbt": np.repeat(report.tbt_values, report.tbt_weights),
        }
    return row


def tenant_attainment(records: Mapping[str, np.ndarray]) -> dict[int, float]:
    """SLO attainment per tenant, with `summarize`'s definition: finished, TTFT <= its
    target and TPOT <= its target (TPOT undefined for one output token: not a miss)."""
    finished = records["status"] == "finished"
    ttft = records["first_token"] - records["arrival"]
    outputs = records["output_tokens"]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(outputs > 1, (records["finish"] - records["first_token"])
                        / np.maximum(outputs - 1, 1), np.nan)
    met = finished & (ttft <= records["ttft_slo"]) & ~(tpot > records["tpot_slo"])
    tenants = records["tenant"]
    return {int(t): float(met[tenants == t].mean()) for t in np.unique(tenants)}


def run_tasks(tasks: Sequence[RunTask], jobs: int, progress: Callable[[int], None]
              ) -> list[dict[str, Any]]:
    """Run tasks, in order, on `jobs` processes; results do not depend on `jobs`."""
    if jobs == 1 or len(tasks) <= 1:
        rows = []
        for task in tasks:
            rows.append(run_one(task))
            progress(1)
        return rows
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        rows = []
        for row in pool.map(run_one, tasks, chunksize=1):
            rows.append(row)
            progress(1)
        return rows


def measure_saturation(base: Workload, cost: CostModel, cluster: Mapping[str, Any]) -> float:
    """FCFS throughput (req/s) when all of `base` arrives at 50x its mean rate."""
    rate = SATURATION_OVERLOAD * mean_rate(base)
    task = RunTask("fcfs", rate, 0, "saturation", scale_to_rate(base, rate), cost, cluster)
    return float(run_one(task)["serving/throughput_rps"])


# ====================================================================== goodput
def goodput_bracket(rates: Sequence[float], attainment: Sequence[float], target: float
                    ) -> tuple[float, float]:
    """(lo, hi): lo the last rate of the first passing run of rates (0 if the lowest fails),
    hi the next swept rate (inf if all pass)."""
    lo = 0.0
    for rate, value in sorted(zip(rates, attainment, strict=True)):
        if not value >= target:
            return lo, rate
        lo = rate
    return lo, math.inf


def _next_probe(lo: float, hi: float) -> float:
    """The bracket's midpoint; above a rate that passed with no failing rate known, 1.5x it."""
    return round(lo * EXPAND if math.isinf(hi) else (lo + hi) / 2, 6)


def mean_attainment(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, float], float]:
    sums: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        sums.setdefault((row["policy"], row["rate"]), []).append(row["serving/slo_attainment"])
    return {key: float(np.mean(values)) for key, values in sums.items()}


def search_goodput(settings: EvalSettings, sweep_rows: list[dict[str, Any]],
                   make_tasks: Callable[[str, float], list[RunTask]],
                   run: Callable[[list[RunTask]], list[dict[str, Any]]]
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Bisect each policy's goodput bracket; returns (goodput rows, probe run rows)."""
    attainment = mean_attainment(sweep_rows)
    rates = sorted({row["rate"] for row in sweep_rows})
    brackets = {}
    for policy in settings.policies:
        values = [attainment[(policy, rate)] for rate in rates]
        brackets[policy] = list(goodput_bracket(rates, values, settings.goodput_target))
    probes: list[dict[str, Any]] = []
    for _ in range(settings.goodput_iterations):
        probe = {p: _next_probe(*brackets[p]) for p in settings.policies}
        tasks = [task for p in settings.policies for task in make_tasks(p, probe[p])]
        rows = run(tasks)
        probes.extend(rows)
        measured = mean_attainment(rows)
        for p in settings.policies:
            side = 0 if measured[(p, probe[p])] >= settings.goodput_target else 1
            brackets[p][side] = probe[p]
    table = [{"policy": p, "goodput_rps": brackets[p][0], "upper_rps": brackets[p][1],
              "target": settings.goodput_target} for p in settings.policies]
    return table, probes


# ====================================================================== the evaluation
def evaluate(workload: Workload | Mapping[int, Workload], cost: CostModel,
             cluster: Mapping[str, Any], settings: EvalSettings,
             clusters: Mapping[str, Mapping[str, Any]] | None = None) -> EvalResult:
    """Sweep rates for every policy and seed, then search each policy's goodput.

    `workload`: one workload for every seed (a trace), or one per seed (a generator's
    realisations). `cluster` is the setting of plain labels and of the saturation probe;
    `clusters` gives the presets named by `spec@preset` labels.
    """
    if isinstance(workload, Workload):
        workload = dict.fromkeys(settings.seeds, workload)
    missing = [seed for seed in settings.seeds if seed not in workload]
    if missing:
        raise ValueError(f"no workload given for seed(s) {missing}")
    clusters = dict(clusters or {})
    cluster_of = {}
    for label in settings.policies:
        preset = split_label(label)[1]
        if preset is not None and preset not in clusters:
            raise ValueError(f"policy {label!r} names cluster preset {preset!r}, which was not "
                             f"given (given: {sorted(clusters)})")
        cluster_of[label] = cluster if preset is None else clusters[preset]
    started = time.perf_counter()
    bases = {seed: seed_window(with_default_slos(workload[seed], settings.ttft_slo,
                                                 settings.tpot_slo), settings, seed)
             for seed in settings.seeds}
    first = bases[settings.seeds[0]]
    saturation = measure_saturation(first, cost, cluster)
    if settings.rates is not None:
        rates = sorted(settings.rates)
    else:
        rates = sorted({round(f * saturation, 2) for f in settings.rate_fractions})
    cdf_rate = min(rates, key=lambda r: abs(r - settings.cdf_fraction * saturation))

    def make_tasks(policy: str, rate: float, phase: str = "goodput") -> list[RunTask]:
        return [RunTask(policy, rate, seed, phase, at_rate(bases[seed], rate, seed,
                                                           settings.arrivals),
                        cost, cluster_of[policy],
                        keep_latencies=phase == "sweep" and rate == cdf_rate
                        and seed == settings.seeds[0])
                for seed in settings.seeds]

    sweep = [t for p in settings.policies for r in rates for t in make_tasks(p, r, "sweep")]
    expected = len(sweep) + settings.goodput_iterations * len(settings.policies) * len(bases)
    with _progress(expected, settings.progress) as bar:
        def run(tasks: list[RunTask]) -> list[dict[str, Any]]:
            return run_tasks(tasks, settings.jobs, bar.update)

        rows = run(sweep)
        goodput, probes = search_goodput(settings, rows, make_tasks, run)
    latencies = {row["policy"]: row.pop("_latencies") for row in rows if "_latencies" in row}
    return EvalResult(settings, saturation, rates, rows + probes, goodput, cdf_rate, latencies,
                      time.perf_counter() - started)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, count: int = 1) -> None:
        return None


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="simulations", unit="run")
