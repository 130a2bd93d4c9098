"""Earliest-deadline-first admission on the time-to-first-token target.

EDF (Liu and Layland, JACM 1973) applied to TTFT SLOs, the deadline-aware ordering used as
a baseline in SLO-aware LLM schedulers (e.g. Qiu et al., "Andes", 2024; the EDF baseline of
SLOs-Serve, 2025). A waiting request's deadline is `arrival_time + ttft_slo`; requests with no
target (infinite) rank last, in canonical order. A request that already produced its first
token (preempted by recompute mid-decode) has no TTFT at stake and goes first, as vLLM
resumes preempted requests first.

With `late_last=True` (`RankedAdmission`'s option), requests whose deadline has already
passed rank after every request that can still meet its target (plain EDF lets
already-late requests delay the others under overload, the "domino effect").
"""

from __future__ import annotations

import math

from servegym.agents.heuristics.base import RankedAdmission
from servegym.envs.core.request import Request
from servegym.envs.protocol import Decision


class EarliestDeadlineFirst(RankedAdmission):
    """Admit the request with the earliest TTFT deadline (see the module docstring)."""

    def key(self, request: Request, decision: Decision) -> tuple[int, float]:
        if request.num_generated:
            return (0, -math.inf)
        return (1, request.arrival_time + request.ttft_slo)
