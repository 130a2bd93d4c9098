"""A request's life on one instance: arrival, rejection, running, preemption, finishing.

    arrival --(can never be served)--> REJECTED (reason recorded, departs at once)
    arrival --> WAITING --ADMIT--> RUNNING --last token--> FINISHED (departs)
                   ^                |   ^
                   |   recompute    |   | swap in (room again)
                   +----PREEMPT-----+   |
                                    +--> SWAPPED (blocks moved to host swap space)

* Rejection (`rejection_reason`): more tokens than the model's context; more KV blocks
  than the instance has above its watermark (prompt + output - 1 tokens: the last token
  is sampled, never written); without chunked prefill (and always in vllm_v0), a prompt
  above the batch token budget.
* `enqueue` appends to `waiting` and wakes the instance at `now`, after every arrival of
  the instant (the loop orders arrivals first).
* `_start_running` (an admission or a swap-in): RUNNING, at the end of `running`; the
  first admission sets `first_scheduled`.
* `_preempt`: the victim leaves `running` and gives back its tokens in the batch being
  built; with `swap` and room in swap space its blocks move to host memory (the swap time
  is added to the iteration) and it joins `swapped`, else its blocks are freed, its
  progress is counted in `recomputed_tokens` and it goes to the front of `waiting`.
* `_finish`: FINISHED at `now`, blocks freed, departure recorded.
* `can_receive`: room for a request's KV arriving by a transfer (disaggregation,
  envs/core/disagg.py); `live_requests`: every request whose KV the instance holds.

Status, queues and the request's timestamps are written here; KV blocks only through the
block manager (`bm`); the token counts by the token bookkeeping (envs/core/tokens.py),
except that a recompute starts over from zero computed tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servegym.envs.core.request import FINISHED, REJECTED, RUNNING, SWAPPED, WAITING, Request

if TYPE_CHECKING:
    from servegym.envs.core.batching import IterationPlan
    from servegym.envs.core.kv_cache import BlockManager


class Lifecycle:
    """Mixin of `Instance` (envs/core/instance.py): the request transitions above."""

    index: int
    bm: BlockManager
    config: Any
    cost: Any
    sim: Any
    plan: IterationPlan
    v0: bool
    max_model_len: int
    watermark_blocks: int
    retention: Any
    waiting: list[Request]
    running: list[Request]
    swapped: list[Request]
    event_pending: bool
    num_preemptions: int

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

    def can_receive(self, request: Request) -> bool:
        """Room now for `request`'s KV by a transfer (its computed tokens, above the
        watermark) and for one more sequence (PLACE decisions' mask, envs/core/disagg.py)."""
        bm = self.bm
        if len(self.running) + len(getattr(self, "incoming", ())) + len(bm.incoming) >= \
                self.config.max_num_seqs:
            return False
        return bm.blocks_for(request.num_computed) + self.watermark_blocks <= bm.num_free

    def live_requests(self) -> list[Request]:
        """Every request whose KV this instance holds or will hold (for the checks)."""
        return self.waiting + self.running + self.swapped

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

    def _start_running(self, request: Request, now: float) -> None:
        request.status = RUNNING
        if request.first_scheduled != request.first_scheduled:  # NaN: first admission
            request.first_scheduled = now
        self.running.append(request)

    def _preempt(self, victim: Request, swap: bool) -> None:
        self.running.remove(victim)
        self.plan.remove(victim)  # already in this batch: give its tokens back
        victim.num_preemptions += 1
        self.num_preemptions += 1
        bm = self.bm
        if swap and bm.can_swap_out(victim):
            seconds = self.cost.swap_time(bm.swap_out(victim))
            if bm.tiers is None:
                self.plan.extra_time += seconds
            else:  # the host link, shared with tier loads (envs/core/kv_tiers.py)
                self.plan.extra_time = bm.link_transfer(self.sim.now, seconds,
                                                        self.plan.extra_time)
            victim.status = SWAPPED
            victim.num_swaps += 1
            self.swapped.append(victim)
        else:
            victim.recomputed_tokens += victim.num_computed
            bm.free(victim)
            victim.num_computed = 0
            victim.status = WAITING
            self.waiting.insert(0, victim)

    def _finish(self, request: Request, now: float) -> None:
        request.status = FINISHED
        request.finish_time = now
        retention = self.retention
        if retention is not None and request.session >= 0 and \
                request.next_delay == request.next_delay:  # a next call (NaN: none)
            hashes = list(request.cached_hashes or ())
            self.bm.free(request)
            # Its RETAIN question, asked when the event closes (envs/core/retention.py).
            retention.on_finish(self, request, hashes)
        else:
            self.bm.free(request)
        self.sim.record_departure(request, now)


__all__ = ["Lifecycle"]
