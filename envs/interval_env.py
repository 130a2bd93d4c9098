"""Interval control: the agent sets admission priority weights once per scheduling interval.

`IntervalEnv` is the coarse, sample-efficient counterpart of `servegym/Admission-v0`: instead
of answering every ADMIT decision, the agent picks the weights of a
`WeightedPriorityAdmission` policy (a linear score over request features, see
`agents/heuristics/weighted.py`) every `interval_s` simulated seconds, and that policy answers
every admission of the interval. An episode of 1000 requests is then a few dozen steps, not
thousands, and every action is a whole scheduling rule (FCFS, SPF, SJF, ... are points of
the action space).

`IntervalPolicy` is the same controller as a simulator `Policy` (for `Simulator.run` and
`servegym.agents.evaluation`): it recomputes the weights from `weights_fn(observation)` at the first
ADMIT decision at or after each interval boundary, with the env's own `IntervalObserver`,
so a trained agent is evaluated exactly as it acted in the env.

Boundaries are the multiples of `interval_s`. An interval starts at an ADMIT decision at
time t >= the pending boundary; the next boundary is the first multiple of `interval_s`
strictly after t (boundaries that passed without any admission decision are skipped, so no
two steps share a decision).

Knobs (changing `max_num_batched_tokens` / `max_num_seqs` per interval) are not offered:
`InstanceConfig` is frozen and read beyond batch building (arrival-time rejection checks
the token budget, `Instance.decode_coeffs` is sized by `max_num_seqs`, decode runs are
planned ahead under the current caps), so changing them mid-episode needs core support.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from servegym.agents.heuristics.weighted import (
    FEATURES,
    NUM_FEATURES,
    PREFILL_SCALE,
    WeightedPriorityAdmission,
    ttft_slack,
)
from servegym.envs.observations import RATE_WINDOW_S, squash
from servegym.envs.protocol import Decision, DecisionKind, Policy
from servegym.envs.rewards import RewardTracker, met_slo
from servegym.envs.serving_env import ServingEnv

OBSERVATIONS: tuple[str, ...] = (
    "waiting", "running", "swapped", "kv_used", "arrival_rate", "arrived", "time",
    "in_system", "queued_tokens", "prefill_mean", "prefill_p90", "output_mean", "late",
    "slack_mean", "oldest_wait", "recent_attainment")
OBSERVATION_SIZE = len(OBSERVATIONS)
RECENT_DEPARTURES = 32
# Simulator.reset hands each policy a child generator in the order of its `policies`
# mapping; the evaluation path (servegym.agents.learned.scheduler_for) orders ROUTE, ADMIT, PREEMPT.
ADMIT_POSITION = 1
DEFAULT_INTERVAL_S = 2.0


PER_DECISION_OPTIONS = ("num_slots", "admit_keys", "preempt_keys", "episode_end",
                        "invalid_action", "invalid_action_penalty")


def next_boundary(time: float, interval_s: float) -> float:
    """The first multiple of `interval_s` strictly after `time`."""
    return (math.floor(time / interval_s) + 1) * interval_s


def check_interval(interval_s: float) -> float:
    if not (isinstance(interval_s, int | float) and 0 < interval_s < math.inf):
        raise ValueError(f"interval_s must be a finite number of seconds > 0, got {interval_s!r}")
    return float(interval_s)


def as_weights(action: Any) -> np.ndarray:
    """An agent's action as weights: `NUM_FEATURES` numbers, clipped to [-1, 1]."""
    try:
        vector = np.asarray(action, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"the action must be {NUM_FEATURES} numbers (one weight per feature "
                         f"{list(FEATURES)}), got {action!r}") from None
    if vector.size != NUM_FEATURES:
        raise ValueError(f"the action has {vector.size} entries; pass {NUM_FEATURES} weights, "
                         f"one per feature {list(FEATURES)}")
    if np.isnan(vector).any():
        names = [FEATURES[i] for i in np.flatnonzero(np.isnan(vector))]
        raise ValueError(f"the action holds NaN for {names}: the agent's output diverged; pass "
                         "finite weights in [-1, 1]")
    return np.clip(vector, -1.0, 1.0)


