"""Closed-loop releases: a session's next turn, an agentic program's next call.

A closed-loop workload (``Workload.parents``, envs/workloads/graph.py) says which calls
each request waits for. The simulator then reads only the *roots* (requests without
parents) from the arrival cursor; every other request is released by a typed event
(``EventKind.RELEASE``, envs/core/events.py) at

    release = max over its parents of their finish time + its release_delay

(a user's think time, or the tool call's duration between two LLM calls: Parrot, Lin et
al., OSDI 2024; Continuum's tool-call gaps). The event's handler makes the request with
that arrival time and returns its routing (the loop yields from it), so a released
request is routed exactly like an arrival (ROUTE asked with 2+ instances). Releases have
the arrivals' priority: at an instant they are queued before any instance plans. A decode
run in flight where a released request lands is cut at its first iteration boundary at or
after the release (`Simulator.interrupt`), as runs end at the next arrival; so closed-form
decode runs and the reference path (`decode_runs=False`) agree (tested).

Failure: when a parent is rejected (it can never be served: above the context or the KV
capacity, or itself cut off), each of its children not yet released is made at that
instant and rejected with reason ``parent_rejected: request <rid> (<its reason>)``, and so
on down the program: every request of the workload ends finished or rejected, never
waiting forever. A child released at the same instant its parent finished (delay 0) joins
the next batch, not the one its parent's instance plans at that instant.

What the calls carry for policies (envs/core/request.py): ``session``, ``turn``,
``next_delay`` (the smallest release delay of its children: seconds from its finish to its
program's next release if it were the last parent; NaN without a child), ``tool_kind``,
``critical_path`` and ``program`` (shared ``ProgramState``; ``service``: prompt + output
tokens of the program's finished calls). All state is per run; determinism follows from
the event heap's ordering (time, priority, counter).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from servegym.envs.core.events import EventKind
from servegym.envs.core.occupancy import Occupancy
from servegym.envs.core.request import (
    FINISHED,
    REJECTED,
    WAITING,
    ProgramState,
    Request,
    SessionCall,
)
from servegym.envs.workloads.graph import flat_parents

if TYPE_CHECKING:
    from servegym.envs.core.simulator import Simulator
    from servegym.envs.workloads.workload import Workload

RELEASE = EventKind.RELEASE

__all__ = ["Releases"]


class Releases:
    """The dependency state of one run over a closed-loop workload (module docstring)."""

    def __init__(self, sim: Simulator, workload: Workload) -> None:
        parents = workload.parents
        n = len(workload)
        self.sim = sim
        counts = [len(p) for p in parents]
        self.roots = [i for i in range(n) if counts[i] == 0]
        arrivals = workload.arrival_time
        self.root_times: list[float] = arrivals[self.roots].tolist()
        self.pending = counts
        flat, child = flat_parents(parents)
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], np.arange(n + 1)).tolist()
        kids = child[order].tolist()
        self.children: list[list[int]] = [kids[starts[i]:starts[i + 1]] for i in range(n)]
        self.delay: list[float] = np.nan_to_num(workload.release_delay, nan=0.0).tolist()
        self.latest: list[float] = [-math.inf] * n  # latest finish among finished parents
        self.made = bytearray(n)  # 1 once a request object exists (arrived or rejected)
        self.session: list[int] = workload.session_id.tolist()
        self.turn: list[int] = workload.turn.tolist() if workload.turn is not None else [0] * n
        self.next_delay: list[float] = workload.next_delay().tolist()
        self.tool_kind: list[int] = (workload.tool_kind.tolist()
                                     if workload.tool_kind is not None else [-1] * n)
        self.critical_path: list[int] = workload.critical_path().tolist()
        self.programs: dict[int, ProgramState] = {}
        self.arrival_log: list[float] = []  # every made request's arrival, in time order

    # ------------------------------------------------------------------ requests
    def annotate(self, request: Request) -> None:
        """Set the program fields of a request just made."""
        i = request.rid
        self.made[i] = 1
        self.arrival_log.append(request.arrival_time)
        session = self.session[i]
        program = None
        if session >= 0:
            program = self.programs.get(session)
            if program is None:
                program = self.programs[session] = ProgramState(session)
                program.first_arrival = request.arrival_time
        request.call = SessionCall(session, self.turn[i], self.next_delay[i],
                                   self.tool_kind[i], self.critical_path[i], program)

    def arrivals_since(self, time: float) -> int:
        log = self.arrival_log
        return len(log) - bisect.bisect_left(log, time)

    # ------------------------------------------------------------------ events
    def on_departure(self, request: Request, time: float) -> None:
        """A request left: release its children whose parents have all finished, or
        reject every not yet made descendant of a rejected one (iteratively)."""
        sim = self.sim
        if request.status == FINISHED:
            if request.program is not None:
                request.program.service += request.prompt_len + request.output_len
            pending, latest, made = self.pending, self.latest, self.made
            finish = request.finish_time
            for k in self.children[request.rid]:
                if made[k]:
                    continue
                if finish > latest[k]:
                    latest[k] = finish
                pending[k] -= 1
                if pending[k] == 0:
                    sim.schedule_event(latest[k] + self.delay[k], RELEASE, k)
            return
        if request.status != REJECTED:
            return
        stack = [request]
        while stack:
            parent = stack.pop()
            cause = parent.reject_reason.split(":", 1)[0]
            for k in self.children[parent.rid]:
                if self.made[k]:
                    continue
                child = sim._make_request(k, time)
                child.status = REJECTED
                child.reject_reason = f"parent_rejected: request {parent.rid} ({cause})"
                Occupancy.record_departure(sim, child, time)
                stack.append(child)

    def on_release(self, index: int, time: float) -> Generator[Any, Any, None]:
        """The RELEASE handler (a generator the loop yields from): make request `index`
        arriving now and route it; a decode run in flight on its instance is cut at its
        first iteration boundary at or after now, as a run planned before an arrival ends
        there (envs/core/decode_runs.py), so the request is admitted when it would be
        without decode runs."""
        sim = self.sim
        request = sim._make_request(index, time)
        yield from sim._route(request)
        if request.status == WAITING:
            instance = sim.instances[request.instance]
            if instance.run is not None:
                sim.interrupt(instance)
