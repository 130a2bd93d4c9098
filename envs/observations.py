"""Fixed-size observations and action masks for the serving envs.

Action layout (every env): `Discrete(2K + 1)`.
    a in [0, K)    choose candidate slot a
    a in [K, 2K)   swappable kinds (PREEMPT): choose slot a - K and swap it to host memory
    a == 2K        stoppable kinds (ADMIT): STOP, no more admissions this iteration

The encoding of a decision follows its kind's `KindSpec` (envs/protocol.py), not its name:
`candidates` "waiting" gets the ADMIT slots below, "running" the PREEMPT slots, "instances"
(arity 1) the instance slots, and `receives_kv` kinds the room features 9-10 and the
`Decision.mask` of the instances; so a new kind of an existing candidate set needs no edit
here (an arity-2 kind needs an encoding of its pairs, and says so). `candidates`
"options" (a fixed menu of answers, each a number or None: RETAIN's retention menu) gets
the option slots below, one slot per option in menu order (K >= the menu's length).
The one arity-2 kind, MIGRATE ("running", the cluster's decoding requests), gets
PREEMPT-style request slots of one source, each slot a (request, target) pair:
    MIGRATE  the source is the least free instance (Llumnix's freeness: free KV blocks
             after its queue's demand, per running request) among those with a request
             some other instance can take; its slots are up to K of those requests drawn
             as PREEMPT's (`preempt_keys`), each paired with the freest instance (the same
             freeness, ties: lowest index) that can take it (`Decision.target_mask`):
             Llumnix's destination. STOP: migrate nothing. Global features are the
             source's, 13-14 the source's and the freest instance's freeness; the kind
             one-hot is all zero; slot features 21-22 say what the move does.

Candidate slots (candidate sets, observation layout version `OBS_LAYOUT_VERSION`):
    ADMIT    up to K waiting requests that fit into the batch now, drawn round-robin from
             several rankings (`admit_keys`, default oldest, shortest prefill, shortest
             prefill among requests still able to meet their TTFT target (then the late
             ones), shortest output, least TTFT slack among those still on time): slot i
             takes the best request under key i mod n
             that no earlier slot holds, so the pick of every such rule is visible whatever
             the queue length. Each slot shows the key that chose it (its role).
    PREEMPT  up to K running requests drawn the same way from `preempt_keys` (default
             newest = vLLM's victim, most KV blocks, least progress, longest remaining)
    ROUTE    the instances, by index (K >= number of instances); a disaggregated
             cluster's prefill instances only (envs/core/disagg.py)
    PLACE    a disaggregated cluster's decode instances, by index; valid: those with
             room for the request's KV now (`Decision.mask`)
    RETAIN   the menu's options, in order (candidate set "options"; every one valid)
Sort keys (ties: queue order): see `ADMIT_KEYS` and `PREEMPT_KEYS`. `admit_keys=("oldest",)`
gives the first K fitting requests in queue order (layout version 1's candidates).

Observation: float32 vector of length `GLOBAL + K * SLOT`, every entry in [-1, 1].
Counts and lengths are squashed as x / (x + scale) so they stay bounded without clipping.

Global features (the deciding instance; for ROUTE, the cluster):
    0  waiting requests         squash(n, max_num_seqs)
    1  running requests         n / max_num_seqs
    2  swapped requests         squash(n, 8)
    3  KV blocks free           fraction of capacity
    4  KV blocks used           fraction of capacity
    5  batch tokens so far      fraction of max_num_batched_tokens
    6  batch sequences so far   fraction of max_num_seqs
    7  recent arrival rate      squash(arrivals in the last 10 s / 10, rate_scale)
    8  progress                 requests arrived / requests in the episode
    9  requests in system       squash(n, max_num_seqs)
    10-12 decision kind         one-hot ROUTE, ADMIT, PREEMPT; all 0: PLACE, RETAIN and
                                later kinds (added after layout 3, kept out of the one-hot
                                so that layout's features keep their positions and meaning)
    13 request prompt length    squash(tokens, 1024)  (ROUTE: arriving; PREEMPT: short of KV;
                                RETAIN: the call that finished)
    14 request output estimate  squash(tokens, 256)
    15 request prefix hits      cached fraction of its prompt blocks (ROUTE: best instance)
    MIGRATE (no request): 13 the source's freeness, 14 the freest instance's, each
    signed_squash(freeness, FREENESS_SCALE); 15 0

Slot features for requests (ADMIT, PREEMPT):
    0 valid  1 prompt squash(tokens, 1024)  2 tokens done / tokens  3 output estimate
    squash(tokens, 256)  4 time since arrival squash(s, ttft target)  5 TTFT slack
    clip((target - waited) / target, -1, 1), 1 once the first token is out  6 prefix-cache
    hit fraction (ADMIT) or KV blocks held / capacity (PREEMPT)  7 tenant / tenants
    8 priority squash(p, 4)  9-14 role: one-hot index of the sort key that chose the slot
    15-20 rank under each sort key: 1 / (1 + position) in that key's ranking of the
    candidates (1 = that rule's pick), 0 beyond its first K (why: lengths squashed to
    [0, 1) differ by ~1e-4 between long prompts, so "the shortest" must be said outright;
    the shared scorer sees no slot positions)
    21-22 MIGRATE's pair (layout 4): the freeness gap (target minus source) after the move
    and before it, each signed_squash(gap, FREENESS_SCALE), with the source's and the
    target's usage changed by the request's blocks as Llumnix's balance check computes
    them (migrate-balance moves when 0 < gap after < gap before); 0 for other kinds
Slot features for instances (ROUTE, PLACE):
    0 valid  1 waiting squash(n, max_num_seqs)  2 running / max_num_seqs  3 KV used fraction
    4 queued prompt tokens squash(tokens, budget)  5 prefix hit fraction for the arriving
    request  6 swapped squash(n, 8)  7 outstanding requests squash(n, max_num_seqs)
    8 pool index / (pools - 1), 0 with one pool (envs/core/cluster.py)
    9 receives_kv kinds (PLACE): the instance has room for the request now (1) or not
    (0); ROUTE: 0  10 receives_kv kinds: free KV fraction left after taking the
    request's blocks; ROUTE: 0  11-22 0
Slot features for options ("options": RETAIN's menu; the decision's request is the call
that finished, its features are the same in every slot):
    0 valid  1 the option's value squashed: squash(ttl, 10) (0 for None and 0.0)
    2 the option is None (release now)  3 the option is 0.0 (leave to LRU)
    4 the request's full prompt blocks / KV capacity (what a pin holds)
    5 the request's turn squash(turn, 8)  6 its program's remaining critical path
    squash(calls, 4)  7 the option's value / the menu's largest  8 0
    9-14 the tool kind that follows the request, one-hot (kinds 0-5; none for -1 or >= 6)
    15-22 0
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from servegym.envs.protocol import STOP, Action, Decision, DecisionKind

if TYPE_CHECKING:
    from servegym.envs.core.instance import Instance
    from servegym.envs.core.request import Request
    from servegym.envs.core.simulator import Simulator

GLOBAL_FEATURES = 16
BASE_SLOT_FEATURES = 9
MAX_ROLES = 6  # sort keys per decision kind
PAIR_FEATURES = 2  # MIGRATE's (request, target) pair: the freeness gap after and before
SLOT_FEATURES = BASE_SLOT_FEATURES + 2 * MAX_ROLES + PAIR_FEATURES  # + role, rank per key
# saved with every agent; an agent of another layout is refused. 4: MIGRATE's targets by
# Llumnix's freeness, its freeness features (global 13-14, slot 21-22).
OBS_LAYOUT_VERSION = 4
# Blocks per running request that map to 0.5 in signed_squash (Llumnix's busy freeness).
FREENESS_SCALE = 64.0
DEFAULT_ADMIT_KEYS = ("oldest", "shortest_prefill", "shortest_prefill_on_time",
                      "shortest_output", "least_slack_on_time")
DEFAULT_PREEMPT_KEYS = ("newest", "most_blocks", "least_progress", "longest_remaining")
RATE_WINDOW_S = 10.0
NO_PAIR = (0.0,) * PAIR_FEATURES  # slot features 21-22 of every kind but MIGRATE
# Slot features 9-14 of a request slot: the role's one-hot rows (immutable).
ROLE_ONE_HOT = tuple(tuple(float(i == role) for i in range(MAX_ROLES)) for role in range(MAX_ROLES))


def squash(value: float, scale: float) -> float:
    return value / (value + scale) if value > 0 else 0.0


def signed_squash(value: float, scale: float) -> float:
    """value / (|value| + scale): in (-1, 1), the sign kept (freeness can be negative)."""
    return value / (abs(value) + scale)


def _ttft_deadline(encoder: ObservationEncoder, request: Request) -> float:
    target = request.ttft_slo if request.ttft_slo < math.inf else encoder.default_ttft_slo
    return request.arrival_time + target


# Added to a key's value for a request already past its TTFT deadline without a first
# token: it ranks after every request that can still meet its target (the late-last
# split of agents/heuristics/base.py's RankedAdmission), and among them by the same key.
# 1e9: above any prompt length or simulated deadline, yet small enough that float64 keeps
# deadlines apart to ~1e-7 s after the offset (1e15 would round them to 0.125 s).
LATE_OFFSET = 1e9


def _deadline_on_time(deadline: float, request: Request, now: float) -> float:
    """`least_slack_on_time`'s value: the TTFT deadline, behind LATE_OFFSET once it passed
    without a first token (the keys are inlined: the encoder ranks every fitting request
    under every key at every ADMIT decision)."""
    return deadline + LATE_OFFSET if not request.num_generated and deadline < now \
        else deadline


# Sort keys: (encoder, request, decision) -> value, smallest first; ties keep queue order.
ADMIT_KEYS: dict[str, Callable[[ObservationEncoder, Request, Decision], float]] = {
    "oldest": lambda enc, r, d: 0.0,  # queue order (recompute-preempted first, then arrival)
    "shortest_prefill": lambda enc, r, d: r.prompt_len + r.num_generated - r.num_computed,
    "shortest_output": lambda enc, r, d: enc.output_estimate(r),
    "shortest_remaining": lambda enc, r, d: enc.output_estimate(r) - r.num_generated,
    "least_slack": lambda enc, r, d: _ttft_deadline(enc, r),
    # the late-last variants: what spf-late-last and edf-late-last pick
    "shortest_prefill_on_time": lambda enc, r, d: (
        r.prompt_len + r.num_generated - r.num_computed + (
            LATE_OFFSET if not r.num_generated and r.arrival_time + (
                r.ttft_slo if r.ttft_slo < math.inf else enc.default_ttft_slo) < d.time
            else 0.0)),
    "least_slack_on_time": lambda enc, r, d: _deadline_on_time(
        r.arrival_time + (r.ttft_slo if r.ttft_slo < math.inf else enc.default_ttft_slo),
        r, d.time),
    "most_prefix_hits": lambda enc, r, d: -d.instance.bm.count_prefix_hits(r)[0],
    "highest_priority": lambda enc, r, d: r.priority,  # lower value = more urgent (vLLM)
}
PREEMPT_KEYS: dict[str, Callable[[ObservationEncoder, Request, Decision], float]] = {
    "newest": lambda enc, r, d: 0.0,  # most recently admitted first (vLLM's victim)
    "most_blocks": lambda enc, r, d: -r.num_blocks,
    "least_progress": lambda enc, r, d: r.num_computed,
    "longest_remaining": lambda enc, r, d: -(enc.output_estimate(r) - r.num_generated),
    "lowest_priority": lambda enc, r, d: -r.priority,
}


# Keys whose ranking is the candidates' own order: nothing to sort.
QUEUE_ORDER_KEYS = (ADMIT_KEYS["oldest"], PREEMPT_KEYS["newest"])
# Keys that `_KeyColumns` ranks with inlined expressions (the same values as the lambdas):
# lambda -> its name. The others (most_prefix_hits) are ranked from the lambdas.
COLUMN_KEYS: dict[Callable[..., float], str] = {
    **{ADMIT_KEYS[name]: name for name in (
        "shortest_prefill", "shortest_output", "shortest_remaining", "least_slack",
        "shortest_prefill_on_time", "least_slack_on_time", "highest_priority")},
    **{PREEMPT_KEYS[name]: name for name in (
        "most_blocks", "least_progress", "longest_remaining", "lowest_priority")},
}


def check_keys(keys: Sequence[str], known: Mapping[str, Any], what: str,
               num_slots: int) -> tuple[str, ...]:
    """Validated sort keys: known names, no repeats, at most MAX_ROLES, at most K."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    unknown = [k for k in keys if k not in known]
    if unknown or not keys:
        raise ValueError(f"{what}={list(keys)}: unknown sort key(s) {unknown}; choose from "
                         f"{sorted(known)}")
    if len(set(keys)) != len(keys) or len(keys) > MAX_ROLES:
        raise ValueError(f"{what}={list(keys)}: give at most {MAX_ROLES} distinct keys")
    if num_slots < len(keys):
        raise ValueError(f"num_slots={num_slots} is smaller than the {len(keys)} sort keys of "
                         f"{what}; every key needs a slot: raise num_slots or drop keys")
    return keys


