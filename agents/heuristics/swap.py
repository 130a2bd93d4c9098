"""Cost-aware recompute-versus-swap preemption (FastSwitch's argument).

Shen et al., "FastSwitch: Optimizing Context Switching Efficiency in Fairness-aware Large
Language Model Serving", 2024, argue that swapping a victim's KV to host memory beats
recomputing it whenever the transfer is cheaper than the recomputation. The victim is picked by
`victim` (a rule of `servegym.agents.heuristics.preemption.VICTIM_RULES`, default vLLM's latest
arrival); then it is swapped when

    2 * cost.swap_time(victim.num_blocks)            (out now, back in later)
      <  recompute time of its num_computed tokens,

where the recompute time is what a prefill chunk of that many tokens adds to an iteration of
the current decode batch: `iteration_time([(t, 0)], n, S) - iteration_time([], n, S)` with the
running batch's n decodes and context S. Swapping needs swap space (`swap_space_blocks > 0`)
with room for the victim; otherwise the victim is recomputed. `always=True` swaps whenever
possible (the comparison point without the cost test).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from servegym.agents.heuristics.preemption import VICTIM_RULES
from servegym.envs.protocol import Action, Decision

if TYPE_CHECKING:
    from servegym.envs.core.request import Request


class CostAwareSwap:
    def __init__(self, victim: str = "latest", always: bool = False) -> None:
        if victim not in VICTIM_RULES:
            raise ValueError(
                f"unknown victim rule {victim!r}; choose one of {sorted(VICTIM_RULES)}"
            )
        self.victim = victim
        self.rule = VICTIM_RULES[victim]()
        self.always = bool(always)

    def decide(self, decision: Decision) -> Action:
        choice = int(self.rule.decide(decision))
        request = decision.candidates[choice]
        instance = decision.instance
        if not (decision.can_swap() and instance.bm.can_swap_out(request)):
            return Action(choice)
        if self.always:
            return Action(choice, swap=True)
        return Action(choice, swap=swap_is_cheaper(decision, request))


def swap_is_cheaper(decision: Decision, request: Request) -> bool:
    """True when moving `request`'s KV out and back costs less than recomputing it."""
    instance = decision.instance
    cost = instance.cost
    tokens = request.num_computed
    if tokens <= 0:
        return False
    decodes = [r for r in decision.candidates if r is not request
               and r.num_computed == r.prompt_len + r.num_generated - 1 and r.num_generated]
    count = len(decodes)
    context = sum(r.num_computed + 1 for r in decodes)
    recompute = (cost.iteration_time([(tokens, 0)], count, context)
                 - cost.iteration_time([], count, context))
    return 2 * cost.swap_time(request.num_blocks) < recompute
