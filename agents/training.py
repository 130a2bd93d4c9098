"""The steps of `python train.py`, as functions: config, agents, evaluation, results.

train.py calls these in order; each is a spec'd step that tests can call on its own.

* `typed_config(container)`: a plain config (Hydra's composition, or a killed run's saved
  `resolved_config.yaml`) -> a validated `TrainConfig`; the agent node is re-typed by its
  `algo` (`maskable_ppo`/`ppo` -> PPOConfig, `a2c`, `dqn`, `heuristic`).
* `resume_config(container, overrides)`: for `resume=<run dir>`, that run's saved config
  (with `resume`, `progress` and `logger` from the new command) and its newest checkpoint.
* `candidates(...)`: label -> policy factory for the final evaluation: the agent and every
  baseline, each answering the controlled decisions, with the env's heuristics for the
  others (see servegym.agents.evaluation for the shared workloads).
* `write_results(...)`: metrics.json, eval.csv, comparison.md and plots into the run
  folder, atomically and never overwriting.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from servegym.agents.config import (
    RESOLVED_CONFIG,
    A2CConfig,
    DQNConfig,
    HeuristicConfig,
    PPOConfig,
    TrainConfig,
    upgrade_module_paths,
    validate,
)
from servegym.agents.evaluation import (
    FINAL,
    PERIODIC,
    TEACHER,
    EvalEpisode,
    comparison_table,
    evaluation_episodes,
    policy_means,
    split_workload,
    write_rows_csv,
)
from servegym.agents.learned import KIND_ORDER, KINDS
from servegym.agents.learners import env_kwargs, latest_checkpoint, make_env, workload_arguments
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.metrics import atomic_write
from servegym.envs.costs.prices import format_pool_rows, pool_rows
from servegym.envs.protocol import DecisionKind, Policy

log = logging.getLogger("train")

SCHEMA_OF_ALGO = {"maskable_ppo": PPOConfig, "ppo": PPOConfig, "a2c": A2CConfig,
                  "dqn": DQNConfig, "heuristic": HeuristicConfig}
RESUME_KEEPS = ("resume", "resume_allow_pickle", "progress", "logger")
AGENT_LABEL = "agent"
BEST_FOLDER = "best"


# ============================================================================ config
def typed_config(container: Mapping[str, Any]) -> TrainConfig:
    """A validated `TrainConfig` from a plain (resolved) config; see the module docstring."""
    plain = {key: value for key, value in dict(container).items() if key != "hydra"}
    agent = dict(plain.pop("agent", None) or {})
    algo = agent.get("algo")
    if algo not in SCHEMA_OF_ALGO:
        raise ValueError(f"agent.algo={algo!r}: choose one of {sorted(SCHEMA_OF_ALGO)}")
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), plain)
    merged.agent = OmegaConf.merge(OmegaConf.structured(SCHEMA_OF_ALGO[algo]), agent)
    config = OmegaConf.to_object(merged)
    validate(config)
    return config


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split(".", 1)[0].split("/", 1)[0]


def resume_config(container: Mapping[str, Any], overrides: Sequence[str]
                  ) -> tuple[dict[str, Any], Path | None]:
    """(config, checkpoint): unchanged with no `resume`; else the resumed run's saved
    config, with `resume`, `progress` and `logger` taken from the new command, and that
    run's newest checkpoint. Other overrides are refused: a resumed run keeps its config."""
    container = dict(container)
    if container.get("resume") is None:
        return container, None
    run = Path(str(container["resume"]))
    saved = run / RESOLVED_CONFIG
    if not saved.is_file():
        raise FileNotFoundError(f"resume={run}: no {RESOLVED_CONFIG} there; give the folder of "
                                "a train.py run (outputs/train/<day>/<time>_<name>)")
    extra = [o for o in overrides if override_key(o) not in (*RESUME_KEEPS, "hydra")]
    if extra:
        raise ValueError(f"resume={run} continues that run with its own config; drop the "
                         f"other overrides {extra} (or start a new run)")
    checkpoint = resume_point(run)
    check_resumable(checkpoint, bool(container.get("resume_allow_pickle")))
    config = upgrade_module_paths(OmegaConf.to_container(OmegaConf.load(saved), resolve=True),
                                  str(saved))
    for key in RESUME_KEEPS:
        config[key] = container.get(key)
    return config, checkpoint


