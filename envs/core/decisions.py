"""The decision protocol: a backend asks, a policy answers.

| kind    | asked when                                 | candidates    | answer         |
|---------|--------------------------------------------|---------------|----------------|
| ROUTE   | a request arrives at 2+ instances          | instances     | index          |
| ADMIT   | a batch is built and a waiting request fits| waiting queue | index, or STOP |
| PREEMPT | a running request lacks KV blocks          | running       | index (+ swap) |

Candidate order is canonical: instances by index; waiting requests in queue order (requests
preempted by recompute at the front, then arrival order); running requests in admission order.
A policy answers with an `int` or an `Action`; `Action.swap` asks a PREEMPT to swap the victim
to host memory instead of recomputing it later (valid only where swap space is configured).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from envs.core.instance import Instance
    from envs.core.request import Request

STOP = -1  # ADMIT: no more admissions this iteration


class DecisionKind(IntEnum):
    ROUTE = 0
    ADMIT = 1
    PREEMPT = 2


class InvalidActionError(ValueError):
    """A policy or agent answered a decision with an action its mask forbids."""


@dataclass(frozen=True, slots=True)
class Action:
    choice: int
    swap: bool = False


@dataclass(slots=True)
class Decision:
    kind: DecisionKind
    time: float
    candidates: list[Any]
    instance: Instance | None = None  # ADMIT / PREEMPT: the instance asking
    request: Request | None = None  # ROUTE: the arriving request; PREEMPT: the one short of KV
    cluster: Any = None  # ROUTE: the simulator, for cluster-wide state

    def mask(self) -> np.ndarray:
        """Valid choices, one per candidate (True = valid)."""
        if self.kind == DecisionKind.ADMIT:
            return np.array([self.instance.can_admit(r) for r in self.candidates], dtype=bool)
        return np.ones(len(self.candidates), dtype=bool)

    def can_stop(self) -> bool:
        """STOP is refused when it would leave the instance idle while a request fits."""
        return self.kind == DecisionKind.ADMIT and self.instance.can_stop_admitting()

    def can_swap(self) -> bool:
        return self.kind == DecisionKind.PREEMPT and self.instance.swap_enabled

    def validate(self, action: int | Action) -> Action:
        if not isinstance(action, Action):
            try:
                action = Action(int(action))
            except (TypeError, ValueError):
                raise InvalidActionError(
                    f"{self.kind.name} decision needs an int or Action, got {action!r}"
                ) from None
        choice = action.choice
        if choice == STOP:
            if not self.can_stop():
                raise InvalidActionError(
                    f"{self.kind.name}: STOP is not allowed here "
                    + ("(only ADMIT decisions can stop)" if self.kind != DecisionKind.ADMIT
                       else "(the instance would idle while a waiting request fits)")
                )
            return action
        if not 0 <= choice < len(self.candidates):
            raise InvalidActionError(
                f"{self.kind.name}: choice {choice} out of range, "
                f"{len(self.candidates)} candidates (valid: 0..{len(self.candidates) - 1}"
                + (", or STOP=-1)" if self.kind == DecisionKind.ADMIT else ")")
            )
        if self.kind == DecisionKind.ADMIT and not self.instance.can_admit(self.candidates[choice]):
            raise InvalidActionError(
                f"ADMIT: waiting request {self.candidates[choice].rid} does not fit now "
                "(token budget, sequence cap or KV blocks); consult Decision.mask()"
            )
        if action.swap and not self.can_swap():
            raise InvalidActionError(
                f"{self.kind.name}: swap requested but this instance has no swap space "
                "(set swap_space_blocks > 0) or the decision is not PREEMPT"
            )
        return action


@runtime_checkable
class Policy(Protocol):
    def decide(self, decision: Decision) -> int | Action: ...


# ------------------------------------------------------------------ default policies
class FCFSAdmission:
    """vLLM's default: admit the head of the waiting queue if it fits, else stop."""

    # Declares that only the head is ever admitted while the instance is busy; the
    # simulator then skips decode-only stretches whenever the head does not fit.
    head_of_line = True

    def decide(self, decision: Decision) -> int:
        if decision.instance.can_admit(decision.candidates[0]):
            return 0
        if decision.can_stop():
            return STOP
        return int(np.flatnonzero(decision.mask())[0])


class LatestArrivalPreemption:
    """vLLM's victim: the latest-arrived running request (by recompute)."""

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

    def __init__(self) -> None:
        self.next_index = 0

    def reset(self, rng: np.random.Generator | None = None) -> None:
        self.next_index = 0

    def decide(self, decision: Decision) -> int:
        choice = self.next_index % len(decision.candidates)
        self.next_index = choice + 1
        return choice


def reset_policies(policies: dict[DecisionKind, Policy], rng: np.random.Generator) -> None:
    """Give each policy with a `reset` its own child generator of the episode's `rng`."""
    for policy, child in zip(policies.values(), rng.spawn(len(policies)), strict=True):
        reset = getattr(policy, "reset", None)
        if reset is not None:
            reset(child)


def default_policies() -> dict[DecisionKind, Policy]:
    return {
        DecisionKind.ROUTE: RoundRobinRouting(),
        DecisionKind.ADMIT: FCFSAdmission(),
        DecisionKind.PREEMPT: LatestArrivalPreemption(),
    }
