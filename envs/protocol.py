"""The decision protocol: a backend asks, a policy answers. The bottom layer.

This module imports nothing else from the project. Backends (the simulator, live vLLM
engines) produce `Decision`s; policies (heuristics, learned agents through the env's
encoding) answer them with an `Action`. Observations, heuristics, rewards and metrics read
a backend only through the views below (`ClusterView`, `InstanceView`, `KVView`,
`RequestView`); the simulator's classes implement them directly (structural typing, no
per-decision snapshot copies), and `tests/test_contracts.py` checks that the simulator and
a vLLM-free fake both do.

| kind    | asked when                                  | candidates    | answer         | arity |
|---------|---------------------------------------------|---------------|----------------|-------|
| ROUTE   | a request arrives at 2+ instances           | instances     | index          | 1     |
| ADMIT   | a batch is built and a waiting request fits | waiting queue | index, or STOP | 1     |
| PREEMPT | a running request lacks KV blocks           | running       | index (+ swap) | 1     |
| PLACE   | a prefilled request of a disaggregated      | decode        | index          | 1     |
|         | cluster is handed off and some decode       | instances     |                |       |
|         | instance has room for its KV now            |               |                |       |
| RETAIN  | a call with a next call in its session or   | options: a    | index          | 1     |
|         | program finishes (KV retention, Continuum)  | fixed menu    |                |       |

Each kind's row in `KIND_SPECS` (a `KindSpec`) says what its candidates are, its arity and
which answers it takes; the env, the observation encoder and the agents read only that row,
so a new kind is an enum value, its row, the backend that asks it and a default policy.
Arity is how many indices an answer carries: a candidate (`Action.choice`), and for kinds
of arity 2 (migration, disaggregated routing: the next issues) a target
(`Action.target`). Candidate order is canonical: instances by index; waiting requests in
queue order (requests preempted by recompute at the front, then arrival order); running
requests in admission order. A policy answers with an `int` or an `Action`; `Action.swap`
asks a PREEMPT to swap the victim to host memory instead of recomputing it later (valid
only where swap space is configured).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

STOP = -1  # ADMIT: no more admissions this iteration


class DecisionKind(IntEnum):
    """What is being decided. Everything a consumer needs to know of a kind (its arity,
    what its candidates are, which answers it takes) is its `spec` (`KIND_SPECS`), so the
    env, the observation encoder and the agents handle a new kind from that row alone."""

    ROUTE = 0
    ADMIT = 1
    PREEMPT = 2
    PLACE = 3  # prefill/decode disaggregation: the decode instance of a prefilled request
    MIGRATE = 4  # live migration (Llumnix): a running request and its destination instance
    RETAIN = 5  # KV retention (Continuum): what becomes of a finished call's cached prompt

    @property
    def spec(self) -> KindSpec:
        return KIND_SPECS[self]

    @property
    def arity(self) -> int:
        return KIND_SPECS[self].arity

    @property
    def control(self) -> str:
        """The kind's name in configs (`env.control`, `agent.policies`): lower case."""
        return self.name.lower()

    @classmethod
    def from_control(cls, name: str) -> DecisionKind:
        """The kind a config names (`"admit"` -> ADMIT); a clear error otherwise."""
        try:
            return cls[name.upper()]
        except (KeyError, AttributeError):
            raise ValueError(f"unknown decision kind {name!r}: choose one of "
                             f"{[kind.control for kind in cls]}") from None