def check_resumable(checkpoint: Path, allow_pickle: bool) -> None:
    """A saved agent resumes from its pickle-free files (agents/agent_files.py); one saved
    before they existed only with `resume_allow_pickle=true`, which warns."""
    import warnings

    from servegym.agents.agent_files import UnsafeAgentError, has_training_state

    if has_training_state(checkpoint):
        return
    if not allow_pickle:
        raise UnsafeAgentError(
            f"resume: {checkpoint} has no pickle-free training state (saved by an older "
            "servegym); resuming it would unpickle its model.zip and vecnormalize.pkl, which "
            "can run code. If it is your own run, add resume_allow_pickle=true")
    warnings.warn(f"resume: unpickling {checkpoint} (resume_allow_pickle=true); only do this "
                  "with runs you made yourself", stacklevel=2)


def resume_point(run: Path) -> Path:
    """What `resume=<run>` continues from: the saved agent with the most timesteps among the
    run's complete checkpoints and its final `model/` (a finished run resumes from its last
    model, not an older checkpoint); a clear error when there is none."""
    from servegym.agents.learners import AGENT_FILE, MODEL_FILE, checkpoints

    found = list(checkpoints(run))
    final = Path(run) / "model"
    if (final / AGENT_FILE).is_file() and (final / MODEL_FILE).is_file():
        found.append(final)
    if not found:
        return latest_checkpoint(run)  # its message says how checkpoints are written

    def timesteps(folder: Path) -> tuple[int, bool]:  # ties: the final model
        saved = json.loads((folder / AGENT_FILE).read_text())
        return int(saved.get("timesteps", -1)), folder == final

    return max(found, key=timesteps)


def save_resolved_config(run_dir: Path, container: Mapping[str, Any]) -> Path:
    """The run's effective config (what `resume` reads back)."""
    text = OmegaConf.to_yaml(OmegaConf.create(dict(container)))
    return atomic_write(Path(run_dir) / RESOLVED_CONFIG, lambda h: h.write(text))


# ============================================================================ setting
@dataclass
class Setting:
    """What the run's env is, read from one live env (so nothing is restated)."""

    kwargs: dict[str, Any]
    controlled: list[str]
    cost: Any
    cost_note: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # Per pool of the env's cluster: GPU, count, price and cost source (prices.pool_rows).
    pools: list[dict[str, Any]] = field(default_factory=list)
    # The context the env clips its requests to (env.over_context="clip"), else None: the
    # evaluation windows are clipped the same way.
    clip_to: int | None = None

    def describe(self, config: TrainConfig) -> list[str]:
        env = config.env
        return [
            f"env: {env.id} (controls {', '.join(self.controlled)}), "
            f"{env.episode_requests}-request episodes at {env.rate} req/s, "
            f"{env.split} split, reward {env.reward}"
            + (f"; requests clipped to the {self.clip_to}-token context" if self.clip_to
               else ""),
            f"cost model: {self.cost_note}",
            f"cluster: {config.cluster.num_instances} x {config.cluster.instance.mode} "
            f"(max_num_seqs {config.cluster.instance.max_num_seqs}, "
            f"{config.cluster.instance.max_num_batched_tokens} tokens per batch)"
            + (f"; pools {format_pool_rows(self.pools)}" if self.pools else ""),
            f"agent: {agent_name(config)}, seed {config.seed}",
        ]


def agent_name(config: TrainConfig) -> str:
    agent = config.agent
    if agent.algo == "heuristic":
        return f"heuristic {agent.policy}"
    return f"{agent.algo}, {agent.total_timesteps} timesteps, {agent.n_envs} env(s)"


