"""Training speed: end-to-end env steps/s of `python train.py`'s default config, where the
time goes, and the training time until the agent matches the best admission heuristic.

The config is composed with Hydra's compose API as train.py composes it (extra Hydra
overrides from the command line), and the vec env and model are built with
`servegym.agents.learners` (`env_kwargs`, `make_env`, `build_vec_env`, `build_model`), so the
network is the one `agent.network` picks. One torch thread (as train.py). Configurations: the
default `agent.n_envs` and n_envs in `--n-envs` (DummyVecEnv), and SubprocVecEnv at the
default n_envs; the default is measured again at the end as a drift check. Measured:

a) env only: random valid actions (the masks from `env_method("action_masks")`, as
   MaskablePPO gets them; draws made up front), no policy; median of 3 interleaved rounds.
b) policy forward: `model.policy.forward` (DQN: `_predict`) timed inside `model.learn`, on
   the batched observations collect_rollouts hands it; per env step.
c) update: `model.train()` timed inside `model.learn`; per collected sample.
d) end to end: `model.learn(T)` with train.py's `EpisodeServing` callback (no progress bar,
   checkpoints or periodic evaluation); T = max(4 * n_steps * n_envs, 20000) unless
   `--timesteps`. Its wall time splits into env (vec env `step` and `env_method`, i.e.
   masks), forward, update and the rest (buffer, tensors, GAE, callbacks).
e) time to the best heuristic: the default config trains while every `--eval-every` steps
   the greedy model is evaluated (`policy_from_model`, `scheduler_for`, `compare`) on the
   training-split windows of train.py's periodic evaluation (`periodic_episodes`), beside
   the best admission heuristic on the same windows (every heuristic of the controlled
   kinds, evaluated once at the start; best by mean `serving/goodput_rps`). Training
   starts as train.py's does, with the warm start (`servegym.agents.training.warm_start`: the
   teacher's choice on training windows, its demonstrations and the clone; none with
   `agent.warm_start.teacher=null`), whose wall time counts as training time; the first
   evaluation is of the warm-started model. Training wall time excludes the periodic
   evaluations; it stops at the heuristic's goodput, `--max-steps` or `--max-minutes` of
   training.

Wall time (perf_counter) is the figure; the machine has 2 shared cores, so each row also
has the process CPU time (this process only: SubprocVecEnv workers are not counted) and the
1-minute load average before -> after, and ratios to the default configuration, measured in
the same run, are given beside the absolute numbers.

    python experiments/bench_train.py                  # writes results/bench_train.{json,md}
    python experiments/bench_train.py env=routing agent=ppo --max-steps 50000
    python experiments/bench_train.py --quick          # smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch; inherited by subproc envs

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from stable_baselines3.common.callbacks import BaseCallback

from servegym.agents import learners, training
from servegym.agents.callbacks import EpisodeServing
from servegym.agents.config import TrainConfig, register_configs, validate
from servegym.agents.evaluation import compare, policy_means
from servegym.agents.learned import policy_from_model, scheduler_for
from servegym.envs.core.metrics import atomic_write

ROOT = Path(__file__).resolve().parents[1]

METRIC = "serving/goodput_rps"
TARGET_STEPS_PER_S = 8000.0
TARGET_TRAIN_S = 180.0
NEAR = 0.98  # "within 2%"
ROUNDS = 3


# ============================================================================ config
def compose_config(overrides: list[str]) -> TrainConfig:
    """The typed config `python train.py <overrides>` runs with."""
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return training.typed_config(OmegaConf.to_container(cfg, resolve=True))


def variant(config: TrainConfig, n_envs: int, vec_env: str) -> TrainConfig:
    agent = dataclasses.replace(config.agent, n_envs=n_envs, vec_env=vec_env)
    out = dataclasses.replace(config, agent=agent)
    validate(out)
    return out


def label(config: TrainConfig, default: int) -> str:
    tag = " (default)" if config.agent.n_envs == default and \
        config.agent.vec_env == "dummy" else ""
    return f"{config.agent.vec_env} x{config.agent.n_envs}{tag}"


def timesteps_for(config: TrainConfig, fixed: int) -> int:
    n_steps = getattr(config.agent, "n_steps", 1)
    return fixed or max(4 * n_steps * config.agent.n_envs, 20_000)


# ============================================================================ timing
@contextmanager
def measured(row: dict[str, Any]) -> Iterator[None]:
    """Wall and process CPU time of the block, and the load averages around it."""
    row["load_before"] = list(os.getloadavg())
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    row["wall_s"] = time.perf_counter() - wall
    row["cpu_s"] = time.process_time() - cpu
    row["load_after"] = list(os.getloadavg())


class Timers:
    """Accumulated wall time of wrapped methods (instance attributes; nothing is edited)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1

        object.__setattr__(owner, name, timed)


