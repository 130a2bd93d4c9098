"""Fixed-size observations and action masks for the serving envs.

Action layout (every env): `Discrete(2K + 1)`.
    a in [0, K)    choose candidate slot a
    a in [K, 2K)   PREEMPT only: choose slot a - K and swap it to host memory
    a == 2K        ADMIT only: STOP, no more admissions this iteration

Candidate slots (canonical order):
    ADMIT    the first K waiting requests, in queue order, that fit into the batch now
             (preempted-by-recompute requests first, then arrival order)
    PREEMPT  the K most recently admitted running requests, newest first (vLLM's victim is
             slot 0); the request short of KV is among them when it is recent enough
    ROUTE    the instances, by index (K >= number of instances)

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
    10-12 decision kind         one-hot ROUTE, ADMIT, PREEMPT
    13 request prompt length    squash(tokens, 1024)  (ROUTE: arriving; PREEMPT: short of KV)
    14 request output estimate  squash(tokens, 256)
    15 request prefix hits      cached fraction of its prompt blocks (ROUTE: best instance)

Slot features for requests (ADMIT, PREEMPT):
    0 valid  1 prompt squash(tokens, 1024)  2 tokens done / tokens  3 output estimate
    squash(tokens, 256)  4 time since arrival squash(s, ttft target)  5 TTFT slack
    clip((target - waited) / target, -1, 1), 1 once the first token is out  6 prefix-cache
    hit fraction (ADMIT) or KV blocks held / capacity (PREEMPT)  7 tenant / tenants
    8 priority squash(p, 4)
Slot features for instances (ROUTE):
    0 valid  1 waiting squash(n, max_num_seqs)  2 running / max_num_seqs  3 KV used fraction
    4 queued prompt tokens squash(tokens, budget)  5 prefix hit fraction for the arriving
    request  6 swapped squash(n, 8)  7 outstanding requests squash(n, max_num_seqs)  8 0
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.core.decisions import STOP, Action, DecisionKind

if TYPE_CHECKING:
    from envs.core.decisions import Decision
    from envs.core.instance import Instance
    from envs.core.request import Request
    from envs.core.simulator import Simulator

GLOBAL_FEATURES = 16
SLOT_FEATURES = 9
RATE_WINDOW_S = 10.0


def squash(value: float, scale: float) -> float:
    return value / (value + scale) if value > 0 else 0.0


class ObservationEncoder:
    """Turns a decision into (observation, mask, slot -> candidate index)."""

    def __init__(self, num_slots: int, default_ttft_slo: float, rate_scale: float,
                 output_estimate: Any) -> None:
        self.num_slots = num_slots
        self.size = GLOBAL_FEATURES + num_slots * SLOT_FEATURES
        self.num_actions = 2 * num_slots + 1
        self.stop_action = 2 * num_slots
        self.default_ttft_slo = default_ttft_slo
        self.rate_scale = rate_scale
        self.output_estimate = output_estimate  # request -> expected output tokens
        self.slot_choice: list[int] = []  # slot -> index into decision.candidates
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
        if action >= k:
            return Action(self.slot_choice[action - k], swap=True)
        return Action(self.slot_choice[action])

    # ------------------------------------------------------------------ encoding
    def encode(self, decision: Decision, sim: Simulator) -> np.ndarray:
        kind = decision.kind
        mask = self.mask
        mask[:] = False
        if kind == DecisionKind.ADMIT:
            slots = self._admit_slots(decision)
            features = self._global(decision.instance, sim, kind, None)
            features += self._request_slots(decision, slots, kind)
            mask[: len(slots)] = True
            mask[self.stop_action] = decision.can_stop()
        elif kind == DecisionKind.PREEMPT:
            slots = self._preempt_slots(decision)
            features = self._global(decision.instance, sim, kind, decision.request)
            features += self._request_slots(decision, slots, kind)
            mask[: len(slots)] = True
            if decision.can_swap():
                bm = decision.instance.bm
                for slot, index in enumerate(slots):
                    mask[self.num_slots + slot] = bm.can_swap_out(decision.candidates[index])
        else:
            slots = list(range(len(decision.candidates)))
            features = self._global(None, sim, kind, decision.request)
            features += self._instance_slots(decision, slots)
            mask[: len(slots)] = True
        self.slot_choice = slots
        # Slots beyond the candidates are zero-padded.
        buffer = self.buffer
        used = len(features)
        buffer[:used] = features
        buffer[used:] = 0.0
        return buffer.copy()

    def _admit_slots(self, decision: Decision) -> list[int]:
        can_admit = decision.instance.can_admit
        slots = []
        for index, request in enumerate(decision.candidates):
            if can_admit(request):
                slots.append(index)
                if len(slots) == self.num_slots:
                    break
        return slots

    def _preempt_slots(self, decision: Decision) -> list[int]:
        last = len(decision.candidates) - 1
        return [last - i for i in range(min(self.num_slots, last + 1))]

    def _global(self, instance: Instance | None, sim: Simulator, kind: DecisionKind,
                request: Request | None) -> list[float]:
        instances = sim.instances if instance is None else (instance,)
        waiting = running = swapped = free = blocks = 0
        for inst in instances:
            waiting += len(inst.waiting)
            running += len(inst.running)
            swapped += len(inst.swapped)
            free += inst.bm.num_free
            blocks += inst.bm.num_blocks
        config = sim.config
        seqs = config.max_num_seqs * len(instances)
        if instance is not None:
            batch_tokens = config.max_num_batched_tokens - instance.budget
            batch_seqs = len(instance.batch) + instance.bulk
        else:
            batch_tokens = batch_seqs = 0
        now = sim.now
        arrived = sim.arrived_count
        recent = arrived - bisect.bisect_left(sim._arrivals, now - RATE_WINDOW_S, 0, arrived)
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

    def _request_slots(self, decision: Decision, slots: list[int],
                       kind: DecisionKind) -> list[float]:
        now = decision.time
        instance = decision.instance
        bm = instance.bm
        tenants = max(1, len(instance.sim.workload.tenant_names) - 1)
        default_slo = self.default_ttft_slo
        out: list[float] = []
        candidates = decision.candidates
        for index in slots:
            r = candidates[index]
            target = r.ttft_slo if r.ttft_slo < math.inf else default_slo
            waited = now - r.arrival_time
            slack = 1.0 if r.num_generated else max(-1.0, min(1.0, (target - waited) / target))
            tokens = r.prompt_len + r.num_generated
            if kind == DecisionKind.ADMIT:
                extra = self._prefix_fraction(r, bm)
            else:
                extra = r.num_blocks / bm.num_blocks
            out += (
                1.0,
                squash(r.prompt_len, 1024),
                r.num_computed / tokens,
                squash(self.output_estimate(r), 256),
                squash(waited, target),
                slack,
                extra,
                r.tenant / tenants if tenants > 0 else 0.0,
                squash(r.priority, 4),
            )
        return out

    @staticmethod
    def _prefix_fraction(request: Request, bm: Any) -> float:
        if not request.prefix_hashes or not bm.enable_prefix_caching:
            return 0.0
        return bm.count_prefix_hits(request)[0] / len(request.prefix_hashes)

    def _instance_slots(self, decision: Decision, slots: list[int]) -> list[float]:
        request = decision.request
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
                0.0,
            )
        return out
