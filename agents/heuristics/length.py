"""Length-based admission: shortest prompt, shortest output, shortest remaining first.

Shortest-job-first ordering cuts mean latency when job sizes vary (the head-of-line blocking
argument of FastServe, Wu et al. 2023, and of Fu et al., "Efficient LLM Scheduling by
Learning to Rank", NeurIPS 2024). Output lengths come from a `LengthPredictor`: the truth
(``lengths="oracle"``), a noisy prediction (``"predicted"``: log-normal error `sigma`, as a
learned predictor such as SSJF's proxy model, Qiu et al. 2024, would give), or nothing
(``"none"``: every request looks the same, so the order falls back to FCFS).

Each policy admits the best-ranked waiting request if it fits and otherwise stops (vLLM's
head-of-line rule on the ranked queue); `max_wait_s` adds a starvation guard and `backfill`
admits the best-ranked request that fits instead of stopping (see `RankedAdmission`).
"""

from __future__ import annotations

from collections.abc import Sequence

from servegym.agents.heuristics.base import PredictorUser, RankedAdmission
from servegym.envs.core.request import Request
from servegym.envs.protocol import Decision


class ShortestPromptFirst(RankedAdmission):
    """Rank by prefill work: tokens still to compute before the request's next token.

    For a fresh request this is its prompt; for one preempted by recompute, prompt plus the
    tokens it had generated. Needs no length knowledge.
    """

    def key(self, request: Request, decision: Decision) -> int:
        return request.prompt_len + request.num_generated - request.num_computed


class ShortestOutputFirst(PredictorUser, RankedAdmission):
    """Rank by predicted total output length (SJF on decode work)."""

    def __init__(self, lengths: str = "oracle", sigma: float = 0.5,
                 buckets: Sequence[float] | None = None, prior: float = 256.0,
                 max_wait_s: float | None = None, backfill: bool = False) -> None:
        RankedAdmission.__init__(self, max_wait_s, backfill)
        self._init_predictor(lengths, sigma, buckets, prior)

    def decide(self, decision: Decision) -> int:
        self._bind(decision)
        return RankedAdmission.decide(self, decision)

    def key(self, request: Request, decision: Decision) -> float:
        return self.predictor.predict(request)


class ShortestRemainingFirst(ShortestOutputFirst):
    """Rank by predicted output tokens still to generate (SRPT).

    Differs from `ShortestOutputFirst` for requests preempted by recompute, which wait with
    part of their output generated.
    """

    def key(self, request: Request, decision: Decision) -> float:
        return self.predictor.remaining(request)