# ============================================================================ (a) env only
def random_valid(masks: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One uniformly drawn valid action per row of `masks`."""
    counts = masks.sum(axis=1)
    picks = (uniforms * counts).astype(np.int64)
    return np.argmax(np.cumsum(masks, axis=1) > picks[:, None], axis=1)


def env_only_once(config: TrainConfig, kwargs: dict[str, Any], steps: int, seed: int
                  ) -> dict[str, Any]:
    venv = learners.build_vec_env(config, kwargs)
    venv.seed(seed)
    venv.reset()
    n = venv.num_envs
    uniforms = np.random.default_rng(seed).random((max(steps // n, 1), n))
    row: dict[str, Any] = {"steps": uniforms.size, "episodes": 0}
    with measured(row):
        for draws in uniforms:
            masks = np.stack(venv.env_method("action_masks"))
            _, _, dones, _ = venv.step(random_valid(masks, draws))
            row["episodes"] += int(dones.sum())
    venv.close()
    row["steps_per_s"] = row["steps"] / row["wall_s"]
    row["cpu_steps_per_s"] = row["steps"] / max(row["cpu_s"], 1e-9)
    return row


def env_only(configs: list[TrainConfig], kwargs: dict[str, Any], steps: int
             ) -> list[dict[str, Any]]:
    """Median (by wall steps/s) of `ROUNDS` rounds, the configurations interleaved."""
    runs: list[list[dict[str, Any]]] = [[] for _ in configs]
    for seed in range(ROUNDS):
        for index, config in enumerate(configs):
            runs[index].append(env_only_once(config, kwargs, steps, seed))
    out = []
    for rows in runs:
        rows.sort(key=lambda r: r["steps_per_s"])
        median = dict(rows[len(rows) // 2])
        median["steps_per_s_all"] = [r["steps_per_s"] for r in rows]
        out.append(median)
    return out


# ============================================================================ (b-d) learn
def instrument(model: Any) -> Timers:
    timers = Timers()
    env = model.get_env()
    timers.wrap(env, "step", "env")
    timers.wrap(env, "env_method", "env")  # the action masks (MaskablePPO)
    timers.wrap(model.policy, "forward", "forward")
    timers.wrap(model.policy, "_predict", "forward")  # DQN acts through predict
    timers.wrap(model, "train", "update")
    return timers


def learn_once(config: TrainConfig, kwargs: dict[str, Any], timesteps: int) -> dict[str, Any]:
    """`model.learn(timesteps)` on a fresh vec env and model, its wall time split up."""
    venv = learners.build_vec_env(config, kwargs)
    model = learners.build_model(config.agent, venv, config.seed)
    timers = instrument(model)
    row: dict[str, Any] = {"target_steps": timesteps}
    with measured(row):
        model.learn(timesteps, callback=[EpisodeServing()])
    venv.close()
    steps = int(model.num_timesteps)
    wall = row["wall_s"]
    parts = {key: timers.seconds[key] for key in ("env", "forward", "update")}
    parts["other"] = wall - sum(parts.values())
    row.update(steps=steps, steps_per_s=steps / wall, cpu_steps_per_s=steps / row["cpu_s"],
               seconds=parts, fractions={k: v / wall for k, v in parts.items()},
               updates=timers.calls["update"], forward_calls=timers.calls["forward"],
               env_steps_per_s_in_learn=steps / max(parts["env"], 1e-9),
               forward_us_per_step=1e6 * parts["forward"] / steps,
               update_us_per_sample=1e6 * parts["update"] / steps)
    return row


def learn_rows(configs: list[TrainConfig], kwargs: dict[str, Any], fixed: int, default: int
               ) -> list[dict[str, Any]]:
    rows = []
    for config in configs:
        name = label(config, default)
        try:
            row = learn_once(config, kwargs, timesteps_for(config, fixed))
        except Exception as error:  # e.g. SubprocVecEnv cannot start here
            row = {"error": repr(error)}
        rows.append({"config": name, "n_envs": config.agent.n_envs,
                     "vec_env": config.agent.vec_env, **row})
        print(f"learn {name}: " + (f"{row['steps_per_s']:,.0f} steps/s" if "error" not in row
                                   else row["error"]), flush=True)
    return rows


# ============================================================================ (e) heuristic
def best_heuristic(config: TrainConfig, setting: training.Setting, episodes: list
                   ) -> dict[str, Any]:
    specs = training.baseline_specs(config, setting.controlled)
    factories = {spec: training.heuristic_factory(spec, setting.controlled, config.env.policies)
                 for spec in specs}
    started = time.perf_counter()
    rows = compare(factories, episodes, setting.cost, setting.kwargs["cluster"])
    means = {spec: m[METRIC] for spec, m in policy_means(rows).items()}
    finite = {k: v for k, v in means.items() if math.isfinite(v)}
    best = max(finite, key=finite.get)
    return {"goodput": means, "best": best, "best_goodput": means[best],
            "eval_s": time.perf_counter() - started}


def agent_goodput(model: Any, setting: training.Setting, episodes: list) -> float:
    """Mean goodput of the greedy current model, evaluated as train.py's callback does."""
    metadata = setting.metadata
    policy = policy_from_model(model, metadata, model.get_vec_normalize_env(), True)
    scheduler = scheduler_for(policy, metadata["controlled"], metadata["policies"])
    rows = compare({"agent": lambda: scheduler}, episodes, setting.cost,
                   setting.kwargs["cluster"])
    return policy_means(rows)["agent"][METRIC]


class Probe(BaseCallback):
    """Every `every` steps: the agent's goodput beside the target; stops at the target or
    when training (evaluation excluded) has run `cap_s` seconds."""

    def __init__(self, every: int, evaluate: Callable[[], float], target: float,
                 cap_s: float, before_s: float = 0.0) -> None:
        super().__init__()
        self.every, self.evaluate, self.target, self.cap_s = every, evaluate, target, cap_s
        self.before_s = before_s  # training time spent before `learn` (the warm start)
        self.eval_s, self.started, self.last = 0.0, 0.0, 0
        self.eval_before_s = 0.0  # the evaluation at step 0, before `learn`
        self.trajectory: list[dict[str, Any]] = []
        self.stop_reason = ""

    def train_s(self) -> float:
        return self.before_s + time.perf_counter() - self.started - self.eval_s

    def record(self, steps: int, train_s: float) -> float:
        load = os.getloadavg()[0]
        started = time.perf_counter()
        value = self.evaluate()
        spent = time.perf_counter() - started
        self.eval_s += spent
        self.trajectory.append({"steps": steps, "train_s": train_s, "goodput": value,
                                "ratio": value / self.target, "eval_s": spent,
                                "load_1min": load})
        print(f"  {steps:>7} steps, {train_s:6.1f} s: goodput {value:.3f} "
              f"({value / self.target:.3f} of best), eval {spent:.1f} s", flush=True)
        return value

    def _on_training_start(self) -> None:
        self.started, self.last = time.perf_counter(), 0
        self.eval_before_s, self.eval_s = self.eval_s, 0.0

    def _on_step(self) -> bool:
        if self.train_s() > self.cap_s:
            self.stop_reason = f"wall-time cap ({self.cap_s / 60:g} min of training)"
            return False
        if self.model.num_timesteps // self.every <= self.last:
            return True
        self.last = self.model.num_timesteps // self.every
        value = self.record(int(self.model.num_timesteps), self.train_s())
        if value >= self.target:
            self.stop_reason = "reached the best heuristic"
            return False
        return True


def first_reaching(trajectory: list[dict[str, Any]], ratio: float) -> dict[str, Any] | None:
    return next((p for p in trajectory if p["ratio"] >= ratio), None)


def time_to_heuristic(config: TrainConfig, args: argparse.Namespace) -> dict[str, Any]:
    kwargs = learners.env_kwargs(config)
    probe_env = learners.make_env(config.env.id, kwargs, config.env.policies, monitor=False)()
    setting = training.build_setting(config, probe_env)
    episodes = training.periodic_episodes(config, setting)
    heuristics = best_heuristic(config, setting, episodes)
    print(f"best heuristic: {heuristics['best']} {heuristics['best_goodput']:.3f} req/s",
          flush=True)
    venv = learners.build_vec_env(config, setting.kwargs)
    model = learners.build_model(config.agent, venv, config.seed)
    warm: dict[str, Any] = {}
    with measured(warm):  # train.py's warm start (teacher choice, demonstrations, clone)
        facts = training.warm_start(config, setting, model)
    probe = Probe(args.eval_every, lambda: agent_goodput(model, setting, episodes),
                  heuristics["best_goodput"], 60.0 * args.max_minutes, warm["wall_s"])
    row: dict[str, Any] = {}
    if probe.record(0, warm["wall_s"]) >= probe.target:
        probe.stop_reason = "reached the best heuristic (the warm-started model)"
        probe.eval_before_s, probe.eval_s = probe.eval_s, 0.0
        row.update(wall_s=0.0, cpu_s=0.0, load_before=warm["load_before"],
                   load_after=warm["load_after"])
    else:
        with measured(row):
            model.learn(args.max_steps, callback=[EpisodeServing(), probe])
    venv.close()
    return {**row, "heuristics": heuristics, "trajectory": probe.trajectory,
            "warm_start": {"wall_s": warm["wall_s"], "teacher": facts.get("teacher"),
                           "agreement": facts.get("agreement"),
                           "samples": facts.get("samples")},
            "steps": int(model.num_timesteps),
            "train_s": warm["wall_s"] + row["wall_s"] - probe.eval_s,
            "eval_s": probe.eval_s + probe.eval_before_s, "episodes": len(episodes),
            "requests": len(episodes[0].workload) if episodes else 0,
            "stop": probe.stop_reason or f"max steps ({args.max_steps})",
            "near": first_reaching(probe.trajectory, NEAR),
            "reached": first_reaching(probe.trajectory, 1.0)}


# ============================================================================ tables
def loads(row: dict[str, Any]) -> str:
    return f"{row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f}"


def throughput_table(env_rows: list[dict], learn: list[dict]) -> str:
    base_env, base = env_rows[0]["steps_per_s"], learn[0]
    lines = ["| config | env only steps/s (median of 3) | x default | all rounds | CPU steps/s "
             "| learn steps | end-to-end steps/s | x default | CPU steps/s "
             "| end-to-end / env only | load 1 min (before -> after) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for env, row in zip(env_rows, learn, strict=True):
        rounds = ", ".join(f"{v:,.0f}" for v in env["steps_per_s_all"])
        head = (f"| {row['config']} | {env['steps_per_s']:,.0f} | "
                f"{env['steps_per_s'] / base_env:.2f} | {rounds} | "
                f"{env['cpu_steps_per_s']:,.0f} | ")
        if "error" in row:
            lines.append(head + f"failed: {row['error']} | | | | | {loads(env)} |")
            continue
        lines.append(head + f"{row['steps']:,} | {row['steps_per_s']:,.0f} | "
                     f"{row['steps_per_s'] / base['steps_per_s']:.2f} | "
                     f"{row['cpu_steps_per_s']:,.0f} | "
                     f"{row['steps_per_s'] / env['steps_per_s']:.2f} | {loads(row)} |")
    return "\n".join(lines)


def breakdown_table(learn: list[dict]) -> str:
    lines = ["| config | wall s | env % | forward % | update % | other % | env steps/s in "
             "learn | forward us/step | update us/sample | updates | CPU / wall |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in learn:
        if "error" in row:
            continue
        f = row["fractions"]
        lines.append(f"| {row['config']} | {row['wall_s']:.1f} | {100 * f['env']:.0f} | "
                     f"{100 * f['forward']:.0f} | {100 * f['update']:.0f} | "
                     f"{100 * f['other']:.0f} | {row['env_steps_per_s_in_learn']:,.0f} | "
                     f"{row['forward_us_per_step']:.0f} | {row['update_us_per_sample']:.0f} | "
                     f"{row['updates']} | {row['cpu_s'] / row['wall_s']:.2f} |")
    return "\n".join(lines)


def heuristic_table(result: dict) -> str:
    goodput = result["heuristics"]["goodput"]
    lines = ["| heuristic | goodput (req/s) |", "|---|---:|"]
    for spec, value in sorted(goodput.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1)):
        lines.append(f"| {spec} | {value:.3f} |")
    return "\n".join(lines)


def trajectory_table(result: dict) -> str:
    best = result["heuristics"]
    lines = [f"| steps | train wall s | agent goodput | best heuristic ({best['best']}) | ratio "
             "| eval s | load 1 min |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in result["trajectory"]:
        lines.append(f"| {p['steps']:,} | {p['train_s']:.1f} | {p['goodput']:.3f} | "
                     f"{best['best_goodput']:.3f} | {p['ratio']:.3f} | {p['eval_s']:.1f} | "
                     f"{p['load_1min']:.2f} |")
    return "\n".join(lines)


def milestone(point: dict | None, result: dict) -> str:
    if point is None:
        return (f"not reached within {result['steps']:,} steps "
                f"({result['train_s']:.0f} s of training; stopped: {result['stop']})")
    return f"{point['steps']:,} steps, {point['train_s']:.0f} s of training"


def headlines(learn: list[dict], result: dict | None) -> list[str]:
    base = learn[0]
    speed = base.get("steps_per_s", float("nan"))
    met = "met" if speed >= TARGET_STEPS_PER_S else "NOT met"
    lines = [f"- End-to-end at the default config ({base['config']}): **{speed:,.0f} env "
             f"steps/s** ({speed / TARGET_STEPS_PER_S:.2f} of the target).",
             f"- Target >= {TARGET_STEPS_PER_S:,.0f} env steps/s end to end: **{met}**."]
    fastest = max((r for r in learn if "error" not in r), key=lambda r: r["steps_per_s"])
    lines.append(f"- Fastest configuration measured: {fastest['config']}, "
                 f"{fastest['steps_per_s']:,.0f} steps/s.")
    if result is None:
        return lines
    reached, near = result["reached"], result["near"]
    ok = reached is not None and reached["train_s"] <= TARGET_TRAIN_S
    near_ok = near is not None and near["train_s"] <= TARGET_TRAIN_S
    best = result["heuristics"]
    lines += [f"- Best heuristic on the {result['episodes']} training-split windows: "
              f"{best['best']} ({best['best_goodput']:.3f} req/s goodput).",
              f"- Agent reaches it: {milestone(reached, result)}; within 2%: "
              f"{milestone(near, result)}.",
              f"- Target time to best heuristic <= {TARGET_TRAIN_S / 60:g} min of training: "
              f"**{'met' if ok else 'NOT met'}** (within 2%: {'met' if near_ok else 'NOT met'})."]
    return lines


def warm_line(result: dict) -> str:
    warm = result.get("warm_start") or {}
    if not warm.get("teacher"):
        return f"No warm start ({warm.get('wall_s', 0.0):.0f} s choosing none)."
    return (f"Warm start (counted as training, the row at step 0): {warm['wall_s']:.0f} s, "
            f"teacher {warm['teacher']}, {warm['samples']:,} decisions, agreement "
            f"{warm['agreement']:.3f}.")


def markdown(payload: dict, learn_tables: tuple[str, str], result: dict | None) -> str:
    parts = [f"# Training speed ({payload['created']})", "",
             f"Command: `{payload['command']}`", "",
             f"Config: {payload['setting']}. Machine: {payload['cpu_count']} shared cores, "
             f"torch {payload['torch']} on one thread; load average (1/5/15 min) at start "
             f"{payload['load_start']}, at end {payload['load_end']}. Wall time; see the "
             "module docstring of experiments/bench_train.py for what is measured.", "",
             *headlines(payload["learn"], result), "",
             "## Throughput (same run; x default = ratio to the first row)", "",
             learn_tables[0], "", "## Where end-to-end time goes", "", learn_tables[1], ""]
    if result is not None:
        parts += ["## Time to best heuristic (default config, greedy agent)", "",
                  f"{result['episodes']} windows of {result['requests']} requests of the "
                  f"training split; evaluation every {payload['eval_every']:,} steps "
                  f"({result['eval_s']:.0f} s of evaluation, excluded from the training "
                  f"time; heuristics {result['heuristics']['eval_s']:.0f} s). "
                  f"{warm_line(result)} Stopped: {result['stop']}; load {loads(result)}.", "",
                  trajectory_table(result), "", heuristic_table(result), ""]
    return "\n".join(parts)


# ============================================================================ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. env=routing")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--timesteps", type=int, default=0,
                        help="learn steps per configuration (0: max(4 n_steps n_envs, 20000))")
    parser.add_argument("--env-steps", type=int, default=20_000, help="env-only steps per run")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--max-minutes", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    parser.add_argument("--out", default=str(ROOT / "results"))
    args = parser.parse_args()
    if args.quick:
        args.n_envs, args.timesteps, args.env_steps = [1, 4], 4096, 2000
        args.eval_every, args.max_steps, args.max_minutes = 2048, 4096, 1.0
    return args


def configurations(config: TrainConfig, n_envs: list[int]) -> list[TrainConfig]:
    """Default first, then the other DummyVecEnv sizes, subproc, and the default again."""
    default = config.agent.n_envs
    sizes = [default] + sorted(set(n_envs) - {default})
    return ([variant(config, n, "dummy") for n in sizes]
            + [variant(config, default, "subproc"), variant(config, default, "dummy")])


def write(payload: dict, text: str, out: Path) -> None:
    stamp = payload["created"]
    dump = lambda h: json.dump(payload, h, indent=2, default=float)
    # Keep every run; the plain name always points at the latest full run.
    atomic_write(out / "history" / f"bench_train_{stamp}.json", dump)
    atomic_write(out / "bench_train.json", dump, overwrite=True)
    atomic_write(out / "bench_train.md", lambda h: h.write(text), overwrite=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    command = " ".join(["python experiments/bench_train.py", *sys.argv[1:]])
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    config = compose_config(args.overrides)
    kwargs = learners.env_kwargs(config)
    configs = configurations(config, args.n_envs)
    print(f"env only: {len(configs)} configurations x {ROUNDS} rounds", flush=True)
    env_rows = env_only(configs, kwargs, args.env_steps)
    learn = learn_rows(configs, kwargs, args.timesteps, config.agent.n_envs)
    learn[-1]["config"] += " again (drift check)"
    print(f"time to best heuristic (up to {args.max_steps:,} steps):", flush=True)
    result = time_to_heuristic(config, args)
    tables = (throughput_table(env_rows, learn), breakdown_table(learn))
    payload = {"created": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"), "command": command,
               "overrides": args.overrides, "cpu_count": os.cpu_count(),
               "python": sys.version.split()[0], "torch": torch.__version__,
               "setting": f"{config.env.id}, {training.agent_name(config)}, network "
                          f"{config.agent.network}",
               "load_start": load_start,
               "load_end": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
               "eval_every": args.eval_every, "max_steps": args.max_steps,
               "max_minutes": args.max_minutes, "env_only": env_rows, "learn": learn,
               "time_to_heuristic": result,
               "targets": {"steps_per_s": TARGET_STEPS_PER_S, "train_s": TARGET_TRAIN_S}}
    text = markdown(payload, tables, result)
    print(text)
    if not args.quick:
        write(payload, text, Path(args.out))


if __name__ == "__main__":
    main()
