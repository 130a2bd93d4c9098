"""Decode runs: many decode-only iterations advanced in closed form, as one event.

When every running request is decoding, nothing is swapped and no waiting request can be
admitted (for a head-of-line policy: the head does not fit), nothing but a finishing
request, an arrival or a KV shortage can change the next iterations. The instance then
plans a run of `k` iterations in one event (`_plan_decode_run`):

    k = min(least output left over the running requests,
            block_size * (free blocks // n)          # cannot exhaust the KV cache
            first iteration boundary at or after the next arrival)

With n requests and context sum S (each reads its computed tokens + 1), the cost model's
decode-only time is affine in the context (`CostModel.decode_coeffs(n) -> (base, slope)`)
and the context grows by n per iteration, so the run lasts
`k (base + slope S) + slope n k (k - 1) / 2` (`elapsed`) and the boundary at or after a
horizon is the root of a quadratic, settled exactly by integer checks (`first_reaching`).

The run's state is a `DecodeRun` (a slotted dataclass). `_apply_run` applies `done` of its
iterations: the closed form of the reference token rule (`complete_tokens`,
envs/core/tokens.py) applied k times to every running request, with the gaps as one
linear run per request group; the KV blocks the iterations filled are taken
(`BlockManager.allocate_each`) before the requests that finish at the end free theirs, so
cache evictions happen as iterating one by one would. Routing reads instance state
mid-run through `advance_to(t)`, which applies the iterations that ended before `t` and
gives the iteration in flight the blocks it was scheduled with, without moving the run's
end; `cut_run(t)` ends the run at its first boundary at or after `t` (the simulator moves
the event: `Simulator.interrupt`). `Simulator(decode_runs=False)` plans no runs (the
reference path); tests/test_properties.py checks that both paths, and cut runs, give the
same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from servegym.envs.core.request import RUNNING, Request
from servegym.envs.core.tokens import DecodeTally

if TYPE_CHECKING:
    from servegym.envs.core.batching import IterationPlan
    from servegym.envs.core.kv_cache import BlockManager
    from servegym.envs.core.tokens import TokenGaps


@dataclass(slots=True)
class DecodeRun:
    """A planned decode run: from `start`, `iterations` more decode iterations of `n`
    requests whose context sum is `context`, priced by the affine (`base`, `slope`)."""

    start: float
    n: int
    base: float
    slope: float
    context: int
    iterations: int


def elapsed(base: float, slope: float, n: int, context: int, iterations: int) -> float:
    """Duration of `iterations` decode iterations; the j-th reads context + n*(j-1) tokens."""
    return iterations * (base + slope * context) + slope * n * (iterations * (iterations - 1) / 2)


SETTLE_STEPS = 8  # first_reaching's exact-count corrections (the rounding needs 1 or 2)


def first_reaching(base: float, slope: float, n: int, context: int, horizon: float) -> int:
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
        if count > 1 and elapsed(base, slope, n, context, count - 1) >= horizon:
            count -= 1
        elif elapsed(base, slope, n, context, count) < horizon:
            count += 1
        else:
            break
    return count


class DecodeRuns:
    """Mixin of `Instance` (envs/core/instance.py): plans, advances, cuts and applies
    decode runs (module docstring).

    Reads `running`, `waiting`, `swapped`, `config`, `cost`, `sim` (`decode_runs`,
    `admit_head_only`, `next_arrival_time`, `schedule`), `aggregates`; writes `run`,
    `run_aggregates`, `aggregates`, the requests' token state, the statistics; KV blocks
    only through `bm`.
    """

    bm: BlockManager
    config: Any
    cost: Any
    sim: Any
    plan: IterationPlan
    block_size: int
    record_token_times: bool
    waiting: list[Request]
    running: list[Request]
    swapped: list[Request]
    gaps: TokenGaps
    run: DecodeRun | None
    aggregates: DecodeTally | None
    run_aggregates: DecodeTally | None
    decode_coeffs: list[tuple[float, float] | None]
    event_pending: bool
    retain_queue: list[Any]  # RETAIN questions of the event just closed (retention.py)
    arrivals_cut_runs = True
    num_iterations: int
    num_decode_runs: int
    busy_time: float

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
        if n == 0 or self.swapped or not self.sim.decode_runs or self.retain_queue:
            return False  # (RETAIN questions pending: build_next asks them first)
        if self.waiting and n < self.config.max_num_seqs:
            # Would a waiting request fit into a batch of these decodes?
            plan = self.plan
            plan.entries = []
            plan.budget = self.config.max_num_batched_tokens - n
            plan.longest = 0
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
        if aggregates is not None and aggregates.count == n:
            # The iteration or run that just ended left every running request decoding.
            context = aggregates.context
            iterations = min(iterations, aggregates.min_left)
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
        # An arrival may join this instance's batch, so the run ends at the first boundary
        # after it; a decode instance of a disaggregated cluster takes requests only by
        # transfers, which cut its run themselves (`arrivals_cut_runs` False).
        horizon = self.sim.next_arrival_time - now if self.arrivals_cut_runs else math.inf
        if horizon < math.inf:
            iterations = min(iterations, first_reaching(base, slope, n, context, horizon))
        self.run = DecodeRun(now, n, base, slope, context, iterations)
        self.num_decode_runs += 1
        self._sample_kv(now)
        self.sim.schedule(now + elapsed(base, slope, n, context, iterations), self)
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
        if run is None or now <= run.start:
            return
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        done = min(first_reaching(base, slope, n, context, now - start) - 1,
                   run.iterations - 1)
        if done > 0:
            self._apply_run(done, start + elapsed(base, slope, n, context, done))
        self.bm.catch_up(self.running, ahead=1)  # the iteration in flight
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
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        keep = first_reaching(base, slope, n, context, now - start)
        if keep >= run.iterations:
            return None
        run.iterations = keep
        return start + elapsed(base, slope, n, context, keep)

    def _finish_run(self, now: float) -> None:
        if self._apply_run(self.run.iterations, now):
            self.running = [r for r in self.running if r.status == RUNNING]
        self.run = None
        self.aggregates = self.run_aggregates

    def _apply_run(self, done: int, end: float) -> bool:
        """Apply `done` iterations of the run ending at `end`; True if a request finished."""
        # The closed form of `complete_tokens` (envs/core/tokens.py, the reference) applied
        # `done` times to every running request, each decoding one token per iteration.
        run = self.run
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        first = base + slope * context
        last = first + slope * n * (done - 1)
        block_size = self.block_size
        stalled = remaining = remaining_context = next_blocks = 0
        min_left = math.inf
        finished: list[Request] = []
        growth: list[tuple[Request, int]] = []  # (request, blocks its tokens filled)
        gaps = self.gaps
        singles = gaps.singles
        running = self.running
        if self.record_token_times:
            times = [start + elapsed(base, slope, n, context, j) for j in range(1, done + 1)]
            for request in running:
                request.token_times.extend(times)
        for request in running:
            last_token = request.last_token_time
            if last_token != start:  # stalled before this run
                singles.append(start + first - last_token)
                stalled += 1
            computed = request.num_computed + done
            request.num_computed = computed
            generated = request.num_generated + done
            request.num_generated = generated
            request.last_token_time = end
            blocks = request.num_blocks
            if computed > blocks * block_size:
                need = -(-computed // block_size) - blocks
                growth.append((request, need))
                blocks += need  # what it holds once `allocate_each` below has run
            left = request.output_len - generated
            if left == 0:
                finished.append(request)
            else:
                remaining += 1
                remaining_context += computed + 1
                if left < min_left:
                    min_left = left
                if computed + 1 > blocks * block_size:
                    next_blocks += 1
        self.run_aggregates = DecodeTally(remaining, remaining_context, min_left, next_blocks)
        continuing = n - stalled
        if continuing:
            gaps.add_run(first, last, done, continuing)
        if stalled and done > 1:  # after its first gap, a stalled request keeps the pace
            gaps.add_run(first + slope * n, last, done - 1, stalled)
        # Blocks were needed during the run, before anything finished at its end: take them
        # first, so a cached block is evicted exactly when iterating one by one would.
        if growth:
            self.bm.allocate_each(growth)
        for request in finished:
            self._finish(request, end)
        self.num_iterations += done
        self.busy_time += end - start
        run.start = end
        run.context = context + n * done
        run.iterations -= done
        return bool(finished)


__all__ = ["DecodeRun", "DecodeRuns", "elapsed", "first_reaching"]
