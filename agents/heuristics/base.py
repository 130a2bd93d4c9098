"""Shared machinery of the heuristic policies: ranked admission and workload binding.

Admission contract (see `servegym.envs.core.decisions`): a policy picks a waiting request whose
`Decision.mask()` entry is True, or answers `STOP` when `Decision.can_stop()`. Checking the
mask costs a KV lookup per candidate, so ranked policies rank first and check fit only along
the ranking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from servegym.envs.predictors import LengthPredictor
from servegym.envs.protocol import STOP, Decision

if TYPE_CHECKING:
    from servegym.envs.core.request import Request


def decision_simulator(decision: Decision) -> Any:
    """The simulator behind a decision (ROUTE carries it; ADMIT/PREEMPT via the instance)."""
    return decision.cluster if decision.instance is None else decision.instance.sim


class PredictorUser:
    """Mixin for policies that read output lengths through a `LengthPredictor`.

    `reset(rng)` (called by `Simulator.reset`) keeps the generator; the predictor draws its
    predictions on the first decision of each workload, because the decision protocol hands
    policies the generator but not the workload.
    """

    predictor: LengthPredictor

    def _init_predictor(self, lengths: str, sigma: float, buckets: Any, prior: float) -> None:
        self.predictor = LengthPredictor(lengths, sigma=sigma, buckets=buckets, prior=prior)
        self._rng: np.random.Generator | None = None
        self._bound: Any = None

    def reset(self, rng: np.random.Generator | None = None) -> None:
        self._rng = rng
        self._bound = None

    def _bind(self, decision: Decision) -> None:
        workload = decision_simulator(decision).workload
        if workload is self._bound:
            return
        if self._rng is None:
            raise RuntimeError(
                f"{type(self).__name__}: call reset(rng) before deciding (Simulator.reset does)"
            )
        self.predictor.reset(workload, self._rng)
        self._bound = workload


def admit_by_rank(
    decision: Decision, key: Callable[[Request], Any], backfill: bool = False
) -> int:
    """Admit the candidate with the smallest key (ties: canonical order) if it fits.

    If it does not fit: with `backfill`, the best-ranked candidate that fits; else STOP, as
    vLLM's scheduler stops at the first request it cannot allocate (head-of-line blocking on
    the ranked queue). When STOP is refused (the instance would idle), the best-ranked
    candidate that fits is admitted.
    """
    candidates = decision.candidates
    keys = [key(request) for request in candidates]
    best = min(range(len(candidates)), key=keys.__getitem__)
    instance = decision.instance
    if instance.can_admit(candidates[best]):
        return best
    if not backfill and decision.can_stop():
        return STOP
    for index in sorted(range(len(candidates)), key=keys.__getitem__):
        if index != best and instance.can_admit(candidates[index]):
            return index
    return STOP  # nothing fits: STOP is then always allowed


class RankedAdmission:
    """Base of admission policies that order the waiting queue by a key (smallest first).

    Args:
        max_wait_s: starvation guard (ageing): a request that has waited this long since it
            arrived outranks every request that has not, oldest first. None: no guard.
        backfill: when the best-ranked request does not fit, admit the best-ranked one that
            does instead of stopping (see `admit_by_rank`).
        late_last: a request whose TTFT deadline (`arrival_time + ttft_slo`) has passed
            without a first token ranks after every request that can still meet its target.
            It can no longer count toward goodput, so under overload serving it first only
            makes others late too (the "domino effect" of plain EDF; Andes, Qiu et al. 2024,
            and SLOs-Serve, 2025, deprioritise requests that have already missed).
    """

    def __init__(self, max_wait_s: float | None = None, backfill: bool = False,
                 late_last: bool = False) -> None:
        if max_wait_s is not None and not max_wait_s > 0:
            raise ValueError(f"max_wait_s must be > 0 seconds or None, got {max_wait_s!r}")
        self.max_wait_s = max_wait_s
        self.backfill = bool(backfill)
        self.late_last = bool(late_last)

    def key(self, request: Request, decision: Decision) -> Any:
        raise NotImplementedError

    def ranking(self, decision: Decision) -> Callable[[Request], Any]:
        """The rank of each candidate at this decision (smallest first): `key`, behind the
        late-last split and the ageing guard when they are on."""
        key = self.key
        ranked = lambda r: key(r, decision)  # noqa: E731
        if self.late_last:
            now = decision.time
            keyed = ranked
            ranked = lambda r: (  # noqa: E731
                (not r.num_generated and r.arrival_time + r.ttft_slo < now), keyed(r))
        if self.max_wait_s is not None:
            oldest = decision.time - self.max_wait_s
            inner = ranked
            ranked = lambda r: (  # noqa: E731
                (0, r.arrival_time) if r.arrival_time <= oldest else (1, inner(r))
            )
        return ranked

    def decide(self, decision: Decision) -> int:
        return admit_by_rank(decision, self.ranking(decision), self.backfill)


def pick_max(candidates: list[Request], key: Callable[[Request], Any]) -> int:
    """Index of the candidate with the largest key; ties go to the latest arrival (vLLM)."""
    return max(range(len(candidates)),
               key=lambda i: (key(candidates[i]), candidates[i].arrival_time, candidates[i].rid))