class KindSpec(NamedTuple):
    """What a decision kind's candidates are and which answers it takes.

    candidates: "instances" (by index), "waiting" (an instance's waiting queue),
        "running" (an instance's running requests) or "options" (a fixed menu of answers,
        each a number: RETAIN's TTLs, envs/core/retention.py); the observation encoder
        picks its slot encoding by it.
    arity: indices per answer (2: a candidate and an `Action.target`).
    stoppable: STOP is an answer (ADMIT: refused while the instance would idle with a
        request that fits, `InstanceView.can_stop_admitting`).
    swappable: `Action.swap` is an answer where the instance has swap space.
    receives_kv: the candidates are instances that would take the decision's request's KV;
        valid only those with room (`InstanceView.can_receive`).
    default: the policy answering the kind when nobody else does, as "module:Class" (built
        with no arguments by `servegym.envs.core.decisions.default_policies`): a new kind's
        default lives in the module that brings the kind, and no list of defaults is edited.
    """

    candidates: str
    arity: int = 1
    stoppable: bool = False
    swappable: bool = False
    receives_kv: bool = False
    default: str = ""


CANDIDATE_SETS = ("instances", "waiting", "running", "options")
_DEFAULTS = "servegym.envs.core.decisions"
KIND_SPECS: Mapping[DecisionKind, KindSpec] = MappingProxyType({
    DecisionKind.ROUTE: KindSpec("instances", default=f"{_DEFAULTS}:RoundRobinRouting"),
    DecisionKind.ADMIT: KindSpec("waiting", stoppable=True,
                                 default=f"{_DEFAULTS}:FCFSAdmission"),
    DecisionKind.PREEMPT: KindSpec("running", swappable=True,
                                   default=f"{_DEFAULTS}:LatestArrivalPreemption"),
    DecisionKind.PLACE: KindSpec("instances", receives_kv=True,
                                 default="servegym.envs.core.disagg:MostFreeKVPlacement"),
    # Candidates: the cluster's decoding requests; Action.target: a cluster.instances index.
    DecisionKind.MIGRATE: KindSpec("running", arity=2, stoppable=True,
                                   default=f"{_DEFAULTS}:NeverMigrate"),
    # Candidates: the retention menu (None: release now, 0.0: leave to LRU, ttl > 0: pin
    # for ttl seconds); request: the finished call; instance: where its KV is. Asked only
    # with retention on.
    DecisionKind.RETAIN: KindSpec("options", default=f"{_DEFAULTS}:LeaveToLRU"),
})


class InvalidActionError(ValueError):
    """A policy or agent answered a decision with an action its mask forbids."""


class Action(NamedTuple):
    """An answer: candidate `choice` (or STOP), a `target` for kinds of arity 2, and
    `swap` for PREEMPT. Immutable; a named tuple because one is made per decision and a
    frozen dataclass is slower to build (the simulator's hot path)."""

    choice: int
    swap: bool = False
    target: int | None = None


# ====================================================================== views
@runtime_checkable
class RequestView(Protocol):
    """What policies and encoders read of a request (the simulator's `Request`)."""

    rid: int
    arrival_time: float
    prompt_len: int
    output_len: int
    tenant: int
    priority: int
    ttft_slo: float
    tpot_slo: float
    prefix_hashes: Any
    status: int
    num_computed: int
    num_generated: int
    num_blocks: int
    first_token_time: float
    instance: int  # index of the instance holding it (-1: not placed yet)
    # Closed-loop sessions and agentic programs (envs/core/release.py); outside them:
    # session -1, turn 0, next_delay NaN, tool_kind -1, critical_path 1, program_service 0.
    session: int  # its session or program
    turn: int  # its turn in the session, depth in the program
    next_delay: float  # seconds from its finish to its program's next release (NaN: none)
    tool_kind: int  # the kind of tool called after it finishes (-1: none)
    critical_path: int  # calls on the longest path from it to its program's end
    program_service: float  # prompt + output tokens of its program's finished calls


@runtime_checkable
class KVView(Protocol):
    """An instance's paged KV cache, read-only (the simulator's `BlockManager`)."""

    num_blocks: int
    block_size: int
    enable_prefix_caching: bool

    @property
    def num_free(self) -> int: ...

    @property
    def num_used(self) -> int: ...

    def blocks_for(self, num_tokens: int) -> int: ...

    def count_prefix_hits(self, request: Any) -> tuple[int, int]: ...

    def can_swap_out(self, request: Any) -> bool: ...