def cost_note(cost: Any, requested: str) -> str:
    """The cost model's source, saying so when `auto` fell back to the roofline; for a
    measured one, how each part is timed (measured, fitted, assumed: `describe()["parts"]`,
    whose full text names the tables and any shape a part is transferred from)."""
    source = getattr(cost, "source", "?")
    model, gpu = (getattr(x, "name", x) for x in (cost.model, cost.gpu))
    name = f"{model} on {gpu} TP{cost.tensor_parallel}"
    if requested == "auto" and source == "roofline":
        return (f"roofline ({name}: no measured table for this combination, "
                "source=auto fell back to the roofline model)")
    parts = cost.describe().get("parts") if hasattr(cost, "describe") else None
    if parts:
        how = ", ".join(f"{part} {str(text).split(' ', 1)[0]}"
                        + (" (transferred)" if "transferred" in str(text) else "")
                        for part, text in parts.items())
        return f"{source} ({name}: {how})"
    return f"{source} ({name})"


def build_setting(config: TrainConfig, probe: Any) -> Setting:
    """The `Setting` of a run from `probe`, one env built with the run's arguments."""
    from servegym.agents.learners import agent_metadata

    base = probe.unwrapped
    cost = base.sim.cost
    metadata = agent_metadata(config.agent.algo, probe, config.env.id, config.env.policies,
                              config.eval.deterministic)
    pools = pool_rows(base.sim.pools)
    clip_to = getattr(base, "serving", base).clip_context  # an IntervalEnv's ServingEnv
    return Setting(env_kwargs(config), list(metadata["controlled"]), cost,
                   cost_note(cost, config.cost.source), metadata, pools, clip_to)


# ============================================================================ evaluation
def episodes_for(config: TrainConfig, setting: Setting, split: str, count: int,
                 stream: int) -> list[EvalEpisode]:
    """Evaluation windows of the run (see servegym.agents.evaluation.evaluation_episodes)."""
    from servegym.envs.rewards import RewardConfig
    from servegym.envs.workloads import build_workload
    from servegym.envs.workloads.transforms import clip_to_context

    workload = build_workload(**workload_arguments(setting.kwargs["workload"]))
    if setting.clip_to is not None:  # as the env clips its source (over_context="clip")
        workload = clip_to_context(workload, setting.clip_to)[0]
    rewards = RewardConfig(kind=config.env.reward, **config.env.reward_options)
    requests = config.eval.num_requests or config.env.episode_requests
    rate = config.eval.rate if config.eval.rate is not None else config.env.rate
    return evaluation_episodes(split_workload(workload, split), count, requests, rate,
                               config.seed, stream, rewards.default_ttft_slo,
                               rewards.default_tpot_slo)


def final_episodes(config: TrainConfig, setting: Setting) -> list[EvalEpisode]:
    return episodes_for(config, setting, config.eval.split, config.eval.episodes, FINAL)


def periodic_episodes(config: TrainConfig, setting: Setting) -> list[EvalEpisode]:
    return episodes_for(config, setting, config.env.split, config.eval.freq_episodes, PERIODIC)


def with_controlled(chosen: Mapping[DecisionKind, Policy], controlled: Sequence[str],
                    env_policies: Mapping[str, str]) -> dict[DecisionKind, Policy]:
    """`chosen` for the controlled kinds; the env's heuristics (or defaults) for the rest."""
    from servegym.agents.learners import uncontrolled_policies

    out = default_policies()
    out.update({KINDS[key]: p for key, p in uncontrolled_policies(env_policies).items()})
    for name in controlled:
        out[KINDS[name]] = chosen[KINDS[name]]
    return {kind: out[kind] for kind in KIND_ORDER}


def heuristic_factory(spec: str, controlled: Sequence[str], env_policies: Mapping[str, str]
                      ) -> Callable[[], dict[DecisionKind, Policy]]:
    """Fresh policies of a registry spec for the controlled kinds (others: the env's)."""
    from servegym.agents import build_scheduler, parse_spec
    from servegym.agents.heuristics import policy_info

    for name, _ in parse_spec(spec):
        kind = policy_info(name).kind.name.lower()
        if kind not in controlled:
            raise ValueError(f"policy {spec!r}: {name} answers {kind} decisions, which the "
                             f"agent does not control ({controlled}); set env.policies.{kind}")
    return lambda: with_controlled(build_scheduler(spec), controlled, env_policies)


def baseline_specs(config: TrainConfig, controlled: Sequence[str]) -> list[str]:
    """`eval.baselines` (or every registered heuristic of the controlled decision kinds),
    then `eval.extra_baselines`."""
    extra = list(config.eval.extra_baselines)
    if config.eval.baselines is not None:
        return list(config.eval.baselines) + extra
    from servegym.agents.heuristics import policy_names

    return [name for key in controlled for name in policy_names(KINDS[key])] + extra


