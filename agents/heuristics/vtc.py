"""Virtual Token Counter fair admission across tenants (Sheng et al., OSDI 2024).

"Fairness in Serving Large Language Models", Algorithm 2, as in its artifact's
`VTCReqQueue` (S-LoRA based):

* Each tenant u has a counter c_u of weighted service: when one of its requests is admitted,
  c_u += input_weight * prompt tokens / w_u; for every token it generates,
  c_u += output_weight / w_u (defaults 1 and 2, the paper's w_p and w_q; w_u = 1 unless
  `tenant_weights` says otherwise).
* Admission takes the earliest waiting request of the waiting tenant with the smallest
  counter; if that request does not fit, admission stops for this iteration.
* Counter lift: a tenant whose queue was empty and that gets a request has its counter raised
  to max(c_u, min over the other waiting tenants' counters), so idling earns no credit.

Adaptation to the decision protocol: policies see the waiting queue only at ADMIT decisions,
so generated tokens are charged (exactly) at the next decision, and a tenant counts as newly
active when it has waiting requests now but had none after the previous decision on the same
instance; newly active tenants are lifted in the order of their earliest waiting request, so
simultaneous arrivals are handled as the artifact handles consecutive ones. A request
re-admitted after a recompute preemption is not charged its prompt again (the recomputation
is the server's cost, not service). Counters are shared by all instances of a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from servegym.envs.core.request import FINISHED
from servegym.envs.protocol import STOP, Decision

if TYPE_CHECKING:
    from servegym.envs.core.request import Request


class VirtualTokenCounter:
    """VTC admission (see the module docstring)."""

    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0,
                 tenant_weights: Mapping[int, float] | None = None) -> None:
        if not (input_weight >= 0 and output_weight >= 0 and input_weight + output_weight > 0):
            raise ValueError("input_weight and output_weight must be >= 0, not both 0")
        weights = dict(tenant_weights or {})
        if any(not w > 0 for w in weights.values()):
            raise ValueError(f"tenant weights must be > 0, got {weights}")
        self.input_weight = float(input_weight)
        self.output_weight = float(output_weight)
        self.tenant_weights = weights
        self.reset()

    def reset(self, rng: np.random.Generator | None = None) -> None:
        self.counters: dict[int, float] = {}
        self._charged: dict[int, list] = {}  # rid -> [request, tokens already charged]
        self._active: dict[int, set[int]] = {}  # instance -> tenants waiting after last decision

    def counter(self, tenant: int) -> float:
        return self.counters.get(tenant, 0.0)

    def decide(self, decision: Decision) -> int:
        self._charge_outputs()
        waiting = decision.candidates
        heads: dict[int, int] = {}
        counts: dict[int, int] = {}
        for index, request in enumerate(waiting):
            tenant = request.tenant
            if tenant not in heads:
                heads[tenant] = index
                counts[tenant] = 0
            counts[tenant] += 1
        self._lift_new_tenants(decision.instance.index, heads, waiting)
        order = sorted(heads, key=lambda t: (self.counter(t), heads[t]))
        instance = decision.instance
        chosen = heads[order[0]]
        if not instance.can_admit(waiting[chosen]):
            if decision.can_stop():
                self._active[instance.index] = set(heads)
                return STOP
            fitting = [i for i in range(len(waiting)) if instance.can_admit(waiting[i])]
            chosen = min(fitting, key=lambda i: (self.counter(waiting[i].tenant), i))
        tenant = waiting[chosen].tenant
        self._charge_admission(waiting[chosen])
        remaining = set(heads) if counts[tenant] > 1 else set(heads) - {tenant}
        self._active[instance.index] = remaining
        return chosen

    def _weight(self, tenant: int) -> float:
        return self.tenant_weights.get(tenant, 1.0)

    def _charge_admission(self, request: Request) -> None:
        if request.rid in self._charged:
            return  # re-admission after a preemption
        tenant = request.tenant
        self.counters[tenant] = (self.counter(tenant)
                                 + self.input_weight * request.prompt_len / self._weight(tenant))
        self._charged[request.rid] = [request, request.num_generated]

    def _charge_outputs(self) -> None:
        done = []
        for rid, entry in self._charged.items():
            request, charged = entry
            new = request.num_generated - charged
            if new:
                tenant = request.tenant
                self.counters[tenant] = (self.counter(tenant)
                                         + self.output_weight * new / self._weight(tenant))
                entry[1] = request.num_generated
            if request.status == FINISHED:
                done.append(rid)
        for rid in done:
            del self._charged[rid]

    def _lift_new_tenants(self, instance: int, heads: dict[int, int],
                          waiting: list[Request]) -> None:
        before = self._active.get(instance, set())
        active = [t for t in heads if t in before]
        newcomers = sorted((t for t in heads if t not in before),
                           key=lambda t: (waiting[heads[t]].arrival_time, heads[t]))
        for tenant in newcomers:
            if active:
                floor = min(self.counter(t) for t in active)
                self.counters[tenant] = max(self.counter(tenant), floor)
            active.append(tenant)
