"""Batch building: what each running, swapped and waiting request computes next iteration.

An instance builds one batch per iteration with the semantics of its `InstanceConfig.mode`:

* ``vllm_v1`` (vLLM >= 0.6, Sarathi-Serve style): a token budget `max_num_batched_tokens`;
  running requests first, in order, each taking what it still needs to compute (1 while
  decoding, a chunk of its prompt while prefilling); then, if nothing was preempted this
  iteration, swapped requests resume and waiting requests are admitted, chunked to the
  budget that is left. Without chunked prefill, a prompt (or recompute) longer than the
  budget runs alone.
* ``vllm_v0`` (vLLM < 0.6 and Vidur's vLLM scheduler): if nothing is swapped, whole
  prefills first; a prefill batch is capped at `max_num_seqs` requests and
  `len(batch) * longest prompt <= max_num_batched_tokens` (Vidur's padded count); only if
  no prefill fits, a decode batch of all running requests, then swapped requests resume if
  nothing was preempted.

Waiting requests enter through ADMIT decisions, asked only while some candidate fits
(`can_admit`: tokens, sequences, KV blocks with the watermark). A running request that
cannot get the KV blocks it needs asks PREEMPT decisions until it fits or is itself the
victim (`_make_room`; the victim is swapped or recomputed by `Lifecycle._preempt`).

The batch is an `IterationPlan` (a slotted dataclass shared with the token bookkeeping
that ends the iteration, envs/core/tokens.py): its entries `(request, tokens)`, the cost
model's view of them accumulated as they are added (prefill chunks, decode count and
context, so pricing the iteration is O(1)), the budget left, and `bulk`: when the event
that just ended left every running request decoding (`aggregates`, a `DecodeTally`) and
free KV covers the blocks they need next, the first `bulk` running requests decode as one
group without an entry each (`_schedule_bulk`, O(1); the blocks are reserved in the block
manager and claimed at the iteration end). Group scheduling is a fast path: the reference
(`Simulator(decode_runs=False)`) schedules every request through `_schedule_running`.

KV state changes only through the block manager (`bm`); the queues are the instance's.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from servegym.envs.core.request import RUNNING, Request
from servegym.envs.protocol import STOP, Action, Decision, DecisionKind

if TYPE_CHECKING:
    from servegym.envs.core.kv_cache import BlockManager
    from servegym.envs.core.tokens import DecodeTally


@dataclass(slots=True)
class IterationPlan:
    """The iteration being built or in flight, as the cost model and the views see it."""

    entries: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens)
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (new, cached) per chunk
    decodes: int = 0  # entries and group members decoding one token
    decode_context: int = 0  # their context sum (computed tokens + 1 each)
    bulk: int = 0  # vllm_v1: the first `bulk` running requests decode as a group
    budget: int = 0  # tokens left under max_num_batched_tokens
    longest: int = 0  # vllm_v0: the longest prefill admitted (the padded count)
    extra_time: float = 0.0  # swap transfers issued while building this batch
    start: float = 0.0  # when the iteration started

    def reset(self, budget: int) -> None:
        """An empty batch with `budget` tokens, before a build."""
        self.entries = []
        self.chunks = []
        self.decodes = self.decode_context = self.bulk = self.longest = 0
        self.budget = budget
        self.extra_time = 0.0

    def clear_after_iteration(self) -> None:
        self.entries = []
        self.bulk = 0
        self.extra_time = 0.0

    def add(self, request: Request, num_new: int) -> None:
        """An entry; the cost model's view is accumulated here so pricing the iteration is
        O(1). The budget is the caller's to charge."""
        self.entries.append((request, num_new))
        if num_new == 1:
            self.decodes += 1
            self.decode_context += request.num_computed + 1
        else:
            self.chunks.append((num_new, request.num_computed))

    def remove(self, request: Request) -> None:
        """Give back `request`'s tokens if it has an entry (it was preempted)."""
        for position, (scheduled, num_new) in enumerate(self.entries):
            if scheduled is request:
                del self.entries[position]
                self.budget += num_new
                if num_new == 1:
                    self.decodes -= 1
                    self.decode_context -= request.num_computed + 1
                else:
                    self.chunks.remove((num_new, request.num_computed))
                return