def choose_teacher(config: TrainConfig, setting: Setting
                   ) -> tuple[str | None, dict[str, float]]:
    """The warm-start teacher's spec and, for `teacher: auto`, each baseline's mean
    `eval.metric` on `auto_windows` windows of the training split (never the held-out
    ones; their own stream `TEACHER`): the best of them teaches. An explicit spec is
    checked against the controlled decisions here, before any training."""
    from servegym.agents.learners import is_interval_env

    spec = config.agent.warm_start.teacher
    if spec is None or (spec == "auto" and is_interval_env(config.env.id)):
        return None, {}
    if spec != "auto":
        heuristic_factory(spec, setting.controlled, config.env.policies)
        return spec, {}
    from servegym.agents.evaluation import compare

    specs = baseline_specs(config, setting.controlled)
    factories = {s: heuristic_factory(s, setting.controlled, config.env.policies)
                 for s in specs}
    windows = episodes_for(config, setting, config.env.split,
                           config.agent.warm_start.auto_windows, TEACHER)
    rows = compare(factories, windows, setting.cost, setting.kwargs["cluster"])
    scores = {label: float(means[config.eval.metric])
              for label, means in policy_means(rows).items()}
    return max(specs, key=lambda s: scores[s]), scores  # ties: the earlier in registry order


def reward_baseline(config: TrainConfig, setting: Setting,
                    teacher: str | None) -> tuple[str | None, Callable[[], Any] | None]:
    """`agent.reward_baseline`'s spec ("teacher": the chosen warm-start `teacher`) and a
    factory of its policies for `learners.build_vec_env`; (None, None) when off."""
    spec = config.agent.reward_baseline
    if spec == "teacher":
        spec = teacher
        if spec is None:
            raise ValueError("agent.reward_baseline=teacher, but no warm-start teacher was "
                             "chosen (agent.warm_start.teacher)")
    if spec is None:
        return None, None
    return spec, heuristic_factory(spec, setting.controlled, config.env.policies)


def warm_start(config: TrainConfig, setting: Setting, model: Any,
               choice: tuple[str | None, dict[str, float]] | None = None) -> dict[str, Any]:
    """Clone the teacher (`agent.warm_start`, agents/imitation.py; `choose_teacher`, or its
    `choice` when already made) into a fresh model, in place; what `metrics.json` records
    as `train.warm_start` ({} without a teacher). train.py and experiments/bench_train.py
    both start training here."""
    spec, scores = choose_teacher(config, setting) if choice is None else choice
    if spec is None:
        return {}
    from servegym.agents.imitation import warm_start as clone_teacher

    env = make_env(config.env.id, setting.kwargs, config.env.policies, monitor=False,
                   quiet_cost_notice=True)()
    try:
        teacher = heuristic_factory(spec, setting.controlled, config.env.policies)
        facts = clone_teacher(model, env, teacher, config.agent.warm_start, config.seed)
    finally:
        env.close()
    log.info("warm start: cloned %s from %d decisions (agreement %.3f)", spec,
             facts["samples"], facts["agreement"])
    return {"teacher": spec, "teacher_scores": scores, **facts}


