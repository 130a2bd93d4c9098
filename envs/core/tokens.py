"""Token bookkeeping at the end of an iteration: the reference rule, written once.

An iteration that ran from `start` to `now` and gave a request `num_new` tokens to compute
leaves it with `num_computed += num_new`. If that reaches the request's token count
(`prompt_len + num_generated`: the vLLM accounting of envs/core/request.py), a token is
sampled at `now`: `num_generated += 1`; the time since its previous token is a gap
(`TokenGaps`: requests whose previous token came exactly at `start` kept pace and are
counted into one weighted gap per iteration, any other gap - after a stall, a preemption,
a swap - is stored singly); the first token settles the TTFT; the last one finishes the
request. Otherwise (a prefill chunk) no token is sampled. `complete_tokens` is that rule
for one request; `IterationEnd` collects what the iteration leaves behind: the count of
requests that kept pace, and, over the requests that go on decoding, their number, their
context for the next iteration, the least output they have left and how many need a new
KV block for their next token (`DecodeTally`, read by the next plan).

This is the reference. The fast paths copy it, inlined where a call per request would
cost speed: `TokenBookkeeping._finish_iteration_fast` for every batch entry and,
specialised to one decode each, for a group of decodes scheduled together
(`BatchBuilding._schedule_bulk`); `DecodeRuns._apply_run` (envs/core/decode_runs.py) is its
closed form over k decode iterations. `Simulator(decode_runs=False)` runs this function
for every request of every iteration and nothing else, and
`tests/test_properties.py::test_fast_paths_match_the_reference_path` checks that both
give the same times, gaps, preemptions and iteration counts.

The KV blocks a request holds are the block manager's (envs/core/kv_cache.py); here they
are only read (does the next token need a new block?).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from servegym.envs.core.request import RUNNING, Request

if TYPE_CHECKING:
    from servegym.envs.core.kv_cache import BlockManager

# What `complete_tokens` did to a request (bit flags).
NO_TOKEN = 0  # a prefill chunk: no token sampled
TOKEN = 1  # a token was sampled
FIRST_TOKEN = 2  # ... and it was the request's first (its TTFT is settled)
LAST_TOKEN = 4  # ... and it was the request's last (the request is finished)


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


@dataclass(slots=True)
class DecodeTally:
    """Left by an iteration or decode run after which every running request decodes:
    their number, their context sum for the next iteration (each reads its computed
    tokens + 1), the least output any has left, and how many need a new KV block for
    their next token. Lets the next plan (a decode run, a group of decodes) skip a pass
    over the requests; valid only until anything else changes them. Read-only by
    convention (not frozen: a frozen dataclass is slower to build, once per iteration)."""

    count: int
    context: int
    min_left: float
    new_blocks: int


@dataclass(slots=True)
class IterationEnd:
    """One iteration's end, [start, now], and what `complete_tokens` counts during it."""

    start: float
    now: float
    block_size: int
    record_times: bool
    singles: array = field(repr=False)  # TokenGaps.singles of the instance
    continuing: int = 0  # requests whose previous token came at `start`
    decoding: int = 0  # requests that sampled a token and go on decoding
    context: int = 0  # their context sum for the next iteration
    min_left: float = math.inf  # the least output any of them has left
    new_blocks: int = 0  # of them, those whose next token needs a new KV block
    all_decoding: bool = True  # no entry was a prefill chunk

    def tally(self, running: int) -> DecodeTally | None:
        """The `DecodeTally` when every one of `running` requests decodes next, else None."""
        if self.all_decoding and self.decoding == running:
            return DecodeTally(self.decoding, self.context, self.min_left, self.new_blocks)
        return None


def complete_tokens(request: Request, num_new: int, end: IterationEnd) -> int:
    """The reference rule (module docstring): `request` computed `num_new` tokens in the
    iteration `end`; returns NO_TOKEN or TOKEN, with FIRST_TOKEN and LAST_TOKEN added
    when they apply. The caller records the first token and finishes the request."""
    computed = request.num_computed + num_new
    request.num_computed = computed
    generated = request.num_generated
    if computed != request.prompt_len + generated:
        end.all_decoding = False
        return NO_TOKEN
    generated += 1
    request.num_generated = generated
    flags = TOKEN
    now = end.now
    last_token = request.last_token_time
    if last_token == end.start:
        end.continuing += 1
    elif generated == 1:
        request.first_token_time = now
        flags |= FIRST_TOKEN
    else:
        end.singles.append(now - last_token)
    request.last_token_time = now
    if end.record_times:
        request.token_times.append(now)
    left = request.output_len - generated
    if left == 0:
        return flags | LAST_TOKEN
    end.decoding += 1
    end.context += computed + 1
    if left < end.min_left:
        end.min_left = left
    if computed + 1 > request.num_blocks * end.block_size:
        end.new_blocks += 1
    return flags


