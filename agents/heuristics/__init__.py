"""Registry of the heuristic baselines: `make_policy(name, **kwargs)` and `POLICIES`.

Every name is unique across decision kinds, so a name alone says what it schedules. The
rules, with their papers, are in each module's docstring and in docs/baselines.md.

>>> from servegym.agents.heuristics import make_policy
>>> policy = make_policy("srpt-pred", sigma=1.0, max_wait_s=30.0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

from servegym.agents.heuristics.deadline import EarliestDeadlineFirst
from servegym.agents.heuristics.disagg import (
    FirstFitPlacement,
    LeastPrefillTokens,
    LeastRunningPlacement,
    MostFreeKVPlacement,
)
from servegym.agents.heuristics.length import (
    ShortestOutputFirst,
    ShortestPromptFirst,
    ShortestRemainingFirst,
)
from servegym.agents.heuristics.llumnix import (
    Defragmentation,
    NeverMigrate,
    PriorityHeadroom,
    VirtualUsageBalance,
)
from servegym.agents.heuristics.load_balance import (
    JoinShortestQueue,
    LeastKVLoad,
    LeastOutstandingRequests,
    PowerOfTwoChoices,
    RandomRouting,
)
from servegym.agents.heuristics.melange import MelangeRouting, SizeIntervalRouting
from servegym.agents.heuristics.past_future import PastFutureAdmission
from servegym.agents.heuristics.preemption import (
    LeastProgressVictim,
    LongestRemainingVictim,
    LowestPriorityVictim,
    MostBlocksVictim,
)
from servegym.agents.heuristics.prefix_affinity import PrefixAffinity
from servegym.agents.heuristics.priority import StrictPriority
from servegym.agents.heuristics.programs import CriticalPathFirst, ProgramLeastAttainedService
from servegym.agents.heuristics.retention import (
    ContinuumTTL,
    LRURetention,
    NoRetention,
    OracleTTL,
)
from servegym.agents.heuristics.swap import CostAwareSwap
from servegym.agents.heuristics.token_budget import TPOTBudgetAdmission
from servegym.agents.heuristics.ttft_routing import MinPredictedTTFT
from servegym.agents.heuristics.vtc import VirtualTokenCounter
from servegym.envs.core.decisions import FCFSAdmission, LatestArrivalPreemption, RoundRobinRouting
from servegym.envs.protocol import DecisionKind, Policy

ADMIT, PREEMPT, ROUTE = DecisionKind.ADMIT, DecisionKind.PREEMPT, DecisionKind.ROUTE
PLACE, MIGRATE = DecisionKind.PLACE, DecisionKind.MIGRATE
RETAIN = DecisionKind.RETAIN


@dataclass(frozen=True)
class PolicyInfo:
    """A registered baseline: its decision kind, how to build it and a one-line rule."""

    name: str
    kind: DecisionKind
    factory: Callable[..., Policy]
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def build(self, **kwargs: Any) -> Policy:
        return self.factory(**{**self.defaults, **kwargs})


def _entries() -> list[PolicyInfo]:
    oracle, predicted = {"lengths": "oracle"}, {"lengths": "predicted"}
    return [
        # ----------------------------------------------------------------- admission
        PolicyInfo("fcfs", ADMIT, FCFSAdmission, "arrival order, stop at a head that does not fit"),
        PolicyInfo("spf", ADMIT, ShortestPromptFirst, "shortest prefill (prompt) first"),
        PolicyInfo("sjf-oracle", ADMIT, ShortestOutputFirst, "shortest true output first",
                   oracle),
        PolicyInfo("sjf-pred", ADMIT, ShortestOutputFirst,
                   "shortest predicted output first (log-normal error sigma)", predicted),
        PolicyInfo("srpt-oracle", ADMIT, ShortestRemainingFirst,
                   "shortest true remaining output first", oracle),
        PolicyInfo("srpt-pred", ADMIT, ShortestRemainingFirst,
                   "shortest predicted remaining output first", predicted),
        PolicyInfo("edf", ADMIT, EarliestDeadlineFirst, "earliest TTFT deadline first"),
        PolicyInfo("edf-late-last", ADMIT, EarliestDeadlineFirst,
                   "earliest TTFT deadline first, already-late requests last",
                   {"late_last": True}),
        PolicyInfo("priority", ADMIT, StrictPriority, "strict priority classes, FCFS within"),
        PolicyInfo("vtc", ADMIT, VirtualTokenCounter,
                   "Virtual Token Counter: tenant with the least weighted service first"),
        PolicyInfo("past-future", ADMIT, PastFutureAdmission,
                   "FCFS while the predicted peak KV use (from past outputs) fits"),
        PolicyInfo("spf-tpot-budget", ADMIT, TPOTBudgetAdmission,
                   "Sarathi-Serve: shortest prefill first while the iteration stays within "
                   "half the decoding requests' tightest TPOT target"),
        PolicyInfo("spf-late-last", ADMIT, ShortestPromptFirst,
                   "shortest prefill first, requests past their TTFT deadline last",
                   {"late_last": True}),
        PolicyInfo("spf-tpot-budget-late-last", ADMIT, TPOTBudgetAdmission,
                   "spf-tpot-budget, requests past their TTFT deadline last",
                   {"late_last": True}),
        PolicyInfo("program-las", ADMIT, ProgramLeastAttainedService,
                   "Autellix PLAS: the call whose program has the least attained service "
                   "(tokens of its finished calls) first, FCFS within"),
        PolicyInfo("critical-path-first", ADMIT, CriticalPathFirst,
                   "the call with the longest remaining critical path (calls) of its "
                   "program first, then arrival"),
        # ----------------------------------------------------------------- preemption
        PolicyInfo("preempt-latest", PREEMPT, LatestArrivalPreemption,
                   "vLLM: latest arrival, recompute"),
        PolicyInfo("preempt-priority", PREEMPT, LowestPriorityVictim,
                   "least urgent class, then latest arrival"),
        PolicyInfo("preempt-most-blocks", PREEMPT, MostBlocksVictim, "most KV blocks held"),
        PolicyInfo("preempt-least-progress", PREEMPT, LeastProgressVictim,
                   "fewest computed tokens (cheapest recompute)"),
        PolicyInfo("preempt-longest-oracle", PREEMPT, LongestRemainingVictim,
                   "longest true remaining output", oracle),
        PolicyInfo("preempt-longest-pred", PREEMPT, LongestRemainingVictim,
                   "longest predicted remaining output", predicted),
        PolicyInfo("swap-cost-aware", PREEMPT, CostAwareSwap,
                   "latest arrival; swap when transfer out+in beats recompute"),
        PolicyInfo("swap-always", PREEMPT, CostAwareSwap,
                   "latest arrival; swap whenever swap space has room", {"always": True}),
        PolicyInfo("swap-cost-aware-least-progress", PREEMPT, CostAwareSwap,
                   "fewest computed tokens; swap when transfer out+in beats recompute",
                   {"victim": "least-progress"}),
        PolicyInfo("swap-always-most-blocks", PREEMPT, CostAwareSwap,
                   "most KV blocks held; swap whenever swap space has room",
                   {"victim": "most-blocks", "always": True}),
        # ----------------------------------------------------------------- routing
        PolicyInfo("rr", ROUTE, RoundRobinRouting, "round-robin"),
        PolicyInfo("random", ROUTE, RandomRouting, "uniformly random instance"),
        PolicyInfo("jsq", ROUTE, JoinShortestQueue, "fewest waiting requests"),
        PolicyInfo("lor", ROUTE, LeastOutstandingRequests,
                   "fewest outstanding requests (Vidur's LOR)"),
        PolicyInfo("llumnix", ROUTE, LeastKVLoad, "highest Llumnix KV freeness"),
        PolicyInfo("p2c", ROUTE, PowerOfTwoChoices, "power of two choices on outstanding"),
        PolicyInfo("prefix-affinity", ROUTE, PrefixAffinity,
                   "longest cached prefix within a load cap"),
        PolicyInfo("min-ttft", ROUTE, MinPredictedTTFT, "lowest predicted TTFT"),
        PolicyInfo("melange", ROUTE, MelangeRouting,
                   "Mélange: size bucket -> GPU type by the allocation's shares, fewest "
                   "outstanding within the type"),
        PolicyInfo("size-interval", ROUTE, SizeIntervalRouting,
                   "prompt-length interval per GPU type (SITA): shortest prompts to the "
                   "cheapest type, cuts sized to capacity; fewest outstanding within"),
        PolicyInfo("least-prefill", ROUTE, LeastPrefillTokens,
                   "DistServe: fewest outstanding prefill tokens (prefill instances)"),
        # ----------------------------------------------------------------- decode placement
        PolicyInfo("place-most-free-kv", PLACE, MostFreeKVPlacement,
                   "decode instance with the most free KV blocks (the default)"),
        PolicyInfo("place-least-running", PLACE, LeastRunningPlacement,
                   "DistServe: least-loaded decode instance with room (fewest running)"),
        PolicyInfo("place-first-fit", PLACE, FirstFitPlacement,
                   "lowest-indexed decode instance with room (packs)"),
        # ----------------------------------------------------------------- live migration
        PolicyInfo("migrate-never", MIGRATE, NeverMigrate, "never migrate (the default)"),
        PolicyInfo("migrate-balance", MIGRATE, VirtualUsageBalance,
                   "Llumnix: shortest request from the least to the most free instance "
                   "(virtual usage), when it narrows the gap"),
        PolicyInfo("migrate-defrag", MIGRATE, Defragmentation,
                   "Llumnix: make room for a queued request that does not fit (the "
                   "smallest decoding request that covers the shortfall)"),
        PolicyInfo("migrate-priority-headroom", MIGRATE, PriorityHeadroom,
                   "Llumnix: balance with KV headroom kept for urgent requests"),
        # ----------------------------------------------------------------- KV retention
        PolicyInfo("retain-lru", RETAIN, LRURetention,
                   "leave a finished call's prompt KV to the LRU prefix cache (the default)"),
        PolicyInfo("retain-none", RETAIN, NoRetention,
                   "release a finished call's prompt KV at once (no retention)"),
        PolicyInfo("retain-continuum", RETAIN, ContinuumTTL,
                   "Continuum: pin for the predicted tool-call time (per tool kind, "
                   "observed delays) while KV memory allows"),
        PolicyInfo("retain-continuum-unbounded", RETAIN, ContinuumTTL,
                   "Continuum's TTL without the memory bound (pins whatever it predicts)",
                   {"memory_cap": False}),
        PolicyInfo("retain-oracle", RETAIN, OracleTTL,
                   "ORACLE: pin for the true delay to the next call plus 2 s"),
        PolicyInfo("retain-oracle-bounded", RETAIN, OracleTTL,
                   "ORACLE: the true delay plus 2 s, under Continuum's memory bound",
                   {"memory_cap": True}),
    ]


POLICIES: Mapping[str, PolicyInfo] = MappingProxyType({p.name: p for p in _entries()})


def policy_names(kind: DecisionKind | None = None) -> list[str]:
    """Registered names, of one decision kind or all, in registry order."""
    return [name for name, info in POLICIES.items() if kind is None or info.kind == kind]


def _known_names() -> str:
    return "; ".join(f"{kind.control}: {', '.join(policy_names(kind))}"
                     for kind in DecisionKind if policy_names(kind))


def policy_info(name: str) -> PolicyInfo:
    try:
        return POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known policies: {_known_names()}") from None


def make_policy(name: str, **kwargs: Any) -> Policy:
    """A fresh instance of the baseline `name`, with `kwargs` overriding its defaults."""
    info = policy_info(name)
    accepted = _accepted_arguments(info.factory)
    unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(f"policy {name!r} does not accept {unknown}; it accepts "
                         f"{sorted(accepted) or 'no arguments'}")
    return info.build(**kwargs)


def _accepted_arguments(factory: Callable[..., Any]) -> set[str] | None:
    target = factory.func if isinstance(factory, partial) else factory
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


__all__ = ["POLICIES", "PolicyInfo", "make_policy", "policy_info", "policy_names"]
