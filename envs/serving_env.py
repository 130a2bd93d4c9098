"""Gymnasium environments over the serving simulator: one class, five registered ids
(the sixth, AdmissionInterval-v0, wraps it: envs/interval_env.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from servegym.envs.backends import build_backend
from servegym.envs.build import simulator_kwargs
from servegym.envs.core.decisions import default_policies, reset_policies
from servegym.envs.core.request import FINISHED, REJECTED
from servegym.envs.costs import build_cost_model
from servegym.envs.observations import DEFAULT_ADMIT_KEYS, DEFAULT_PREEMPT_KEYS, ObservationEncoder
from servegym.envs.protocol import STOP, Action, Decision, DecisionKind, InvalidActionError, Policy
from servegym.envs.rewards import RewardConfig, RewardTracker
from servegym.envs.workloads import Workload, build_workload, load_azure_2023, scale_to_rate
from servegym.envs.workloads.transforms import clip_to_context, split_by_time

KIND_NAMES = tuple(kind.name for kind in DecisionKind)
CONTROLS = {kind.control: kind for kind in DecisionKind}  # "admit" -> ADMIT, ...
LENGTH_KNOWLEDGE = ("oracle", "predicted", "none")
TRACE_NAMES = {"azure_conv": "conv", "azure_code": "code"}
INVALID_ACTION = ("raise", "fallback")
EPISODE_ENDS = ("auto", "horizon", "drain")
OVER_CONTEXT = ("reject", "clip")


def resolve_workload(workload: Workload | str | Mapping[str, Any]) -> Workload:
    """The env's `workload` argument as a Workload: a Workload as is, a mapping as
    `build_workload` arguments (from Hydra), a string as one of `TRACE_NAMES`."""
    if isinstance(workload, Workload):
        return workload
    if isinstance(workload, Mapping):  # build_workload arguments, e.g. from Hydra
        return build_workload(**workload)
    if workload not in TRACE_NAMES:
        raise ValueError(f"unknown workload {workload!r}; pass a Workload, build_workload "
                         f"arguments, or one of {sorted(TRACE_NAMES)}")
    return load_azure_2023(TRACE_NAMES[workload])


class ServingEnv(gym.Env):
    """LLM serving scheduling, one step per scheduling decision.

    ## Description
    A discrete-event model of LLM serving instances (vLLM-style continuous batching, paged
    KV cache, chunked prefill, preemption by recompute or swap, several instances behind a
    router; see docs/architecture.md) replays a slice of a request trace. Whenever a
    decision the agent controls arises — ADMIT (which waiting request enters the batch
    being built, or STOP), PREEMPT (which running request is evicted when one lacks KV
    blocks, and whether it is swapped), ROUTE (which instance receives an arriving request)
    — the simulation pauses and the agent answers it. Decisions it does not control are
    answered by heuristic policies (`policies`). Time advances only through the simulator,
    so steps are decision points, not clock ticks.

    ## Action Space
    `Discrete(2K + 1)` with `K = num_slots`: actions `0..K-1` pick candidate slot `a`;
    `K..2K-1` pick slot `a - K` and swap it (PREEMPT with swap space only); `2K` is STOP
    (ADMIT only; refused when it would leave the instance idle while a request fits, so no
    policy can starve the server). `action_masks()` (bool, True = valid) and
    `info["action_mask"]` give the valid actions. Every action of the action space is
    accepted, as Gymnasium expects: one the mask forbids is replaced by the lowest valid
    action and costs `invalid_action_penalty` (`invalid_action="fallback"`, the default;
    `"raise"`, which train.py uses for masked agents, raises `InvalidActionError` naming
    the decision and the valid choices instead). Anything outside the action space (a
    float, a bool, a string, NaN, an array of another shape) raises `InvalidActionError`
    saying what `step` takes. Candidate order is
    a candidate set (see `envs/observations.py`): ADMIT slots are up to K waiting requests
    that fit, drawn round-robin from several rankings (`admit_keys`: oldest, shortest
    prefill, shortest prefill still on time, shortest output, least TTFT slack still on
    time by default), so what those rules would pick
    is always visible; PREEMPT slots likewise from `preempt_keys` (newest first = vLLM's
    victim, most blocks, least progress, longest remaining); ROUTE slots are the instances
    by index. Each request slot shows the key that chose it.

    ## Observation Space
    `Box(-1, 1, (16 + 21K,), float32)`: 16 global features (queue lengths, KV blocks free
    and used, batch tokens and sequences, running requests, recent arrival rate, progress
    through the episode, requests in system, decision kind, the arriving / needy request)
    and K slots of 21 features (validity, prompt length, tokens done, output-length
    estimate, waiting time, TTFT slack, prefix-cache hits or KV held, tenant, priority, a
    one-hot of the slot's sort key, its rank under every sort key; for ROUTE: per-instance
    queue, load, KV use, queued tokens, prefix affinity), zero-padded.
    Exact layout and normalisation: `envs/observations.py`.

    ## Rewards
    `reward="latency"` (the class default; every registered id uses `"goodput"` with
    `ttft_credit=0.5`): minus the time integral of requests in the system between
    decisions, over `latency_scale_s` (Little's law: minimises mean latency); `"slo"`: +1
    per request that leaves meeting its TTFT and TPOT targets, `-miss_penalty` otherwise
    (rejected included); `"goodput"`: +1 per request meeting both. `reward_options`:
    `ttft_credit` pays part of a request's credit at its first token (aligned in time
    with the admission that settled it; the episode sum is unchanged), a fairness term
    across tenants and an average-reward (differential) form, which charges the running
    reward rate per simulated second (time-aware credit). Formulas: `envs/rewards.py`.

    ## Starting State
    `reset(seed)` draws a slice of `episode_requests` consecutive requests (or, with
    `episode_seconds`, the requests arriving in that many seconds of trace time) from the
    workload's `split` (the first 70% of the trace's time span for "train", the rest for
    "test"), shifts it to start at time 0, optionally rescales it to `rate` req/s, and runs
    the simulator to the first decision the agent controls.

    ## Episode End
    `episode_end="horizon"` (what `"auto"`, the default, means for the goodput and slo
    rewards): `terminated` at the first decision after the last
    arrival at which every request still in the system is a certain miss (no first token
    by its TTFT target, or too late to meet its TPOT target): nothing an agent does after
    that changes the goodput, so delaying lost requests cannot earn reward; those
    requests count as misses (their early TTFT credit is taken back), and the simulator
    is drained by the default policies only to write the report. `"drain"` (what
    `"auto"` means for the latency reward, which must charge every request's latency):
    `terminated` when every request of the slice has finished or been rejected. A time
    limit (`max_episode_steps` at registration or `gymnasium.wrappers.TimeLimit`) gives
    `truncated`. At the end `info["serving"]` holds the serving summary (`serving/...`).

    ## Arguments
    The defaults named above and in the signature are the class's own. The registered ids
    pass every setting of their task (`envs/tasks.py`, the same values train.py's configs
    read): `gym.make("servegym/Admission-v0")` gives 1000-request episodes of the Azure
    conversation trace's train split rescaled to 10 req/s on one instance (Llama-2-7B on
    an H100, measured tables; requests clipped to its 4k context), the goodput
    reward with `ttft_credit=0.5` (so horizon ends), 16 slots over the default sort keys,
    oracle lengths; Preemption-v0, Routing-v0 and Serving-v0 change the decisions, the
    workload, the rate and the cluster; Heterogeneous-v0 routes Mélange's mixed service
    (80% chat, 20% long documents, per-tenant SLOs) at 32 req/s over pools of different
    GPUs (1 H100, 2 A100, 3 L40S serving Llama-2-7B: measured cost tables on the A100 and
    H100, the roofline on the L40S; `info["serving"]` has the cluster's
    `serving/cost_per_hour` and `serving/goodput_per_dollar`, the report each pool's GPU,
    count, price and cost source). Keyword arguments to `gym.make` override them.
    control: decisions the agent answers, any of "admit", "preempt", "route", "place"
        (a disaggregated cluster's decode placement, envs/core/disagg.py), "retain" (KV
        retention between a session's calls; needs `cluster.retain_ttls`,
        envs/core/retention.py).
    workload: a `Workload`, `build_workload` arguments (a mapping, as in conf/workload/),
    or "azure_conv" / "azure_code". rate: target mean req/s.
    episode_requests, episode_seconds (a window of trace time instead, before `rate`
    rescaling), split ("train" | "test" | "all"), model, gpu, tensor_parallel,
    cost_source, cluster ({"num_instances": N, "instance": InstanceConfig fields}, or
    with "pools": [{"name", "count", "role", "instance", "cost": {"gpu", ...}}], a
    heterogeneous or disaggregated cluster, envs/build.py `build_pools`; a disaggregated
    one may add "network": {"bandwidth_gbps", "latency_s"}, envs/core/disagg.py),
    num_slots (K), admit_keys and preempt_keys (candidate sort keys, `ADMIT_KEYS` /
    `PREEMPT_KEYS` of envs/observations.py), episode_end ("auto" | "horizon" | "drain"),
    length_knowledge ("oracle" | "predicted" | "none"), length_sigma (log-normal error
    of "predicted"), over_context (a request whose prompt + output exceed the model's
    context: "reject", the simulator rejects it on arrival as vLLM does; "clip", the env
    clips the source's requests to the context first, prompt first, `Workload.
    clip_total_tokens`; the live backend always clips), reward and reward_options
    (RewardConfig fields),
    policies ({"admit"|"preempt"|"route": Policy} for uncontrolled decisions),
    invalid_action ("raise" | "fallback"), invalid_action_penalty,
    debug_checks (simulator invariant checks after every event),
    backend ("sim" | "live": real vLLM engines, see docs/live.md) and live_options.

    ## Version History
    v0: initial release; observation layout 3 (candidate sets with roles and per-key ranks),
    horizon ends; layout 4 (MIGRATE: Llumnix's destination and freeness features; two
    slot features more for every kind, 0 outside MIGRATE).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        control: Sequence[str] = ("admit",),
        workload: Workload | str = "azure_conv",
        rate: float | None = 16.0,
        episode_requests: int = 256,
        episode_seconds: float | None = None,
        split: str = "train",
        model: str = "Llama-3-8B",
        gpu: str = "H100-80GB",
        tensor_parallel: int = 1,
        cost_source: str = "auto",
        cluster: Mapping[str, Any] | None = None,
        num_slots: int = 16,
        admit_keys: Sequence[str] = DEFAULT_ADMIT_KEYS,
        preempt_keys: Sequence[str] = DEFAULT_PREEMPT_KEYS,
        episode_end: str = "auto",
        length_knowledge: str = "oracle",
        length_sigma: float = 0.5,
        over_context: str = "reject",
        reward: str = "latency",
        reward_options: Mapping[str, Any] | None = None,
        policies: Mapping[str, Policy] | None = None,
        invalid_action: str = "fallback",
        invalid_action_penalty: float = 0.1,
        debug_checks: bool = False,
        backend: str = "sim",
        live_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.controlled = self._check_control(control)
        if length_knowledge not in LENGTH_KNOWLEDGE:
            raise ValueError(f"length_knowledge must be one of {LENGTH_KNOWLEDGE}, "
                             f"got {length_knowledge!r}")
        self.length_knowledge = length_knowledge
        if invalid_action not in INVALID_ACTION:
            raise ValueError(f"invalid_action must be one of {INVALID_ACTION}, "
                             f"got {invalid_action!r}")
        self.invalid_action = invalid_action
        if episode_end not in EPISODE_ENDS:
            raise ValueError(f"episode_end must be one of {EPISODE_ENDS}, got {episode_end!r}")
        if episode_end == "auto":
            episode_end = "drain" if reward == "latency" else "horizon"
        self.episode_end = episode_end
        self.invalid_action_penalty = invalid_action_penalty
        self.length_sigma = length_sigma
        self.rate = rate
        self.episode_requests = episode_requests
        if episode_seconds is not None and episode_seconds <= 0:
            raise ValueError(f"episode_seconds must be positive, got {episode_seconds}")
        self.episode_seconds = episode_seconds
        self.source = self._split(resolve_workload(workload), split)
        if len(self.source) < episode_requests:
            raise ValueError(f"the {split} split has {len(self.source)} requests, fewer than "
                             f"episode_requests={episode_requests}")
        cluster = dict(cluster or {})
        pools = cluster.get("pools") or None
        num_instances = (sum(int(pool.get("count", 1)) for pool in pools) if pools
                         else cluster.get("num_instances", 1))
        over_instances = [k.control for k in self.controlled if k.spec.candidates == "instances"]
        if num_slots < 1 or num_slots < num_instances and over_instances:
            raise ValueError(f"num_slots ({num_slots}) must be >= 1 and >= num_instances "
                             f"({num_instances}) when a decision over instances is controlled "
                             f"({', '.join(over_instances)})")
        cost = (build_cost_model(model, gpu, tensor_parallel, source=cost_source)
                if backend == "sim" else None)
        self.sim = build_backend(backend, cost, policies=self._policies(policies),
                                 debug_checks=debug_checks, **simulator_kwargs(cluster),
                                 **dict(live_options or {}))
        if over_context not in OVER_CONTEXT:
            raise ValueError(f"over_context must be one of {OVER_CONTEXT}, got "
                             f"{over_context!r}")
        self.over_context = over_context
        # over_context="clip": the context every request is clipped to (the evaluation
        # windows of train.py too); None: requests beyond it are rejected on arrival
        self.clip_context = self.sim.max_model_len if over_context == "clip" else None
        if self.clip_context is not None or backend == "live":  # the live engine's is small
            self.source = clip_to_context(self.source, self.sim.max_model_len)[0]
        menu = [k.control for k in self.controlled if k.spec.candidates == "options"]
        if menu and getattr(self.sim, "retention", None) is None:
            raise ValueError(f"control={menu} needs retention on: set cluster.retain_ttls "
                             "(the RETAIN menu's TTLs, e.g. [1, 2, 5, 10, 30])")
        if menu and len(self.sim.retention.options) > num_slots:
            raise ValueError(f"num_slots ({num_slots}) must be >= the RETAIN menu's "
                             f"{len(self.sim.retention.options)} options (release, LRU and "
                             "the TTLs of cluster.retain_ttls)")
        options = dict(reward_options or {})
        self.rewards = RewardTracker(RewardConfig(kind=reward, **options))
        self.encoder = ObservationEncoder(num_slots, self.rewards.config.default_ttft_slo,
                                          rate_scale=rate or 10.0,
                                          output_estimate=self._output_estimate,
                                          admit_keys=admit_keys, preempt_keys=preempt_keys)
        self.action_space = spaces.Discrete(self.encoder.num_actions)
        self.observation_space = spaces.Box(-1.0, 1.0, (self.encoder.size,), np.float32)
        self._decision = None
        self._estimates: list[float] = []

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_control(control: Sequence[str]) -> frozenset[DecisionKind]:
        if isinstance(control, str):
            control = (control,)
        unknown = [c for c in control if c not in CONTROLS]
        if unknown or not control:
            raise ValueError(f"control must name decisions from {sorted(CONTROLS)}, got "
                             f"{list(control)}")
        return frozenset(CONTROLS[c] for c in control)

    @staticmethod
    def _split(workload: Workload, split: str) -> Workload:
        """`split_by_time`: the first 70% of the trace's time span is "train"."""
        if split == "all":
            return workload
        return split_by_time(workload, split)

    def _policies(self, overrides: Mapping[str, Policy] | None) -> dict[DecisionKind, Policy]:
        policies = default_policies()
        for name, policy in (overrides or {}).items():
            if name not in CONTROLS:
                raise ValueError(f"policies keys must be in {sorted(CONTROLS)}, got {name!r}")
            policies[CONTROLS[name]] = policy
        for kind in self.controlled:
            policies.pop(kind, None)
        return policies

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        for _ in range(10):
            rows = self._slice(rng)
            if self.source.parents is not None:  # closed loop: whole programs only
                rows = self.source.whole_programs(rows)
            episode = self.source.take(rows)
            # Requests carry the targets the reward judges them by (its defaults where the
            # trace has none), so policies inside the env (a warm start's teacher, the
            # uncontrolled kinds' heuristics) see what the evaluation harness gives them
            # (servegym.agents.evaluation.evaluation_episodes does the same).
            config = self.rewards.config
            episode = dataclasses.replace(
                episode, arrival_time=episode.arrival_time - episode.arrival_time[0],
                ttft_slo=np.where(np.isinf(episode.ttft_slo), config.default_ttft_slo,
                                  episode.ttft_slo),
                tpot_slo=np.where(np.isinf(episode.tpot_slo), config.default_tpot_slo,
                                  episode.tpot_slo))
            if self.rate is not None:
                episode = scale_to_rate(episode, self.rate)
            self._draw_estimates(episode, rng)
            self.sim.reset(episode, seed=int(rng.integers(2**31)))
            self._drain_seed = int(rng.integers(2**31))
            self._horizon = float(episode.arrival_time[-1]) if len(episode) else 0.0
            self.rewards.reset(self.sim)
            self.encoder.episode_requests = len(episode)
            self._decision = self.sim.next_decision()
            if self._decision is not None:
                break
        else:
            raise RuntimeError(self._no_decision_reason())
        self.rewards.step(self.sim.now)
        observation = self.encoder.encode(self._decision, self.sim)
        return observation, {"action_mask": self.encoder.mask.copy(),
                             "decision": self._decision.kind.name}

    def step(self, action: int):
        decision = self._decision
        if decision is None:
            raise RuntimeError("the episode has ended; call reset()")
        action = self._as_action_index(action)
        mask = self.encoder.mask
        penalty = 0.0
        if not 0 <= action < mask.size or not mask[action]:
            if self.invalid_action == "raise":
                raise InvalidActionError(
                    f"action {action} is not valid for this {decision.kind.name} decision; "
                    f"valid actions: {np.flatnonzero(mask).tolist()} (see action_masks())"
                )
            action = int(np.flatnonzero(mask)[0])  # the lowest valid action, penalised
            penalty = self.invalid_action_penalty
        self.sim.apply(self.encoder.to_action(action, decision), validated=True)
        reward = self._advance() - penalty
        decision = self._decision
        if decision is None:
            self.encoder.mask[:] = False
            info = {"action_mask": self.encoder.mask.copy(), "decision": None,
                    "serving": self.episode_summary()}
            return self.encoder.zeros(), reward, True, False, info
        observation = self.encoder.encode(decision, self.sim)
        info = {"action_mask": self.encoder.mask.copy(), "decision": KIND_NAMES[decision.kind]}
        return observation, reward, False, False, info

    def _advance(self) -> float:
        """After an answer: the next decision (None at the episode's end: drained, or past
        the horizon) and the reward earned meanwhile (`step` and `play` share it)."""
        self._decision = decision = self.sim.next_decision()
        reward = self.rewards.step(self.sim.now)
        if decision is not None and self.episode_end == "horizon" and \
                self._past_horizon(decision.time):
            reward += self.rewards.finalize()
            self._drain()
            self._decision = None
        return reward

    def play(self, policies: Mapping[DecisionKind, Policy]) -> tuple[np.ndarray, np.ndarray]:
        """Play the rest of the episode with `policies` answering the controlled decisions
        (the others: the simulator's own), exactly as `step` would play their answers but
        without observations. Returns the simulated time after each decision and the
        reward earned up to then (the last entry: the episode's end). The input-dependent
        baseline (`servegym.agents.reward_baseline`) runs a twin env's episode this way."""
        times, totals, total = [], [], 0.0
        while (decision := self._decision) is not None:
            self.sim.apply(policies[decision.kind].decide(decision))
            total += self._advance()
            times.append(self.sim.now)
            totals.append(total)
        return np.asarray(times, dtype=float), np.asarray(totals, dtype=float)

    def _as_action_index(self, action: Any) -> int:
        """The integer of an action in `Discrete(n)`, or a clear error for anything else."""
        value = action
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value.item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise InvalidActionError(
                f"step() takes an integer action in {self.action_space} (e.g. numpy.int64), "
                f"got {action!r} of type {type(action).__name__}")
        value = int(value)
        if not 0 <= value < self.action_space.n:
            raise InvalidActionError(f"action {value} is outside {self.action_space}")
        return value

    def _no_decision_reason(self) -> str:
        """Why ten episodes in a row asked nothing: every request refused (too long for the
        context or the KV cache, named with the first reason), else the controls."""
        requests = self.sim.requests
        reasons = [r.reject_reason for r in requests if r.status == REJECTED]
        if requests and len(reasons) == len(requests):
            return (f"every request of ten episodes in a row was rejected before it could be "
                    f"scheduled (first: {reasons[0]}); raise the cluster's KV capacity "
                    f"(num_kv_blocks, gpu_memory_utilization) or max_model_len, or use a "
                    f"workload whose requests fit (e.g. workload max_total_tokens)")
        return ("ten episodes in a row asked no decision of the agent; check `control` "
                "against the cluster (routing needs 2+ instances)")

    def _past_horizon(self, now: float) -> bool:
        """True once every request has arrived and each one still in the system is a
        certain miss; `self._horizon` caches the latest time one of them could still make
        it (it only moves back as requests leave, so it is recomputed only when passed)."""
        sim = self.sim
        if now < self._horizon or sim.arrived_count < len(sim.workload):
            return False
        self._horizon = max((self._deadline(r) for r in sim.requests
                             if r.status != FINISHED and r.status != REJECTED),
                            default=-np.inf)
        return now >= self._horizon

    def _deadline(self, request: Any) -> float:
        """The latest time at which `request` can still meet both SLO targets."""
        config = self.rewards.config
        ttft = request.ttft_slo if request.ttft_slo < np.inf else config.default_ttft_slo
        tpot = request.tpot_slo if request.tpot_slo < np.inf else config.default_tpot_slo
        if not request.num_generated:
            return request.arrival_time + ttft  # no first token yet
        if request.first_token_time - request.arrival_time > ttft:
            return -np.inf  # already late
        return request.first_token_time + tpot * max(request.output_len - 1, 0)

    def _drain(self) -> None:
        """Finish the simulation with the default policies (for the episode's report)."""
        policies = default_policies()
        reset_policies(policies, np.random.default_rng(self._drain_seed))
        sim = self.sim
        while (decision := sim.next_decision()) is not None:
            sim.apply(policies[decision.kind].decide(decision))

    def _slice(self, rng: np.random.Generator) -> np.ndarray:
        """Indices of the next episode: N consecutive requests, or a window of trace time."""
        times = self.source.arrival_time
        if self.episode_seconds is None:
            start = int(rng.integers(0, len(self.source) - self.episode_requests + 1))
            return np.arange(start, start + self.episode_requests)
        latest = max(times[0], times[-1] - self.episode_seconds)
        begin = float(rng.uniform(times[0], latest)) if latest > times[0] else float(times[0])
        first = int(np.searchsorted(times, begin, side="left"))
        last = int(np.searchsorted(times, begin + self.episode_seconds, side="left"))
        return np.arange(first, max(last, first + 1))  # at least one request

    def episode_summary(self) -> dict[str, float]:
        """The serving summary; requests without SLO targets are judged by the reward's
        default targets (else a trace without targets would always read 100% attainment)."""
        report = self.sim.report()
        workload = self.sim.workload
        if np.isinf(workload.ttft_slo).all() and np.isinf(workload.tpot_slo).all():
            config = self.rewards.config
            return report.summarize(config.default_ttft_slo, config.default_tpot_slo)
        return report.summary

    def action_masks(self) -> np.ndarray:
        return self.encoder.mask.copy()

    @property
    def decision(self) -> Decision | None:
        """The decision the agent is asked now (None once the episode has ended)."""
        return self._decision

    def action_index(self, answer: int | Action) -> int | None:
        """The action of this env's action space that plays `answer`, a policy's answer to
        the current `decision` (candidate index, STOP or `Action`): what a heuristic
        teacher's choice is in the agent's terms (agents/imitation.py). None when the
        chosen candidate is in no slot, so the agent could not have picked it."""
        decision = self._decision
        if decision is None:
            raise RuntimeError("the episode has ended; call reset()")
        action = decision.validate(answer)
        encoder = self.encoder
        if action.choice == STOP:
            return encoder.stop_action
        if action.choice not in encoder.slot_choice:
            return None
        slot = encoder.slot_choice.index(action.choice)
        if action.target is not None and encoder.slot_target[slot] != action.target:
            return None  # MIGRATE: the slot pairs the request with another instance
        swap = encoder.num_slots + slot
        # A swap the host memory cannot take now is a recompute, as the instance plays it.
        return swap if action.swap and encoder.mask[swap] else slot

    # ------------------------------------------------------------------ output lengths
    def _draw_estimates(self, episode: Workload, rng: np.random.Generator) -> None:
        outputs = episode.output_len.astype(np.float64)
        if self.length_knowledge == "oracle":
            estimates = outputs
        elif self.length_knowledge == "predicted":
            estimates = outputs * rng.lognormal(0.0, self.length_sigma, outputs.size)
        else:
            estimates = np.full(outputs.size, float(self.source.output_len.mean()))
        self._estimates = estimates.tolist()

    def _output_estimate(self, request: Any) -> float:
        return self._estimates[request.rid]