class TokenBookkeeping:
    """Mixin of `Instance` (envs/core/instance.py): ends the iteration in flight.

    Reads the batch plan (`plan`: entries, group of `bulk` decodes, start), `running`,
    `bm`, `gaps`, `sim`; writes the requests' token state, `aggregates`, the iteration
    statistics, and `running` (finished requests leave it). KV blocks change only through
    `bm`: the blocks reserved for a group are claimed, prompt blocks are published to the
    prefix cache, finished requests free theirs (`Lifecycle._finish`).
    """

    bm: BlockManager
    running: list[Request]
    plan: Any
    sim: Any
    gaps: TokenGaps
    block_size: int
    record_token_times: bool
    aggregates: DecodeTally | None
    num_iterations: int
    busy_time: float

    def _finish_iteration_reference(self, now: float) -> None:
        """The reference: `complete_tokens` for every batch entry (no groups: the reference
        path schedules none)."""
        plan = self.plan
        start = plan.start
        self.num_iterations += 1
        self.busy_time += now - start
        bm, sim = self.bm, self.sim
        end = IterationEnd(start, now, self.block_size, self.record_token_times,
                           self.gaps.singles)
        finished = False
        for request, num_new in plan.entries:
            flags = complete_tokens(request, num_new, end)
            if bm.enable_prefix_caching and request.prefix_hashes and \
                    request.num_computed - num_new < request.prompt_len:
                bm.commit_full_blocks(request)
            if flags & FIRST_TOKEN:
                sim.record_first_token(request)
            if flags & LAST_TOKEN:
                self._finish(request, now)
                finished = True
        self._close_iteration(end, finished)

    def _finish_iteration_fast(self, now: float) -> None:
        # The hot loop of the simulator: `complete_tokens` inlined (the reference; keep the
        # two in step), once specialised to the group of decodes, once for batch entries;
        # then `_close_iteration`, inlined.
        plan = self.plan
        start = plan.start
        self.num_iterations += 1
        self.busy_time += now - start
        bm = self.bm
        prefix_caching = bm.enable_prefix_caching
        record_times = self.record_token_times
        singles = self.gaps.singles
        continuing = decoding = context = new_blocks = 0
        min_left = math.inf
        all_decoding = True
        finished = False
        block_size = self.block_size
        bulk = plan.bulk
        if bulk:
            # The group: one decode each; blocks for those that cross into a new block were
            # reserved when it was scheduled (claimed before any finished request frees).
            # The group is the running list's head (admissions of this build came after
            # it); nothing below changes the list before the loop ends.
            running = self.running
            group = running if len(running) == bulk else running[:bulk]
            needy: list[Request] = []
            done: list[Request] = []
            for request in group:
                computed = request.num_computed + 1
                request.num_computed = computed
                capacity = request.num_blocks * block_size  # tokens its blocks hold
                if computed > capacity:
                    needy.append(request)
                    capacity += block_size
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
                    done.append(request)
                else:
                    context += computed  # the + 1 of each is added below, once
                    if left < min_left:
                        min_left = left
                    if computed >= capacity:  # its next token, computed + 1, needs a block
                        new_blocks += 1
            # Every member that did not finish goes on decoding and reads computed + 1.
            decoding = bulk - len(done)
            context += decoding
            if needy or bm.reserved:
                bm.claim_reserved(needy)
            if done:
                for request in done:
                    self._finish(request, now)
                finished = True
        for request, num_new in plan.entries:
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
        # `_close_iteration`, inlined.
        if continuing:
            duration = now - start
            self.gaps.add_run(duration, duration, 1, continuing)
        if finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        self.aggregates = DecodeTally(decoding, context, min_left, new_blocks) \
            if all_decoding and decoding == len(self.running) else None
        plan.entries = []
        plan.bulk = 0
        plan.extra_time = 0.0

    def _close_iteration(self, end: IterationEnd, finished: bool) -> None:
        """The iteration's gaps of requests that kept pace, finished requests out of
        `running`, the `DecodeTally` for the next plan, the plan cleared."""
        if end.continuing:
            duration = end.now - end.start
            self.gaps.add_run(duration, duration, 1, end.continuing)
        if finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        # Saves the next plan, or the next batch build, a pass over the requests.
        self.aggregates = end.tally(len(self.running))
        self.plan.clear_after_iteration()


__all__ = ["DecodeTally", "IterationEnd", "TokenBookkeeping", "TokenGaps", "complete_tokens",
           "FIRST_TOKEN", "LAST_TOKEN", "NO_TOKEN", "TOKEN"]
