"""The servegym tasks: every default of each registered id, stated once.

A task is the complete setting of one Gymnasium id: the decisions the agent answers, the
workload, the rate every episode is rescaled to, the episode length and split, the
cluster, the candidate sets, what the agent knows of output lengths, and the reward.
`TASKS` maps each id to its `TaskSpec`; nothing else states these values:

* `envs/__init__.py` registers every id with `spec.make_kwargs()`, so `gymnasium.make(id)`
  passes every setting explicitly (the `ServingEnv` / `IntervalEnv` signature defaults are
  the classes' own, not a task's).
* The Hydra configs of `python train.py` read the same values through the OmegaConf
  resolver `servegym.task` (`register_resolver`; importing `servegym` registers it):
  ``${servegym.task:<id>,<path>}`` is `task_setting(<id>, <path>)`, the value at the dotted
  path of the task's settings, e.g. ``${servegym.task:servegym/Routing-v0,cluster.num_instances}``.
  `conf/env/admission.yaml` reads every task field for its own `env.id` (``${.id}``), so an
  env option that sets only `env.id` (preemption, routing, serving, admission_interval,
  heterogeneous) gets that id's defaults; `conf/workload/sharegpt_azure.yaml`,
  `conf/workload/agent_sessions.yaml`, `conf/workload/chat_documents.yaml`,
  `conf/cluster/vllm_v1_x4_prefix.yaml` and `conf/cluster/heterogeneous.yaml` read their
  task's workload and cluster (list items by index: ``cluster.pools.0.count``). Always
  leaf by leaf, never a whole mapping: an override of one nested key
  (``workload.source.order=file``, ``env.reward_options.ttft_credit=0``) must keep its
  siblings, and OmegaConf cannot merge into an interpolated mapping.
* `servegym.agents.config.EnvConfig`'s defaults are `DEFAULT_TASK`'s (but for `reward_options`:
  see there).

`tests/test_headroom.py` builds every id both ways (`gym.make(id)` and train.py's
composition of its `conf/env/*.yaml`) and compares the envs' effective settings, so a leaf
that a config forgets to read fails there. The cost model's (model, GPU) pair is a task
setting too (`model`, `gpu`); train.py's default cost group, `conf/cost/task.yaml`, reads
it for `env.id` (the test compares the built cost models too; `cost=<name>` picks another
pair). Values still stated elsewhere, deliberately: the instance
fields a task leaves at `InstanceConfig`'s defaults (which the cluster group of
train.py's `conf/config.yaml`, `vllm_v1`, spells out), and the workload seed and KV block
size (train.py: the top-level `seed`, default 0, and the cluster's block size; gym.make:
`build_workload`'s defaults, 0 and 16). Admission-v0's and Serving-v0's workload is a name,
"azure_conv", which is also the default workload group of train.py's `conf/config.yaml`.

Plain data: frozen dataclasses, read-only mappings and tuples (`freeze`); `thaw` gives
the plain dicts and lists that Gymnasium and OmegaConf take. Importing this module imports
nothing heavy (the resolver imports OmegaConf when it is registered).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from servegym.envs.observations import DEFAULT_ADMIT_KEYS, DEFAULT_PREEMPT_KEYS

SERVING_ENTRY_POINT = "servegym.envs.serving_env:ServingEnv"
INTERVAL_ENTRY_POINT = "servegym.envs.interval_env:IntervalEnv"
RESOLVER = "servegym.task"
# Task settings that `IntervalEnv` refuses (a part of its `PER_DECISION_OPTIONS`; the
# invalid-action ones are env mechanics, not task settings): an interval task carries them,
# since train.py's `EnvConfig` has the fields for every id, but does not pass them.
PER_DECISION_SETTINGS = ("num_slots", "admit_keys", "preempt_keys", "episode_end")
NOT_SETTINGS = ("id", "entry_point", "interval_s")


def freeze(value: Any) -> Any:
    """`value` with every mapping read-only and every list a tuple (nested)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """A plain copy of `value`: every mapping a dict, every tuple a list (nested)."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class TaskSpec:
    """One registered id's complete setting. Every field but `id`, `entry_point` and
    `interval_s` is the env keyword argument of the same name (`ServingEnv`'s docstring).

    id: the Gymnasium id. entry_point: `SERVING_ENTRY_POINT` or `INTERVAL_ENTRY_POINT`.
    model, gpu: the (model, GPU) pair of the cluster's cost model, on one GPU per instance
        (`build_cost_model`'s `source="auto"`: Vidur's measured op tables where they exist,
        else the labelled roofline fallback); pools with their own `cost` override it.
    workload: "azure_conv" (the Azure 2023 conversation trace, as `ServingEnv` loads it)
        or `build_workload` arguments. cluster: {"num_instances": N, "instance":
        InstanceConfig fields}; fields left out are `InstanceConfig`'s defaults; with
        "pools" (name, count, cost, ...: envs/build.py `build_pools`) a heterogeneous one.
    interval_s: simulated seconds between the agent's actions (interval tasks only, else
        None); interval tasks do not pass `PER_DECISION_SETTINGS`.
    """

    id: str
    entry_point: str
    control: tuple[str, ...]
    workload: str | Mapping[str, Any]
    rate: float | None
    episode_requests: int
    split: str
    cluster: Mapping[str, Any]
    model: str
    gpu: str
    num_slots: int
    admit_keys: tuple[str, ...]
    preempt_keys: tuple[str, ...]
    episode_end: str
    length_knowledge: str
    length_sigma: float
    over_context: str
    reward: str
    reward_options: Mapping[str, Any]
    interval_s: float | None

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            object.__setattr__(self, item.name, freeze(getattr(self, item.name)))
        if (self.interval_s is None) != (self.entry_point == SERVING_ENTRY_POINT):
            raise ValueError(f"{self.id}: interval_s is set for interval tasks "
                             f"({INTERVAL_ENTRY_POINT}) and only for them")

    @property
    def interval(self) -> bool:
        """Whether the agent acts once per interval (`IntervalEnv`), not per decision."""
        return self.interval_s is not None

    def make_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `gymnasium.make(self.id)` passes (plain, fresh copies)."""
        kwargs = {item.name: thaw(getattr(self, item.name))
                  for item in dataclasses.fields(self) if item.name not in NOT_SETTINGS}
        if self.interval:
            for key in PER_DECISION_SETTINGS:
                del kwargs[key]
            kwargs["interval_s"] = self.interval_s
        return kwargs