def evolve_actor(config: TrainConfig, setting: Setting, model: Any, evaluator: Any,
                 log_metrics: Callable[[dict[str, float], int], None]) -> dict[str, Any]:
    """`agent.evolution` (agents/evolution.py) from the best model so far (`evaluator`'s, the
    periodic evaluation's, else the current one), then the result competes for the best
    model on the periodic windows; what `metrics.json` records as `train.evolution`."""
    from servegym.agents.evaluation import compare
    from servegym.agents.evolution import EVOLUTION, SearchSpace, evolve
    from servegym.agents.learned import policy_from_model, scheduler_for

    evo = config.agent.evolution
    if evaluator.best_state is not None:
        model.policy.load_state_dict(evaluator.best_state)
    start_value = evaluator.best_value
    windows = episodes_for(config, setting, config.env.split, evo.pool, EVOLUTION)
    space = SearchSpace.actor_of(model.policy)
    metadata = setting.metadata
    normalizer = model.get_vec_normalize_env()

    def fitness(theta: Any, indices: Sequence[int]) -> float:
        space.put(theta)
        policy = policy_from_model(model, metadata, normalizer,
                                   bool(metadata["eval_deterministic"]))
        scheduler = scheduler_for(policy, metadata["controlled"], metadata["policies"])
        rows = compare({"agent": lambda: scheduler}, [windows[i] for i in indices],
                       setting.cost, setting.kwargs["cluster"])
        return float(policy_means(rows)["agent"].get(config.eval.metric, math.nan))

    history = evolve(space, fitness, evo.pool, evo.iterations, evo.population, evo.windows,
                     evo.sigma, evo.learning_rate, config.seed, evo.workers, log_metrics)
    value = evaluator.fire("evolution")
    kept = evaluator.best_path is not None and evaluator.best_path.name.endswith("_evolution")
    log.info("evolution: %d iterations, periodic %s %.4f (best before %.4f): %s",
             evo.iterations, config.eval.metric, value, start_value,
             "kept as the best model" if kept else "not kept")
    return {"history": history, "start_value": start_value, "periodic_value": value,
            "kept": kept}


def keep_best(run_dir: Path, best_checkpoint: Path | None) -> Path | None:
    """Copy the best periodic checkpoint to `<run dir>/best/` (never overwritten)."""
    import shutil

    if best_checkpoint is None or not Path(best_checkpoint).is_dir():
        return None
    target = Path(run_dir) / BEST_FOLDER
    if target.exists():
        raise FileExistsError(f"{target} exists; saved agents are never overwritten")
    shutil.copytree(best_checkpoint, target)
    return target


def agent_factories(folders: Mapping[str, Path], deterministic: bool
                    ) -> dict[str, Callable[[], dict[DecisionKind, Policy]]]:
    """Labels -> policy factories of a trained agent: "agent" is the best model acting as
    `eval.deterministic` says (the headline and the sweep objective); beside it the best in
    the other mode and the last model in both (greedy and sampled, best and last)."""
    from servegym.agents.learned import load_policy, scheduler_for

    def factory(folder: Path, greedy: bool) -> Callable[[], dict[DecisionKind, Policy]]:
        policy, metadata = load_policy(folder, deterministic=greedy)
        return lambda: scheduler_for(policy, metadata["controlled"], metadata["policies"])

    other = "sampled" if deterministic else "greedy"
    return {
        AGENT_LABEL: factory(folders["best"], deterministic),
        f"{AGENT_LABEL}-best-{other}": factory(folders["best"], not deterministic),
        f"{AGENT_LABEL}-last-greedy": factory(folders["last"], True),
        f"{AGENT_LABEL}-last-sampled": factory(folders["last"], False),
    }


def candidates(config: TrainConfig, setting: Setting,
               agent: Callable[[], dict[DecisionKind, Policy]]
               | Mapping[str, Callable[[], dict[DecisionKind, Policy]]]
               ) -> dict[str, Callable[[], dict[DecisionKind, Policy]]]:
    """label -> policy factory: the agent's rows first ("agent", and for a trained agent
    its other modes, see `agent_factories`), then the baselines in registry order."""
    out = dict(agent) if isinstance(agent, Mapping) else {AGENT_LABEL: agent}
    for spec in baseline_specs(config, setting.controlled):
        out[spec] = heuristic_factory(spec, setting.controlled, config.env.policies)
    return out


def check_objective(config: TrainConfig, setting: Setting) -> None:
    """Refuse an `eval.metric` that the serving summary does not have, before training:
    the summary's keys come from a few requests simulated with the default policies."""
    from servegym.agents.evaluation import compare

    episode = final_episodes(config, setting)[0]
    small = EvalEpisode(episode.index, episode.workload.head(8), episode.seed)
    rows = compare({"probe": default_policies}, [small], setting.cost, setting.kwargs["cluster"])
    known = sorted(k for k in rows[0] if k.startswith("serving/"))
    if config.eval.metric not in known:
        raise ValueError(f"eval.metric={config.eval.metric!r} is not a serving metric; known: "
                         f"{', '.join(known)}")


