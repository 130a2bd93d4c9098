"""KV retention heuristics: RETAIN policies (envs/core/retention.py). When a call whose
session or program has a next call finishes, RETAIN's candidates are the menu (None:
release now, 0.0: leave to the LRU prefix cache, then the TTLs of `retain_ttls`, e.g.
1, 2, 5, 10, 30 s); a policy answers with a choice. Each heuristic here states the TTL it
wants (`ttl(request, instance, now)`: None, 0, or seconds) and answers the menu's option
for it (`option_for`: rounded up to the next TTL, capped at the longest), so it acts in
the same action space as an agent.

* `NoRetention` ("retain-none"): release the call's cached prompt blocks at once.
* `LRURetention` ("retain-lru", the default's rule): leave them cached, unpinned.
* `ContinuumTTL` ("retain-continuum"): Continuum's rule (Li et al., "Continuum: Efficient
  and Robust Multi-Turn LLM Agent Scheduling with KV Cache Time-to-Live", 2025, arXiv
  2511.02230): pin for a TTL set from the predicted duration of the tool call that
  follows, and only while GPU KV memory allows. The prediction never reads the true
  `next_delay`: per `tool_kind`, the policy keeps the delays it has observed (a session's
  next call's arrival minus the previous call's finish, both seen when that next call
  finishes) and predicts their `quantile` (default 0.9) times `margin`; with fewer than
  `min_samples` observations of a kind it uses the pooled observations, and before any,
  `default_ttl_s`. A TTL above `max_ttl_s` is not worth the memory: the call is left to
  the LRU cache instead (Continuum declines to pin when the expected wait is long). The
  memory bound (`memory_cap`, on by default): a pin must leave, of the instance's KV
  blocks, the blocks its waiting queue's prompts need plus `min_free_fraction` of the
  capacity free; otherwise the call is left to LRU. Continuum pins "while memory allows"
  and yields pinned KV to queued work; without this bound a tight cache pins so much that
  admissions stall until the TTLs run out (results/continuum.md: JCT p50 9.7x LRU's at
  1500 blocks before the bound). `memory_cap=False` gives the unbounded rule.
* `OracleTTL` ("retain-oracle", an ORACLE: it reads the true `next_delay`): pin for
  exactly the delay plus `slack_s` (time for the next call to be admitted); with
  `memory_cap` ("retain-oracle-bounded") only under Continuum's memory bound above.
Our own code, after the paper's description; its code (github.com/Hanchenli/vllm-continuum)
could not be fetched here, so the memory bound is our reading of the paper's text.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from servegym.envs.core.retention import option_for
from servegym.envs.protocol import Decision


class _MenuAnswer:
    """`decide`: the menu option for the policy's wanted TTL (`ttl`)."""

    def ttl(self, request: Any, instance: Any, now: float) -> float | None:
        raise NotImplementedError

    def decide(self, decision: Decision) -> int:
        return option_for(self.ttl(decision.request, decision.instance, decision.time),
                          decision.candidates)


def linear_quantile(values: list[float], q: float) -> float:
    """`np.quantile(values, q)` (its default "linear" method), bit for bit, without numpy's
    per-call overhead (the policy asks once per finished call)."""
    ordered = sorted(values)
    n = len(ordered)
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return float(ordered[-1])
    previous = math.floor(virtual)
    low, high = ordered[previous], ordered[previous + 1]
    gamma = virtual - previous
    diff = high - low
    # numpy's _lerp: from the nearer end, so the result stays within [low, high]
    return float(high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma)


def memory_allows(request: Any, instance: Any, min_free_fraction: float) -> bool:
    """Whether pinning `request`'s prompt blocks leaves the instance's waiting prompts and
    `min_free_fraction` of its KV capacity free (the views only)."""
    bm = instance.bm
    pinned = request.prompt_len // bm.block_size  # its full prompt blocks (at most)
    need = sum(bm.blocks_for(r.prompt_len) for r in instance.waiting)
    return bm.num_free - pinned >= need + min_free_fraction * bm.num_blocks


class NoRetention(_MenuAnswer):
    name = "retain-none"

    def ttl(self, request: Any, instance: Any, now: float) -> float | None:
        return None