class BatchBuilding:
    """Mixin of `Instance` (envs/core/instance.py): builds the next batch (module docstring).

    Reads `config`, `v0`, `block_size`, `watermark_blocks`, `sim` (`ask`, `decode_runs`,
    `admit_head_only`) and `aggregates`; writes `plan`, the queues through `Lifecycle`'s
    transitions (`_start_running`, `_preempt`), and KV state only through `bm`.
    """

    bm: BlockManager
    config: Any
    sim: Any
    cost: Any
    plan: IterationPlan
    v0: bool
    block_size: int
    watermark_blocks: int
    retention: Any
    waiting: list[Request]
    running: list[Request]
    swapped: list[Request]
    aggregates: DecodeTally | None

    # ================================================================ admission rules
    def can_admit(self, request: Request) -> bool:
        """Would `request` fit into the batch being built (tokens, sequences, KV blocks)?"""
        cfg = self.config
        if len(self.running) >= cfg.max_num_seqs:
            return False
        bm = self.bm
        if bm.enable_prefix_caching and request.prefix_hashes:
            hits, evictable_hits = bm.count_prefix_hits(request)
        else:
            hits = evictable_hits = 0
        remaining = request.prompt_len + request.num_generated - hits * self.block_size
        plan = self.plan
        if not hits and not self.v0 and remaining <= plan.budget:
            # The common case, inlined (copies `_chunk` and `bm.can_allocate_fresh`): the
            # whole remainder fits the budget, no cache hits.
            need = -(-remaining // self.block_size)
            return need + self.watermark_blocks <= bm.free_uncached + len(bm.evictable)
        if self.v0:
            count = len(plan.entries) + 1
            longest = max(plan.longest, remaining)
            # Alone, a recompute longer than the budget still runs (else it would never run).
            if count * longest > cfg.max_num_batched_tokens and plan.entries:
                return False
            chunk = remaining
        else:
            chunk = self._chunk(remaining)
            if chunk <= 0:
                return False
        return bm.can_allocate_fresh(request, hits, evictable_hits, chunk, self.watermark_blocks)

    def _chunk(self, remaining: int) -> int:
        """Tokens a vllm_v1 batch can give a request that has `remaining` to compute (0: none)."""
        plan = self.plan
        budget = plan.budget
        if remaining <= budget:
            return remaining
        if self.config.enable_chunked_prefill:
            return max(budget, 0)
        # Without chunking, a recompute longer than the budget runs alone, else never.
        return 0 if plan.entries or plan.bulk else remaining

    def admissible(self, requests: Sequence[Request]) -> list[bool]:
        """`can_admit` of each of `requests`, in order, in one pass: the checks that do not
        depend on the request hoisted, and `can_admit`'s common case (vllm_v1, no cache
        hits possible, the remainder within the budget) inlined; every other request goes
        through `can_admit` itself, the reference (tests/test_admissible.py)."""
        if len(self.running) >= self.config.max_num_seqs:
            return [False] * len(requests)
        can_admit = self.can_admit
        if self.v0:
            return [can_admit(request) for request in requests]
        bm = self.bm
        prefix_caching = bm.enable_prefix_caching
        budget = self.plan.budget
        block_size = self.block_size
        room = bm.free_uncached + len(bm.evictable) - self.watermark_blocks
        out = []
        for request in requests:
            remaining = request.prompt_len + request.num_generated
            if remaining <= budget and not (prefix_caching and request.prefix_hashes):
                out.append(-(-remaining // block_size) <= room)
            else:
                out.append(can_admit(request))
        return out

    def can_stop_admitting(self) -> bool:
        return bool(self.plan.entries or self.running) or not self.any_admissible()

    def any_admissible(self) -> bool:
        """`any(map(self.can_admit, self.waiting))`, with `admissible`'s hoisting. Asked
        before every ADMIT decision and decode run, it scans the whole queue whenever
        nothing fits (a long queue behind full KV), so its common case is one comparison:
        with no cache hits possible and the remainder within the budget, `can_admit`'s
        `ceil(remaining / block_size) <= room` is `remaining <= room * block_size` (exact
        for integers). Every other request goes through `can_admit` itself, the reference
        (tests/test_admissible.py)."""
        waiting = self.waiting
        if not waiting or len(self.running) >= self.config.max_num_seqs:
            return False
        can_admit = self.can_admit
        if self.v0:
            return any(map(can_admit, waiting))
        bm = self.bm
        prefix_caching = bm.enable_prefix_caching
        budget = self.plan.budget
        room = bm.free_uncached + len(bm.evictable) - self.watermark_blocks
        fits_up_to = room * self.block_size  # the longest remainder whose blocks fit
        for request in waiting:
            remaining = request.prompt_len + request.num_generated
            if remaining <= budget and not (prefix_caching and request.prefix_hashes):
                if remaining <= fits_up_to:
                    return True
            elif can_admit(request):
                return True
        return False

    def _admit(self, request: Request, now: float) -> None:
        bm, plan = self.bm, self.plan
        hits, evictable_hits = bm.count_prefix_hits(request)
        remaining = request.prompt_len + request.num_generated - hits * self.block_size
        chunk = remaining if self.v0 else self._chunk(remaining)
        if bm.tiers is not None:
            loaded, chunk = self._tier_decision(request, hits, evictable_hits, remaining,
                                                chunk, now)
            bm.allocate_fresh(request, hits, chunk, loaded)
        else:
            bm.allocate_fresh(request, hits, chunk)
        if self.retention is not None and request.session >= 0:
            self.retention.on_admit(request)  # its session's pin is no longer needed
        self._start_running(request, now)
        plan.add(request, chunk)
        plan.budget -= chunk
        if chunk > plan.longest:
            plan.longest = chunk

    def _tier_decision(self, request: Request, hits: int, evictable_hits: int,
                       remaining: int, chunk: int, now: float) -> tuple[int, int]:
        """Tiered KV cache (envs/core/kv_tiers.py): (blocks to load from lower tiers,
        the chunk computed after them) for a request admitted with `hits` GPU-cached
        blocks. Load when the tiers' latency + bytes / bandwidth, after the host link
        frees, is below the cost model's prefill time for those tokens and the loaded
        blocks plus the chunk fit the free blocks (CacheGen's load-vs-recompute rule);
        else recompute them (0, `chunk`). A load is queued on the host link and the
        iteration waits for it (`plan.extra_time`)."""
        bm, plan = self.bm, self.plan
        levels = bm.tier_run(request, hits)
        if not levels:
            return 0, chunk
        tiers = bm.tiers
        count = len(levels)
        tiers.hit_blocks += count
        block_size = self.block_size
        load = tiers.load_seconds(levels)
        wait = tiers.link.busy_until - now
        # The marginal prefill time of those tokens (the iteration's fixed part left out).
        cached = hits * block_size
        recompute = self.cost.iteration_time([(count * block_size, cached)], 0, 0) - \
            self.cost.iteration_time([(1, cached)], 0, 0)
        rest = remaining - count * block_size
        after = rest if self.v0 else self._chunk(rest)
        need = bm.blocks_for((hits + count) * block_size + after) - hits
        if load + (wait if wait > 0 else 0.0) >= recompute or after <= 0 or \
                need + evictable_hits + self.watermark_blocks > bm.num_free:
            tiers.recomputed_blocks += count
            return 0, chunk
        plan.extra_time = bm.link_transfer(now, load, plan.extra_time)
        tiers.load_time += load
        return count, after

    def _admission_loop(self, now: float) -> Generator[Decision, Action, None]:
        waiting, running, plan = self.waiting, self.running, self.plan
        max_seqs = self.config.max_num_seqs
        ask = self.sim.ask
        head_only = self.sim.admit_head_only
        while waiting and len(running) < max_seqs:
            if not self.v0 and plan.budget <= 0:
                return
            # A decision is asked only when some candidate fits (as decode runs assume).
            if head_only and not self.can_admit(waiting[0]):
                if plan.entries or plan.bulk or running:
                    return  # a head-of-line policy would stop here
                if not self.any_admissible():
                    return
            elif not head_only and not self.any_admissible():
                return
            action = yield from ask(Decision(DecisionKind.ADMIT, now, waiting, instance=self))
            if action.choice == STOP:
                return
            self._admit(waiting.pop(action.choice), now)

    # ================================================================ preemption
    def _make_room(self, request: Request, num_new: int, now: float) -> Generator[Any, Any, bool]:
        """Preempt until `request` can grow by `num_new` tokens; False if it was the victim."""
        bm, running = self.bm, self.running
        while not bm.can_allocate(request, num_new):
            decision = Decision(DecisionKind.PREEMPT, now, running, instance=self, request=request)
            action = yield from self.sim.ask(decision)
            victim = running[action.choice]
            self._preempt(victim, action.swap)
            if victim is request:
                return False
        bm.allocate(request, num_new)
        return True

    # ================================================================ batch building
    def _schedule_running(self, now: float) -> Generator[Any, Any, bool]:
        """Give each running request its next tokens; True if anything was preempted."""
        # The hot loop of busy instances: `IterationPlan.add`, `_chunk`, `bm.can_allocate`
        # and `bm.allocate` inlined; the plan's counters live in locals, written back
        # around the calls that read or change them (chunking, preemptions).
        bm, block_size, v0, plan = self.bm, self.block_size, self.v0, self.plan
        append, chunks = plan.entries.append, plan.chunks
        budget, decodes, context = plan.budget, plan.decodes, plan.decode_context
        preempted = False
        for request in list(self.running):
            if request.status != RUNNING:
                continue  # preempted earlier in this loop
            computed = request.num_computed
            num_new = request.prompt_len + request.num_generated - computed
            if num_new > budget and not v0:
                plan.budget = budget
                num_new = self._chunk(num_new)
                if num_new <= 0:
                    continue
            total = computed + num_new
            if total > request.num_blocks * block_size:  # needs blocks beyond those it holds
                need = -(-total // block_size) - request.num_blocks
                if need <= bm.free_uncached + len(bm.evictable):
                    bm.allocate_blocks(request, need)
                else:
                    preempted = True
                    plan.budget, plan.decodes, plan.decode_context = budget, decodes, context
                    placed = yield from self._make_room(request, num_new, now)
                    budget, decodes, context = plan.budget, plan.decodes, plan.decode_context
                    if not placed:
                        continue
            append((request, num_new))
            if num_new == 1:
                decodes += 1
                context += computed + 1
            else:
                chunks.append((num_new, computed))
            budget -= num_new
        plan.budget, plan.decodes, plan.decode_context = budget, decodes, context
        return preempted

    def _resume_swapped(self, now: float) -> None:
        bm, running, swapped, plan = self.bm, self.running, self.swapped, self.plan
        while swapped and len(running) < self.config.max_num_seqs:
            request = swapped[0]
            num_new = request.prompt_len + request.num_generated - request.num_computed
            if not self.v0 and num_new > plan.budget:
                num_new = self._chunk(num_new)  # swapped mid-prefill
                if num_new <= 0:
                    return
            if not bm.can_swap_in(request):
                return
            swapped.pop(0)
            seconds = self.cost.swap_time(bm.swap_in(request))
            if bm.tiers is None:
                plan.extra_time += seconds
            else:  # the host link, shared with tier loads (envs/core/kv_tiers.py)
                plan.extra_time = bm.link_transfer(now, seconds, plan.extra_time)
            if not bm.can_allocate(request, num_new):
                # Resident again but not room to grow: it decodes once space frees up.
                self._start_running(request, now)
                return
            bm.allocate(request, num_new)
            self._start_running(request, now)
            plan.add(request, num_new)
            plan.budget -= num_new

    def _build_batch(self, now: float) -> Generator[Any, Any, None]:
        plan = self.plan
        plan.reset(self.config.max_num_batched_tokens)
        if self.v0:
            if not self.swapped:
                yield from self._admission_loop(now)
            if plan.entries:
                return  # a prefill iteration
            preempted = yield from self._schedule_running(now)
            if not preempted:
                self._resume_swapped(now)
        else:
            if self._schedule_bulk():
                preempted = False
            else:
                preempted = yield from self._schedule_running(now)
            self.aggregates = None  # describes the state before this build
            if not preempted:
                if self.swapped:
                    self._resume_swapped(now)
                yield from self._admission_loop(now)

    def _schedule_bulk(self) -> bool:
        """`_schedule_running` in O(1) when the event that just ended left every running
        request decoding and free KV covers the blocks they need next (counted then): the
        decodes join the batch as a group, applied request by request at the iteration end.
        """
        aggregates = self.aggregates
        n = len(self.running)
        if aggregates is None or aggregates.count != n or \
                not self.bm.can_reserve(aggregates.new_blocks):
            return False
        if not self.sim.decode_runs:  # the reference path, for equivalence tests
            return False
        if aggregates.new_blocks:
            self.bm.reserve(aggregates.new_blocks)
        plan = self.plan
        plan.bulk = n
        plan.decodes = n
        plan.decode_context = aggregates.context
        plan.budget -= n
        return True


__all__ = ["BatchBuilding", "IterationPlan"]