# ============================================================================ the tasks
# The (model, GPU) pair of the tasks tuned on the roofline model: Llama-3-8B on one H100,
# which Vidur's profiles do not cover (every cost is the labelled roofline, docs/costs.md).
# Their rates and headroom were measured on it; Admission-v0 (and AdmissionInterval-v0)
# run on a measured pair instead.
ROOFLINE_PAIR: Mapping[str, str] = MappingProxyType({"model": "Llama-3-8B",
                                                     "gpu": "H100-80GB"})

ADMISSION = TaskSpec(
    id="servegym/Admission-v0",
    entry_point=SERVING_ENTRY_POINT,
    control=("admit",),
    # The Azure 2023 conversation trace's lengths and burst shape at 10 req/s in
    # 1000-request episodes, on one H100 serving Llama-2-7B: a pair whose token-wise ops
    # Vidur measured (envs/data/calibration/vidur/; attention fitted to its Llama-2-70B
    # table and transferred: `describe()["parts"]`), so the default run stands on
    # measurements, not on the roofline. Its full multi-head KV (4x Llama-3-8B's per token)
    # makes the one instance KV-bound, so the admission order decides the queue.
    # Measured (experiments/bench_headroom.py --ids servegym/Admission-v0, goodput on the 5
    # test windows): spf-tpot-budget-late-last 8.12, spf 7.77, fcfs 5.40 req/s (attainment
    # 0.92 / 0.88 / 0.60): spread 0.34. Llama-3-8B on the A100's measured tables does not
    # separate the rules at 1000-request windows (5.5-7.0 req/s: spread <= 0.02, every
    # rule alike; 8 req/s: 0.12 with attainment below 0.43). At 16 req/s with 256-request
    # episodes (the ids' setting before these tasks) on the roofline H100 every admission
    # order gave the same schedule: nothing to learn (docs/training.md).
    workload="azure_conv",
    rate=10.0,
    episode_requests=1000,
    split="train",                    # the first 70% of the trace; evaluation: the rest
    cluster={},                       # one instance, InstanceConfig's defaults (vLLM v1)
    model="Llama-2-7B",
    gpu="H100-80GB",
    num_slots=16,                     # K candidate slots, round-robin over the sort keys
    admit_keys=DEFAULT_ADMIT_KEYS,    # envs/observations.py
    preempt_keys=DEFAULT_PREEMPT_KEYS,
    episode_end="auto",               # horizon for the goodput reward (ServingEnv)
    length_knowledge="oracle",
    length_sigma=0.5,                 # log-normal error of length_knowledge="predicted"
    # 8.3% of the trace's requests exceed Llama-2-7B's 4,096-token context (0.005% exceed
    # Llama-3-8B's 8,192): clipped to it (prompt first), not rejected on arrival.
    over_context="clip",
    # Goodput (+1 per request meeting both SLOs), half of each request's credit paid at its
    # first token, in time with the admission that settled it (docs/training.md: why).
    reward="goodput",
    reward_options={"ttft_credit": 0.5},
    interval_s=None,
)

