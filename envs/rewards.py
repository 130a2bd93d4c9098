"""Rewards between consecutive decisions (t_prev, t].

    latency   r = -(A(t) - A(t_prev)) / latency_scale_s, where A(t) is the time integral of
              the number of requests in the system. Summed over an episode this is minus the
              total (= n x mean) end-to-end latency over the scale, so maximising it minimises
              mean latency by Little's law (as in Park and Decima).
    slo       r = sum over requests that left in (t_prev, t] of +1 if it met its TTFT and TPOT
              targets, else -miss_penalty (a rejected request misses).
    goodput   r = number of requests that left in (t_prev, t] meeting both targets.
Credit aligned in time (`ttft_credit` = c in [0, 1], goodput and slo rewards): a request whose
first token came within its TTFT target pays +c at that first token, when the admission
that settled it is a few decisions old; at departure it pays the rest, +(1 - c) if it met
both targets, else -c (taking the early credit back) on top of the miss. Each request's
total is unchanged, so an episode's sum still equals its goodput (slo: its score); at an
episode's end `finalize()` takes back the early credit of requests still in the system.
Optional terms:
    fairness  r -= fairness_weight * (1 - J) * (t - t_prev), J = Jain's index over tenants of
              the tokens served to requests that have left so far (1 when one tenant).
    differential (average-reward form for long episodes): r -= rho * (t - t_prev), where rho
              is an exponential moving average (rate `average_rate`) of reward per second.
Targets of requests without their own (infinite) SLO are `default_ttft_slo` and
`default_tpot_slo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from servegym.envs.core.request import FINISHED

if TYPE_CHECKING:
    from servegym.envs.core.request import Request
    from servegym.envs.core.simulator import Simulator

REWARDS = ("latency", "slo", "goodput")


@dataclass(frozen=True)
class RewardConfig:
    kind: str = "latency"
    latency_scale_s: float = 10.0
    miss_penalty: float = 1.0
    fairness_weight: float = 0.0
    differential: bool = False
    average_rate: float = 0.01
    default_ttft_slo: float = 2.0
    default_tpot_slo: float = 0.1
    ttft_credit: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in REWARDS:
            raise ValueError(f"unknown reward {self.kind!r}; choose one of {REWARDS}")
        if not 0.0 <= self.ttft_credit <= 1.0:
            raise ValueError(f"ttft_credit must be in [0, 1], got {self.ttft_credit}")
        if self.latency_scale_s <= 0:
            raise ValueError("latency_scale_s must be positive")


def met_ttft(request: Request, default_ttft: float) -> bool:
    """The request's first token came within its TTFT target."""
    target = request.ttft_slo if request.ttft_slo < math.inf else default_ttft
    return request.first_token_time - request.arrival_time <= target


def met_slo(request: Request, default_ttft: float, default_tpot: float) -> bool:
    if request.status != FINISHED:
        return False
    ttft_target = request.ttft_slo if request.ttft_slo < math.inf else default_ttft
    tpot_target = request.tpot_slo if request.tpot_slo < math.inf else default_tpot
    if request.first_token_time - request.arrival_time > ttft_target:
        return False
    if request.output_len > 1:
        tpot = (request.finish_time - request.first_token_time) / (request.output_len - 1)
        return tpot <= tpot_target
    return True


class RewardTracker:
    """Accumulates the configured reward between decisions of one episode."""

    def __init__(self, config: RewardConfig) -> None:
        self.config = config
        self.reset(None)

    def reset(self, sim: Simulator | None) -> None:
        self.sim = sim
        self.last_time = 0.0
        self.last_area = 0.0
        self.departed_seen = 0
        self.rate = 0.0
        self.tenant_tokens: dict[int, float] = {}
        self.met = 0
        self.first_tokens_seen = 0
        self.credited: set[int] = set()  # rids paid the early TTFT credit, not yet departed

    def step(self, now: float) -> float:
        config, sim = self.config, self.sim
        elapsed = now - self.last_time
        if config.kind == "latency":
            area = sim.latency_area(now)
            reward = -(area - self.last_area) / config.latency_scale_s
            self.last_area = area
        else:
            reward = self._departures_reward()
        if config.fairness_weight:
            self._count_service()
            reward -= config.fairness_weight * (1.0 - self.jain()) * elapsed
        if config.differential:
            if elapsed > 0:
                alpha = config.average_rate
                self.rate = (1 - alpha) * self.rate + alpha * (reward / elapsed)
            reward -= self.rate * elapsed
        self.last_time = now
        return reward

    def _first_token_reward(self) -> float:
        config = self.config
        first_tokens = self.sim.first_tokens
        credited = self.credited
        paid = 0
        for request in first_tokens[self.first_tokens_seen:]:
            if met_ttft(request, config.default_ttft_slo):
                credited.add(request.rid)
                paid += 1
        self.first_tokens_seen = len(first_tokens)
        return paid * config.ttft_credit

    def _departures_reward(self) -> float:
        config = self.config
        early = config.ttft_credit
        reward = self._first_token_reward() if early else 0.0
        departed = self.sim.departed
        credited = self.credited
        for request in departed[self.departed_seen:]:
            was_credited = request.rid in credited
            if was_credited:
                credited.discard(request.rid)
            if met_slo(request, config.default_ttft_slo, config.default_tpot_slo):
                reward += 1.0 - early if was_credited else 1.0
                self.met += 1
            else:
                if was_credited:
                    reward -= early
                if config.kind == "slo":
                    reward -= config.miss_penalty
        if config.fairness_weight == 0:
            self.departed_seen = len(departed)
        return reward

    def finalize(self) -> float:
        """The episode ends with requests still in the system: they are misses, so their
        early TTFT credit is taken back (returned as a negative reward)."""
        charge = -self.config.ttft_credit * len(self.credited)
        self.credited.clear()
        return charge

    def _count_service(self) -> None:
        departed = self.sim.departed
        tokens = self.tenant_tokens
        for request in departed[self.departed_seen:]:
            served = (request.prompt_len + request.output_len) * (request.status == FINISHED)
            tokens[request.tenant] = tokens.get(request.tenant, 0.0) + served
        self.departed_seen = len(departed)

    def jain(self) -> float:
        values = list(self.tenant_tokens.values())
        total = sum(values)
        if len(values) <= 1 or total == 0:
            return 1.0
        return total * total / (len(values) * sum(v * v for v in values))
