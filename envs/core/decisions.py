"""The default policies (vLLM's behaviour) and the decision protocol's names.

The protocol itself (`DecisionKind`, `Decision`, `Action`, `STOP`, `InvalidActionError`,
`Policy` and the backend views) lives in `envs/protocol.py`, the bottom layer; it is
re-exported here for the modules that import it from the core.
"""

from __future__ import annotations

import importlib

import numpy as np

from servegym.envs.protocol import (
    STOP,
    Action,
    Decision,
    DecisionKind,
    InvalidActionError,
    Policy,
)


# ------------------------------------------------------------------ default policies
class FCFSAdmission:
    """vLLM's default: admit the head of the waiting queue if it fits, else stop."""

    # Declares that only the head is ever admitted while the instance is busy; the
    # simulator then skips decode-only stretches whenever the head does not fit.
    head_of_line = True

    # decide() reads no running request's token state (num_computed, num_generated,
    # num_blocks, token times) beyond its own instance's counts: lazily advanced decode
    # runs need not be synced before asking it (DecisionLoop.ask).
    reads_token_state = False

    def decide(self, decision: Decision) -> int:
        if decision.instance.can_admit(decision.candidates[0]):
            return 0
        if decision.can_stop():
            return STOP
        return int(np.flatnonzero(decision.mask())[0])


class LatestArrivalPreemption:
    """vLLM's victim: the latest-arrived running request (by recompute)."""

    reads_token_state = False  # (see FCFSAdmission)

    def decide(self, decision: Decision) -> int:
        candidates = decision.candidates
        best = 0
        for index in range(1, len(candidates)):
            request = candidates[index]
            champion = candidates[best]
            if (request.arrival_time, request.rid) > (champion.arrival_time, champion.rid):
                best = index
        return best


class RoundRobinRouting:
    """Instances in turn; the counter lives on the policy object, reset per episode."""

    reads_token_state = False  # (see FCFSAdmission)

    def __init__(self) -> None:
        self.next_index = 0

    def reset(self, rng: np.random.Generator | None = None) -> None:
        self.next_index = 0

    def decide(self, decision: Decision) -> int:
        choice = self.next_index % len(decision.candidates)
        self.next_index = choice + 1
        return choice


class NeverMigrate:
    """MIGRATE default (live migration): migrate nothing (STOP)."""

    def decide(self, decision: Decision) -> int:
        return STOP


class LeaveToLRU:
    """RETAIN default ("retain-lru", vLLM's behaviour): leave a finished call's cached
    prompt to the LRU prefix cache (choice 1 of the menu, envs/core/retention.py)."""

    name = "retain-lru"

    def decide(self, decision: Decision) -> int:
        return 1


def reset_policies(policies: dict[DecisionKind, Policy], rng: np.random.Generator) -> None:
    """Give each policy with a `reset` its own child generator of the episode's `rng`."""
    for policy, child in zip(policies.values(), rng.spawn(len(policies)), strict=True):
        reset = getattr(policy, "reset", None)
        if reset is not None:
            reset(child)


def default_policies() -> dict[DecisionKind, Policy]:
    """A fresh default policy per decision kind, in `DecisionKind` order, each the class its
    `KindSpec.default` names ("module:Class", built with no arguments)."""
    return {kind: default_policy_class(kind)() for kind in DecisionKind}


def default_policy_class(kind: DecisionKind) -> type:
    """The class `kind.spec.default` names; a kind without one is an error naming it."""
    path = kind.spec.default
    module, _, name = path.partition(":")
    if not (module and name):
        raise ValueError(f"DecisionKind.{kind.name} has no default policy: set its KindSpec's "
                         f"default to 'module:Class' in envs/protocol.py (got {path!r})")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "STOP", "Action", "Decision", "DecisionKind", "FCFSAdmission", "InvalidActionError",
    "LatestArrivalPreemption", "LeaveToLRU", "NeverMigrate", "Policy",
    "RoundRobinRouting",
    "default_policies", "default_policy_class", "reset_policies",
]


def __getattr__(name: str) -> type:
    # PLACE's default moved to the module that brings the kind (envs/core/disagg.py, named
    # by its KindSpec); imported lazily here for code that still finds it in this module.
    if name == "MostFreeKVPlacement":
        from servegym.envs.core.disagg import MostFreeKVPlacement

        return MostFreeKVPlacement
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
