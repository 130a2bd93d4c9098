"""Heuristics for a disaggregated cluster: which prefill instance, which decode instance.

Prefill/decode disaggregation (Y. Zhong et al., "DistServe: Disaggregating Prefill and
Decoding for Goodput-optimized Large Language Model Serving", OSDI 2024; P. Patel et al.,
"Splitwise", ISCA 2024) asks two decisions per request (envs/core/disagg.py): ROUTE among
the prefill instances at arrival, and PLACE among the decode instances once the prompt is
done. DistServe's runtime dispatches a request to the prefill instance with the shortest
queue and, after prefill, to the least-loaded decode instance; these are those rules:

* `LeastPrefillTokens` (ROUTE): the prefill instance with the fewest outstanding prefill
  tokens (prompt tokens not yet computed, of its waiting and running requests), ties by
  fewest queued requests, then the lowest index.
* `MostFreeKVPlacement` (PLACE; the simulator's default, envs/core/disagg.py): the
  decode instance with the most free KV blocks among those with room now; ties: lowest
  index.
* `LeastRunningPlacement` (PLACE, load-aware): among decode instances with room now, the
  one with the fewest running (and incoming) requests, ties by most free KV, then index:
  a smaller decode batch is a shorter TPOT.
* `FirstFitPlacement` (PLACE, a baseline that packs): the lowest-indexed decode instance
  with room, which fills one instance before the next.

All read the views only (instances' queues and `bm`), as of the decision.
"""

from __future__ import annotations

from servegym.envs.core.disagg import MostFreeKVPlacement
from servegym.envs.protocol import Decision, InstanceView


def prefill_backlog(instance: InstanceView) -> int:
    """Prompt tokens an instance still has to compute (waiting and running requests)."""
    total = 0
    for request in instance.waiting:
        total += request.prompt_len + request.num_generated - request.num_computed
    for request in instance.running:
        left = request.prompt_len - request.num_computed
        if left > 0:
            total += left
    return total


class LeastPrefillTokens:
    """ROUTE: the fewest outstanding prefill tokens (module docstring)."""

    def decide(self, decision: Decision) -> int:
        best, key = 0, None
        for index, instance in enumerate(decision.candidates):
            value = (prefill_backlog(instance), len(instance.waiting) + len(instance.running))
            if key is None or value < key:
                best, key = index, value
        return best


class LeastRunningPlacement:
    """PLACE: the fewest running requests among decode instances with room."""

    reads_token_state = False  # queue lengths and bm only (envs/core/decisions.py)

    def decide(self, decision: Decision) -> int:
        request = decision.request
        best, key = -1, None
        for index, instance in enumerate(decision.candidates):
            if not instance.can_receive(request):
                continue
            load = len(instance.running) + len(getattr(instance, "incoming", ())) + \
                len(instance.waiting)
            value = (load, -instance.bm.num_free)
            if key is None or value < key:
                best, key = index, value
        return best


class FirstFitPlacement:
    """PLACE: the lowest-indexed decode instance with room."""

    reads_token_state = False  # queue lengths and bm only (envs/core/decisions.py)

    def decide(self, decision: Decision) -> int:
        request = decision.request
        for index, instance in enumerate(decision.candidates):
            if instance.can_receive(request):
                return index
        return -1


__all__ = ["FirstFitPlacement", "LeastPrefillTokens", "LeastRunningPlacement",
           "MostFreeKVPlacement", "prefill_backlog"]