# ============================================================================ results
def objective(config: TrainConfig, rows: Sequence[Mapping[str, Any]]) -> float:
    """The sweep metric: mean of `eval.metric` over the agent's evaluation episodes."""
    means = policy_means(rows)[AGENT_LABEL]
    if config.eval.metric not in means:
        known = ", ".join(sorted(means))
        raise ValueError(f"eval.metric={config.eval.metric!r} is not a serving metric; "
                         f"known: {known}")
    return means[config.eval.metric]


def comparison_markdown(config: TrainConfig, setting: Setting, rows: Sequence[Mapping],
                        command: str, episodes: Sequence[EvalEpisode]) -> str:
    requests = len(episodes[0].workload) if episodes else 0
    lines = [
        f"# {config.name}: {agent_name(config)} vs heuristics",
        "",
        *[f"- {line}" for line in setting.describe(config)],
        f"- evaluation: {len(episodes)} windows of {requests} requests from the "
        f"{config.eval.split} split, identical for every policy; mean [min, max] over windows",
        f"- command: `{command}`",
        "",
        comparison_table(rows),
        "",
    ]
    return "\n".join(lines)


def write_results(run_dir: Path, config: TrainConfig, container: Mapping[str, Any],
                  setting: Setting, rows: Sequence[Mapping[str, Any]],
                  episodes: Sequence[EvalEpisode], train_info: Mapping[str, Any],
                  command: str, overrides: Sequence[str]) -> dict[str, Any]:
    """metrics.json, eval.csv, comparison.md, comparison.png and training.png (when trained)
    into `run_dir`; returns the metrics written."""
    from servegym.agents.plots import plot_comparison, plot_training

    run_dir = Path(run_dir)
    value = objective(config, rows)
    metrics = {
        "name": config.name, "seed": config.seed, "status": "ok", "run_dir": str(run_dir),
        "command": command, "overrides": list(overrides),
        "setting": setting.describe(config),
        "cost_model": {"source": getattr(setting.cost, "source", "?"),
                       "note": setting.cost_note},
        "train": dict(train_info),
        "eval": {"split": config.eval.split, "episodes": len(episodes),
                 "requests": len(episodes[0].workload) if episodes else 0,
                 "seeds": [e.seed for e in episodes], "policies": policy_means(rows)},
        "objective": {"metric": config.eval.metric, "policy": AGENT_LABEL, "value": value},
        "python": platform.python_version(), "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": dict(container),
    }
    write_rows_csv(run_dir / "eval.csv", rows)
    atomic_write(run_dir / "comparison.md",
                 lambda h: h.write(comparison_markdown(config, setting, rows, command, episodes)))
    plot_comparison(run_dir / "comparison.png", rows, title=f"{config.name}, seed {config.seed}")
    if train_info.get("progress_csv"):
        plot_training(run_dir / "training.png", Path(train_info["progress_csv"]),
                      train_info.get("periodic_eval", []))
    atomic_write(run_dir / "metrics.json", lambda h: json.dump(metrics, h, indent=2,
                                                                default=float))
    return metrics


def write_failure(run_dir: Path, error: BaseException, command: str) -> Path | None:
    """`failed.json` with the error (or the interruption: Ctrl-C, SystemExit) and its reason,
    so sweeps and aggregation see which job failed and why."""
    import traceback

    interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
    payload = {"status": "interrupted" if interrupted else "failed", "command": command,
               "reason": ("interrupted by the user (Ctrl-C)" if isinstance(error, KeyboardInterrupt)
                          else f"exited ({error.code!r})" if isinstance(error, SystemExit)
                          else f"{type(error).__name__}: {error}"),
               "error": repr(error), "traceback": traceback.format_exception(error)}
    try:
        return atomic_write(Path(run_dir) / "failed.json",
                            lambda h: json.dump(payload, h, indent=2))
    except OSError:
        return None


__all__ = [
    "AGENT_LABEL", "PERIODIC", "Setting", "build_setting", "candidates", "final_episodes",
    "heuristic_factory", "objective", "periodic_episodes", "resume_config",
    "save_resolved_config", "typed_config", "with_controlled", "write_failure",
    "write_results",
]