@runtime_checkable
class InstanceView(Protocol):
    """One serving instance as a policy sees it (the simulator's `Instance`).

    `budget` is the token budget left in the batch being built, `batch` the requests in it
    and `bulk` the decoding requests scheduled as a group beside them."""

    index: int
    pool: int  # index into the cluster's `pools`
    config: Any  # InstanceConfig
    cost: Any  # the instance's cost model
    block_size: int
    max_model_len: int
    watermark_blocks: int
    swap_enabled: bool
    waiting: Sequence[Any]
    running: Sequence[Any]
    swapped: Sequence[Any]
    batch: Sequence[Any]
    bulk: int
    budget: int
    bm: KVView
    sim: ClusterView

    def can_admit(self, request: Any) -> bool: ...

    def admissible(self, requests: Sequence[Any]) -> list[bool]:
        """`can_admit` of each of `requests`, in order (one pass: the ADMIT mask)."""
        ...

    def can_stop_admitting(self) -> bool: ...

    def can_receive(self, request: Any) -> bool:
        """Room for `request`'s computed tokens' KV above the watermark and a sequence slot
        now (the mask of `receives_kv` kinds and of MIGRATE's targets)."""
        ...


@runtime_checkable
class ClusterView(Protocol):
    """The cluster and its clock as policies, encoders and rewards see it."""

    now: float
    config: Any  # InstanceConfig of the first pool's instances
    pools: Sequence[Any]  # Pool-like: name, config, cost, count, role (envs/core/cluster.py)
    instances: Sequence[InstanceView]  # pool by pool
    requests: Sequence[Any]  # every request that has arrived, by rid
    workload: Any
    arrived_count: int
    departed: Sequence[Any]  # requests that left (finished or rejected), in order
    first_tokens: Sequence[Any]  # requests in order of their first token

    def requests_in_system(self) -> int: ...

    def arrivals_since(self, time: float) -> int: ...

    def latency_area(self, time: float) -> float: ...


@runtime_checkable
class Backend(Protocol):
    """Produces decisions and takes their answers (the simulator, live engines)."""

    def reset(self, workload: Any, seed: int = 0) -> None: ...

    def next_decision(self) -> Decision | None: ...

    def apply(self, action: int | Action, *, validated: bool = False) -> None: ...

    def report(self) -> Any: ...