# KV pressure makes preemption decisions frequent: one instance with 2048 KV blocks (32k
# tokens: about 11 ShareGPT requests) and 4096 host swap blocks; ShareGPT lengths (prompt
# mean 2.35k, output mean 436 tokens: long outputs grow the KV cache during decode, the mix
# vLLM's paper measured preemption on) at the Azure conversation trace's arrival times
# (bursts kept), 2.2 req/s. Measured (results/headroom.md, goodput on the test split, 5
# windows): preempt-least-progress 1.63, swap-always 1.49, swap-cost-aware 1.48, vLLM's
# preempt-latest 1.46, preempt-most-blocks 0.54 req/s: spread 0.67, the best at 0.75 SLO
# attainment. The Azure trace at 20 req/s overloaded every heuristic (attainment
# 0.084-0.093); the trace at 9 req/s separates them too, but then short episodes (the
# tests' 48 requests) rarely preempt, and below ~2.1 req/s the heuristics agree again.
PREEMPTION_RATE = 2.2
PREEMPTION = replace(
    ADMISSION,
    id="servegym/Preemption-v0",
    **ROOFLINE_PAIR,
    over_context="reject",
    control=("preempt",),
    workload={"source": {
        "kind": "sharegpt", "num_requests": 19366,   # one request per trace arrival
        "arrivals": {"process": "trace", "trace": "azure_conv", "rate": PREEMPTION_RATE},
        "order": "random",                            # rows with replacement (seeded)
    }},
    rate=PREEMPTION_RATE,                             # the workload's own rate
    cluster={"num_instances": 1,
             "instance": {"num_kv_blocks": 2048, "swap_space_blocks": 4096}},
)

# Tool-calling agent sessions whose prompts share prefixes, over four vLLM v1 instances with
# prefix caching: where a call goes decides how much of its prompt is already cached. Each
# session is 2-8 LLM calls; call k's prompt is call k-1's prompt + its answer + a tool result
# and a 1024-token system prompt (tool definitions) is shared by all sessions; calls arrive
# 10 s apart on average (the answer plus the tool run; open loop, docs/workloads.md).
# 10.4 session starts/s x 5 calls = 52 req/s, so rescaling to `rate` keeps the think time;
# the window drops the first 100 s (sessions ramping up) and the tail after the last start.
# Measured (results/headroom.md): prefix-affinity 41.9 and min-ttft 39.9 req/s goodput, the
# load-only routers 26.7-28.5 (random worst): spread 0.36. On the Azure conversation trace
# at 60 req/s (no prefix reuse) every router, random included, met every SLO: spread 0.02.
# Below ~48 req/s the load-only routers keep up too (50 req/s: spread 0.30); above ~60 they
# collapse. An agent starts where random routing is; what there is to learn is routing for
# cache affinity and load at once (min-ttft weighs both, prefix-affinity caps load by count).
ROUTING = replace(
    ADMISSION,
    id="servegym/Routing-v0",
    **ROOFLINE_PAIR,
    over_context="reject",
    control=("route",),
    workload={
        "source": {
            "kind": "sessions", "name": "agent_sessions",
            "duration_s": 1700,                                  # about 88k calls
            "arrivals": {"process": "poisson", "rate": 10.4},   # session starts per second
            "turns": {"dist": "uniform", "low": 2, "high": 8},  # LLM calls per session
            "think_time": {"dist": "exponential", "mean": 10.0},  # s between calls
            "first_prompt": {"dist": "lognormal", "mean": 1500, "cv": 0.5, "high": 3000},
            "user_prompt": {"dist": "lognormal", "mean": 300, "cv": 1.0, "high": 1000},
            "output": {"dist": "lognormal", "mean": 150, "cv": 0.8, "high": 600},
            "system_prompt_len": 1024,                           # tokens every session shares
        },
        "window": (100, 1600),
    },
    rate=52.0,
    cluster={"num_instances": 4, "instance": {"enable_prefix_caching": True}},
)

