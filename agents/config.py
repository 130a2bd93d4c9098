"""Schemas of `python train.py`'s config (`conf/config.yaml`), registered in Hydra's ConfigStore.

Every node of the train app's config is typed, so a misspelt key or a wrongly typed value
fails at composition with Hydra's message naming the key and the schema, e.g.
``Key 'learning_rat' not in 'PPOConfig'``. `register_configs()` stores:

* ``train_schema`` (`TrainConfig`): the primary config's base; `conf/config.yaml` lists it
  first in its defaults. Its `workload`, `cost` and `cluster` nodes type the groups shared
  with `experiments/simulate.py` and `experiments/evaluate.py`.
* ``schema/agent/ppo``, ``a2c``, ``dqn``, ``heuristic``: one schema per algorithm family;
  each `conf/agent/*.yaml` names its schema first in its defaults
  (``- /schema/agent/ppo@_here_``). Kept out of the `agent` group, so ``--help`` lists
  only the agents one can train and ``agent=<schema>`` is not a choice.

Hyperparameter fields carry stable-baselines3's own names and defaults (SB3 2.x), so
`AgentConfig.sb3_kwargs` passes them straight to the algorithm's constructor.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from servegym.envs.build import CLUSTER_OPTION_SPECS
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.tasks import ADMISSION_INTERVAL, DEFAULT_TASK, register_resolver

ALGORITHMS = ("maskable_ppo", "ppo", "a2c", "dqn", "heuristic")
MASKED_ALGORITHMS = ("maskable_ppo",)
INVALID_ACTION_MODES = ("auto", "raise", "fallback")
LOGGER_KINDS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")
EVAL_SPLITS = ("train", "test", "all")
NETWORKS = ("auto", "mlp", "scorer")


# ============================================================================ shared groups
@dataclass
class WorkloadConfig:
    """`conf/workload/*.yaml`: the arguments of `servegym.envs.workloads.build_workload`."""

    _target_: str = "servegym.envs.workloads.build_workload"
    source: dict[str, Any] = field(default_factory=dict)
    rate: float | None = None
    window: Any = None
    split: str | None = None
    num_requests: int | None = None
    max_total_tokens: int | None = None
    ttft_slo: float | None = None
    tpot_slo: float | None = None
    seed: int = 0
    block_size: int = 16
    name: str | None = None


@dataclass
class CostConfig:
    """`conf/cost/*.yaml`: what `ServingEnv` passes to `build_cost_model`.

    The env builds its cost model from these four fields only; options such as `network`
    or `vidur_compatible` are refused here rather than silently dropped.
    """

    _target_: str = "servegym.envs.costs.build_cost_model"
    model: str = DEFAULT_TASK.model  # conf/cost/task.yaml: the env's task's pair
    gpu: str = DEFAULT_TASK.gpu
    tensor_parallel: int = 1
    source: str = "auto"


def _mutable_copy(frozen: type, name: str) -> type:
    """A plain dataclass with the fields, types and defaults of the frozen `frozen`
    (OmegaConf makes frozen dataclasses read-only, so group configs could not set them)."""
    hints = typing.get_type_hints(frozen)
    fields = [(f.name, hints[f.name], field(default=f.default))
              for f in dataclasses.fields(frozen)]
    return dataclasses.make_dataclass(name, fields)


InstanceSchema = _mutable_copy(InstanceConfig, "InstanceSchema")


@dataclass
class PoolConfig:
    """One pool of a heterogeneous cluster (envs/core/cluster.py): `count` instances with
    the cluster's `instance` settings overridden by this pool's `instance`, on the run's
    cost model overridden by `cost` (model, gpu, tensor_parallel, source), in `role`
    ("mixed"), charged `price_per_hour` USD per GPU-hour (null: the dated price table's for
    its GPU, envs/costs/prices.py; a positive, finite number, checked at composition)."""

    name: str = MISSING
    count: int = 1
    role: str = "mixed"
    instance: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    price_per_hour: float | None = None


def _cluster_config() -> type:
    """`ClusterConfig`: its layout fields, then one field per cluster option of
    servegym.envs.build.CLUSTER_OPTION_SPECS (typed Any: OmegaConf 2.3 cannot merge a dict
    into a None Optional[Dict]), so a new option is one row there and no edit here."""
    options = "\n".join(f"    `{option.name}`: {option.summary}."
                        for option in CLUSTER_OPTION_SPECS)
    doc = ("`conf/cluster/*.yaml`: instances behind the router and `InstanceConfig`'s fields;\n"
           "    or `pools` (then `num_instances` is their total; "
           "conf/cluster/hetero_h100_a100.yaml).\n"
           "    Cluster-wide options (servegym.envs.build.CLUSTER_OPTION_SPECS), each checked at\n"
           "    composition by its own check:\n" + options)
    return dataclasses.make_dataclass(
        "ClusterConfig",
        [("num_instances", int, 1),
         ("instance", InstanceSchema, field(default_factory=InstanceSchema)),
         ("pools", list[PoolConfig], field(default_factory=list)),
         *((option.name, Any, None) for option in CLUSTER_OPTION_SPECS)],
        namespace={"__doc__": doc, "__module__": __name__})


ClusterConfig = _cluster_config()


# ============================================================================ env
@dataclass
class EnvConfig:
    """`conf/env/*.yaml`: the registered env and the `ServingEnv` arguments that the
    workload / cost / cluster groups do not set.

    The task fields (rate through reward, and interval_s) default to the settings of
    `servegym.envs.tasks.DEFAULT_TASK` (servegym/Admission-v0; interval_s: AdmissionInterval-v0's),
    the one statement of every task's defaults; `conf/env/admission.yaml` reads them, and
    reward_options, for `env.id` (`${servegym.task:${.id},<field>}`), so train.py and
    `gym.make(id)` build the same task unless overridden.

    control: decisions the agent answers (null: the id's registered ones).
    rate: mean req/s of every episode (null: the trace's own). episode_requests: requests
        per training episode. split: trace part the agent trains on ("train").
    policies: registry names answering the decisions the agent does not control, e.g.
        {preempt: swap-cost-aware}; the same heuristics serve those decisions in evaluation.
    invalid_action: "auto" = "raise" for masked agents (MaskablePPO), "fallback" for the
        others (an invalid action becomes the lowest valid one, costing the penalty).
    max_episode_steps: extra `TimeLimit` (null: the registration's).
    num_slots, admit_keys, preempt_keys: the candidate sets (envs/observations.py).
    episode_end: "auto", "horizon" or "drain" (ServingEnv's docstring).
    over_context: "reject" or "clip" requests longer than the model's context (ServingEnv).
    interval_s: simulated seconds between an interval-mode agent's actions (interval ids
        only, e.g. servegym/AdmissionInterval-v0; docs/interval.md).
    """

    id: str = DEFAULT_TASK.id
    control: list[str] | None = None
    rate: float | None = DEFAULT_TASK.rate
    episode_requests: int = DEFAULT_TASK.episode_requests
    split: str = DEFAULT_TASK.split
    num_slots: int = DEFAULT_TASK.num_slots
    admit_keys: list[str] = field(default_factory=lambda: list(DEFAULT_TASK.admit_keys))
    preempt_keys: list[str] = field(default_factory=lambda: list(DEFAULT_TASK.preempt_keys))
    episode_end: str = DEFAULT_TASK.episode_end
    interval_s: float = ADMISSION_INTERVAL.interval_s
    length_knowledge: str = DEFAULT_TASK.length_knowledge
    length_sigma: float = DEFAULT_TASK.length_sigma
    over_context: str = DEFAULT_TASK.over_context
    reward: str = DEFAULT_TASK.reward
    # Empty, not the task's: OmegaConf merges a dict key by key onto the schema's default,
    # so a default option would enter every config that omits it (e.g. a resumed run's
    # saved `reward_options: {}`). conf/env/admission.yaml states the task's options.
    reward_options: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)
    invalid_action: str = "auto"
    invalid_action_penalty: float = 0.1
    max_episode_steps: int | None = None
    debug_checks: bool = False


# ============================================================================ agents
@dataclass
class WarmStartConfig:
    """Imitation before RL (agents/imitation.py): `teacher` is a heuristic registry spec
    for the controlled decisions (e.g. "spf", "spf+swap-cost-aware+p2c"), "auto" (the
    baseline with the best `eval.metric` on `auto_windows` windows of the training split;
    no warm start on interval envs, which have no per-decision action to imitate) or
    None (no warm start). `steps` teacher decisions are cloned for `epochs` epochs of
    `batch_size` minibatches at `learning_rate`. PPO, MaskablePPO and A2C only."""

    teacher: str | None = None
    # 10, not 5: on Admission-v0's first 5 training windows spf-tpot-budget and
    # spf-tpot-budget-late-last score the same (no request is late there), and the earlier
    # in registry order taught; over 10 the late-last rule is ahead (9.07 vs 8.99 req/s),
    # as it is on the held-out split, and its clone starts at 0.994 of the best heuristic
    # on the periodic windows instead of 0.962 (experiments/bench_train.py).
    auto_windows: int = 10
    steps: int = 20_000
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3


@dataclass
class EvolutionConfig:
    """Evolution strategies on the actor's weights after RL (agents/evolution.py), from the
    best model so far; 0 `iterations`: off. Each iteration scores `population` candidates
    (antithetic pairs at noise `sigma`) on `windows` windows drawn from a pool of `pool`
    training-split windows, then takes an Adam step of `learning_rate`; `workers` forked
    processes share the evaluations (the result does not depend on their number).
    PPO, MaskablePPO and A2C on per-decision envs."""

    iterations: int = 0
    population: int = 16
    windows: int = 4
    pool: int = 40
    sigma: float = 0.02
    learning_rate: float = 0.01
    workers: int = 2


@dataclass
class AgentConfig:
    """Fields every agent has; subclasses add the algorithm's hyperparameters.

    algo: one of `ALGORITHMS`. total_timesteps: env steps (decisions) to train.
    n_envs: parallel envs; vec_env: "dummy" (one process, the default) or "subproc".
    vec_normalize: wrap in `VecNormalize` (statistics saved next to the model);
    norm_obs / norm_reward / clip_obs: its options. network: "mlp" (SB3's MlpPolicy with
    `net_arch` hidden layers), "scorer" (agents/scorer_policy.py: one shared network
    scores every candidate slot, Decima-style; PPO and MaskablePPO only), with
    `scorer_hidden` / `scorer_embed` its layer sizes, or "auto": the scorer for PPO and
    MaskablePPO on per-decision envs, the MLP otherwise (interval envs, A2C, DQN).
    warm_start: imitation of a heuristic before RL (`WarmStartConfig`).
    evolution: evolution strategies on the goodput rate after RL (`EvolutionConfig`).
    reward_baseline: the input-dependent reward baseline (agents/reward_baseline.py): a
    heuristic spec for the controlled decisions whose return on the same window is
    subtracted from the agent's, "teacher" (the warm start's teacher), or None (off).
    """

    algo: str = MISSING
    total_timesteps: int = 0
    n_envs: int = 1
    vec_env: str = "dummy"
    vec_normalize: bool = False
    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = 10.0
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    network: str = "mlp"
    scorer_hidden: int = 64
    scorer_embed: int = 32
    device: str = "cpu"
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    reward_baseline: str | None = None

    def sb3_kwargs(self) -> dict[str, Any]:
        """The algorithm's constructor arguments: the fields a subclass adds."""
        base = {f.name for f in dataclasses.fields(AgentConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in base}


@dataclass
class PPOConfig(AgentConfig):
    """PPO and MaskablePPO (`algo: ppo | maskable_ppo`); SB3's defaults."""

    algo: str = "maskable_ppo"
    learning_rate: float = 3e-4
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    normalize_advantage: bool = True
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None


@dataclass
class A2CConfig(AgentConfig):
    """A2C; SB3's defaults."""

    algo: str = "a2c"
    learning_rate: float = 7e-4
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    rms_prop_eps: float = 1e-5
    use_rms_prop: bool = True
    normalize_advantage: bool = False


@dataclass
class DQNConfig(AgentConfig):
    """DQN (trained unmasked with the env's fallback; masked argmax of Q at evaluation);
    SB3's defaults except a 100k-transition buffer."""

    algo: str = "dqn"
    learning_rate: float = 1e-4
    buffer_size: int = 100_000
    learning_starts: int = 100
    batch_size: int = 32
    tau: float = 1.0
    gamma: float = 0.99
    train_freq: int = 4
    gradient_steps: int = 1
    target_update_interval: int = 10_000
    exploration_fraction: float = 0.1
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05
    max_grad_norm: float = 10.0


@dataclass
class HeuristicConfig(AgentConfig):
    """No training: `policy` (a registry spec, e.g. "spf" or "srpt-pred(sigma=1.0)")
    answers the controlled decisions and is evaluated exactly as a trained agent is."""

    algo: str = "heuristic"
    policy: str = "fcfs"


SCHEMA_GROUP = "schema/agent"  # the agent schemas' ConfigStore group (not `agent`)
AGENT_SCHEMAS: dict[str, type[AgentConfig]] = {
    "ppo": PPOConfig, "a2c": A2CConfig, "dqn": DQNConfig, "heuristic": HeuristicConfig,
}


# ============================================================================ the rest
@dataclass
class LoggerConfig:
    """`conf/logger/*.yaml`. kind: "wandb" or "none". mode: W&B's mode ("offline" needs no
    network; `wandb sync <run dir>/wandb/offline-run-*` uploads later); the environment
    variable WANDB_MODE, when set, wins (tests set it to "disabled"). group: null = the
    command-line overrides minus the seed. log_model: the saved agents (best and last) as
    a W&B model artifact. console: W&B's console capture ("wrap", "off", ...). system_metrics:
    W&B's CPU / memory sampling."""

    kind: str = "wandb"
    project: str = "servegym"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_plots: bool = True
    log_model: bool = True
    console: str = "wrap"
    system_metrics: bool = True


@dataclass
class EvalConfig:
    """Evaluation: the agent and the baselines on the same workloads (see
    servegym.agents.evaluation).

    split: trace part of the final evaluation ("test": held out). episodes: workload
    windows; num_requests / rate: per window (null: the env's episode_requests / rate).
    baselines: registry specs compared with the agent (null: every heuristic of the
    controlled decision kinds). extra_baselines: specs evaluated besides them, e.g.
    combinations "spf+swap-cost-aware+p2c" on tasks that control several decisions (an
    agent answering all of them must beat the best hand-written combination, not only
    each heuristic with defaults for the rest). metric: the `serving/` metric whose mean
    over episodes (for the agent) train.py returns, the sweep objective. freq: timesteps
    between evaluations during training (0: none), on `freq_episodes` windows of the
    training split.
    deterministic: greedy agent actions (default; the headline row "agent"); false samples
    from the trained policy with a seeded generator. The other mode, and the last model in
    both, are reported beside it (servegym.agents.training.agent_factories).
    """

    split: str = "test"
    episodes: int = 5
    num_requests: int | None = None
    rate: float | None = None
    baselines: list[str] | None = None
    extra_baselines: list[str] = field(default_factory=list)
    metric: str = "serving/goodput_rps"
    freq: int = 0
    freq_episodes: int = 2
    deterministic: bool = True


@dataclass
class CheckpointConfig:
    """Checkpoints every `freq` timesteps (0: none) under `<run dir>/checkpoints/`; the
    newest `keep` are kept (0: all)."""

    freq: int = 25_000
    keep: int = 3


@dataclass
class TrainConfig:
    """The train app's config. seed: the one seed of every random draw. name: tag of the
    run folder and of results. resume: a run folder to continue from its newest saved
    agent (its own saved config is used); resume_allow_pickle: allow resuming a folder
    saved before the pickle-free training state existed (unpickles SB3's files, which can
    run code: only for your own runs). progress: tqdm bars."""

    seed: int = 0
    name: str = "default"
    resume: str | None = None
    resume_allow_pickle: bool = False
    progress: bool = True
    env: EnvConfig = field(default_factory=EnvConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    agent: AgentConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# Top-level module names before servegym 0.2, which saved configs and agents may still name.
LEGACY_PACKAGES = ("envs", "agents")


def upgrade_module_paths(container: Any, where: str = "a saved config") -> Any:
    """`container` with every ``_target_`` that names a pre-0.2 module (``envs.*``,
    ``agents.*``) renamed under ``servegym.``, with a DeprecationWarning (for one release)."""
    import warnings

    renamed: list[str] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {key: walk(value) for key, value in node.items()}
            target = out.get("_target_")
            if isinstance(target, str) and target.split(".", 1)[0] in LEGACY_PACKAGES:
                out["_target_"] = f"servegym.{target}"
                renamed.append(target)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    upgraded = walk(container)
    if renamed:
        warnings.warn(f"{where} names the old module path(s) {sorted(set(renamed))}; read as "
                      "servegym.* (the old names stop working in the next release)",
                      DeprecationWarning, stacklevel=2)
    return upgraded


RUN_NAME_RESOLVER = "servegym.run_name"
RESOLVED_CONFIG = "resolved_config.yaml"  # a run's effective config, in its folder


def run_name(name: str, resume: str | None) -> str:
    """The tag of a run folder (``${servegym.run_name:${name},${resume}}`` in
    conf/config.yaml): `name`, or for `resume=<run>` that run's own name, so a resumed run's
    folder says what it continues (not "default")."""
    if not resume:
        return str(name)
    import yaml

    saved = Path(str(resume)) / RESOLVED_CONFIG
    try:
        return str(yaml.safe_load(saved.read_text()).get("name") or name)
    except (OSError, AttributeError, yaml.YAMLError):
        return str(name)  # resume_config reports the missing or broken folder


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore and register the resolver
    ``${servegym.task:<id>,<path>}`` through which the configs read the task settings of
    `envs/tasks.py` (importing `servegym` registers it too; idempotent)."""
    from hydra.core.config_store import ConfigStore

    register_resolver()
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RUN_NAME_RESOLVER):
        OmegaConf.register_new_resolver(RUN_NAME_RESOLVER, run_name)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for name, schema in AGENT_SCHEMAS.items():
        store.store(group=SCHEMA_GROUP, name=name, node=schema)


def validate(cfg: TrainConfig) -> None:
    """Checks that types alone cannot express; raises ValueError naming the key."""
    if cfg.agent.algo not in ALGORITHMS:
        raise ValueError(f"agent.algo={cfg.agent.algo!r}: choose one of {ALGORITHMS}")
    if cfg.env.invalid_action not in INVALID_ACTION_MODES:
        raise ValueError(f"env.invalid_action={cfg.env.invalid_action!r}: choose one of "
                         f"{INVALID_ACTION_MODES}")
    if cfg.env.invalid_action == "raise" and cfg.agent.algo not in (*MASKED_ALGORITHMS,
                                                                     "heuristic"):
        raise ValueError(f"agent {cfg.agent.algo!r} samples actions without masks: it needs "
                         "env.invalid_action=fallback (or auto)")
    if cfg.logger.kind not in LOGGER_KINDS:
        raise ValueError(f"logger.kind={cfg.logger.kind!r}: choose one of {LOGGER_KINDS}")
    if cfg.logger.mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={cfg.logger.mode!r}: choose one of {WANDB_MODES}")
    if cfg.eval.split not in EVAL_SPLITS:
        raise ValueError(f"eval.split={cfg.eval.split!r}: choose one of {EVAL_SPLITS}")
    if cfg.agent.network not in NETWORKS:
        raise ValueError(f"agent.network={cfg.agent.network!r}: choose one of {NETWORKS}")
    if cfg.agent.network == "scorer" and cfg.agent.algo not in ("ppo", "maskable_ppo"):
        raise ValueError(f"agent.network=scorer works with ppo and maskable_ppo, not "
                         f"{cfg.agent.algo!r}; use agent.network=mlp")
    if cfg.agent.network != "mlp" and cfg.agent.algo in ("ppo", "maskable_ppo") and \
            cfg.agent.vec_normalize and cfg.agent.norm_obs and \
            not _interval_id(cfg.env.id):
        raise ValueError("the scorer network (agent.network=auto or scorer) reads slot "
                         "validity from raw features; set "
                         "agent.norm_obs=false (observations are already in [-1, 1]) or "
                         "agent.vec_normalize=false")
    if cfg.agent.vec_env not in ("dummy", "subproc"):
        raise ValueError(f"agent.vec_env={cfg.agent.vec_env!r}: choose dummy or subproc")
    for key, value in (("agent.n_envs", cfg.agent.n_envs), ("eval.episodes", cfg.eval.episodes),
                       ("eval.freq_episodes", cfg.eval.freq_episodes)):
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    for key, value in (("agent.total_timesteps", cfg.agent.total_timesteps),
                       ("eval.freq", cfg.eval.freq), ("checkpoint.freq", cfg.checkpoint.freq),
                       ("checkpoint.keep", cfg.checkpoint.keep)):
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if not cfg.eval.metric.startswith("serving/"):
        raise ValueError(f"eval.metric={cfg.eval.metric!r}: name a serving/ metric, "
                         "e.g. serving/goodput_rps")
    _validate_env(cfg.env)
    _validate_specs(cfg)
    _validate_agent(cfg.agent)
    _validate_cluster(cfg.cluster)
    _validate_interval(cfg)
    _validate_warm_start(cfg)
    _validate_evolution(cfg)
    _validate_reward_baseline(cfg)
    _validate_pools(cfg.cluster)


def _validate_env(env: EnvConfig) -> None:
    """Candidate sets and episode ends, checked at composition (before any env is built)."""
    from servegym.envs.observations import ADMIT_KEYS, PREEMPT_KEYS, check_keys
    from servegym.envs.serving_env import EPISODE_ENDS, OVER_CONTEXT

    if env.num_slots < 1:
        raise ValueError(f"env.num_slots must be >= 1, got {env.num_slots}")
    if env.episode_requests < 1:
        raise ValueError(f"env.episode_requests must be >= 1 (requests per training "
                         f"episode), got {env.episode_requests}")
    if env.rate is not None and not (math.isfinite(env.rate) and env.rate > 0):
        raise ValueError(f"env.rate must be a finite req/s > 0 or null (the trace's own "
                         f"rate), got {env.rate}")
    check_keys(env.admit_keys, ADMIT_KEYS, "env.admit_keys", env.num_slots)
    check_keys(env.preempt_keys, PREEMPT_KEYS, "env.preempt_keys", env.num_slots)
    if env.episode_end not in EPISODE_ENDS:
        raise ValueError(f"env.episode_end={env.episode_end!r}: choose one of {EPISODE_ENDS}")
    if env.over_context not in OVER_CONTEXT:
        raise ValueError(f"env.over_context={env.over_context!r}: choose one of "
                         f"{OVER_CONTEXT} (reject or clip requests longer than the model's "
                         "context)")
    if not env.interval_s > 0:
        raise ValueError(f"env.interval_s must be positive, got {env.interval_s}")


# (low, high, low included, high included) of the numeric agent hyperparameters, by name;
# None: unbounded. A field absent from an algorithm's schema is not checked for it.
AGENT_BOUNDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "total_timesteps": (0, None, True, False),
    "clip_obs": (0, None, False, False),
    "scorer_hidden": (1, None, True, False), "scorer_embed": (1, None, True, False),
    "learning_rate": (0, None, False, False),
    "n_steps": (1, None, True, False), "batch_size": (1, None, True, False),
    "n_epochs": (1, None, True, False),
    "gamma": (0, 1, False, True), "gae_lambda": (0, 1, True, True),
    "clip_range": (0, None, False, False), "ent_coef": (0, None, True, False),
    "vf_coef": (0, None, True, False), "max_grad_norm": (0, None, False, False),
    "target_kl": (0, None, False, False), "rms_prop_eps": (0, None, False, False),
    "buffer_size": (1, None, True, False), "learning_starts": (0, None, True, False),
    "tau": (0, 1, False, True), "train_freq": (1, None, True, False),
    "gradient_steps": (1, None, True, False), "target_update_interval": (1, None, True, False),
    "exploration_fraction": (0, 1, True, True),
    "exploration_initial_eps": (0, 1, True, True), "exploration_final_eps": (0, 1, True, True),
}


def _in_bounds(value: float, bounds: tuple[float | None, float | None, bool, bool]) -> bool:
    low, high, low_in, high_in = bounds
    if not math.isfinite(value):
        return False
    if low is not None and (value < low or (value == low and not low_in)):
        return False
    return high is None or value < high or (value == high and high_in)


def _bounds_text(bounds: tuple[float | None, float | None, bool, bool]) -> str:
    low, high, low_in, high_in = bounds
    if high is None:
        return f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _validate_agent(agent: AgentConfig) -> None:
    """Every numeric hyperparameter within its range (`AGENT_BOUNDS`), so a value SB3 or
    torch would trip on mid-run (batch_size=0, gamma=1.5) fails at composition."""
    for item in dataclasses.fields(agent):
        bounds = AGENT_BOUNDS.get(item.name)
        value = getattr(agent, item.name)
        if bounds is None or value is None:
            continue
        if not _in_bounds(float(value), bounds):
            raise ValueError(f"agent.{item.name}={value!r}: must be {_bounds_text(bounds)} "
                             f"(agent.algo={agent.algo})")
    if not agent.net_arch or any(width < 1 for width in agent.net_arch):
        raise ValueError(f"agent.net_arch={list(agent.net_arch)}: give one or more hidden "
                         "layer widths, each >= 1")
    if getattr(agent, "normalize_advantage", False) and getattr(agent, "batch_size", 2) < 2:
        raise ValueError(f"agent.batch_size={agent.batch_size}: advantage normalisation "
                         "needs minibatches of 2 or more; raise batch_size or set "
                         "agent.normalize_advantage=false")


def _validate_cluster(cluster: ClusterConfig) -> None:
    """The instance settings, checked by `InstanceConfig` itself
    (servegym.envs.build.instance_config) at composition, and the instance count."""
    from servegym.envs.build import check_cluster_options, instance_config

    if cluster.num_instances < 1:
        raise ValueError(f"cluster.num_instances must be >= 1, got {cluster.num_instances}")
    try:
        instance_config(dataclasses.asdict(cluster.instance))
    except ValueError as error:
        raise ValueError(f"cluster.instance: {error}") from None
    check_cluster_options(dataclasses.asdict(cluster))  # each option by its own check


def _validate_specs(cfg: TrainConfig) -> None:
    """The reward and every policy spec the run names (eval.baselines, eval.extra_baselines,
    env.policies, agent.policy, agent.warm_start.teacher) built once at composition, so a
    misspelt name or option fails before any training, with the registry's message."""
    from servegym.agents import build_scheduler
    from servegym.envs.rewards import RewardConfig

    try:
        RewardConfig(kind=cfg.env.reward, **dict(cfg.env.reward_options))
    except (TypeError, ValueError) as error:
        raise ValueError(f"env.reward={cfg.env.reward!r} with env.reward_options="
                         f"{dict(cfg.env.reward_options)}: {error}") from None
    named = [(f"eval.baselines[{i}]", spec) for i, spec in enumerate(cfg.eval.baselines or [])]
    named += [(f"eval.extra_baselines[{i}]", spec)
              for i, spec in enumerate(cfg.eval.extra_baselines)]
    named += [(f"env.policies.{kind}", spec) for kind, spec in cfg.env.policies.items()]
    if cfg.agent.algo == "heuristic":
        named.append(("agent.policy", getattr(cfg.agent, "policy", "")))
    if cfg.agent.warm_start.teacher not in (None, "auto"):
        named.append(("agent.warm_start.teacher", cfg.agent.warm_start.teacher))
    baseline = getattr(cfg.agent, "reward_baseline", None)
    if baseline not in (None, "teacher"):
        named.append(("agent.reward_baseline", baseline))
    for key, spec in named:
        if str(spec).strip().startswith(("agent:", "agent+pickle:")):
            continue  # a saved agent: checked when it is loaded
        try:
            build_scheduler(str(spec))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{key}={spec!r}: {error}") from None


def _interval_id(env_id: str) -> bool:
    from servegym.agents.learners import is_interval_env

    return is_interval_env(env_id)


def _validate_interval(cfg: TrainConfig) -> None:
    """An interval-mode env has a Box action (weights): PPO or A2C with an MLP."""
    if not _interval_id(cfg.env.id):
        return
    algo = cfg.agent.algo
    if algo in ("maskable_ppo", "dqn"):
        raise ValueError(f"{cfg.env.id} sets continuous priority weights: agent={algo} needs a "
                         "discrete action space; use agent=ppo_interval (PPO sized for "
                         "interval steps), agent=ppo or agent=a2c (or a heuristic)")
    if algo != "heuristic" and cfg.agent.network == "scorer":
        raise ValueError(f"{cfg.env.id} has no candidate slots to score: set "
                         "agent.network=auto or mlp")


def _validate_pools(cluster: ClusterConfig) -> None:
    """Pools checked at composition, by the builder's own checks
    (`servegym.envs.build.pool_settings`: keys, instance settings, GPU and model names,
    count, role), and their instance count."""
    from servegym.envs.build import pool_settings

    if not cluster.pools:
        return
    base = dataclasses.asdict(cluster.instance)
    for number, pool in enumerate(cluster.pools):
        pool_settings(number, dataclasses.asdict(pool), base)
    total = sum(pool.count for pool in cluster.pools)
    if cluster.num_instances not in (1, total):
        raise ValueError(f"cluster.num_instances={cluster.num_instances} but cluster.pools "
                         f"hold {total} instances; set num_instances: {total} or drop it")


def _validate_reward_baseline(cfg: TrainConfig) -> None:
    """A reward baseline plays per-decision episodes: not on interval envs; "teacher"
    needs a warm-start teacher."""
    baseline = getattr(cfg.agent, "reward_baseline", None)
    if baseline is None:
        return
    where = f"agent.reward_baseline={baseline!r}"
    if _interval_id(cfg.env.id):
        raise ValueError(f"{where}: {cfg.env.id} has no per-decision episode for a heuristic "
                         "to play; set agent.reward_baseline=null")
    if baseline == "teacher" and cfg.agent.warm_start.teacher is None:
        raise ValueError(f"{where} needs agent.warm_start.teacher (a spec or auto); or name "
                         "the heuristic itself, e.g. agent.reward_baseline=spf")


def _validate_warm_start(cfg: TrainConfig) -> None:
    """A teacher needs an actor-critic on per-decision actions and sane sizes; its spec
    is checked against the controlled decisions once the env is built (train.py)."""
    warm = cfg.agent.warm_start
    if warm.teacher is None:
        return
    if cfg.agent.algo not in ("ppo", "maskable_ppo", "a2c"):
        raise ValueError(f"agent.warm_start.teacher={warm.teacher!r}: imitation warm starts "
                         f"train actor-critic policies (ppo, maskable_ppo, a2c), not "
                         f"agent.algo={cfg.agent.algo!r}; set agent.warm_start.teacher=null")
    if _interval_id(cfg.env.id) and warm.teacher != "auto":
        raise ValueError(f"agent.warm_start.teacher={warm.teacher!r}: {cfg.env.id} sets "
                         "priority weights, there is no per-decision action to imitate; set "
                         "agent.warm_start.teacher=null")
    for key in ("steps", "epochs", "batch_size", "auto_windows"):
        if getattr(warm, key) < 1:
            raise ValueError(f"agent.warm_start.{key} must be >= 1, got {getattr(warm, key)}")
    if not warm.learning_rate > 0:
        raise ValueError(f"agent.warm_start.learning_rate must be > 0, got "
                         f"{warm.learning_rate}")


def _validate_evolution(cfg: TrainConfig) -> None:
    """Evolution needs an actor-critic on per-decision decisions and sane sizes."""
    evo = cfg.agent.evolution
    if evo.iterations < 0:
        raise ValueError(f"agent.evolution.iterations must be >= 0 (0: off), got "
                         f"{evo.iterations}")
    if evo.iterations == 0:
        return
    if cfg.agent.algo not in ("ppo", "maskable_ppo", "a2c") or _interval_id(cfg.env.id):
        raise ValueError(f"agent.evolution searches the actor of a per-decision "
                         f"actor-critic (ppo, maskable_ppo, a2c), not agent.algo="
                         f"{cfg.agent.algo!r} on {cfg.env.id}; set agent.evolution.iterations=0")
    if evo.population < 2 or evo.population % 2:
        raise ValueError(f"agent.evolution.population must be an even number >= 2 "
                         f"(antithetic pairs), got {evo.population}")
    if not 1 <= evo.windows <= evo.pool:
        raise ValueError(f"agent.evolution.windows must be in [1, agent.evolution.pool="
                         f"{evo.pool}], got {evo.windows}")
    if evo.workers < 1:
        raise ValueError(f"agent.evolution.workers must be >= 1, got {evo.workers}")
    for key in ("sigma", "learning_rate"):
        value = getattr(evo, key)
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"agent.evolution.{key} must be a finite number > 0, got {value}")


__all__ = [
    "ALGORITHMS", "A2CConfig", "AgentConfig", "EvolutionConfig", "CheckpointConfig",
    "ClusterConfig",
    "PoolConfig",
    "CostConfig", "DQNConfig", "EnvConfig", "EvalConfig", "HeuristicConfig", "LoggerConfig",
    "PPOConfig", "TrainConfig", "WarmStartConfig", "WorkloadConfig", "register_configs",
    "validate",
]
