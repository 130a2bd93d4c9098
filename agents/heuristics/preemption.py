"""Preemption victims: which running request gives up its KV blocks when one runs short.

Every rule picks the running request (the one short of KV included) with the largest key;
ties go to the latest arrival, vLLM's own rule. The victim is recomputed later (its blocks
are freed and it rejoins the front of the waiting queue); `servegym.agents.heuristics.swap` decides
recompute versus swap.

* `LatestArrivalPreemption` (in `servegym.envs.core.decisions`): vLLM's default.
* `LowestPriorityVictim`: the least urgent class (largest `priority`), then the latest
  arrival: vLLM's priority scheduling.
* `MostBlocksVictim`: the request holding the most KV blocks, so one preemption frees the
  most memory (fewest preemptions; Llumnix-style memory relief).
* `LeastProgressVictim`: the request with the fewest computed tokens, whose recomputation
  costs least.
* `LongestRemainingVictim`: the request with the most predicted output still to generate
  (it would hold growing memory longest; the preemption side of SRPT, as in FastServe's
  skip-join MLFQ and Fu et al. 2024), with oracle or predicted lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

from servegym.agents.heuristics.base import PredictorUser, pick_max
from servegym.envs.core.decisions import LatestArrivalPreemption
from servegym.envs.protocol import Decision


class LowestPriorityVictim:
    def decide(self, decision: Decision) -> int:
        return pick_max(decision.candidates, lambda r: r.priority)


class MostBlocksVictim:
    def decide(self, decision: Decision) -> int:
        return pick_max(decision.candidates, lambda r: r.num_blocks)


class LeastProgressVictim:
    def decide(self, decision: Decision) -> int:
        return pick_max(decision.candidates, lambda r: -r.num_computed)


class LongestRemainingVictim(PredictorUser):
    def __init__(self, lengths: str = "oracle", sigma: float = 0.5,
                 buckets: Sequence[float] | None = None, prior: float = 256.0) -> None:
        self._init_predictor(lengths, sigma, buckets, prior)

    def decide(self, decision: Decision) -> int:
        self._bind(decision)
        return pick_max(decision.candidates, self.predictor.remaining)


VICTIM_RULES = {
    "latest": LatestArrivalPreemption,
    "priority": LowestPriorityVictim,
    "most-blocks": MostBlocksVictim,
    "least-progress": LeastProgressVictim,
}