def admission_generator(sim: Any) -> np.random.Generator:
    """The generator `Simulator.reset` hands an ADMIT policy at `ADMIT_POSITION` of its
    policies (so the env draws predicted lengths exactly as the evaluation path does)."""
    seed_seq = sim.rng.bit_generator.seed_seq
    child = np.random.SeedSequence(seed_seq.entropy,
                                   spawn_key=(*seed_seq.spawn_key, ADMIT_POSITION),
                                   pool_size=seed_seq.pool_size)
    return np.random.default_rng(child)


class IntervalObserver:
    """The interval observation: `OBSERVATION_SIZE` cluster-wide features in [-1, 1].

        0 waiting            squash(waiting requests, max_num_seqs x instances)
        1 running            running requests / (max_num_seqs x instances)
        2 swapped            squash(swapped requests, 8)
        3 kv_used            fraction of the cluster's KV blocks in use
        4 arrival_rate       squash(arrivals in the last 10 s / 10, rate_scale)
        5 arrived            requests arrived / requests in the episode
        6 time               now / arrival time of the episode's last request (capped at 1)
        7 in_system          squash(requests in the system, max_num_seqs x instances)
        8 queued_tokens      squash(prefill tokens waiting, max_num_batched_tokens x inst.)
        9 prefill_mean       squash(mean prefill tokens of the waiting requests, 1024)
        10 prefill_p90       squash(90th percentile of the same, 1024)
        11 output_mean       squash(mean output estimate of the waiting requests, 256)
        12 late              fraction of waiting requests past their TTFT target
        13 slack_mean        mean TTFT slack of waiting requests (as the weighted feature;
                             1 with none waiting)
        14 oldest_wait       squash(longest wait so far, default TTFT target)
        15 recent_attainment fraction of the last 32 departures meeting both SLOs (0: none)

    Args:
        output_estimate: request -> expected output tokens (the admission policy's).
        default_ttft_slo, default_tpot_slo: targets of requests without their own.
        rate_scale: the arrival-rate squash scale (the env's `rate`, or 10).
    """

    def __init__(self, output_estimate: Callable[[Any], float], default_ttft_slo: float,
                 default_tpot_slo: float, rate_scale: float) -> None:
        self.output_estimate = output_estimate
        self.default_ttft_slo = float(default_ttft_slo)
        self.default_tpot_slo = float(default_tpot_slo)
        self.rate_scale = float(rate_scale)

    def encode(self, sim: Any) -> np.ndarray:
        instances = sim.instances
        waiting = [r for inst in instances for r in inst.waiting]
        features = self._load(sim, instances, waiting) + self._queue(sim, waiting)
        features.append(self._recent_attainment(sim))
        return np.clip(np.asarray(features, dtype=np.float32), -1.0, 1.0)

    def _load(self, sim: Any, instances: Sequence[Any], waiting: list[Any]) -> list[float]:
        config, workload = sim.config, sim.workload
        seqs = config.max_num_seqs * len(instances)
        used = sum(inst.bm.num_used for inst in instances)
        blocks = sum(inst.bm.num_blocks for inst in instances)
        now, arrived = sim.now, sim.arrived_count
        window_start = now - RATE_WINDOW_S
        recent = arrived - int(np.searchsorted(workload.arrival_time[:arrived], window_start))
        horizon = float(workload.arrival_time[-1])
        return [
            squash(len(waiting), seqs),
            min(sum(len(inst.running) for inst in instances) / seqs, 1.0),
            squash(sum(len(inst.swapped) for inst in instances), 8),
            min(used / blocks, 1.0),
            squash(recent / RATE_WINDOW_S, self.rate_scale),
            min(arrived / len(workload), 1.0),
            min(now / horizon, 1.0) if horizon > 0 else 1.0,
            squash(sim.requests_in_system(), seqs),
        ]

    def _queue(self, sim: Any, waiting: list[Any]) -> list[float]:
        if not waiting:
            return [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        now, default = sim.now, self.default_ttft_slo
        prefill = np.array([r.prompt_len + r.num_generated - r.num_computed for r in waiting],
                           dtype=np.float64)
        targets = [r.ttft_slo if r.ttft_slo < math.inf else default for r in waiting]
        slack = np.array([ttft_slack(r, now, t) for r, t in zip(waiting, targets, strict=True)])
        late = [not r.num_generated and now - r.arrival_time > t
                for r, t in zip(waiting, targets, strict=True)]
        outputs = [self.output_estimate(r) for r in waiting]
        batch_tokens = sim.config.max_num_batched_tokens * len(sim.instances)
        oldest = now - min(r.arrival_time for r in waiting)
        return [
            squash(float(prefill.sum()), batch_tokens),
            squash(float(prefill.mean()), PREFILL_SCALE),
            squash(float(np.percentile(prefill, 90)), PREFILL_SCALE),
            squash(float(np.mean(outputs)), 256.0),
            float(np.mean(late)),
            float(slack.mean()),
            squash(oldest, default),
        ]

    def _recent_attainment(self, sim: Any) -> float:
        recent = sim.departed[-RECENT_DEPARTURES:]
        if not recent:
            return 0.0
        met = sum(met_slo(r, self.default_ttft_slo, self.default_tpot_slo) for r in recent)
        return met / len(recent)


def _admission(length_knowledge: str, length_sigma: float, output_mean: float,
               backfill: bool, default_ttft_slo: float) -> WeightedPriorityAdmission:
    return WeightedPriorityAdmission("fcfs", lengths=length_knowledge, sigma=length_sigma,
                                     prior=output_mean, backfill=backfill,
                                     default_ttft_slo=default_ttft_slo)


class IntervalEnv(gym.Env):
    """LLM serving admission, one step per scheduling interval: the agent sets priorities.

    ## Description
    The serving simulation of `servegym/Admission-v0` (`ServingEnv`, held inside: same
    workloads, split, episodes, cost model, cluster and heuristics), but the agent acts once
    per scheduling interval of `interval_s` simulated seconds. Its action is the weight
    vector of a `WeightedPriorityAdmission` policy, which then answers every ADMIT decision
    of the interval: each waiting request is scored `w . f(request)` over the features of
    `servegym.agents.heuristics.weighted.FEATURES` and the lowest score is admitted first (STOP when
    it does not fit, or with `backfill` the best-ranked request that does). Preemption and
    routing use `policies` (default: vLLM's latest-arrival victim, round-robin). A learned
    heuristic: FCFS (all zeros), SPF (`prefill` = 1), SJF, SRPT, strict priority and
    least-slack-first are points of the action space (`weighted.PRESETS`).

    ## Action Space
    `Box(-1, 1, (10,), float32)`: one weight per feature, in the order prefill, output,
    remaining, waited, slack, late, prefix_hit, priority, preempted, bias. Any finite action
    is accepted (values outside [-1, 1] are clipped); NaN raises a ValueError.

    ## Observation Space
    `Box(-1, 1, (16,), float32)` of cluster-wide features at the interval's first ADMIT
    decision: load (waiting, running, swapped, KV used, recent arrival rate, requests
    arrived, time progress, requests in system), the waiting queue (queued prefill tokens,
    mean and p90 prefill, mean output estimate, fraction already late, mean TTFT slack,
    oldest wait) and the SLO attainment of the last 32 departures. Layout: `OBSERVATIONS`
    and `IntervalObserver`.

    ## Rewards
    The `ServingEnv` reward of kind `reward` accumulated over the interval; the default
    `"goodput"` is +1 per request that leaves meeting its TTFT and TPOT targets (the
    reward's defaults, 2 s and 0.1 s, for requests without their own), so an episode's
    rewards sum to its goodput count. `reward_options`: `servegym.envs.rewards.RewardConfig` fields.

    ## Starting State
    `reset(seed)` draws an episode exactly as `ServingEnv.reset` does with the same seed
    (the two share the generator), runs to the first ADMIT decision and observes there.
    That decision, and every one up to the next boundary, is answered with the weights of
    the first `step`.

    ## Episode End
    `terminated` when every request has finished or been rejected; `info["serving"]` then
    holds the serving summary (`serving/...`, as `ServingEnv`'s). `truncated` only if the
    episode asks more than `max_decisions_per_request` admission decisions per request
    (a guard that a correct simulator never trips).

    ## Arguments
    interval_s (> 0, default 2.0), reward (default "goodput"), policies ("preempt" /
    "route" heuristics), backfill, max_decisions_per_request, control (must be
    ("admit",)), and the rest of `ServingEnv`'s arguments with its defaults: workload,
    rate, episode_requests, episode_seconds, split, model, gpu, tensor_parallel,
    cost_source, cluster, length_knowledge, length_sigma, reward_options, debug_checks
    (not its per-decision ones, `PER_DECISION_OPTIONS`: refused). Those are the class's
    defaults; `servegym/AdmissionInterval-v0` passes its task's settings (`envs/tasks.py`):
    Admission-v0's (1000-request episodes at 10 req/s on Llama-2-7B on one H100, goodput
    with `ttft_credit=0.5`)
    with interval_s 2.0.

    ## Version History
    v0: initial release.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        reward: str = "goodput",
        policies: Mapping[str, Policy] | None = None,
        backfill: bool = False,
        max_decisions_per_request: float = 1000.0,
        control: Sequence[str] = ("admit",),
        **serving_options: Any,
    ) -> None:
        super().__init__()
        self.interval_s = check_interval(interval_s)
        if tuple([control] if isinstance(control, str) else control) != ("admit",):
            raise ValueError(f"IntervalEnv controls admission only: control must be "
                             f"('admit',), got {control!r}")
        if "admit" in dict(policies or {}):
            raise ValueError("policies['admit'] is the agent's: pass 'preempt' or 'route' "
                             "heuristics only")
        if not max_decisions_per_request > 0:
            raise ValueError(f"max_decisions_per_request must be > 0, got "
                             f"{max_decisions_per_request!r}")
        per_decision = sorted(set(serving_options) & set(PER_DECISION_OPTIONS))
        if per_decision:
            raise ValueError(f"IntervalEnv has no candidate slots or masks: drop {per_decision}")
        self.max_decisions_per_request = float(max_decisions_per_request)
        # ServingEnv owns the episode arguments and their defaults (workload, rate,
        # episode_requests, split, model, gpu, cluster, length knowledge, ...).
        self.serving = ServingEnv(control=("admit",), reward=reward, policies=policies,
                                  **serving_options)
        self.sim = self.serving.sim
        self.reward_config = self.serving.rewards.config
        self.rewards = RewardTracker(self.reward_config)
        self.backfill = bool(backfill)
        self.output_mean = float(self.serving.source.output_len.mean())
        self.rate_scale = float(self.serving.rate or 10.0)
        self.admission = _admission(self.serving.length_knowledge, self.serving.length_sigma,
                                    self.output_mean,
                                    self.backfill, self.reward_config.default_ttft_slo)
        self.observer = IntervalObserver(self.admission.output_estimate,
                                         self.reward_config.default_ttft_slo,
                                         self.reward_config.default_tpot_slo, self.rate_scale)
        self.action_space = spaces.Box(-1.0, 1.0, (NUM_FEATURES,), np.float32)
        self.observation_space = spaces.Box(-1.0, 1.0, (OBSERVATION_SIZE,), np.float32)
        self._decision: Decision | None = None
        self._boundary = 0.0
        self._decisions = 0
        self._decision_limit = 0

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.serving.np_random = self.np_random  # one generator: ServingEnv's episodes
        self.serving.reset()
        sim = self.sim
        self.rewards.reset(sim)
        self.admission.reset(admission_generator(sim))
        self._decision = sim.next_decision()
        self._decisions = 0
        self._decision_limit = math.ceil(self.max_decisions_per_request * len(sim.workload))
        self.admission.bind(self._decision)
        self._boundary = next_boundary(self._decision.time, self.interval_s)
        return self.observer.encode(sim), {"time": sim.now, "decisions": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._decision is None:
            raise RuntimeError("the episode has ended; call reset()")
        weights = as_weights(action)
        self.admission.set_weights(weights)
        decisions, truncated = self._run_interval()
        sim = self.sim
        reward = self.rewards.step(sim.now)
        terminated = self._decision is None and not truncated
        info: dict[str, Any] = {"time": sim.now, "decisions": decisions,
                                "weights": weights.astype(np.float32)}
        if terminated:
            info["serving"] = self.serving.episode_summary()
        return self.observer.encode(sim), reward, terminated, truncated, info

    # ------------------------------------------------------------------ internals
    def _run_interval(self) -> tuple[int, bool]:
        """Answer ADMIT decisions until one at or after the boundary, or the end of the
        workload; (decisions answered, whether the decision guard cut the episode)."""
        sim, decide, boundary = self.sim, self.admission.decide, self._boundary
        decision = self._decision
        count = 0
        while decision is not None:
            if self._decisions >= self._decision_limit:
                self._decision = None  # the guard against a runaway episode
                return count, True
            sim.apply(decide(decision))
            self._decisions += 1
            count += 1
            decision = sim.next_decision()
            if decision is not None and decision.time >= boundary:
                break
        if decision is not None and decision.kind != DecisionKind.ADMIT:
            raise RuntimeError(f"IntervalEnv answers ADMIT decisions only, got {decision.kind}")
        self._decision = decision
        if decision is not None:
            self._boundary = next_boundary(decision.time, self.interval_s)
        return count, False

    def agent_metadata(self) -> dict[str, Any]:
        """What `IntervalPolicy.from_metadata` needs to act as this env (save it with the
        model; train.py adds algo, env_id, policies and eval_deterministic)."""
        return {
            "mode": "interval", "controlled": ["admit"], "interval_s": self.interval_s,
            "features": list(FEATURES), "observations": list(OBSERVATIONS),
            "length_knowledge": self.serving.length_knowledge,
            "length_sigma": self.serving.length_sigma, "output_mean": self.output_mean,
            "default_ttft_slo": self.reward_config.default_ttft_slo,
            "default_tpot_slo": self.reward_config.default_tpot_slo,
            "rate_scale": self.rate_scale, "backfill": self.backfill,
        }


class IntervalPolicy:
    """An interval controller as a simulator ADMIT `Policy` (see the module docstring).

    At the first ADMIT decision at or after each boundary it observes the cluster with
    `IntervalObserver` (exactly as `IntervalEnv` does), sets the weights of its
    `WeightedPriorityAdmission` to `weights_fn(observation)` (clipped to [-1, 1]; NaN
    raises) and answers every decision with them until the next boundary.

    Args:
        weights_fn: observation (float32, `OBSERVATION_SIZE`) -> `NUM_FEATURES` weights,
            e.g. a trained SB3 model's `predict` (see `from_model`).
        interval_s, length_knowledge, length_sigma, output_mean, default_ttft_slo,
        default_tpot_slo, rate_scale, backfill: the env's settings (`from_metadata` reads
            them from `IntervalEnv.agent_metadata()`).
    """

    def __init__(self, weights_fn: Callable[[np.ndarray], Any],
                 interval_s: float = DEFAULT_INTERVAL_S, length_knowledge: str = "oracle",
                 length_sigma: float = 0.5, output_mean: float = 256.0,
                 default_ttft_slo: float = 2.0, default_tpot_slo: float = 0.1,
                 rate_scale: float = 16.0, backfill: bool = False) -> None:
        self.weights_fn = weights_fn
        self.interval_s = check_interval(interval_s)
        self.admission = _admission(length_knowledge, length_sigma, output_mean, backfill,
                                    default_ttft_slo)
        self.observer = IntervalObserver(self.admission.output_estimate, default_ttft_slo,
                                         default_tpot_slo, rate_scale)
        self.intervals = 0
        self._boundary = 0.0
        self.sample_rng: np.random.Generator | None = None

    @classmethod
    def from_metadata(cls, weights_fn: Callable[[np.ndarray], Any],
                      metadata: Mapping[str, Any]) -> IntervalPolicy:
        if list(metadata.get("features", [])) != list(FEATURES) or \
                list(metadata.get("observations", [])) != list(OBSERVATIONS):
            raise ValueError("the agent was trained with other interval features or "
                             f"observations than this code's {list(FEATURES)} / "
                             f"{list(OBSERVATIONS)}; retrain it")
        return cls(weights_fn, float(metadata["interval_s"]), str(metadata["length_knowledge"]),
                   float(metadata["length_sigma"]), float(metadata["output_mean"]),
                   float(metadata["default_ttft_slo"]), float(metadata["default_tpot_slo"]),
                   float(metadata["rate_scale"]), bool(metadata["backfill"]))

    @classmethod
    def from_model(cls, model: Any, metadata: Mapping[str, Any], normalizer: Any = None,
                   deterministic: bool = True) -> IntervalPolicy:
        """A policy acting with an SB3 model, after `normalizer.normalize_obs` (a
        VecNormalize, or None): the mean of its Gaussian action (`deterministic`), or a
        sample of it drawn from a child of the generator the simulator hands the policy
        at each reset (SB3's own sampling uses torch's global generator: not reproducible).
        """
        import torch

        holder: list[IntervalPolicy] = []

        def weights_fn(observation: np.ndarray) -> np.ndarray:
            if normalizer is not None:
                observation = normalizer.normalize_obs(observation).astype(np.float32)
            with torch.no_grad():
                tensor = torch.as_tensor(observation, dtype=torch.float32).reshape(1, -1)
                normal = model.policy.get_distribution(tensor).distribution
                mean = normal.mean[0].numpy().astype(np.float64)
                std = normal.stddev[0].numpy().astype(np.float64)
            if deterministic:
                return mean
            rng = holder[0].sample_rng
            if rng is None:
                raise RuntimeError("IntervalPolicy: reset(rng) before sampling "
                                   "(Simulator.reset does)")
            return mean + std * rng.standard_normal(mean.shape)

        policy = cls.from_metadata(weights_fn, metadata)
        holder.append(policy)
        return policy

    def reset(self, rng: np.random.Generator | None = None) -> None:
        # Sampling draws from a child generator, so the length predictions drawn from
        # `rng` are the same in both modes (spawning does not advance `rng`).
        self.sample_rng = rng.spawn(1)[0] if rng is not None else None
        self.admission.reset(rng)
        self.intervals = 0
        self._boundary = 0.0

    def decide(self, decision: Decision) -> int:
        if decision.time >= self._boundary:
            self.admission.bind(decision)
            observation = self.observer.encode(decision.instance.sim)
            self.admission.set_weights(as_weights(self.weights_fn(observation)))
            self._boundary = next_boundary(decision.time, self.interval_s)
            self.intervals += 1
        return self.admission.decide(decision)


__all__ = ["DEFAULT_INTERVAL_S", "OBSERVATIONS", "OBSERVATION_SIZE", "IntervalEnv",
           "IntervalObserver", "IntervalPolicy", "admission_generator", "as_weights",
           "next_boundary"]
