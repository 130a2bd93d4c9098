"""Fuzz the simulator: random valid decisions across its configuration space, with every
invariant checked after every event.

    python experiments/fuzz_sim.py                     # 10**6 decisions, writes results/fuzz_sim.*
    python experiments/fuzz_sim.py --quick             # 5,000 decisions, writes nothing
    python experiments/fuzz_sim.py --decisions 200000 --seed 3 --configs 'v1.*.x4'
    python experiments/fuzz_sim.py --replay v0.swap.prefix.x2:123456   # one episode, loud

Configurations: the grid of the structural axes, 3 x 2 x 2 x 5 = 60 named
`<batching>.<swap>.<prefix>.<cluster>`:

* batching: `v0` (vllm_v0: prefills first, never chunks), `v1` (vllm_v1 with chunked
  prefill, Sarathi-style when the budget is small), `v1nc` (vllm_v1 without chunking);
* swap preemption: `swap` (host swap space) or `noswap`;
* prefix caching: `prefix` or `noprefix`;
* cluster: `x1` .. `x4` identical instances (Llama-3-8B on H100, roofline costs), or
  `hetero`: the pools of `conf/cluster/hetero_h100_a100.yaml` (2 x H100 roofline + 4 x
  A100 measured tables, built by `servegym.envs.build.build_pools`).

Every configuration gets `--decisions / 60` decisions (rounded up), as episodes run to
completion until its share is reached (or as many episodes have run: a run of failing
episodes that decide nothing still ends). An episode is fully determined by its
configuration and its episode seed (drawn from `--seed`), which seeds one
`np.random.Generator` that draws, in order: the episode's settings, the workload, the
simulator seed and every decision (no global RNG). Per episode it draws:

* the workload, built by `servegym.envs.workloads.build_workload`: a `synthetic` source (poisson,
  gamma or on/off arrivals at 0.5-300 req/s; lognormal, uniform or Zipf prompt lengths;
  uniform or lognormal outputs) or a `sessions` source (5-30 multi-turn chats starting at
  0.2-50 per second, whose turns share their conversation, and a system prompt of 0-1000
  tokens shared across sessions, as prefix hashes); at most 80 requests; sessions are
  likelier where prefix caching is on;
* block size 8 or 16; KV capacity per pool, 9 times in 10, the larger of 0.8-1.5 x the
  largest request's blocks and 1-10 x the mean request's (tight: a third of the episodes
  of a tuning run preempted; below the largest request, some requests are rejected), else what GPU
  memory holds; max_num_seqs 1-256; token budget 16-8192 (for v0 and v1nc, 4 times in 5
  at least the longest prompt); watermark 0-5%; swap space 0.1-4 x the KV blocks (where
  swap is on); max_model_len 512-2048 in 15% of pools (context rejections);
* the simulator's fast paths (`decode_runs`) on for 3 episodes in 4;
* a rate of `Simulator.interrupt` calls (0, 0.1 or 0.5 per decision, on a random
  instance), which cut decode runs short between decisions.

Decisions: the simulator runs with `policies={}`, so it hands every ROUTE, ADMIT and
PREEMPT decision to the fuzzer, which answers uniformly among the valid answers: the
candidates `Decision.mask()` allows, plus STOP where `Decision.can_stop()`; for PREEMPT
with swap space, candidate x {recompute, swap}. The answer goes through `Simulator.apply`
unvalidated, so the simulator's own validation checks it against the mask.

Checks, each failure a *violation* recorded with configuration, episode seed, decision
count, simulated time, the drawn settings and the message (the run goes on with the next
episode):

* `debug_checks=True`: after every event (instance event or arrival) the simulator checks
  KV accounting of every instance (`BlockManager.check`: no leaked, double-counted or
  negative blocks, prefix-cache reference counts, swap space) and that time never goes
  back; at the drain it checks that no instance holds a request and every accepted
  request generated its whole output (as `Simulator.run` checks). Any exception raised
  in the episode counts (the checker's, a crash, or `InvalidActionError` when a
  mask-valid answer is refused);
* a decision with no valid answer at all;
* after the drain, through the public views: one request per workload row, each FINISHED
  with its whole output and arrival <= first scheduled <= first token <= finish, or
  REJECTED with a reason; finished + rejected in the report equal the workload; per
  instance empty waiting, running and swapped queues, every KV block free (cached blocks
  only evictable, none referenced), no swap space used, no bulk blocks pending, and the
  KV-occupancy timeline in time order.

Bounded: an episode may process at most `EVENT_FACTOR` x (its workload's prompt + output
tokens + requests) events and as many decisions (counted by a wrapper around the
simulator's per-event check), and run at most `--episode-wall-s` seconds (a SIGALRM
backstop for a loop that neither decides nor completes an event); an episode that hits
a cap is a *hang* (a failure), recorded like a violation, never looped forever.

Prints a table per configuration (decisions, events: the per-event checks run, i.e.
instance events and arrivals processed; episodes, violations, hangs, wall s)
with totals, and a coverage table (decisions per kind, STOPs, swap answers, preemptions,
swaps, prefix-cache hit tokens, rejections, interrupts). Writes `<out>/fuzz_sim.md` and
`.json` atomically, with the command that made them, and a timestamped copy of both
under `<out>/history/` so earlier runs are never overwritten. `--quick` writes nothing
unless `--out` is given. Exit status 1 if any violation or hang was found.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import math
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from servegym.envs.build import build_pools, instance_config
from servegym.envs.core.cluster import Pool
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.metrics import atomic_write
from servegym.envs.core.request import FINISHED, REJECTED
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import RooflineFallbackWarning, build_cost_model
from servegym.envs.protocol import STOP, Action, Decision, DecisionKind
from servegym.envs.workloads.build import build_workload
from servegym.envs.workloads.workload import Workload, WorkloadWarning

ROOT = Path(__file__).resolve().parents[1]
HETERO_YAML = ROOT / "conf" / "cluster" / "hetero_h100_a100.yaml"
MODEL, GPU = "Llama-3-8B", "H100-80GB"

DEFAULT_DECISIONS = 1_000_000
QUICK_DECISIONS = 5_000
EVENT_FACTOR = 20  # events (and decisions) per (token + request) before an episode hangs
EPISODE_WALL_S = 300.0
MAX_RECORDED = 200  # failures kept in full in the JSON (all are counted)

BATCHING = {  # name -> InstanceConfig settings
    "v0": {"mode": "vllm_v0", "enable_chunked_prefill": False},
    "v1": {"mode": "vllm_v1", "enable_chunked_prefill": True},
    "v1nc": {"mode": "vllm_v1", "enable_chunked_prefill": False},
}
CLUSTERS = ("x1", "x2", "x3", "x4", "hetero")
AXES = ("batching", "swap", "prefix", "cluster")


# ============================================================================ configurations
@dataclass(frozen=True)
class FuzzConfig:
    """One point of the structural grid."""

    batching: str  # a key of BATCHING
    swap: bool
    prefix: bool
    cluster: str  # one of CLUSTERS

    @property
    def name(self) -> str:
        return (f"{self.batching}.{'swap' if self.swap else 'noswap'}."
                f"{'prefix' if self.prefix else 'noprefix'}.{self.cluster}")

    def axes(self) -> dict[str, str]:
        return dict(zip(AXES, self.name.split("."), strict=True))


def grid() -> list[FuzzConfig]:
    """Every configuration, in a fixed order."""
    return [FuzzConfig(b, s, p, c) for b in BATCHING for s in (False, True)
            for p in (False, True) for c in CLUSTERS]


def select(patterns: Sequence[str] | None) -> list[FuzzConfig]:
    """The grid's configurations whose names match any of `patterns` (fnmatch)."""
    configs = grid()
    if not patterns:
        return configs
    chosen = [c for c in configs if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not chosen:
        raise ValueError(f"no configuration matches {list(patterns)}; names look like "
                         f"{configs[0].name}, {configs[-1].name}")
    return chosen


class Costs:
    """Cost models per (cluster, block size), built once: `x<n>` one H100 roofline model,
    `hetero` the hetero yaml's pools (their cost models; their settings are redrawn per
    episode)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], list[Pool]] = {}
        spec = OmegaConf.to_container(OmegaConf.load(HETERO_YAML), resolve=True)
        assert isinstance(spec, dict)
        self.hetero_pools: list[dict[str, Any]] = list(spec["pools"])
        self.hetero_instance: dict[str, Any] = dict(spec.get("instance") or {})

    def pools(self, cluster: str, block_size: int) -> list[Pool]:
        key = (cluster, block_size)
        if key not in self._cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RooflineFallbackWarning)
                base = build_cost_model(MODEL, GPU, 1, source="roofline", block_size=block_size)
                if cluster == "hetero":
                    built = build_pools(self.hetero_pools, base,
                                        {**self.hetero_instance, "block_size": block_size})
                else:
                    built = [Pool("default", InstanceConfig(), base, int(cluster[1:]))]
            self._cache[key] = built
        return self._cache[key]


# ============================================================================ episodes
class EpisodeCap(Exception):
    """An episode ran past its event, decision or wall-clock cap: a hang."""


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def pick(rng: np.random.Generator, values: Sequence[Any]) -> Any:
    return values[int(rng.integers(len(values)))]


def draw_workload_spec(rng: np.random.Generator, config: FuzzConfig) -> dict[str, Any]:
    """A small `build_workload` source: synthetic lengths or multi-turn sessions."""
    if rng.random() < (0.6 if config.prefix else 0.3):
        return {
            "kind": "sessions",
            "num_sessions": int(rng.integers(5, 31)),
            "arrivals": {"process": "poisson", "rate": log_uniform(rng, 0.2, 50.0)},
            "turns": {"dist": "uniform", "low": 1, "high": int(rng.integers(1, 6))},
            "think_time": {"dist": "exponential", "mean": log_uniform(rng, 0.05, 10.0)},
            "first_prompt": {"dist": "lognormal", "mean": log_uniform(rng, 16, 600),
                             "cv": 1.0, "high": 1500},
            "user_prompt": {"dist": "lognormal", "mean": log_uniform(rng, 4, 120), "cv": 1.0,
                            "high": 300},
            "output": {"dist": "lognormal", "mean": log_uniform(rng, 16, 300), "cv": 0.8,
                       "high": 400},
            "system_prompt_len": int(pick(rng, [0, 16, 64, 256, 1000])),
        }
    rate = log_uniform(rng, 0.5, 300.0)
    process = pick(rng, ["poisson", "gamma", "onoff"])
    arrivals: dict[str, Any] = {"process": process, "rate": rate}
    if process == "gamma":
        arrivals["cv"] = log_uniform(rng, 0.3, 4.0)
    elif process == "onoff":
        arrivals |= {"on_s": log_uniform(rng, 0.2, 5.0), "off_s": log_uniform(rng, 0.2, 5.0)}
    prompt_kind = pick(rng, ["lognormal", "uniform", "zipf"])
    high = int(log_uniform(rng, 8, 2000))
    if prompt_kind == "lognormal":
        prompt = {"dist": "lognormal", "mean": log_uniform(rng, 8, 800),
                  "cv": float(rng.uniform(0.3, 2.0)), "high": 2000}
    elif prompt_kind == "uniform":
        prompt = {"dist": "uniform", "low": 1, "high": high}
    else:
        prompt = {"dist": "zipf", "a": float(rng.uniform(0.5, 1.5)), "high": high}
    out_high = int(log_uniform(rng, 8, 400))
    output = (
        {"dist": "uniform", "low": 1, "high": out_high} if rng.random() < 0.5
        else {"dist": "lognormal", "mean": log_uniform(rng, 16, 300),
              "cv": float(rng.uniform(0.3, 1.5)), "high": 400}
    )
    return {"kind": "synthetic", "num_requests": int(rng.integers(10, 81)),
            "arrivals": arrivals, "prompt": prompt, "output": output}


def draw_instance(rng: np.random.Generator, config: FuzzConfig, block_size: int,
                  largest_blocks: int, mean_blocks: float, largest_prompt: int
                  ) -> dict[str, Any]:
    """One pool's InstanceConfig settings on top of the configuration's axes."""
    if rng.random() < 0.1:
        kv: int | None = None  # what GPU memory holds: thousands of blocks
    else:
        # About the largest request (below it: rejections), or a few typical ones.
        kv = max(2, round(max(largest_blocks * log_uniform(rng, 0.8, 1.5),
                              mean_blocks * log_uniform(rng, 1.0, 10.0))))
    seqs = int(pick(rng, [1, 2, 4, 8, 16, 32, 64, 256]))
    budgets = [16, 64, 256, 512, 1024, 2048, 4096, 8192]
    if not BATCHING[config.batching]["enable_chunked_prefill"] and rng.random() < 0.8:
        budgets = [b for b in budgets if b >= largest_prompt] or [8192]  # few rejections
    budget = int(pick(rng, budgets))
    settings: dict[str, Any] = {
        **BATCHING[config.batching],
        "block_size": block_size,
        "num_kv_blocks": kv,
        "max_num_seqs": seqs,
        "max_num_batched_tokens": max(seqs, budget),
        "enable_prefix_caching": config.prefix,
        "watermark": float(pick(rng, [0.0, 0.0, 0.01, 0.05])),
        "swap_space_blocks": 0,
    }
    if config.swap:
        settings["swap_space_blocks"] = max(1, round((kv or 4096) * pick(rng, [0.1, 0.5, 1, 4])))
    if rng.random() < 0.15:
        settings["max_model_len"] = int(rng.integers(512, 2049))
    return settings


@dataclass
class Episode:
    """What one episode did; `failure` is None when every check passed."""

    config: str
    episode_seed: int
    decisions: int = 0
    events: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: {k.name: 0 for k in DecisionKind})
    stops: int = 0
    swap_answers: int = 0
    interrupts: int = 0
    requests: int = 0
    finished: int = 0
    rejected: int = 0
    preemptions: int = 0
    swaps: int = 0
    prefix_hit_tokens: int = 0
    decode_runs: bool = True
    cap: int = 0  # events (and decisions) this episode may take
    failure: dict[str, Any] | None = None  # {"kind": "violation"|"hang", "message", ...}
    settings: dict[str, Any] = field(default_factory=dict)


@contextmanager
def wall_cap(seconds: float | None) -> Iterator[None]:
    """Raise EpisodeCap after `seconds` of wall time (main thread with SIGALRM only)."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise EpisodeCap(f"episode ran past its wall-clock cap of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def answer(decision: Decision, rng: np.random.Generator) -> Action:
    """A uniformly random valid answer to `decision`."""
    kind = decision.kind
    if kind == DecisionKind.ADMIT:
        valid = np.flatnonzero(decision.mask()).tolist()
        if decision.can_stop():
            valid.append(STOP)
        if not valid:
            raise AssertionError(
                f"ADMIT with no valid answer: {len(decision.candidates)} waiting, none "
                "admissible, and STOP refused")
        return Action(int(valid[int(rng.integers(len(valid)))]))
    count = len(decision.candidates)
    if count == 0:
        raise AssertionError(f"{kind.name} decision with no candidates")
    if kind == DecisionKind.PREEMPT and decision.can_swap():
        pair = int(rng.integers(2 * count))  # uniform over candidate x {recompute, swap}
        return Action(pair // 2, swap=bool(pair % 2))
    return Action(int(rng.integers(count)))


def build_episode(config: FuzzConfig, episode_seed: int, costs: Costs
                  ) -> tuple[Simulator, Workload, np.random.Generator, dict[str, Any]]:
    """The simulator, workload, decision generator and drawn settings of one episode."""
    rng = np.random.default_rng(episode_seed)
    block_size = int(pick(rng, [8, 16]))
    source = draw_workload_spec(rng, config)
    workload_seed = int(rng.integers(2**31))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WorkloadWarning)
        workload = build_workload(source, num_requests=80, seed=workload_seed,
                                  block_size=block_size)
    total = workload.prompt_len + workload.output_len
    largest_blocks = int(-(-(int(total.max()) - 1) // block_size))
    mean_blocks = float(np.mean(-(-(total - 1) // block_size)))
    base_pools = costs.pools(config.cluster, block_size)
    pools, instance_settings = [], []
    for pool in base_pools:
        settings = draw_instance(rng, config, block_size, largest_blocks, mean_blocks,
                                 int(workload.prompt_len.max()))
        instance_settings.append({"pool": pool.name, "count": pool.count, **settings})
        base = costs.hetero_instance if config.cluster == "hetero" else {}
        pools.append(dataclasses.replace(pool, config=instance_config({**base, **settings})))
    decode_runs = bool(rng.random() < 0.75)
    interrupt_rate = float(pick(rng, [0.0, 0.0, 0.1, 0.5]))
    sim_seed = int(rng.integers(2**31))
    sim = Simulator(pools=pools, policies={}, decode_runs=decode_runs, debug_checks=True)
    settings = {"block_size": block_size, "source": source, "workload_seed": workload_seed,
                "requests": len(workload), "pools": instance_settings,
                "decode_runs": decode_runs, "interrupt_rate": interrupt_rate,
                "sim_seed": sim_seed}
    return sim, workload, rng, settings


def run_episode(config: FuzzConfig, episode_seed: int, costs: Costs,
                event_factor: int = EVENT_FACTOR, wall_s: float | None = EPISODE_WALL_S,
                raise_errors: bool = False) -> Episode:
    """Run one episode to its drain (or first failure) with every check on."""
    episode = Episode(config.name, episode_seed)
    sim, workload, rng, settings = build_episode(config, episode_seed, costs)
    episode.settings = settings
    episode.requests = len(workload)
    episode.decode_runs = settings["decode_runs"]
    interrupt_rate = settings["interrupt_rate"]
    cap = episode.cap = event_factor * (
        int(workload.prompt_len.sum() + workload.output_len.sum()) + len(workload))
    check = sim.check_invariants  # the debug check the loop calls after every event

    def counted_check(now: float) -> None:
        episode.events += 1
        if episode.events > cap:
            raise EpisodeCap(f"more than {cap:,} events ({event_factor} x (tokens + requests))")
        check(now)

    sim.check_invariants = counted_check  # type: ignore[method-assign]
    try:
        with wall_cap(wall_s):
            sim.reset(workload, seed=settings["sim_seed"])
            while (decision := sim.next_decision()) is not None:
                episode.decisions += 1
                if episode.decisions > cap:
                    raise EpisodeCap(f"more than {cap:,} decisions")
                if interrupt_rate and rng.random() < interrupt_rate:
                    target = sim.instances[int(rng.integers(len(sim.instances)))]
                    if sim.interrupt(target) is not None:
                        episode.interrupts += 1
                action = answer(decision, rng)
                episode.kinds[decision.kind.name] += 1
                episode.stops += action.choice == STOP
                episode.swap_answers += action.swap
                sim.apply(action)
            report = sim.report()
            drain_problems = check_drained(sim, workload, report.summary)
            if drain_problems:
                raise AssertionError("after the drain: " + "; ".join(drain_problems[:5]))
    except EpisodeCap as error:
        if raise_errors:
            raise
        episode.failure = failure("hang", error, sim, episode)
    except Exception as error:
        if raise_errors:
            raise
        episode.failure = failure("violation", error, sim, episode)
    else:
        records = report.records
        episode.finished = sum(r.status == FINISHED for r in sim.requests)
        episode.rejected = sum(r.status == REJECTED for r in sim.requests)
        episode.preemptions = int(np.sum(records["preemptions"]))
        episode.swaps = int(np.sum(records["swaps"]))
        episode.prefix_hit_tokens = int(np.sum(records["prefix_hit_tokens"]))
    return episode


def failure(kind: str, error: BaseException, sim: Simulator, episode: Episode) -> dict[str, Any]:
    frames = traceback.extract_tb(error.__traceback__)
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-4:]]
    return {"kind": kind, "config": episode.config, "episode_seed": episode.episode_seed,
            "error": type(error).__name__, "message": str(error),
            "decisions": episode.decisions, "events": episode.events,
            "time": float(getattr(sim, "now", float("nan"))), "where": where,
            "settings": episode.settings}


def check_drained(sim: Simulator, workload: Workload, summary: Mapping[str, float]
                  ) -> list[str]:
    """What the public views say is wrong after the drain (empty when all is well)."""
    problems = []
    if len(sim.requests) != len(workload):
        problems.append(f"{len(sim.requests)} requests arrived of {len(workload)}")
    for request in sim.requests:
        if request.status == FINISHED:
            if request.num_generated != request.output_len:
                problems.append(f"request {request.rid} finished with {request.num_generated}"
                                f" of {request.output_len} tokens")
            if not (request.arrival_time <= request.first_scheduled
                    <= request.first_token_time <= request.finish_time):
                problems.append(f"request {request.rid} times out of order: arrival "
                                f"{request.arrival_time}, scheduled {request.first_scheduled}, "
                                f"first token {request.first_token_time}, finish "
                                f"{request.finish_time}")
        elif request.status == REJECTED:
            if not request.reject_reason:
                problems.append(f"request {request.rid} rejected without a reason")
        else:
            problems.append(f"request {request.rid} ended with status {request.status}")
    if summary["serving/finished"] + summary["serving/rejected"] != len(workload):
        problems.append(f"report: {summary['serving/finished']} finished + "
                        f"{summary['serving/rejected']} rejected != {len(workload)}")
    for instance in sim.instances:
        bm, label = instance.bm, f"instance {instance.index}"
        if instance.waiting or instance.running or instance.swapped:
            problems.append(f"{label} holds {len(instance.waiting)} waiting, "
                            f"{len(instance.running)} running, {len(instance.swapped)} swapped")
        if bm.num_free != bm.num_blocks:
            problems.append(f"{label}: {bm.num_blocks - bm.num_free} KV blocks still used")
        if len(bm.refcount) != len(bm.evictable) or any(bm.refcount.values()):
            problems.append(f"{label}: cached blocks still referenced")
        if bm.swap_used:
            problems.append(f"{label}: {bm.swap_used} swap blocks still used")
        if instance.bulk_blocks:
            problems.append(f"{label}: {instance.bulk_blocks} bulk blocks pending")
        times = np.frombuffer(instance.kv_times)
        if times.size and np.any(np.diff(times) < 0):
            problems.append(f"{label}: KV occupancy timeline goes back in time")
    return problems


# ============================================================================ the run
COUNTS = ("decisions", "events", "episodes", "violations", "hangs", "requests", "finished",
          "rejected", "preemptions", "swaps", "prefix_hit_tokens", "stops", "swap_answers",
          "interrupts", "reference_path_episodes", *(f"{k.name.lower()}_decisions"
                                                     for k in DecisionKind))


def new_stats() -> dict[str, Any]:
    return {key: 0 for key in COUNTS} | {"wall_s": 0.0, "max_cap_use": 0.0}


def add_episode(stats: dict[str, Any], episode: Episode) -> None:
    stats["episodes"] += 1
    for key in ("decisions", "events", "requests", "finished", "rejected", "preemptions",
                "swaps", "prefix_hit_tokens", "stops", "swap_answers", "interrupts"):
        stats[key] += getattr(episode, key)
    for kind, count in episode.kinds.items():
        stats[f"{kind.lower()}_decisions"] += count
    stats["reference_path_episodes"] += not episode.decode_runs
    use = max(episode.events, episode.decisions) / max(episode.cap, 1)
    stats["max_cap_use"] = max(stats["max_cap_use"], use)
    if episode.failure is not None:
        stats["violations" if episode.failure["kind"] == "violation" else "hangs"] += 1


def fuzz(decisions: int = DEFAULT_DECISIONS, seed: int = 0,
         configs: Sequence[FuzzConfig] | None = None, event_factor: int = EVENT_FACTOR,
         wall_s: float | None = EPISODE_WALL_S,
         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run at least `decisions` decisions, shared equally by `configs` (default: the grid).

    Returns {"configs": {name: stats}, "totals": stats, "failures": [...], ...}; counts
    depend only on the arguments (not on wall time, unless an episode hits `wall_s`)."""
    configs = list(configs or grid())
    share = -(-decisions // len(configs))
    costs = Costs()
    streams = np.random.SeedSequence(seed).spawn(len(configs))
    per_config: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    for config, stream in zip(configs, streams, strict=True):
        seeds = np.random.default_rng(stream)
        stats = new_stats() | {"axes": config.axes()}
        began = time.perf_counter()
        while stats["decisions"] < share and stats["episodes"] < share:  # (failing
            # episodes may decide nothing; each episode takes at least one of the share)
            episode = run_episode(config, int(seeds.integers(2**63)), costs, event_factor,
                                  wall_s)
            add_episode(stats, episode)
            if episode.failure is not None:
                failures.append(episode.failure)
                if progress:
                    progress(f"  {episode.failure['kind'].upper()} {config.name} episode "
                             f"{episode.episode_seed}: {episode.failure['error']}: "
                             f"{episode.failure['message'][:200]}")
        stats["wall_s"] = time.perf_counter() - began
        per_config[config.name] = stats
        if progress:
            progress(row(config.name, stats))
    totals = new_stats()
    for stats in per_config.values():
        for key in (*COUNTS, "wall_s"):
            totals[key] += stats[key]
        totals["max_cap_use"] = max(totals["max_cap_use"], stats["max_cap_use"])
    totals["wall_s"] = time.perf_counter() - started
    return {"seed": seed, "decisions_requested": decisions, "share_per_config": share,
            "event_factor": event_factor, "episode_wall_s": wall_s,
            "configs": per_config, "totals": totals, "failures": failures}


# ============================================================================ report
HEAD = ("| configuration | decisions | events | episodes | violations | hangs | wall s |\n"
        "|---|---:|---:|---:|---:|---:|---:|")
COVERAGE_HEAD = ("| configuration | route | admit | preempt | STOP | swap answers | "
                 "preemptions | swaps | prefix hit tokens | rejected / requests | "
                 "interrupts | reference-path episodes |\n"
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def row(name: str, s: Mapping[str, Any]) -> str:
    return (f"| {name} | {s['decisions']:,} | {s['events']:,} | {s['episodes']:,} | "
            f"{s['violations']} | {s['hangs']} | {s['wall_s']:.1f} |")


def coverage_row(name: str, s: Mapping[str, Any]) -> str:
    return (f"| {name} | {s['route_decisions']:,} | {s['admit_decisions']:,} | "
            f"{s['preempt_decisions']:,} | {s['stops']:,} | {s['swap_answers']:,} | "
            f"{s['preemptions']:,} | {s['swaps']:,} | {s['prefix_hit_tokens']:,} | "
            f"{s['rejected']:,} / {s['requests']:,} | {s['interrupts']:,} | "
            f"{s['reference_path_episodes']:,} |")


def tables(result: Mapping[str, Any]) -> tuple[str, str]:
    main = [HEAD, *(row(n, s) for n, s in result["configs"].items()),
            row("**total**", result["totals"])]
    coverage = [COVERAGE_HEAD, *(coverage_row(n, s) for n, s in result["configs"].items()),
                coverage_row("**total**", result["totals"])]
    return "\n".join(main), "\n".join(coverage)


def failure_lines(result: Mapping[str, Any]) -> list[str]:
    if not result["failures"]:
        return ["No violations, no hangs."]
    lines = []
    for f in result["failures"][:MAX_RECORDED]:
        lines.append(f"- {f['kind']} in `{f['config']}`, episode seed {f['episode_seed']} "
                     f"(decision {f['decisions']}, event {f['events']}, t={f['time']:.6g} s): "
                     f"{f['error']}: {f['message']}; replay: `python experiments/fuzz_sim.py "
                     f"--replay {f['config']}:{f['episode_seed']}`")
    return lines


def markdown(result: Mapping[str, Any], command: str, stamp: str) -> str:
    main, coverage = tables(result)
    t = result["totals"]
    return "\n".join([
        f"# Simulator fuzz ({stamp})",
        "",
        f"Command: `{command}`",
        "",
        f"{t['decisions']:,} uniformly random valid decisions (ROUTE / ADMIT / PREEMPT, STOP "
        f"where allowed) over {len(result['configs'])} configurations "
        "(`<batching>.<swap>.<prefix>.<cluster>`; per-episode draws of workload, block size, "
        "KV capacity, budgets, watermark, swap space, context, fast paths and interrupts: see "
        "the module docstring of experiments/fuzz_sim.py), seed "
        f"{result['seed']}. `debug_checks=True` checks KV invariants and clock order after "
        f"every event ({t['events']:,} events); every drained episode is checked through the "
        "public views (requests all finished or rejected with a reason, every KV block free, "
        f"no swap used). Episode cap: {result['event_factor']} x (tokens + requests) events "
        f"and decisions, {result['episode_wall_s']} s wall; the busiest episode used "
        f"{t['max_cap_use']:.1%} of its cap.",
        "",
        f"**Totals: {t['decisions']:,} decisions, {t['events']:,} events, "
        f"{t['episodes']:,} episodes, {t['violations']} violations, {t['hangs']} hangs, "
        f"{t['wall_s']:.0f} s wall ({t['decisions'] / max(t['wall_s'], 1e-9):,.0f} "
        "decisions/s).**",
        "",
        main,
        "",
        "Coverage (what the random decisions exercised):",
        "",
        coverage,
        "",
        "Failures:",
        "",
        *failure_lines(result),
        "",
    ])


def git_head() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip()


def write(result: Mapping[str, Any], command: str, out: Path) -> list[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = markdown(result, command, stamp)
    payload = {"created": stamp, "command": command, "commit": git_head(),
               "python": platform.python_version(), "numpy": np.__version__,
               **result, "failures": result["failures"][:MAX_RECORDED],
               "failures_total": len(result["failures"])}

    def dump(handle: Any) -> None:
        json.dump(payload, handle, indent=2, default=str)

    return [
        atomic_write(out / "history" / f"fuzz_sim_{stamp}.md", lambda h: h.write(text)),
        atomic_write(out / "history" / f"fuzz_sim_{stamp}.json", dump),
        atomic_write(out / "fuzz_sim.md", lambda h: h.write(text), overwrite=True),
        atomic_write(out / "fuzz_sim.json", dump, overwrite=True),
    ]


def replay(spec: str) -> int:
    """Run one episode (`CONFIG:EPISODE_SEED`) with errors raised, and print it."""
    name, _, seed_text = spec.rpartition(":")
    (config,) = select([name])
    episode = run_episode(config, int(seed_text), Costs(), wall_s=None, raise_errors=True)
    print(json.dumps(dataclasses.asdict(episode), indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=None,
                        help=f"decisions in all (default {DEFAULT_DECISIONS:,}; --quick "
                             f"{QUICK_DECISIONS:,})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_DECISIONS:,} decisions; writes nothing unless --out")
    parser.add_argument("--out", default=None,
                        help="results folder (default results/, none with --quick)")
    parser.add_argument("--configs", nargs="*", help="fnmatch patterns of configuration names")
    parser.add_argument("--event-factor", type=int, default=EVENT_FACTOR,
                        help="episode cap: events and decisions per (token + request)")
    parser.add_argument("--episode-wall-s", type=float, default=EPISODE_WALL_S)
    parser.add_argument("--replay", metavar="CONFIG:EPISODE_SEED",
                        help="run one episode with errors raised (tracebacks) and print it")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    decisions = args.decisions or (QUICK_DECISIONS if args.quick else DEFAULT_DECISIONS)
    if decisions < 1:
        parser.error("--decisions must be >= 1")
    if args.event_factor < 1:
        parser.error("--event-factor must be >= 1")
    out = Path(args.out) if args.out else (None if args.quick else ROOT / "results")
    command = shlex.join(["python", "experiments/fuzz_sim.py",
                          *(sys.argv[1:] if argv is None else argv)])
    try:
        configs = select(args.configs)
    except ValueError as error:
        parser.error(str(error))
    print(HEAD, flush=True)
    result = fuzz(decisions, args.seed, configs, args.event_factor, args.episode_wall_s,
                  progress=lambda line: print(line, flush=True))
    main_table, coverage = tables(result)
    print(row("**total**", result["totals"]))
    print()
    print(coverage)
    print()
    print("\n".join(failure_lines(result)))
    if out is not None:
        for path in write(result, command, out):
            print(f"wrote {path}")
    totals = result["totals"]
    return 1 if totals["violations"] or totals["hangs"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