# ====================================================================== decisions
@dataclass(slots=True)
class Decision:
    kind: DecisionKind
    time: float
    candidates: list[Any]
    instance: InstanceView | None = None  # ADMIT / PREEMPT / PLACE: the instance asking
    request: Any = None  # ROUTE: the arriving request; PREEMPT: the one short of KV;
    # PLACE: the prefilled request whose KV moves; RETAIN: the call that finished
    cluster: ClusterView | None = None  # ROUTE / PLACE: cluster-wide state

    def mask(self) -> np.ndarray:
        """Valid choices, one per candidate (True = valid)."""
        spec = KIND_SPECS[self.kind]
        if spec.candidates == "waiting":
            return np.array([self.instance.can_admit(r) for r in self.candidates], dtype=bool)
        if spec.receives_kv:
            request = self.request
            return np.array([c.can_receive(request) for c in self.candidates], dtype=bool)
        if spec.arity == 2:  # a candidate with some valid target
            return np.array([self.target_mask(i).any() for i in range(len(self.candidates))],
                            dtype=bool)
        return np.ones(len(self.candidates), dtype=bool)

    def target_mask(self, choice: int) -> np.ndarray:
        """Arity 2 (MIGRATE): the valid targets of candidate `choice`, one per instance of
        `cluster.instances`: not the request's own instance, with room for its KV and a
        sequence slot (`can_receive`)."""
        request = self.candidates[choice]
        return np.array([target.index != request.instance and target.can_receive(request)
                         for target in self.cluster.instances], dtype=bool)

    def can_stop(self) -> bool:
        """Whether STOP is an answer now; an admission's STOP is refused when it would leave
        the instance idle while a request fits."""
        spec = KIND_SPECS[self.kind]
        if not spec.stoppable:
            return False
        return spec.candidates != "waiting" or self.instance.can_stop_admitting()

    def can_swap(self) -> bool:
        return KIND_SPECS[self.kind].swappable and self.instance.swap_enabled

    def validate(self, action: int | Action) -> Action:
        if not isinstance(action, Action):
            try:
                action = Action(int(action))
            except (TypeError, ValueError):
                raise InvalidActionError(
                    f"{self.kind.name} decision needs an int or Action, got {action!r}"
                ) from None
        spec = KIND_SPECS[self.kind]
        choice = action.choice
        if action.target is not None and spec.arity < 2:
            raise InvalidActionError(
                f"{self.kind.name}: an answer names one candidate; Action.target is for "
                "decisions of arity 2")
        if choice == STOP:
            if not self.can_stop():
                raise InvalidActionError(
                    f"{self.kind.name}: STOP is not allowed here "
                    + ("(the instance would idle while a waiting request fits)"
                       if spec.stoppable else
                       f"(stoppable kinds: {[k.name for k in DecisionKind if k.spec.stoppable]})")
                )
            return action
        if not 0 <= choice < len(self.candidates):
            raise InvalidActionError(
                f"{self.kind.name}: choice {choice} out of range, "
                f"{len(self.candidates)} candidates (valid: 0..{len(self.candidates) - 1}"
                + (", or STOP=-1)" if spec.stoppable else ")")
            )
        if spec.candidates == "waiting" and \
                not self.instance.can_admit(self.candidates[choice]):
            raise InvalidActionError(
                f"{self.kind.name}: waiting request {self.candidates[choice].rid} does not fit now "
                "(token budget, sequence cap or KV blocks); consult Decision.mask()"
            )
        if spec.receives_kv and not self.candidates[choice].can_receive(self.request):
            raise InvalidActionError(
                f"{self.kind.name}: instance {self.candidates[choice].index} has no room for "
                f"request {self.request.rid}'s KV now; consult Decision.mask()")
        if spec.arity == 2:
            self._validate_target(choice, action.target)
        if action.swap and not self.can_swap():
            raise InvalidActionError(
                f"{self.kind.name}: swap requested but this instance has no swap space "
                "(set swap_space_blocks > 0) or the decision cannot swap (swappable kinds: "
                f"{[k.name for k in DecisionKind if k.spec.swappable]})"
            )
        return action


    def _validate_target(self, choice: int, target: int | None) -> None:
        name = self.kind.name
        instances = self.cluster.instances
        if target is None:
            raise InvalidActionError(
                f"{name}: an answer names a candidate and a target instance "
                f"(Action(choice, target=j), j in 0..{len(instances) - 1}), or STOP")
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or \
                not 0 <= target < len(instances):
            raise InvalidActionError(f"{name}: target {target!r} is not an instance index "
                                     f"(valid: 0..{len(instances) - 1})")
        request = self.candidates[choice]
        if target == request.instance:
            raise InvalidActionError(
                f"{name}: target instance {target} is request {request.rid}'s source; "
                "a migration moves a request to another instance")
        if not instances[target].can_receive(request):
            raise InvalidActionError(
                f"{name}: instance {target} has no room for request {request.rid}'s KV "
                "or no sequence slot now; consult Decision.target_mask()")


@runtime_checkable
class Policy(Protocol):
    def decide(self, decision: Decision) -> int | Action: ...


__all__ = [
    "CANDIDATE_SETS", "KIND_SPECS", "STOP", "Action", "Backend", "ClusterView", "Decision",
    "DecisionKind", "InstanceView", "InvalidActionError", "KVView", "KindSpec", "Policy",
    "RequestView",
]