# Routing over a heterogeneous cluster, as Mélange (Griggs et al., 2024) studies: one H100,
# two A100s and three L40S behind one router (envs/core/cluster.py pools; $14.80/h at the
# dated on-demand prices of envs/costs/prices.py), serving Llama-2-7B, the model with
# measured cost tables on two of the three GPUs (Vidur's A100 and H100 profiles; the L40S
# runs on the labelled roofline fallback, envs/costs/factory.py; Llama-3-8B has a table on
# the A100 only). The workload is Mélange's "mixed" service, 80% chat and 20% documents
# (their Arena/PubMed blend, here synthetic lengths): chat prompts log-normal, mean 300
# tokens (cv 1, <= 2048), answers mean 200 (cv 1, <= 1024), SLOs TTFT 1 s / TPOT 50 ms;
# documents mean 2600 prompt tokens (cv 0.25, <= 3584), summaries mean 150 (cv 0.5,
# <= 480), SLOs TTFT 4 s / TPOT 100 ms; Poisson arrivals, an hour of them, every episode
# rescaled to 32 req/s. The GPUs differ ~4x in memory bandwidth, so where a request goes
# (its size against each type's speed and KV room) decides whether it meets its SLO.
# Measured (results/hetero_probe.md, goodput on the test split, 5 windows): melange 23.17,
# min-ttft 20.73, llumnix 19.85, size-interval 18.68, the load-only routers 18.19-18.68, the
# heterogeneity-blind rr 12.07 and random 11.92 req/s (SLO attainment 0.71-0.73 against
# 0.97-1.00): spread 0.485. At 12 req/s every router meets every SLO (spread 0.11); at 25
# req/s the spread is 0.26, at 40 req/s 0.50 (one window each, before the size routers'
# final form).
HETEROGENEOUS_RATE = 32.0
HETEROGENEOUS = replace(
    ROUTING,
    id="servegym/Heterogeneous-v0",
    workload={"source": {
        "kind": "mix", "name": "chat_and_documents",
        "tenants": (
            {"name": "chat", "ttft_slo": 1.0, "tpot_slo": 0.05, "source": {
                "kind": "synthetic", "duration_s": 3600,
                "arrivals": {"process": "poisson", "rate": 8.0},
                "prompt": {"dist": "lognormal", "mean": 300, "cv": 1.0, "high": 2048},
                "output": {"dist": "lognormal", "mean": 200, "cv": 1.0, "high": 1024}}},
            {"name": "documents", "ttft_slo": 4.0, "tpot_slo": 0.1, "source": {
                "kind": "synthetic", "duration_s": 3600,
                "arrivals": {"process": "poisson", "rate": 2.0},
                "prompt": {"dist": "lognormal", "mean": 2600, "cv": 0.25, "high": 3584},
                "output": {"dist": "lognormal", "mean": 150, "cv": 0.5, "high": 480}}},
        ),
    }},
    rate=HETEROGENEOUS_RATE,
    cluster={"num_instances": 6, "instance": {}, "pools": (
        {"name": "h100", "count": 1, "cost": {"model": "Llama-2-7B", "gpu": "H100-80GB"}},
        {"name": "a100", "count": 2, "cost": {"model": "Llama-2-7B", "gpu": "A100-80GB"}},
        {"name": "l40s", "count": 3, "cost": {"model": "Llama-2-7B", "gpu": "L40S"}},
    )},
)

