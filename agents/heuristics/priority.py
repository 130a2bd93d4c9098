"""Strict priority classes: the most urgent class first, FCFS within a class.

vLLM's ``--scheduling-policy priority``: a lower `priority` value is more urgent; the waiting
queue is ordered by (priority, arrival) and admission stops at the first request that does
not fit. Its preemption counterpart (evict the least urgent, latest arrival) is
`servegym.agents.heuristics.preemption.LowestPriorityVictim`.
"""

from __future__ import annotations

from servegym.agents.heuristics.base import RankedAdmission
from servegym.envs.core.request import Request
from servegym.envs.protocol import Decision


class StrictPriority(RankedAdmission):
    """Admit the waiting request of the most urgent class; ties in canonical order."""

    def key(self, request: Request, decision: Decision) -> int:
        return request.priority
