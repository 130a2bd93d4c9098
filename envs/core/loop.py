"""The one decision loop of every backend: the simulator and the live vLLM engines.

A backend (`servegym.envs.core.simulator.Simulator`,
`servegym.envs.backends.live.LiveBackend`) is a `DecisionLoop`. The loop owns the clock
(`now`), the heap of typed instance events (envs/core/events.py: entries ``(time, priority,
counter, kind, instance, generation)``; bumping an instance's generation cancels its pending
entries), the cursor over the workload's sorted arrival times, and the generator that
interleaves them:

    while events or arrivals remain:
        the earliest event comes strictly before the next arrival:
            pop it (skip it if cancelled); now = its time;
            instance.on_event(now) finishes what was in flight; unless that leaves the
            instance nothing to plan, `yield from instance.build_next(now)` plans its next
            step, asking ADMIT / PREEMPT decisions;
        else the next arrival: now = its time; make its request; ROUTE it (asked only with
            2+ instances; every instance is first advanced to now, so routers see current
            state); then `after_arrival()`;
        after either, with `debug_checks`, `check_invariants(now)`.

Arrivals of an instant go before any instance plans at that instant (an event at exactly
the next arrival's time waits for it). Decisions with a configured policy are answered
inline (`ask`); the others leave the generator through `next_decision()` and come back
through `apply()`, so stepping decision by decision and running with policies are the same
code path.

What a backend supplies: `policies`; `instances`, each with `on_event(now) -> bool` (True:
nothing to plan), the generator `build_next(now)`, `enqueue(request, now)` and
`advance_to(now)`; `route_targets` (the instances ROUTE chooses among; usually all);
`_make_request(index)`; `reset()`, which builds its state and then calls `start_loop()`;
`event_handlers` for typed events of other kinds (`schedule_event`: a KV transfer's end,
envs/core/disagg.py), each a plain call `handler(target, now)` that may return a
generator of decisions to yield from (a closed-loop release routes the request it makes,
envs/core/release.py; a migration tick asks MIGRATE, envs/core/migration.py), the first
ones pushed by `seed_events()`; and, optionally,
`after_arrival()`, `check_invariants(now)` and `_on_drained()` (called once when the loop
ends).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Generator, Mapping
from types import MappingProxyType
from typing import Any

from servegym.envs.core.events import (
    INSTANCE_PRIORITY,
    MIGRATION_STAGE_PRIORITY,
    MIGRATION_TICK_PRIORITY,
    RELEASE_PRIORITY,
    RETAIN_EXPIRY_PRIORITY,
    TRANSFER_PRIORITY,
    EventKind,
)
from servegym.envs.protocol import Action, Decision, DecisionKind

INSTANCE = EventKind.INSTANCE
EVENT_PRIORITY = {EventKind.RETAIN_EXPIRY: RETAIN_EXPIRY_PRIORITY,
                  EventKind.TRANSFER: TRANSFER_PRIORITY,
                  EventKind.MIGRATION_STAGE: MIGRATION_STAGE_PRIORITY,
                  EventKind.MIGRATION_TICK: MIGRATION_TICK_PRIORITY,
                  EventKind.RELEASE: RELEASE_PRIORITY}


class DecisionLoop:
    """The shared decision loop (see the module docstring); a base class of backends."""

    debug_checks: bool = False
    policies: dict[DecisionKind, Any]
    instances: list[Any]
    # The instances an arriving request is routed among (ROUTE's candidates): all of
    # them, or a disaggregated cluster's prefill instances (`routable_instances`).
    route_targets: list[Any]
    # Handlers of typed events other than INSTANCE, by kind: handler(target, time).
    event_handlers: dict[int, Any] = {}
    arrival_times: list[float]
    now: float
    next_arrival_time: float
    _decision: Decision | None = None
    _done: bool = True
    # Instances whose decode run was advanced lazily, by index (a backend with decode
    # runs gives itself a dict in reset; read-only here).
    lazy_runs: Mapping[int, Any] = MappingProxyType({})

    # ------------------------------------------------------------------ the protocol
    def next_decision(self) -> Decision | None:
        """The decision waiting for an answer; None once the workload has drained."""
        return self._decision

    def apply(self, action: int | Action, *, validated: bool = False) -> None:
        """Answer the pending decision. `validated=True` skips the check for callers that
        already chose from `Decision.mask()` (the envs do, with the same rules)."""
        decision = self._decision
        if decision is None:
            raise RuntimeError("no decision is pending: the run has finished or not started")
        if not validated:
            action = decision.validate(action)
        self._decision = self._resume(action)

    def ask(self, decision: Decision) -> Generator[Decision, Action, Action]:
        """The answer to `decision`: its policy's, or the caller's through `apply()`.

        Decode runs advanced lazily (`lazy_runs`, envs/core/decode_runs.py) are synced
        first unless the policy says it reads no request's token state
        (`reads_token_state = False`): every decision sees what eager advancing shows."""
        policy = self.policies.get(decision.kind)
        if self.lazy_runs and getattr(policy, "reads_token_state", True):
            self.sync_lazy_runs()
        if policy is not None:
            return decision.validate(policy.decide(decision))
        action = yield decision  # validated by apply()
        return action

    def sync_lazy_runs(self) -> None:
        """Apply every lazily advanced decode run to its requests (`sync_run`)."""
        for instance in list(self.lazy_runs.values()):
            instance.sync_run()

    # ------------------------------------------------------------------ events
    def schedule(self, time: float, instance: Any) -> None:
        """An event of `instance` at `time` (its end of step, or a wake-up)."""
        index = instance.index
        heapq.heappush(self._heap, (time, INSTANCE_PRIORITY, next(self._counter), INSTANCE,
                                    index, self._generation[index]))
        instance.event_pending = True

    def cancel_pending(self, instance: Any) -> None:
        """Drop every pending event of `instance` (lazily, when popped)."""
        self._generation[instance.index] += 1

    # ------------------------------------------------------------------ the loop
    def start_loop(self) -> None:
        """Start a run over `arrival_times` once the backend's state is built (`reset`)."""
        self._heap: list[tuple[float, int, int, int, int, int]] = []
        self._counter = itertools.count()
        self._generation = [0] * len(self.instances)  # per instance: pending entries' validity
        self.route_targets = self.routable_instances()
        self.seed_events()
        arrivals = self.arrival_times
        self.next_arrival_time = arrivals[0] if arrivals else math.inf
        self._loop = self._main_loop()
        self._done = False
        self._decision = self._resume(None)

    def routable_instances(self) -> list[Any]:
        """The instances ROUTE chooses among (all, unless the backend says otherwise)."""
        return self.instances

    def seed_events(self) -> None:
        """Push the backend's first typed events (a migration controller's first tick)
        once the heap exists, before the loop runs; none by default."""

    def after_arrival(self) -> None:
        """Called after each arrival is routed (the live backend retries stalled engines)."""

    def check_invariants(self, time: float) -> None:
        """Raise if the backend's state is inconsistent (called with `debug_checks`)."""

    def _on_drained(self) -> None:
        """Called once, when the last event and arrival are done."""

    def _resume(self, action: Action | None) -> Decision | None:
        try:
            return self._loop.send(action)
        except StopIteration:
            self._done = True
            self._on_drained()
            return None

    def _main_loop(self) -> Generator[Decision, Action, None]:
        heap, arrivals, instances = self._heap, self.arrival_times, self.instances
        generation = self._generation
        heappop = heapq.heappop
        num_arrivals = len(arrivals)
        cursor = 0
        # The hook only where a backend has one (the simulator has none: no call per arrival).
        after_arrival = None if type(self).after_arrival is DecisionLoop.after_arrival \
            else self.after_arrival
        while True:
            if heap and heap[0][0] < self.next_arrival_time:
                time, _, _, kind, index, pushed = heappop(heap)
                if kind is not INSTANCE:  # a typed event with its own handler
                    self.now = time
                    asks = self.event_handlers[kind](index, time)
                    if asks is not None:  # decisions (a release's ROUTE, a migration tick)
                        yield from asks
                    if self.debug_checks:
                        self.check_invariants(time)
                    continue
                if pushed != generation[index]:
                    continue  # cancelled
                self.now = time
                instance = instances[index]
                if not instance.on_event(time):
                    yield from instance.build_next(time)
                if self.debug_checks:
                    self.check_invariants(time)
            elif cursor < num_arrivals:
                self.now = arrivals[cursor]
                request = self._make_request(cursor)
                cursor += 1
                self.next_arrival_time = arrivals[cursor] if cursor < num_arrivals else math.inf
                yield from self._route(request)
                if after_arrival is not None:
                    after_arrival()
                if self.debug_checks:
                    self.check_invariants(self.now)
            else:
                return

    def schedule_event(self, time: float, kind: EventKind, target: int) -> None:
        """A typed event other than an instance's (e.g. a KV transfer's end), handled by
        `event_handlers[kind](target, time)`; never cancelled."""
        heapq.heappush(self._heap, (time, EVENT_PRIORITY[kind], next(self._counter), kind,
                                    target, 0))

    def _route(self, request: Any) -> Generator[Decision, Action, None]:
        now = self.now
        targets = self.route_targets
        if len(targets) == 1:
            targets[0].enqueue(request, now)
            return
        for instance in targets:
            instance.advance_to(now)  # routers see each candidate's state as of now
        decision = Decision(DecisionKind.ROUTE, now, targets, request=request,
                            cluster=self)
        action = yield from self.ask(decision)
        targets[action.choice].enqueue(request, now)

    def _make_request(self, index: int) -> Any:
        raise NotImplementedError


__all__ = ["DecisionLoop"]