# Admission, preemption and routing at once on two KV-bound instances.
SERVING = replace(
    ADMISSION,
    id="servegym/Serving-v0",
    **ROOFLINE_PAIR,
    over_context="reject",
    control=("admit", "preempt", "route"),
    rate=30.0,
    cluster={"num_instances": 2,
             "instance": {"num_kv_blocks": 4096, "swap_space_blocks": 4096}},
)

# Admission-v0's setting, but the agent sets the weights of a priority function once per
# `interval_s` simulated seconds and that rule answers every admission of the interval
# (envs/interval_env.py, docs/interval.md).
ADMISSION_INTERVAL = replace(
    ADMISSION,
    id="servegym/AdmissionInterval-v0",
    entry_point=INTERVAL_ENTRY_POINT,
    interval_s=2.0,
)

# Prefill/decode disaggregation (DistServe, Zhong et al., OSDI 2024; Splitwise, Patel et
# al., ISCA 2024; envs/core/disagg.py): Llama-3-8B on four instances, one prefill and one
# decode on an H100, one of each on an L40S (roofline costs; the L40S has about a quarter
# of the H100's memory bandwidth and 40% of its KV room). Arrivals are routed among the
# prefill instances (ROUTE) and each prefilled request's KV moves to a decode instance
# (PLACE) over the GPUs' interconnect (the cost model's kv_transfer_time). The Azure 2023
# conversation trace (Admission-v0's workload; the rewards' default SLOs, TTFT 2 s and
# TPOT 0.1 s), every episode rescaled to 32 req/s. Measured
# (experiments/bench_headroom.py --ids servegym/Disaggregated-v0 --episodes 2, goodput on
# the test split): the load-aware routers 26.95-27.02 req/s (attainment 1.00), the blind
# rr and random 13.70 and 12.60 (0.58, 0.55), the placement rules beside rr routing: most
# free KV and first fit 13.70, fewest running 11.98 (it sends half the decodes to the slow
# L40S): spread 0.557. With two H100 per role at 40-120 req/s every rule scored within 9%:
# a homogeneous disaggregated cluster leaves routing and placement little to decide.
DISAGGREGATED_RATE = 32.0
DISAGGREGATED = replace(
    ADMISSION,
    id="servegym/Disaggregated-v0",
    **ROOFLINE_PAIR,
    over_context="reject",
    control=("route", "place"),
    rate=DISAGGREGATED_RATE,
    cluster={"num_instances": 4, "instance": {}, "pools": (
        {"name": "prefill-h100", "count": 1, "role": "prefill",
         "cost": {"gpu": "H100-80GB"}},
        {"name": "prefill-l40s", "count": 1, "role": "prefill", "cost": {"gpu": "L40S"}},
        {"name": "decode-h100", "count": 1, "role": "decode", "cost": {"gpu": "H100-80GB"}},
        {"name": "decode-l40s", "count": 1, "role": "decode", "cost": {"gpu": "L40S"}},
    )},
)

