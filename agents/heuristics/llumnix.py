"""Llumnix's migration policies: answers to MIGRATE decisions (live migration).

Llumnix (B. Sun et al., "Llumnix: Dynamic Scheduling for Large Language Model Serving",
OSDI 2024; the rules as its public code states them: `global_scheduler/migration_policy.py`,
`load_computation.py`, `llumlet/local_migration_scheduler.py`, github.com/AlibabaPAI/llumnix)
schedules by each instance's **virtual usage**: the KV blocks it uses plus the blocks its
queue will need, plus headroom reserved for high-priority requests; its **freeness** is
`(capacity - virtual usage) / max(1, batch size)`, roughly how many decode iterations the
instance can sustain before it must preempt. A periodic pass pairs the least free
instances (sources) with the freest (destinations) and moves one request per pair; the
request is the source's shortest running one (Llumnix's default `SR`: the fewest blocks,
the cheapest to move).

* `NeverMigrate` ("migrate-never", the default, envs/core/decisions.py): STOP.
* `VirtualUsageBalance` ("migrate-balance"): source = the least free instance, destination
  = the freest that can take the request; migrate only if the source's freeness is below
  `busy_freeness` and the move narrows the gap without inverting it (Llumnix's `Balanced`
  pairing check: 0 < freeness gap after < gap before).
* `Defragmentation` ("migrate-defrag"): an instance whose waiting head does not fit in its
  free KV is the source (the most blocks short first); the request moved is the smallest
  decoding one whose blocks cover the shortfall alone (else the largest), to the freest
  instance that can take it: room is made for the queued large request (Llumnix's
  de-fragmentation: the queue head's demand counted in the virtual usage).
* `PriorityHeadroom` ("migrate-priority-headroom"): `VirtualUsageBalance` whose virtual
  usage adds `headroom` x capacity for every urgent request (priority value below the
  least urgent class present; lower is more urgent, vLLM's convention) running or waiting
  on the instance, and which moves normal-priority requests first: instances serving
  urgent requests are kept lightly loaded. With one priority class it is
  `VirtualUsageBalance`.

All read the views only (instances' queues and KV counts, requests' lengths and priorities).
`VirtualUsageBalance` and `Defragmentation` answer with as few passes over the candidates
as their rules allow (none when no instance is busy or short; else the source's, found by
slicing when the candidates come instance by instance, as the simulator lists them);
tests/test_migration_policies.py holds every answer of loaded runs to the rules' plain
statement.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from servegym.envs.core.migration import queue_demand, virtual_freeness
from servegym.envs.protocol import STOP, Action, Decision

_instance_of = attrgetter("instance")
_blocks_of = attrgetter("num_blocks")


def _indices_on(owners: list[int], source: int) -> list[int]:
    """The positions of `source` in `owners` (the candidates' instances), ascending: one
    slice where they are contiguous (the simulator lists candidates instance by
    instance), else a scan."""
    count = owners.count(source)
    if not count:
        return []
    first = owners.index(source)
    if owners[first + count - 1] == source and \
            owners[first:first + count].count(source) == count:
        return list(range(first, first + count))
    return [index for index, owner in enumerate(owners) if owner == source]


def _by_source(decision: Decision) -> dict[int, list[int]]:
    """Candidate indices grouped by their request's instance."""
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(decision.candidates):
        groups.setdefault(request.instance, []).append(index)
    return groups


def _fits(decision: Decision, request: Any, target: Any) -> bool:
    return target.index != request.instance and target.can_receive(request)


class NeverMigrate:
    """Migrate nothing."""

    def decide(self, decision: Decision) -> int:
        return STOP


class VirtualUsageBalance:
    """Llumnix's load balancing over virtual usage (module docstring)."""

    def __init__(self, busy_freeness: float = 64.0, prefer: str = "shortest") -> None:
        if not busy_freeness > 0:
            raise ValueError(f"busy_freeness is blocks per running request, > 0; got "
                             f"{busy_freeness!r}")
        if prefer not in ("shortest", "longest"):
            raise ValueError(f"prefer is 'shortest' (Llumnix's SR, the cheapest to move) or "
                             f"'longest' (the most load per move), got {prefer!r}")
        self.busy_freeness = float(busy_freeness)
        self.prefer = prefer

    def extra_usage(self, instance: Any, urgent_below: int | None) -> float:
        return 0.0

    def order(self, decision: Decision, indices: list[int],
              urgent_below: int | None) -> list[int]:
        """The source's candidates in the order they are tried: fewest blocks first."""
        candidates = decision.candidates
        blocks = [_blocks_of(candidates[i]) for i in indices]
        if self.prefer == "longest":
            blocks = [-b for b in blocks]
        # `indices` ascend, so a stable sort by blocks breaks ties by index.
        return [indices[j] for j in sorted(range(len(indices)), key=blocks.__getitem__)]

    def urgent_below(self, decision: Decision) -> int | None:
        return None

    def decide(self, decision: Decision) -> int | Action:
        # The rule of the module docstring, in as few passes over the candidates as it
        # allows (one, for the source's, or none when no instance is busy): source = the
        # least free instance among the candidates' (ties: lowest index), so instances are
        # tried in order of freeness and the first with a candidate is it; STOP as soon
        # as one at or above `busy_freeness` comes first. Each instance's usage is summed
        # once; every freeness is computed with the expression `virtual_freeness` uses.
        candidates = decision.candidates
        if not candidates:
            return STOP
        instances = decision.cluster.instances
        urgent = self.urgent_below(decision)
        extra = [self.extra_usage(i, urgent) for i in instances]
        base = [i.bm.num_used + queue_demand(i) for i in instances]  # usage before `extra`
        free = [(i.bm.num_blocks - (base[t] + extra[t])) / max(1, len(i.running))
                for t, i in enumerate(instances)]
        busy = self.busy_freeness
        source = -1
        indices: list[int] = []
        owners: list[int] | None = None
        for s in sorted(range(len(instances)), key=lambda t: (free[t], t)):
            if free[s] >= busy:
                return STOP
            if owners is None:
                owners = list(map(_instance_of, candidates))
            indices = _indices_on(owners, s)
            if indices:
                source = s
                break
        if source < 0:
            return STOP
        targets = sorted((t for t in range(len(instances)) if t != source),
                         key=lambda t: (-free[t], t))
        if not targets or free[targets[0]] - free[source] <= 0:
            return STOP  # no target is freer than the source: every request would stop
        origin = instances[source]
        origin_size = max(1, len(origin.running))
        for index in self.order(decision, indices, urgent):
            request = candidates[index]
            blocks = request.num_blocks
            for target in targets:
                gap = free[target] - free[source]
                if gap <= 0:
                    break
                instance = instances[target]
                if not _fits(decision, request, instance):
                    continue
                after_source = (origin.bm.num_blocks - (base[source] + (extra[source] - blocks))
                                ) / origin_size
                after_target = (instance.bm.num_blocks - (base[target] + (extra[target] + blocks))
                                ) / max(1, len(instance.running))
                if 0 < after_target - after_source < gap:
                    return Action(index, target=target)
                break  # the freest fitting target does not help: try a smaller request
        return STOP


class Defragmentation:
    """Make room for a queued request that does not fit (module docstring)."""

    def decide(self, decision: Decision) -> int | Action:
        # Sources are the short instances among the candidates' (no pass over the
        # candidates when no instance is short), most blocks short first.
        candidates = decision.candidates
        if not candidates:
            return STOP
        instances = decision.cluster.instances
        short: list[tuple[int, int]] = []  # (blocks short, instance)
        for source, instance in enumerate(instances):
            if not instance.waiting:
                continue
            head = instance.waiting[0]
            bm = instance.bm
            need = bm.blocks_for(head.prompt_len + head.num_generated) + \
                instance.watermark_blocks - bm.num_free
            if need > 0:
                short.append((need, source))
        if not short:
            return STOP
        owners = list(map(_instance_of, candidates))
        present = set(owners)
        short = [item for item in short if item[1] in present]
        if not short:
            return STOP
        short.sort(key=lambda item: (-item[0], item[1]))
        free = [virtual_freeness(i) for i in instances]
        for need, source in short:
            indices = _indices_on(owners, source)
            covering = sorted((i for i in indices if candidates[i].num_blocks >= need),
                              key=lambda i: (candidates[i].num_blocks, i))
            rest = sorted((i for i in indices if candidates[i].num_blocks < need),
                          key=lambda i: (-candidates[i].num_blocks, i))
            targets = sorted((t for t in range(len(instances)) if t != source),
                             key=lambda t: (-free[t], t))
            for index in covering + rest:
                for target in targets:
                    if free[target] <= free[source]:
                        break
                    if _fits(decision, candidates[index], instances[target]):
                        return Action(index, target=target)
        return STOP


class PriorityHeadroom(VirtualUsageBalance):
    """Virtual usage with headroom for urgent requests (module docstring)."""

    def __init__(self, busy_freeness: float = 64.0, headroom: float = 0.15) -> None:
        super().__init__(busy_freeness)
        if not 0 <= headroom <= 1:
            raise ValueError(f"headroom is a fraction of an instance's KV blocks per urgent "
                             f"request, in [0, 1]; got {headroom!r}")
        self.headroom = float(headroom)

    def urgent_below(self, decision: Decision) -> int | None:
        classes = {r.priority for i in decision.cluster.instances for r in i.running}
        classes.update(r.priority for i in decision.cluster.instances for r in i.waiting)
        return max(classes) if len(classes) > 1 else None

    def extra_usage(self, instance: Any, urgent_below: int | None) -> float:
        if urgent_below is None:
            return 0.0
        urgent = sum(1 for r in instance.running if r.priority < urgent_below)
        urgent += sum(1 for r in instance.waiting if r.priority < urgent_below)
        return min(1.0, self.headroom * urgent) * instance.bm.num_blocks

    def order(self, decision: Decision, indices: list[int],
              urgent_below: int | None) -> list[int]:
        candidates = decision.candidates
        if urgent_below is None:
            return super().order(decision, indices, urgent_below)
        return sorted(indices, key=lambda i: (candidates[i].priority < urgent_below,
                                              candidates[i].num_blocks, i))


__all__ = ["Defragmentation", "NeverMigrate", "PriorityHeadroom", "VirtualUsageBalance",
           "queue_demand", "virtual_freeness"]