class LRURetention(_MenuAnswer):
    name = "retain-lru"

    def ttl(self, request: Any, instance: Any, now: float) -> float | None:
        return 0.0


class ContinuumTTL(_MenuAnswer):
    name = "retain-continuum"

    def __init__(self, quantile: float = 0.9, margin: float = 1.2, default_ttl_s: float = 5.0,
                 min_samples: int = 3, max_ttl_s: float = 60.0, history: int = 64,
                 memory_cap: bool = True, min_free_fraction: float = 0.1) -> None:
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        for name, value in (("margin", margin), ("default_ttl_s", default_ttl_s),
                            ("max_ttl_s", max_ttl_s)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if min_samples < 1 or history < 1:
            raise ValueError("min_samples and history must be >= 1")
        if not 0 <= min_free_fraction < 1:
            raise ValueError(f"min_free_fraction must be in [0, 1), got {min_free_fraction}")
        self.memory_cap, self.min_free_fraction = bool(memory_cap), min_free_fraction
        self.quantile, self.margin = quantile, margin
        self.default_ttl_s, self.min_samples = default_ttl_s, min_samples
        self.max_ttl_s, self.history = max_ttl_s, history
        self.reset(None)

    def reset(self, rng: np.random.Generator | None) -> None:
        self.last: dict[int, tuple[float, int]] = {}  # session -> (finish, tool kind)
        self.delays: dict[int, list[float]] = {}  # tool kind -> observed delays

    def _observe(self, request: Any, now: float) -> None:
        previous = self.last.get(request.session)
        if previous is not None:
            finish, kind = previous
            seen = self.delays.setdefault(kind, [])
            seen.append(max(0.0, request.arrival_time - finish))
            if len(seen) > self.history:
                del seen[0]
        self.last[request.session] = (now, request.tool_kind)

    def predict(self, tool_kind: int) -> float:
        seen = self.delays.get(tool_kind, [])
        if len(seen) < self.min_samples:
            seen = [d for delays in self.delays.values() for d in delays]
        if not seen:
            return self.default_ttl_s
        return linear_quantile(seen, self.quantile) * self.margin

    def ttl(self, request: Any, instance: Any, now: float) -> float | None:
        self._observe(request, now)
        ttl = self.predict(request.tool_kind)
        if ttl > self.max_ttl_s:
            return 0.0
        if ttl > 0 and self.memory_cap and instance is not None and \
                not self.memory_allows(request, instance):
            return 0.0
        return ttl

    def memory_allows(self, request: Any, instance: Any) -> bool:
        return memory_allows(request, instance, self.min_free_fraction)


class OracleTTL(_MenuAnswer):
    """ORACLE: reads the true delay to the session's next call."""

    name = "retain-oracle"

    def __init__(self, slack_s: float = 2.0, memory_cap: bool = False,
                 min_free_fraction: float = 0.1) -> None:
        if not math.isfinite(slack_s) or slack_s < 0:
            raise ValueError(f"slack_s must be a finite number >= 0, got {slack_s}")
        if not 0 <= min_free_fraction < 1:
            raise ValueError(f"min_free_fraction must be in [0, 1), got {min_free_fraction}")
        self.slack_s = slack_s
        self.memory_cap, self.min_free_fraction = bool(memory_cap), min_free_fraction

    def ttl(self, request: Any, instance: Any, now: float) -> float | None:
        if self.memory_cap and instance is not None and \
                not memory_allows(request, instance, self.min_free_fraction):
            return 0.0
        return float(request.next_delay) + self.slack_s


RETENTION_POLICIES = {cls.name: cls for cls in (NoRetention, LRURetention, ContinuumTTL,
                                                  OracleTTL)}


def make_retention(name: str, **options: Any) -> Any:
    """A retention policy by name (`RETENTION_POLICIES`); a clear error otherwise."""
    if name not in RETENTION_POLICIES:
        raise ValueError(f"unknown retention policy {name!r}; choose one of "
                         f"{sorted(RETENTION_POLICIES)}")
    return RETENTION_POLICIES[name](**options)


__all__ = ["RETENTION_POLICIES", "ContinuumTTL", "LRURetention", "NoRetention", "OracleTTL",
           "make_retention"]
