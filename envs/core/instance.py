"""One serving instance: queues, a KV block manager, and the batch builder.

Each iteration the instance builds a batch with the semantics of its `mode`:

* ``vllm_v1`` (vLLM >= 0.6, Sarathi-Serve style): a token budget `max_num_batched_tokens`;
  running requests first, in order, each taking what it still needs to compute (1 while
  decoding, a chunk of its prompt while prefilling); then, if nothing was preempted this
  iteration, waiting requests, chunked to the budget that is left.
* ``vllm_v0`` (vLLM < 0.6 and Vidur's vLLM scheduler): whole prefills first; a prefill batch is
  capped at `max_num_seqs` requests and `len(batch) * longest prompt <= max_num_batched_tokens`
  (Vidur's padded count); only if no prefill fits, a decode batch of all running requests,
  then swapped requests resume if nothing was preempted.

A running request that cannot get the KV blocks it needs triggers a PREEMPT decision. Waiting
requests enter through ADMIT decisions. Where the next iterations are decode-only and nothing
can change before a request finishes, KV runs short or a request arrives, the instance advances
all of them in closed form (see `_plan_decode_run`): time stays exact because the cost model's
decode time is affine in the total context.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from servegym.envs.core.kv_cache import BlockManager
from servegym.envs.core.request import FINISHED, REJECTED, RUNNING, SWAPPED, WAITING, Request
from servegym.envs.protocol import STOP, Action, Decision, DecisionKind

if TYPE_CHECKING:
    from servegym.envs.costs.base import CostModel

MODES = ("vllm_v1", "vllm_v0")


class SimulationError(RuntimeError):
    """The simulated instance reached a state it must never reach (a bug, not bad input)."""


@dataclass(frozen=True)
class InstanceConfig:
    """Batching and memory settings of one instance (vLLM's names where vLLM has them)."""

    mode: str = "vllm_v1"
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True  # vllm_v1 only; vllm_v0 never chunks
    block_size: int = 16
    num_kv_blocks: int | None = None  # None: derived from GPU memory, weights and a reserve
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = False
    swap_space_blocks: int = 0  # host blocks for swap preemption; 0 disables swap
    watermark: float = 0.0  # fraction of blocks kept free when admitting (Vidur's v0: 0.01)
    max_model_len: int | None = None  # None: the model's context length

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= max_num_seqs "
                f"({self.max_num_seqs}) so every running request can decode each iteration"
            )
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if not 0 <= self.watermark < 1:
            raise ValueError(
                f"watermark is a fraction of KV blocks in [0, 1), got {self.watermark}"
            )
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be positive, got {self.num_kv_blocks}")
        if self.swap_space_blocks < 0:
            raise ValueError(f"swap_space_blocks must be >= 0, got {self.swap_space_blocks}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1 token or None (the model's context "
                             f"length), got {self.max_model_len}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization is a fraction in (0, 1], got "
                             f"{self.gpu_memory_utilization}")


class TokenGaps:
    """Time between tokens, stored compactly.

    `runs` holds (first gap, last gap, count, weight): `count` gaps evenly spaced from first to
    last, each seen by `weight` requests (a decode run's gaps grow linearly). `singles` holds
    one-off gaps, e.g. after a stall.
    """

    __slots__ = ("run_first", "run_last", "run_count", "run_weight", "singles")

    def __init__(self) -> None:
        self.run_first = array("d")
        self.run_last = array("d")
        self.run_count = array("q")
        self.run_weight = array("q")
        self.singles = array("d")

    def add_run(self, first: float, last: float, count: int, weight: int) -> None:
        self.run_first.append(first)
        self.run_last.append(last)
        self.run_count.append(count)
        self.run_weight.append(weight)