# Live migration (Llumnix, Sun et al., OSDI 2024; envs/core/migration.py): every 0.1 s
# (`cluster.migration.interval_s`, up to 2 moves per tick) the agent moves nothing or one
# decoding request to another instance; the KV is copied in stages while it keeps
# decoding, then a short stop. Eight vLLM v1 instances of Llama-3-8B on H100s with 800 KV
# blocks each (12.8k tokens: KV-bound, as Llumnix's setting is, each instance holds only
# ~5 requests), round-robin dispatch (the default router: blind to lengths), gamma
# arrivals (cv 1.5: bursty) at 13 req/s, long prompts, log-normal mean 2000 (cv 1,
# <= 8000: up to 62% of an instance's KV), outputs mean 400 (cv 1, <= 2000); the
# rewards' default SLOs (TTFT 2 s, TPOT 0.1 s). Why these values: migration is worth what
# pooling the cluster's KV is worth over eight separate pools, which is large when each
# instance holds few requests: round-robin leaves one instance with a queue head that does
# not fit (KV fragmentation across instances, Llumnix's de-fragmentation case) while
# others have room, and its queue misses the TTFT SLO until running requests finish
# there. Measured (results/headroom_migration_v1.md, experiments/bench_headroom.py, 5
# test windows): migrate-balance and -priority-headroom 8.80, migrate-defrag 8.32,
# migrate-never 5.61 req/s goodput (SLO attainment 0.774 vs 0.537): spread 0.363, every
# window 0.315-0.399 (first 0.399); drained ceiling 11.58 req/s (envs/bounds.py: +32%
# above the best rule for a policy that serves every request).
# The previous setting (4 x 1200 blocks, prompts mean 600 cv 1.5, outputs mean 400 cv 1.5
# <= 3000, gamma cv 3 at 20 req/s; results/headroom_migration.md) had spread 0.096: with
# many small requests per instance round-robin balances well, and heavy-tailed windows or
# cv-3 bursts (which round-robin spreads over every instance alike) decide the score, not
# migration. Probed on the way (5 windows each, tmp scripts): 4 x 1200 blocks with these
# lengths peaks at 0.29 in a narrow band (8.5 req/s; 0.16-0.24 on seeds 1-2); 8 x 800
# at 13 req/s: 0.394 and 0.298 on workload seeds 1 and 2, 0.347 on the train split, 0.336
# at 12.5 and 0.326 at 12 req/s (best attainment 0.95 there: too light), 0.30 at 13.5.
MIGRATION_RATE = 13.0
MIGRATION = replace(
    ADMISSION,
    id="servegym/Migration-v0",
    **ROOFLINE_PAIR,
    over_context="reject",
    control=("migrate",),
    workload={"source": {
        "kind": "synthetic", "name": "bursty_long_tail", "duration_s": 3600,
        "arrivals": {"process": "gamma", "rate": MIGRATION_RATE, "cv": 1.5},
        "prompt": {"dist": "lognormal", "mean": 2000, "cv": 1.0, "high": 8000},
        "output": {"dist": "lognormal", "mean": 400, "cv": 1.0, "high": 2000},
    }},
    rate=MIGRATION_RATE,
    cluster={"num_instances": 8, "instance": {"num_kv_blocks": 800},
             "migration": {"interval_s": 0.1, "max_per_tick": 2}},
)