def round_robin_slots(rankings: Sequence[Sequence[int]], num_slots: int
                      ) -> tuple[list[int], list[int]]:
    """(slots, roles): slot i takes the best not-yet-taken candidate of ranking i mod n."""
    slots: list[int] = []
    roles: list[int] = []
    taken: set[int] = set()
    iterators = [iter(ranking) for ranking in rankings]
    live = list(range(len(rankings)))  # rankings that gave a slot last round
    while live and len(slots) < num_slots:
        still = []
        for role in live:
            if len(slots) == num_slots:
                break
            for index in iterators[role]:  # resumes after the last one it gave
                if index not in taken:
                    taken.add(index)
                    slots.append(index)
                    roles.append(role)
                    still.append(role)
                    break
        live = still  # a ranking that gave nothing has nothing left untaken
    return slots, roles


class _KeyColumns:
    """One decision's candidates (`indices`) ranked under the keys of `COLUMN_KEYS` with the
    keys' expressions inlined into one list comprehension each (no call per request and
    key) and a stable sort of positions by value (CPython compares all-float or all-int
    keys without the generic comparison) instead of a heap or sort of (value, index)
    pairs. Same values as the lambdas (the same expressions) and the same order: positions
    follow ascending candidate index, and a stable sort breaks ties by position as the
    pairs break them by index; for values without NaN both are the one total order. A key
    whose values sum to NaN (a NaN value, or infinities of both signs) is left to the pairs
    (`ranking` returns None): NaN does not order the same way in the two sorts."""

    __slots__ = ("encoder", "requests", "order", "now", "deadlines")

    def __init__(self, encoder: ObservationEncoder, candidates: Sequence[Request],
                 indices: list[int], now: float) -> None:
        self.encoder = encoder
        order = indices if not indices or indices[0] <= indices[-1] else sorted(indices)
        self.order = order
        self.requests = [candidates[i] for i in order]
        self.now = now
        self.deadlines: list[float] | None = None

    def deadline(self) -> list[float]:
        """TTFT deadlines (`_ttft_deadline`), computed once per decision."""
        if self.deadlines is None:
            default = self.encoder.default_ttft_slo
            self.deadlines = [r.arrival_time + (r.ttft_slo if r.ttft_slo < math.inf
                                                else default) for r in self.requests]
        return self.deadlines

    def values(self, name: str) -> list[float]:
        requests = self.requests
        if name == "shortest_prefill":
            return [r.prompt_len + r.num_generated - r.num_computed for r in requests]
        if name == "shortest_output":
            return list(map(self.encoder.output_estimate, requests))
        if name == "shortest_remaining":
            estimate = self.encoder.output_estimate
            return [estimate(r) - r.num_generated for r in requests]
        if name == "least_slack":
            return self.deadline()
        now = self.now
        if name == "shortest_prefill_on_time":
            return [r.prompt_len + r.num_generated - r.num_computed + (
                LATE_OFFSET if not r.num_generated and deadline < now else 0.0)
                for r, deadline in zip(requests, self.deadline(), strict=True)]
        if name == "least_slack_on_time":
            return [deadline + LATE_OFFSET if not r.num_generated and deadline < now
                    else deadline for r, deadline in zip(requests, self.deadline(), strict=True)]
        if name == "highest_priority":
            return [r.priority for r in requests]
        if name == "most_blocks":
            return [-r.num_blocks for r in requests]
        if name == "least_progress":
            return [r.num_computed for r in requests]
        if name == "longest_remaining":
            estimate = self.encoder.output_estimate
            return [-(estimate(r) - r.num_generated) for r in requests]
        if name == "lowest_priority":
            return [-r.priority for r in requests]
        raise AssertionError(f"COLUMN_KEYS names {name!r} but _KeyColumns has no values")

    def ranking(self, sort: Callable[..., float], k: int) -> list[int] | None:
        """The first k candidate indices under `sort`, or None: rank with the pairs."""
        name = COLUMN_KEYS.get(sort)
        if name is None or not self.order:
            return None
        values = self.values(name)
        total = sum(values)
        if total != total:  # NaN
            return None
        best = sorted(range(len(values)), key=values.__getitem__)[:k]
        order = self.order
        return [order[p] for p in best]