class Instance:
    def __init__(
        self,
        index: int,
        config: InstanceConfig,
        cost_model: CostModel,
        num_kv_blocks: int,
        max_model_len: int,
        simulator: Any,
        record_token_times: bool = False,
        pool: int = 0,
    ) -> None:
        self.index = index
        self.pool = pool  # index of its pool in the simulator's `pools`
        self.config = config
        self.cost = cost_model
        self.sim = simulator
        self.max_model_len = max_model_len
        self.record_token_times = record_token_times
        self.bm = BlockManager(
            num_kv_blocks,
            config.block_size,
            enable_prefix_caching=config.enable_prefix_caching,
            swap_blocks=config.swap_space_blocks,
        )
        self.block_size = config.block_size
        self.v0 = config.mode == "vllm_v0"
        self.watermark_blocks = int(config.watermark * num_kv_blocks)
        self.swap_enabled = config.swap_space_blocks > 0
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        # The iteration being built or in flight.
        self.batch: list[tuple[Request, int]] = []
        self.batch_chunks: list[tuple[int, int]] = []  # (new tokens, cached) per prefill chunk
        self.batch_decodes = 0
        self.batch_decode_context = 0
        # vllm_v1: the first `bulk` running requests decode one token in this iteration
        # without a batch entry each (see `_schedule_bulk`).
        self.bulk = 0
        self.bulk_blocks = 0  # taken from the pool for the group, not yet on the requests
        self.budget = 0
        self.v0_longest = 0
        self.iteration_start = 0.0
        self.extra_time = 0.0  # swap transfers issued while building this batch
        self.run: list[Any] | None = None  # [start, n, base, slope, context_sum, iterations]
        self.event_pending = False
        self.decode_coeffs: list[tuple[float, float] | None] = [None] * (config.max_num_seqs + 1)
        # (running count, context sum, least remaining output) left by the iteration or run
        # that just ended when every running request decodes; read once by the next plan.
        # ... and how many of them need a new KV block for their next token.
        self.aggregates: tuple[int, int, float, int] | None = None
        self.run_aggregates: tuple[int, int, float, int] | None = None
        # Statistics.
        self.num_iterations = 0
        self.num_decode_runs = 0
        self.num_preemptions = 0
        self.busy_time = 0.0
        self.gaps = TokenGaps()
        self.kv_times = array("d")
        self.kv_used = array("q")

    # ================================================================ arrivals
    def rejection_reason(self, request: Request) -> str:
        """Why this instance can never serve `request` ('' if it can)."""
        total = request.prompt_len + request.output_len
        if total > self.max_model_len:
            return f"exceeds_context: {total} tokens > max_model_len {self.max_model_len}"
        # The last output token is sampled, never written to the KV cache.
        blocks = self.bm.blocks_for(total - 1)
        usable = self.bm.num_blocks - self.watermark_blocks
        if blocks > usable:
            return f"exceeds_kv_capacity: needs {blocks} blocks, instance has {usable}"
        cfg = self.config
        if request.prompt_len > cfg.max_num_batched_tokens and (
            self.v0 or not cfg.enable_chunked_prefill
        ):
            return (
                f"prompt_exceeds_batch_tokens: {request.prompt_len} > max_num_batched_tokens "
                f"{cfg.max_num_batched_tokens} without chunked prefill"
            )
        return ""

    def enqueue(self, request: Request, now: float) -> None:
        request.instance = self.index
        reason = self.rejection_reason(request)
        if reason:
            request.status = REJECTED
            request.reject_reason = reason
            self.sim.record_departure(request, now)
            return
        self.waiting.append(request)
        if not self.event_pending:
            # Wake at `now`, after every arrival of this instant has been enqueued.
            self.sim.schedule(now, self)

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
        if not hits and not self.v0 and remaining <= self.budget:
            # The common case, inlined: the whole remainder fits the budget, no cache hits.
            need = -(-remaining // self.block_size)
            return need + self.watermark_blocks <= bm.free_uncached + len(bm.evictable)
        if self.v0:
            count = len(self.batch) + 1
            longest = max(self.v0_longest, remaining)
            # Alone, a recompute longer than the budget still runs (else it would never run).
            if count * longest > cfg.max_num_batched_tokens and self.batch:
                return False
            chunk = remaining
        else:
            chunk = self._chunk(remaining)
            if chunk <= 0:
                return False
        return bm.can_allocate_fresh(request, hits, evictable_hits, chunk, self.watermark_blocks)

    def _chunk(self, remaining: int) -> int:
        """Tokens a vllm_v1 batch can give a request that has `remaining` to compute (0: none)."""
        budget = self.budget
        if remaining <= budget:
            return remaining
        if self.config.enable_chunked_prefill:
            return max(budget, 0)
        # Without chunking, a recompute longer than the budget runs alone, else never.
        return 0 if self.batch or self.bulk else remaining

    def can_stop_admitting(self) -> bool:
        return bool(self.batch or self.running) or not any(map(self.can_admit, self.waiting))

    def any_admissible(self) -> bool:
        return any(map(self.can_admit, self.waiting))

    def _admit(self, request: Request, now: float) -> None:
        bm = self.bm
        hits, _ = bm.count_prefix_hits(request)
        remaining = request.prompt_len + request.num_generated - hits * self.block_size
        chunk = remaining if self.v0 else self._chunk(remaining)
        bm.allocate_fresh(request, hits, chunk)
        request.status = RUNNING
        if request.first_scheduled != request.first_scheduled:  # NaN: first admission
            request.first_scheduled = now
        self.running.append(request)
        self._add_to_batch(request, chunk)
        self.budget -= chunk
        if chunk > self.v0_longest:
            self.v0_longest = chunk

    def _admission_loop(self, now: float) -> Generator[Decision, Action, None]:
        waiting, running = self.waiting, self.running
        max_seqs = self.config.max_num_seqs
        ask = self.sim.ask
        head_only = self.sim.admit_head_only
        while waiting and len(running) < max_seqs:
            if not self.v0 and self.budget <= 0:
                return
            # A decision is asked only when some candidate fits (as decode runs assume).
            if head_only and not self.can_admit(waiting[0]):
                if self.batch or self.bulk or running:
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

    def _preempt(self, victim: Request, swap: bool) -> None:
        self.running.remove(victim)
        for position, (scheduled, num_new) in enumerate(self.batch):
            if scheduled is victim:  # already in this batch: give its tokens back
                del self.batch[position]
                self.budget += num_new
                if num_new == 1:
                    self.batch_decodes -= 1
                    self.batch_decode_context -= victim.num_computed + 1
                else:
                    self.batch_chunks.remove((num_new, victim.num_computed))
                break
        victim.num_preemptions += 1
        self.num_preemptions += 1
        bm = self.bm
        if swap and bm.can_swap_out(victim):
            self.extra_time += self.cost.swap_time(bm.swap_out(victim))
            victim.status = SWAPPED
            victim.num_swaps += 1
            self.swapped.append(victim)
        else:
            victim.recomputed_tokens += victim.num_computed
            bm.free(victim)
            victim.num_computed = 0
            victim.status = WAITING
            self.waiting.insert(0, victim)

    def _schedule_running(self, now: float) -> Generator[Any, Any, bool]:
        """Give each running request its next tokens; True if anything was preempted."""
        # The hot loop of busy instances: batch bookkeeping is inlined into locals and
        # written back around preemptions, which read and change it.
        bm, block_size, v0 = self.bm, self.block_size, self.v0
        append, chunks = self.batch.append, self.batch_chunks
        budget, decodes, context = self.budget, self.batch_decodes, self.batch_decode_context
        preempted = False
        for request in list(self.running):
            if request.status != RUNNING:
                continue  # preempted earlier in this loop
            computed = request.num_computed
            num_new = request.prompt_len + request.num_generated - computed
            if num_new > budget and not v0:
                self.budget = budget
                num_new = self._chunk(num_new)
                if num_new <= 0:
                    continue
            total = computed + num_new
            if total > request.num_blocks * block_size:  # needs blocks beyond those it holds
                need = -(-total // block_size) - request.num_blocks
                if need <= bm.free_uncached + len(bm.evictable):
                    bm.take_blocks(need)
                    request.num_blocks += need
                else:
                    preempted = True
                    self.budget, self.batch_decodes = budget, decodes
                    self.batch_decode_context = context
                    placed = yield from self._make_room(request, num_new, now)
                    budget, decodes = self.budget, self.batch_decodes
                    context = self.batch_decode_context
                    if not placed:
                        continue
            append((request, num_new))
            if num_new == 1:
                decodes += 1
                context += computed + 1
            else:
                chunks.append((num_new, computed))
            budget -= num_new
        self.budget, self.batch_decodes, self.batch_decode_context = budget, decodes, context
        return preempted

    def _resume_swapped(self) -> None:
        bm, running, swapped = self.bm, self.running, self.swapped
        while swapped and len(running) < self.config.max_num_seqs:
            request = swapped[0]
            num_new = request.prompt_len + request.num_generated - request.num_computed
            if not self.v0 and num_new > self.budget:
                num_new = self._chunk(num_new)  # swapped mid-prefill
                if num_new <= 0:
                    return
            if not bm.can_swap_in(request):
                return
            swapped.pop(0)
            self.extra_time += self.cost.swap_time(bm.swap_in(request))
            if not bm.can_allocate(request, num_new):
                # Resident again but not room to grow: it decodes once space frees up.
                request.status = RUNNING
                running.append(request)
                return
            bm.allocate(request, num_new)
            request.status = RUNNING
            running.append(request)
            self._add_to_batch(request, num_new)
            self.budget -= num_new

    # ================================================================ batch building
    def _add_to_batch(self, request: Request, num_new: int) -> None:
        # The cost model's view is accumulated here so planning the iteration is O(1).
        self.batch.append((request, num_new))
        if num_new == 1:
            self.batch_decodes += 1
            self.batch_decode_context += request.num_computed + 1
        else:
            self.batch_chunks.append((num_new, request.num_computed))

    def _build_batch(self, now: float) -> Generator[Any, Any, None]:
        self.batch = []
        self.batch_chunks = []
        self.batch_decodes = self.batch_decode_context = self.bulk = 0
        self.budget = self.config.max_num_batched_tokens
        self.v0_longest = 0
        self.extra_time = 0.0
        if self.v0:
            if not self.swapped:
                yield from self._admission_loop(now)
            if self.batch:
                return  # a prefill iteration
            preempted = yield from self._schedule_running(now)
            if not preempted:
                self._resume_swapped()
        else:
            if self._schedule_bulk():
                preempted = False
            else:
                preempted = yield from self._schedule_running(now)
            self.aggregates = None  # describes the state before this build
            if not preempted:
                if self.swapped:
                    self._resume_swapped()
                yield from self._admission_loop(now)

    def _schedule_bulk(self) -> bool:
        """`_schedule_running` in O(1) when the event that just ended left every running
        request decoding and free KV covers the blocks they need next (counted then): the
        decodes join the batch as a group, applied request by request at the iteration end.
        """
        aggregates = self.aggregates
        n = len(self.running)
        if aggregates is None or aggregates[0] != n or aggregates[3] > self.bm.num_free:
            return False
        if not self.sim.decode_runs:  # the reference path, for equivalence tests
            return False
        _, context, _, new_blocks = aggregates
        if new_blocks:
            self.bm.take_blocks(new_blocks)
        self.bulk_blocks = new_blocks
        self.bulk = n
        self.batch_decodes = n
        self.batch_decode_context = context
        self.budget -= n
        return True

    def on_event(self, now: float) -> bool:
        """End what was in flight at `now` and plan a decode run if one can start.

        True when the instance is settled (a run planned, or idle); False when a batch must
        be built, which may ask decisions: then the simulator runs `build_next`. Split so
        the common events cost a plain call, not a generator.
        """
        self.aggregates = None
        if self.run is not None:
            self._finish_run(now)
        elif self.batch or self.bulk or self.extra_time:
            self._finish_iteration(now)
        self.event_pending = False
        if not (self.running or self.waiting or self.swapped):
            return True
        return self._plan_decode_run(now)

    def build_next(self, now: float) -> Generator[Any, Any, None]:
        """Build and start the next iteration at `now` (after `on_event` returned False)."""
        for _ in range(3):
            yield from self._build_batch(now)
            if self.batch or self.bulk or self.extra_time:
                self._start_iteration(now)
                return
            if not (self.running or self.waiting or self.swapped):
                return
            if self._plan_decode_run(now):
                return
        raise SimulationError(
            f"instance {self.index} cannot make progress at t={now}: "
            f"{len(self.waiting)} waiting, {len(self.running)} running, "
            f"{len(self.swapped)} swapped, {self.bm.num_free} KV blocks free"
        )

    def _start_iteration(self, now: float) -> None:
        duration = self.cost.iteration_time(self.batch_chunks, self.batch_decodes,
                                            self.batch_decode_context)
        duration += self.extra_time
        self.iteration_start = now
        self._sample_kv(now)
        self.sim.schedule(now + duration, self)
        self.event_pending = True

    def _sample_kv(self, now: float) -> None:
        self.kv_times.append(now)
        self.kv_used.append(self.bm.num_used)

    # ================================================================ iteration end
    def _finish_iteration(self, now: float) -> None:
        start = self.iteration_start
        self.num_iterations += 1
        self.busy_time += now - start
        bm = self.bm
        prefix_caching = bm.enable_prefix_caching
        record_times = self.record_token_times
        gaps = self.gaps
        singles = gaps.singles
        continuing = decoding = context = new_blocks = 0
        min_left = math.inf
        all_decoding = True
        finished = False
        block_size = self.block_size
        for request in self.running[: self.bulk]:  # decodes scheduled as a group
            computed = request.num_computed + 1
            request.num_computed = computed
            if computed > request.num_blocks * block_size:
                request.num_blocks += 1  # taken from the pool when the batch was built
            generated = request.num_generated + 1
            request.num_generated = generated
            last_token = request.last_token_time
            if last_token == start:
                continuing += 1
            else:
                singles.append(now - last_token)
            request.last_token_time = now
            if record_times:
                request.token_times.append(now)
            left = request.output_len - generated
            if left == 0:
                self._finish(request, now)
                finished = True
            else:
                decoding += 1
                context += computed + 1
                if left < min_left:
                    min_left = left
                if computed + 1 > request.num_blocks * block_size:
                    new_blocks += 1
        for request, num_new in self.batch:
            computed = request.num_computed + num_new
            request.num_computed = computed
            if prefix_caching and computed - num_new < request.prompt_len and \
                    request.prefix_hashes:
                # Prompt blocks are published as a prefill computes them (decodes add none;
                # blocks swapped back in stay private copies).
                bm.commit_full_blocks(request)
            generated = request.num_generated
            if computed != request.prompt_len + generated:
                all_decoding = False
                continue  # a prefill chunk: no token yet
            generated += 1
            request.num_generated = generated
            last_token = request.last_token_time
            if last_token == start:
                continuing += 1
            elif generated == 1:
                request.first_token_time = now
                self.sim.record_first_token(request)
            else:
                singles.append(now - last_token)
            request.last_token_time = now
            if record_times:
                request.token_times.append(now)
            left = request.output_len - generated
            if left == 0:
                self._finish(request, now)
                finished = True
            else:
                decoding += 1
                context += computed + 1
                if left < min_left:
                    min_left = left
                if computed + 1 > request.num_blocks * block_size:
                    new_blocks += 1
        if continuing:
            duration = now - start
            gaps.add_run(duration, duration, 1, continuing)
        if finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        if all_decoding and decoding == len(self.running):
            # Saves the next plan, or the next batch build, a pass over the requests.
            self.aggregates = (decoding, context, min_left, new_blocks)
        self.batch = []
        self.bulk = self.bulk_blocks = 0
        self.extra_time = 0.0

    def _finish(self, request: Request, now: float) -> None:
        request.status = FINISHED
        request.finish_time = now
        self.bm.free(request)
        self.sim.record_departure(request, now)

    # ================================================================ decode runs
    def _plan_decode_run(self, now: float) -> bool:
        """Start a run of decode-only iterations if nothing can interrupt it; True if started.

        Interruptions come only from: a request finishing (run ends there), KV running out
        (the run stays within `block_size * (free // n)` iterations, which cannot exhaust it),
        an arrival (the run ends at the first iteration boundary at or after the next arrival),
        or an admission (excluded: the run starts only when no waiting request fits, and free
        KV only shrinks during the run).
        """
        running = self.running
        n = len(running)
        if n == 0 or self.swapped or not self.sim.decode_runs:
            return False
        if self.waiting and n < self.config.max_num_seqs:
            self.batch = []
            self.budget = self.config.max_num_batched_tokens - n
            self.v0_longest = 0
            if self.sim.admit_head_only:
                # The policy only ever takes the head (FCFS): a blocked head closes the gate.
                if self.can_admit(self.waiting[0]):
                    return False
            elif self.any_admissible():
                return False
        free_per_request = self.bm.num_free // n
        if free_per_request == 0:
            return False
        iterations = self.block_size * free_per_request
        aggregates = self.aggregates
        if aggregates is not None and aggregates[0] == n:
            # The iteration or run that just ended left every running request decoding.
            _, context, min_left, _ = aggregates
            iterations = min(iterations, min_left)
        else:
            context = 0
            for request in reversed(running):  # the newest are likeliest to be prefilling
                computed = request.num_computed
                generated = request.num_generated
                if computed + 1 != request.prompt_len + generated or not generated:
                    return False  # still prefilling (a last 1-token chunk sets the TTFT)
                context += computed + 1
                left = request.output_len - generated
                if left < iterations:
                    iterations = left
        coeffs = self.decode_coeffs[n]
        if coeffs is None:
            coeffs = self.decode_coeffs[n] = self.cost.decode_coeffs(n)
        base, slope = coeffs
        horizon = self.sim.next_arrival_time - now
        if horizon < math.inf:
            iterations = min(iterations, _first_reaching(base, slope, n, context, horizon))
        self.run = [now, n, base, slope, context, iterations]
        self.num_decode_runs += 1
        self._sample_kv(now)
        self.sim.schedule(now + _elapsed(base, slope, n, context, iterations), self)
        self.event_pending = True
        return True

    def advance_to(self, now: float) -> None:
        """Bring the current decode run's state to `now`, as iterating one by one would.

        Routing reads instance state mid-run; this makes that state exact without moving the
        run's scheduled end: iterations that ended before `now` are applied (one ending at
        `now` exactly is not: arrivals go before iteration ends at equal times), and the
        iteration in flight holds the KV blocks it was given when it was scheduled.
        """
        run = self.run
        if run is None or now <= run[0]:
            return
        start, n, base, slope, context, iterations = run
        done = min(_first_reaching(base, slope, n, context, now - start) - 1, iterations - 1)
        if done > 0:
            self._apply_run(done, start + _elapsed(base, slope, n, context, done))
        block_size, in_flight = self.block_size, 0
        for request in self.running:
            if request.num_computed + 1 > request.num_blocks * block_size:
                request.num_blocks += 1
                in_flight += 1
        if in_flight:
            self.bm.take_blocks(in_flight)
        self._sample_kv(now)

    def cut_run(self, now: float) -> float | None:
        """End the decode run in flight at its first iteration boundary at or after `now`
        (an iteration is not stopped halfway): the run keeps its closed form with fewer
        iterations. Returns the new end, or None without a run or when it ends by then
        anyway; the simulator moves the instance's event there (`Simulator.interrupt`)."""
        run = self.run
        if run is None:
            return None
        self.advance_to(now)
        start, n, base, slope, context, iterations = run
        keep = _first_reaching(base, slope, n, context, now - start)
        if keep >= iterations:
            return None
        run[5] = keep
        return start + _elapsed(base, slope, n, context, keep)

    def _finish_run(self, now: float) -> None:
        if self._apply_run(self.run[5], now):
            self.running = [r for r in self.running if r.status == RUNNING]
        self.run = None
        self.aggregates = self.run_aggregates

    def _apply_run(self, done: int, end: float) -> bool:
        """Apply `done` iterations of the run ending at `end`; True if a request finished."""
        run = self.run
        start, n, base, slope, context, _ = run
        first = base + slope * context
        last = first + slope * n * (done - 1)
        block_size = self.block_size
        new_blocks = stalled = remaining = remaining_context = next_blocks = 0
        min_left = math.inf
        finished: list[Request] = []
        gaps = self.gaps
        singles = gaps.singles
        if self.record_token_times:
            times = [start + _elapsed(base, slope, n, context, j) for j in range(1, done + 1)]
            for request in self.running:
                request.token_times.extend(times)
        for request in self.running:
            last_token = request.last_token_time
            if last_token != start:  # stalled before this run
                singles.append(start + first - last_token)
                stalled += 1
            computed = request.num_computed + done
            request.num_computed = computed
            generated = request.num_generated + done
            request.num_generated = generated
            request.last_token_time = end
            if computed > request.num_blocks * block_size:
                need = -(-computed // block_size) - request.num_blocks
                request.num_blocks += need
                new_blocks += need
            left = request.output_len - generated
            if left == 0:
                finished.append(request)
            else:
                remaining += 1
                remaining_context += computed + 1
                if left < min_left:
                    min_left = left
                if computed + 1 > request.num_blocks * block_size:
                    next_blocks += 1
        self.run_aggregates = (remaining, remaining_context, min_left, next_blocks)
        continuing = n - stalled
        if continuing:
            gaps.add_run(first, last, done, continuing)
        if stalled and done > 1:  # after its first gap, a stalled request keeps the pace
            gaps.add_run(first + slope * n, last, done - 1, stalled)
        # Blocks were needed during the run, before anything finished at its end: take them
        # first, so a cached block is evicted exactly when iterating one by one would.
        if new_blocks:
            self.bm.take_blocks(new_blocks)
        for request in finished:
            self._finish(request, end)
        self.num_iterations += done
        self.busy_time += end - start
        run[0] = end
        run[4] = context + n * done
        run[5] -= done
        return bool(finished)


def _elapsed(base: float, slope: float, n: int, context: int, iterations: int) -> float:
    """Duration of `iterations` decode iterations; the j-th reads context + n*(j-1) tokens."""
    return iterations * (base + slope * context) + slope * n * (iterations * (iterations - 1) / 2)


SETTLE_STEPS = 8  # _first_reaching's exact-count corrections (the rounding needs 1 or 2)


def _first_reaching(base: float, slope: float, n: int, context: int, horizon: float) -> int:
    """Smallest iteration count >= 1 whose run lasts at least `horizon` seconds."""
    a = slope * n / 2
    b = base + slope * context - a
    if horizon <= 0:
        return 1
    estimate = (-b + math.sqrt(b * b + 4 * a * horizon)) / (2 * a) if a > 0 else horizon / b
    count = max(1, math.ceil(estimate))
    # The quadratic's rounding can be off by one either way; settle it exactly, in a
    # bounded number of steps: far beyond any simulated horizon (Simulator.MAX_TIME_S),
    # where adding one iteration no longer changes the float sum, the estimate stands.
    for _ in range(SETTLE_STEPS):
        if count > 1 and _elapsed(base, slope, n, context, count - 1) >= horizon:
            count -= 1
        elif _elapsed(base, slope, n, context, count) < horizon:
            count += 1
        else:
            break
    return count