# KV retention between the calls of agentic programs (Continuum, Li et al., 2025;
# envs/core/retention.py): when an LLM call whose program has a next call finishes, the
# agent answers RETAIN: release its prompt's KV now, leave it to the LRU prefix cache
# (whose evictions move down to a host tier), or pin it on the GPU for 1, 2, 5, 10 or 30 s
# (`cluster.retain_ttls`). Closed-loop agentic programs (envs/workloads/programs.py): chains
# of 3-8 calls (a planner, middle steps, an aggregator; `width` 1), a 512-token system
# prompt shared by all, a task of ~3000 tokens (log-normal, cv 0.5), and after each call
# one tool step of three kinds (search ~1.5 s log-normal, code ~6 s exponential, sql
# 0.2-1 s uniform) whose result (~200-600 tokens) joins the context, so prompts grow to
# ~5k tokens on average; the next call is released when the tool returns. 1500 programs
# starting at 1 per second (8272 calls); the episode keeps the workload's own rate (its
# release times are the closed loop's). One vLLM v1 instance of Llama-3-8B on an H100
# with prefix caching and 3000 KV blocks (48k tokens: about ten programs' contexts) above
# a host tier of 20000 blocks (25 GB/s). The rewards' default SLOs (TTFT 2 s, TPOT 0.1 s).
# Measured (results/headroom_sessions.md, goodput on the test split, 5 windows of 991
# calls): retain-lru 4.30, retain-continuum (memory-bounded) 4.12, retain-none 1.10 req/s
# (every call recomputes its context), the unbounded TTL 0.10 and the oracle TTL 0.09
# (pins hold the cache until admissions stall): spread 0.979; ceiling 5.78 (envs/bounds.py).
# What there is to learn: when a pin pays for its memory (a short tool, a long context, a
# cache with room) and when releasing or leaving to LRU is better.
SESSIONS = replace(
    ADMISSION,
    id="servegym/Sessions-v0",
    **ROOFLINE_PAIR,
    over_context="reject",
    control=("retain",),
    workload={"source": {
        "kind": "programs", "name": "agentic_sessions", "num_programs": 1500,
        "arrivals": {"process": "poisson", "rate": 1.0},       # program starts per second
        "stages": {"dist": "uniform", "low": 3, "high": 8},   # LLM calls per program
        "width": {"dist": "uniform", "low": 1, "high": 1},    # chains (one call per stage)
        "system_prompt_len": 512,
        "task_prompt": {"dist": "lognormal", "mean": 3000, "cv": 0.5, "high": 12000},
        "instruction": {"dist": "lognormal", "mean": 40, "cv": 0.5, "high": 400},
        "output": {"dist": "lognormal", "mean": 150, "cv": 0.8, "high": 1000},
        "tools": (
            {"name": "search", "weight": 0.4,
             "duration": {"dist": "lognormal", "mean": 1.5, "cv": 1.0},
             "result": {"dist": "lognormal", "mean": 600, "cv": 1.0, "high": 3000}},
            {"name": "code", "weight": 0.3,
             "duration": {"dist": "exponential", "mean": 6.0},
             "result": {"dist": "lognormal", "mean": 300, "cv": 1.0, "high": 2000}},
            {"name": "sql", "weight": 0.3,
             "duration": {"dist": "uniform", "low": 0.2, "high": 1.0},
             "result": {"dist": "lognormal", "mean": 200, "cv": 0.8, "high": 1000}},
        ),
    }},
    rate=None,
    cluster={"num_instances": 1,
             "instance": {"enable_prefix_caching": True, "num_kv_blocks": 3000,
                          "kv_tiers": ({"name": "host", "capacity_blocks": 20000,
                                        "bandwidth_gb_s": 25.0, "latency_s": 1e-5},)},
             "retain_ttls": (1.0, 2.0, 5.0, 10.0, 30.0)},
)

TASKS: Mapping[str, TaskSpec] = MappingProxyType({
    task.id: task for task in (ADMISSION, PREEMPTION, ROUTING, SERVING, ADMISSION_INTERVAL,
                               HETEROGENEOUS, DISAGGREGATED, MIGRATION, SESSIONS)})
DEFAULT_TASK = ADMISSION  # `python train.py`'s (conf/config.yaml: env=admission)


# ============================================================================ lookups
def task_setting(env_id: str, path: str) -> Any:
    """The value (plain) at dotted `path` of `env_id`'s task, e.g. ("servegym/Routing-v0",
    "workload.source.arrivals.rate") -> 10.4; a number indexes a list ("cluster.pools.0.
    count"); a KeyError naming what is missing."""
    if env_id not in TASKS:
        raise KeyError(f"{env_id!r} is not a servegym task; choose one of {sorted(TASKS)}")
    value: Any = TASKS[env_id]
    keys = path.split(".")
    for depth, key in enumerate(keys):
        if isinstance(value, TaskSpec) and key in TaskSpec.__dataclass_fields__:
            value = getattr(value, key)
        elif isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, tuple) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise KeyError(f"{env_id} has no setting {'.'.join(keys[:depth + 1])!r} "
                           f"(envs/tasks.py)")
    return thaw(value)


def register_resolver() -> None:
    """Register the OmegaConf resolver ``${servegym.task:<id>,<path>}`` = `task_setting`
    (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, task_setting)


__all__ = [
    "ADMISSION", "ADMISSION_INTERVAL", "DEFAULT_TASK", "DISAGGREGATED", "DISAGGREGATED_RATE",
    "HETEROGENEOUS", "HETEROGENEOUS_RATE", "MIGRATION", "MIGRATION_RATE",
    "INTERVAL_ENTRY_POINT",
    "PER_DECISION_SETTINGS", "PREEMPTION", "PREEMPTION_RATE", "RESOLVER", "ROOFLINE_PAIR",
    "ROUTING", "SERVING",
    "SERVING_ENTRY_POINT", "SESSIONS", "TASKS", "TaskSpec", "freeze", "register_resolver",
    "task_setting", "thaw",
]
