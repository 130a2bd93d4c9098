"""Load-balancing routers: where an arriving request goes among identical instances.

* `RoundRobinRouting` (in `servegym.envs.core.decisions`): instances in turn.
* `RandomRouting`: uniformly at random (from the policy's generator).
* `JoinShortestQueue`: the fewest waiting requests (Winston, 1977), ties by fewest in
  service, then index.
* `LeastOutstandingRequests`: the fewest requests waiting, running or swapped (Vidur's
  "LOR" global scheduler, Agrawal et al., MLSys 2024).
* `LeastKVLoad`: the highest Llumnix freeness (Sun et al., OSDI 2024):
  (free KV blocks - blocks the queued requests will need on admission) / max(1, batch size),
  i.e. how many decode iterations the instance can sustain before it must preempt.
* `PowerOfTwoChoices`: two distinct instances at random, the one with fewer outstanding
  requests (Mitzenmacher, 2001); ties to the first drawn.

All read instance state as of the arrival (the simulator advances decode runs first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from servegym.envs.protocol import Decision

if TYPE_CHECKING:
    from servegym.envs.core.instance import Instance


def outstanding(instance: Instance) -> int:
    return len(instance.waiting) + len(instance.running) + len(instance.swapped)


def freeness(instance: Instance) -> float:
    """Llumnix's freeness: free blocks left after the queue's demand, per running request."""
    bm = instance.bm
    demand = sum(bm.blocks_for(r.prompt_len + r.num_generated) for r in instance.waiting)
    demand += sum(r.swapped_blocks for r in instance.swapped)
    return (bm.num_free - demand) / max(1, len(instance.running))


class _Seeded:
    def __init__(self) -> None:
        self._rng: np.random.Generator | None = None

    def reset(self, rng: np.random.Generator | None = None) -> None:
        self._rng = rng

    def rng(self) -> np.random.Generator:
        if self._rng is None:
            raise RuntimeError(f"{type(self).__name__}: call reset(rng) before deciding")
        return self._rng


class RandomRouting(_Seeded):
    def decide(self, decision: Decision) -> int:
        return int(self.rng().integers(len(decision.candidates)))


class JoinShortestQueue:
    def decide(self, decision: Decision) -> int:
        instances = decision.candidates
        return min(range(len(instances)), key=lambda i: (
            len(instances[i].waiting), len(instances[i].running) + len(instances[i].swapped)))


class LeastOutstandingRequests:
    def decide(self, decision: Decision) -> int:
        instances = decision.candidates
        return min(range(len(instances)), key=lambda i: outstanding(instances[i]))


class LeastKVLoad:
    def decide(self, decision: Decision) -> int:
        instances = decision.candidates
        return max(range(len(instances)), key=lambda i: (freeness(instances[i]), -i))


class PowerOfTwoChoices(_Seeded):
    def decide(self, decision: Decision) -> int:
        instances = decision.candidates
        if len(instances) < 2:
            return 0
        first, second = (int(i) for i in self.rng().choice(len(instances), 2, replace=False))
        return second if outstanding(instances[second]) < outstanding(instances[first]) else first