class ObservationEncoder:
    """Turns a decision into (observation, mask, slot -> candidate index)."""

    def __init__(self, num_slots: int, default_ttft_slo: float, rate_scale: float,
                 output_estimate: Any, admit_keys: Sequence[str] = DEFAULT_ADMIT_KEYS,
                 preempt_keys: Sequence[str] = DEFAULT_PREEMPT_KEYS) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.num_slots = num_slots
        self.admit_keys = check_keys(admit_keys, ADMIT_KEYS, "admit_keys", num_slots)
        self.preempt_keys = check_keys(preempt_keys, PREEMPT_KEYS, "preempt_keys", num_slots)
        self._admit_sorts = [ADMIT_KEYS[k] for k in self.admit_keys]
        self._preempt_sorts = [PREEMPT_KEYS[k] for k in self.preempt_keys]
        self.slot_roles: list[int] = []
        self.slot_ranks: list[list[float]] = []  # per slot: 1 / (1 + position) under each key
        self._reciprocal_ranks = tuple(1.0 / (1 + p) for p in range(num_slots))
        self.size = GLOBAL_FEATURES + num_slots * SLOT_FEATURES
        self.num_actions = 2 * num_slots + 1
        self.stop_action = 2 * num_slots
        self.default_ttft_slo = default_ttft_slo
        self.rate_scale = rate_scale
        self.output_estimate = output_estimate  # request -> expected output tokens
        self.slot_choice: list[int] = []  # slot -> index into decision.candidates
        self.slot_target: list[int] = []  # arity 2 (MIGRATE): slot -> target instance
        self.pair_index: list[int] = []
        self.slot_pairs: list[tuple[float, float]] = []  # arity 2: slot features 21-22
        self.pair_globals = [0.0, 0.0]  # arity 2: global features 13-14
        self.mask = np.zeros(self.num_actions, dtype=bool)
        self.buffer = np.zeros(self.size, dtype=np.float32)
        self.episode_requests = 1

    def zeros(self) -> np.ndarray:
        return np.zeros(self.size, dtype=np.float32)

    # ------------------------------------------------------------------ actions
    def to_action(self, action: int, decision: Decision) -> Action:
        k = self.num_slots
        if action == self.stop_action:
            return Action(STOP)
        if decision.kind.spec.arity == 2:
            return Action(self.slot_choice[action], target=self.slot_target[action])
        if action >= k:
            return Action(self.slot_choice[action - k], swap=True)
        return Action(self.slot_choice[action])

    # ------------------------------------------------------------------ encoding
    def encode(self, decision: Decision, sim: Simulator) -> np.ndarray:
        kind = decision.kind
        spec = kind.spec
        mask = self.mask
        mask[:] = False
        if spec.candidates == "waiting":
            slots = self._admit_slots(decision)
            features = self._global(decision.instance, sim, kind, None)
            features += self._request_slots(decision, slots, kind)
            mask[: len(slots)] = True
            mask[self.stop_action] = decision.can_stop()
        elif spec.candidates == "running" and spec.arity == 1:
            slots = self._preempt_slots(decision)
            features = self._global(decision.instance, sim, kind, decision.request)
            features += self._request_slots(decision, slots, kind)
            mask[: len(slots)] = True
            if decision.can_swap():
                bm = decision.instance.bm
                for slot, index in enumerate(slots):
                    mask[self.num_slots + slot] = bm.can_swap_out(decision.candidates[index])
        elif spec.candidates == "running" and spec.arity == 2:
            source, view, slots = self._pair_slots(decision, sim)
            features = self._global(source, sim, kind, None)
            features[13:15] = self.pair_globals
            features += self._request_slots(view, slots, kind, self.slot_pairs) \
                if slots else []
            slots = [self.pair_index[i] for i in slots]
            mask[: len(slots)] = True
            mask[self.stop_action] = decision.can_stop()
        elif spec.candidates == "instances" and spec.arity == 1:
            slots = list(range(len(decision.candidates)))
            features = self._global(None, sim, kind, decision.request)
            features += self._instance_slots(decision, slots)
            if spec.receives_kv:
                mask[: len(slots)] = decision.mask()
            else:
                mask[: len(slots)] = True
            mask[self.stop_action] = decision.can_stop()
        elif spec.candidates == "options" and spec.arity == 1:
            slots = list(range(min(len(decision.candidates), self.num_slots)))
            features = self._global(decision.instance, sim, kind, decision.request)
            features += self._option_slots(decision, slots)
            mask[: len(slots)] = True
        else:
            raise NotImplementedError(
                f"{kind.name}: no observation encoding for candidates={spec.candidates!r} "
                f"of arity {spec.arity}; add one to ObservationEncoder.encode")
        self.slot_choice = slots
        # Slots beyond the candidates are zero-padded.
        buffer = self.buffer
        used = len(features)
        buffer[:used] = features
        buffer[used:] = 0.0
        return buffer.copy()

    def _admit_slots(self, decision: Decision) -> list[int]:
        fits = decision.instance.admissible(decision.candidates)
        fitting = [i for i, fit in enumerate(fits) if fit]
        return self._ranked_slots(decision, fitting, self._admit_sorts)

    def _preempt_slots(self, decision: Decision) -> list[int]:
        newest_first = list(range(len(decision.candidates) - 1, -1, -1))
        return self._ranked_slots(decision, newest_first, self._preempt_sorts)

    def _pair_slots(self, decision: Decision,
                    sim: Simulator) -> tuple[Instance | None, Decision, list[int]]:
        """MIGRATE (module docstring): the source, a view of the decision restricted to
        its movable requests, and the slots (indices into the view's candidates);
        `pair_index` maps them to the decision's candidates, `slot_target` to targets,
        `slot_pairs` gives their features 21-22 and `pair_globals` global 13-14."""
        by_source: dict[int, list[int]] = {}
        for index, request in enumerate(decision.candidates):
            by_source.setdefault(request.instance, []).append(index)
        from servegym.envs.core.migration import queue_demand, virtual_freeness

        instances = sim.instances
        # Llumnix's virtual usage and freeness, as migrate-balance computes them.
        usage = [inst.bm.num_used + queue_demand(inst) for inst in instances]
        free = [virtual_freeness(inst) for inst in instances]
        by_free = sorted(range(len(instances)), key=lambda t: (-free[t], t))
        self.pair_globals = [0.0, signed_squash(free[by_free[0]], FREENESS_SCALE)]
        for source in sorted(by_source, key=lambda s: (free[s], s)):
            movable, targets = [], []
            for index in by_source[source]:
                valid = decision.target_mask(index)
                best = next((t for t in by_free if valid[t]), None)
                if best is not None:
                    movable.append(index)
                    targets.append(best)
            if not movable:
                continue
            view = Decision(decision.kind, decision.time,
                            [decision.candidates[i] for i in movable],
                            instance=instances[source], cluster=sim)
            slots = self._preempt_slots(view)
            self.pair_index = movable
            self.slot_target = [targets[i] for i in slots]
            self.pair_globals[0] = signed_squash(free[source], FREENESS_SCALE)
            self.slot_pairs = [self._pair(view.candidates[i].num_blocks, instances, usage,
                                          free, source, targets[i]) for i in slots]
            return instances[source], view, slots
        self.pair_index, self.slot_target, self.slot_pairs = [], [], []
        view = Decision(decision.kind, decision.time, [], cluster=sim)
        return None, view, []

    @staticmethod
    def _pair(blocks: int, instances: Sequence[Any], usage: list[int], free: list[float],
              source: int, target: int) -> tuple[float, float]:
        """Slot features 21-22: the freeness gap (target - source) after moving `blocks`
        and before, as migrate-balance's check computes them (same denominators)."""
        origin, dest = instances[source], instances[target]
        after_source = (origin.bm.num_blocks - (usage[source] - blocks)) / \
            max(1, len(origin.running))
        after_target = (dest.bm.num_blocks - (usage[target] + blocks)) / \
            max(1, len(dest.running))
        return (signed_squash(after_target - after_source, FREENESS_SCALE),
                signed_squash(free[target] - free[source], FREENESS_SCALE))

    def _ranked_slots(self, decision: Decision, indices: list[int],
                      sorts: Sequence[Callable[..., float]]) -> list[int]:
        """Candidate indices of the slots; `self.slot_roles` gets each slot's key index."""
        if len(sorts) == 1 and sorts[0] in QUEUE_ORDER_KEYS:
            slots = indices[: self.num_slots]  # already in that order
            self.slot_roles = [0] * len(slots)
            self.slot_ranks = [[1.0 / (1 + p)] for p in range(len(slots))]
            return slots
        if len(indices) == 1:
            # A lone candidate (the median ADMIT decision of a busy queue: one request
            # fits) is every key's pick: role 0, rank 1 under each key.
            self.slot_roles = [0]
            self.slot_ranks = [[1.0] * len(sorts)]
            return list(indices)
        candidates = decision.candidates
        k = self.num_slots
        columns = _KeyColumns(self, candidates, indices, decision.time)
        rankings = []
        for sort in sorts:
            if sort in QUEUE_ORDER_KEYS:
                rankings.append(indices)
                continue
            ranking = columns.ranking(sort, k)
            if ranking is None:
                # (value, index) pairs: ties keep queue order. No key needs more than K picks.
                keyed = [(sort(self, candidates[i], decision), i) for i in indices]
                best = heapq.nsmallest(k, keyed) if len(keyed) > k else sorted(keyed)
                ranking = [i for _, i in best]
            rankings.append(ranking)
        slots, self.slot_roles = round_robin_slots(rankings, k)
        reciprocal = self._reciprocal_ranks  # 1 / (1 + position), position < K
        # a ranking may hold fewer than K candidates
        positions = [dict(zip(ranking[:k], reciprocal, strict=False)) for ranking in rankings]
        self.slot_ranks = [[at.get(i, 0.0) for at in positions] for i in slots]
        return slots

    def _global(self, instance: Instance | None, sim: Simulator, kind: DecisionKind,
                request: Request | None) -> list[float]:
        instances = sim.instances if instance is None else (instance,)
        waiting = running = swapped = free = blocks = seqs = 0
        for inst in instances:
            waiting += len(inst.waiting)
            running += len(inst.running)
            swapped += len(inst.swapped)
            free += inst.bm.num_free
            blocks += inst.bm.num_blocks
            seqs += inst.config.max_num_seqs
        config = (instance or instances[0]).config  # ROUTE: batch features are 0 anyway
        if instance is not None:
            batch_tokens = config.max_num_batched_tokens - instance.budget
            batch_seqs = len(instance.batch) + instance.bulk
        else:
            batch_tokens = batch_seqs = 0
        now = sim.now
        arrived = sim.arrived_count
        recent = sim.arrivals_since(now - RATE_WINDOW_S)
        features = [
            squash(waiting, seqs),
            min(running / seqs, 1.0),
            squash(swapped, 8),
            free / blocks,
            1.0 - free / blocks,
            min(batch_tokens / config.max_num_batched_tokens, 1.0),
            min(batch_seqs / config.max_num_seqs, 1.0),
            squash(recent / RATE_WINDOW_S, self.rate_scale),
            min(arrived / self.episode_requests, 1.0),
            squash(sim.requests_in_system(), seqs),
            float(kind == DecisionKind.ROUTE),
            float(kind == DecisionKind.ADMIT),
            float(kind == DecisionKind.PREEMPT),
        ]
        if request is None:
            features += [0.0, 0.0, 0.0]
        else:
            features += [
                squash(request.prompt_len, 1024),
                squash(self.output_estimate(request), 256),
                self._best_prefix_fraction(request, instances),
            ]
        return features

    def _best_prefix_fraction(self, request: Request, instances: Any) -> float:
        if not request.prefix_hashes:
            return 0.0
        best = max(inst.bm.count_prefix_hits(request)[0] for inst in instances)
        return best / len(request.prefix_hashes)

    def _request_slots(self, decision: Decision, slots: list[int], kind: DecisionKind,
                       pairs: Sequence[tuple[float, float]] | None = None) -> list[float]:
        now = decision.time
        instance = decision.instance
        bm = instance.bm
        tenants = max(1, len(instance.sim.workload.tenant_names) - 1)
        default_slo = self.default_ttft_slo
        out: list[float] = []
        candidates = decision.candidates
        roles = self.slot_roles
        ranks = self.slot_ranks
        waiting = kind.spec.candidates == "waiting"
        padding = [0.0] * (MAX_ROLES - len(ranks[0])) if ranks else []
        # squash and _prefix_fraction inlined (the same expressions): one slot per call
        prefix = waiting and bm.enable_prefix_caching
        count_hits = bm.count_prefix_hits
        capacity = bm.num_blocks
        estimate = self.output_estimate
        for position, index in enumerate(slots):
            r = candidates[index]
            target = r.ttft_slo if r.ttft_slo < math.inf else default_slo
            waited = now - r.arrival_time
            generated = r.num_generated
            slack = 1.0 if generated else max(-1.0, min(1.0, (target - waited) / target))
            prompt = r.prompt_len
            if waiting:
                hashes = r.prefix_hashes
                extra = count_hits(r)[0] / len(hashes) if prefix and hashes else 0.0
            else:
                extra = r.num_blocks / capacity
            output = estimate(r)
            priority = r.priority
            out += (
                1.0,
                prompt / (prompt + 1024) if prompt > 0 else 0.0,
                r.num_computed / (prompt + generated),
                output / (output + 256) if output > 0 else 0.0,
                waited / (waited + target) if waited > 0 else 0.0,
                slack,
                extra,
                r.tenant / tenants if tenants > 0 else 0.0,
                priority / (priority + 4) if priority > 0 else 0.0,
            )
            out += ROLE_ONE_HOT[roles[position]]
            out += ranks[position]
            out += padding
            out += pairs[position] if pairs is not None else NO_PAIR
        return out

    @staticmethod
    def _prefix_fraction(request: Request, bm: Any) -> float:
        if not request.prefix_hashes or not bm.enable_prefix_caching:
            return 0.0
        return bm.count_prefix_hits(request)[0] / len(request.prefix_hashes)

    def _instance_slots(self, decision: Decision, slots: list[int]) -> list[float]:
        request = decision.request
        last_pool = len(decision.cluster.pools) - 1
        place = decision.kind.spec.receives_kv
        out: list[float] = []
        for index in slots:
            inst = decision.candidates[index]
            config = inst.config
            queued = sum(r.prompt_len + r.num_generated - r.num_computed for r in inst.waiting)
            seqs = config.max_num_seqs
            out += (
                1.0,
                squash(len(inst.waiting), seqs),
                min(len(inst.running) / seqs, 1.0),
                inst.bm.num_used / inst.bm.num_blocks,
                squash(queued, config.max_num_batched_tokens),
                self._prefix_fraction(request, inst.bm),
                squash(len(inst.swapped), 8),
                squash(len(inst.waiting) + len(inst.running) + len(inst.swapped), seqs),
                inst.pool / last_pool if last_pool else 0.0,
            )
            if place:
                bm = inst.bm
                room = inst.can_receive(request)
                left = (bm.num_free - bm.blocks_for(request.num_computed)) / bm.num_blocks
                out += (float(room), max(left, 0.0) if room else 0.0)
                out += [0.0] * (SLOT_FEATURES - BASE_SLOT_FEATURES - 2)
            else:
                out += [0.0] * (SLOT_FEATURES - BASE_SLOT_FEATURES)
        return out

    @staticmethod
    def _option_slots(decision: Decision, slots: list[int]) -> list[float]:
        request = decision.request
        bm = decision.instance.bm
        options = decision.candidates
        largest = max((value for value in options if value), default=0.0)
        common = (
            (request.prompt_len // bm.block_size) / bm.num_blocks,
            squash(request.turn, 8),
            squash(request.critical_path, 4),
        )
        tool = [0.0] * MAX_ROLES
        if 0 <= request.tool_kind < MAX_ROLES:
            tool[request.tool_kind] = 1.0
        out: list[float] = []
        for index in slots:
            value = options[index]
            out += (
                1.0,
                squash(value or 0.0, 10.0),
                float(value is None),
                float(value == 0.0),
                *common,
                (value or 0.0) / largest if largest else 0.0,
                0.0,
            )
            out += tool
            out += [0.0] * (MAX_ROLES + PAIR_FEATURES)
        return out
