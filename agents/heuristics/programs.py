"""Program-aware admission: agentic programs and closed-loop sessions.

Request-level rules (FCFS, shortest-first) see each LLM call alone; an agentic program's
job completion time is that of its slowest chain of calls. Two program-level rules, both
reading only the request view (envs/protocol.py `RequestView`), fields the simulator
sets for closed-loop workloads (envs/core/release.py):

* `ProgramLeastAttainedService` (``program-las``): the call whose program has received the
  least service so far goes first (``program_service``: prompt + output tokens of the
  program's finished calls), FCFS within a level. Autellix's program-level attained
  service (PLAS; Luo et al., "Autellix: An Efficient Serving Engine for LLM Agents as
  General Programs", 2025), a least-attained-service rule lifted from requests to
  programs: short programs are not stuck behind long ones, no length oracle needed.
  Autellix counts service in execution time and discretises it into multi-level queues;
  here service counts tokens and ``quantum`` (tokens per level; None: no levels) gives the
  levels. Calls outside a program count as programs with no service yet.
* `CriticalPathFirst` (``critical-path-first``): the call with the longest remaining
  critical path of its program first (``critical_path``: LLM calls on the longest chain
  from this call to the program's end, itself included), then arrival order: the
  dependency-aware rule of DAG schedulers (critical-path list scheduling, as Parrot's
  application-level scheduling uses the DAG of calls, Lin et al., OSDI 2024). It reads
  the program's graph (known to a program-aware framework), not output lengths.

Both are `RankedAdmission`s (agents/heuristics/base.py): they stop at a best-ranked call
that does not fit (``backfill`` admits the best that fits), and take ``max_wait_s`` and
``late_last``. Outside closed-loop workloads every call has service 0 and critical path 1,
so both reduce to FCFS order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from servegym.agents.heuristics.base import RankedAdmission

if TYPE_CHECKING:
    from servegym.envs.core.request import Request
    from servegym.envs.protocol import Decision

__all__ = ["CriticalPathFirst", "ProgramLeastAttainedService"]


class ProgramLeastAttainedService(RankedAdmission):
    """Least attained program service first (see the module docstring)."""

    def __init__(self, quantum: float | None = None, max_wait_s: float | None = None,
                 backfill: bool = False, late_last: bool = False) -> None:
        if quantum is not None and not (math.isfinite(quantum) and quantum > 0):
            raise ValueError(f"quantum must be > 0 tokens per level or None, got {quantum!r}")
        super().__init__(max_wait_s=max_wait_s, backfill=backfill, late_last=late_last)
        self.quantum = quantum

    def key(self, request: Request, decision: Decision) -> Any:
        service = request.program_service
        if self.quantum is not None:
            service = math.floor(service / self.quantum)
        return (service, request.arrival_time)


class CriticalPathFirst(RankedAdmission):
    """Longest remaining critical path of the call's program first (module docstring)."""

    def key(self, request: Request, decision: Decision) -> Any:
        return (-request.critical_path, request.arrival_time)
