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
the event: `Simulator.interrupt`).

Lazy advancing (`advance_lazy`, `take_ahead`): a disaggregated cluster's placements read
only a decode instance's counts (free KV, queue lengths), and each one would otherwise
pass over every running request of every decode instance. A lazy advance moves the run's
own state (start, context, iterations left, statistics, KV sample) and takes the KV
blocks the requests would have been given (`bm.reserve`; counted from a histogram of the
requests' free slots in their last blocks, so `bm.num_free` is exact), and records the
segment; the requests' token state lags. `sync_run` (also inside `_apply_run`, in the same
pass as the run's end) replays the segments: each segment's gaps and token times as its
own apply would have written them, the stalled requests' single gaps at the first, the
reserved blocks handed to their requests (`claim_reserved`). Synced before anything reads
token state: the run's end, `advance_to`, `Simulator.check_invariants`, and every
decision whose policy does not declare `reads_token_state = False`
(`DecisionLoop.ask`; the simulator keeps the lazily advanced instances in `lazy_runs`).

`Simulator(decode_runs=False)` plans no runs (the reference path);
tests/test_properties.py checks that both paths, and cut runs, give the same numbers.
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
    # Lazily applied (`advance_lazy`): the (start, context, iterations) segments applied
    # to the run but not yet to its requests, their total, the tokens beyond the
    # requests' recorded state whose KV blocks the pool has given (`taken`), and the
    # requests' block slack histogram {free token slots in held blocks: count} at that
    # state (None until a lazy advance needs it).
    segments: list[tuple[float, int, int]] | None = None
    applied: int = 0
    taken: int = 0
    slack: dict[int, int] | None = None


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
        if run.segments or run.taken:  # advanced lazily before: replay, then sync
            self.advance_lazy(now)
            self.sync_run()
            return
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        done = min(first_reaching(base, slope, n, context, now - start) - 1,
                   run.iterations - 1)
        if done > 0:
            self._apply_run(done, start + elapsed(base, slope, n, context, done))
        self.bm.catch_up(self.running, ahead=1)  # the iteration in flight
        self._sample_kv(now)

    def advance_lazy(self, now: float) -> None:
        """`advance_to` for the instance's own numbers only: the run's clock, context and
        iteration count, the statistics, the KV blocks the pool has given (exact: the
        counts a placement reads, `bm.num_free`), the KV sample; the running requests'
        token state and the token gaps lag until `sync_run` (the run's end, a decision
        whose policy reads token state, `Simulator.check_invariants`) replays the same
        segments, so every number comes out as `advance_to` would have made it."""
        run = self.run
        if run is None or now <= run.start:
            return
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        done = min(first_reaching(base, slope, n, context, now - start) - 1,
                   run.iterations - 1)
        if done > 0:
            end = start + elapsed(base, slope, n, context, done)
            if run.segments is None:
                run.segments = [(start, context, done)]
            else:
                run.segments.append((start, context, done))
            self.num_iterations += done
            self.busy_time += end - start
            run.start = end
            run.context = context + n * done
            run.iterations -= done
            run.applied += done
        self.take_ahead()
        self._sample_kv(now)

    def take_ahead(self) -> None:
        """`bm.catch_up(running, ahead=1)` of a lazily advanced run: the pool gives the
        blocks the iteration in flight fills, counted from the slack histogram."""
        run = self.run
        tokens = run.applied + 1
        taken = run.taken
        if tokens <= taken:
            return
        self.sim.lazy_runs[self.index] = self
        slack = run.slack
        if slack is None:
            slack = run.slack = {}
            block_size = self.block_size
            for request in self.running:
                free = request.num_blocks * block_size - request.num_computed
                slack[free] = slack.get(free, 0) + 1
        block_size = self.block_size
        need = 0
        for free, count in slack.items():
            if tokens > free:
                # blocks for `tokens` more tokens beyond `free` slots, less those for `taken`
                need += count * (-((free - tokens) // block_size) -
                                 (-((free - taken) // block_size) if taken > free else 0))
        run.taken = tokens
        if need:
            self.bm.reserve(need)  # handed to the requests by `sync_run` / `_apply_run`

    def sync_run(self) -> None:
        """Apply the lazily advanced segments (`advance_lazy`) to the running requests, as
        `_apply_run` would have applied each: token state, token times, gaps, the blocks
        given to each request."""
        run = self.run
        if run is None or not (run.segments or run.taken):
            return
        self.sim.lazy_runs.pop(self.index, None)
        segments = run.segments or ()
        applied, taken = run.applied, run.taken
        end = run.start
        n, base, slope = run.n, run.base, run.slope
        block_size = self.block_size
        singles = self.gaps.singles
        stalled = 0
        if segments:
            origin = segments[0][0]
            first0 = base + slope * segments[0][1]
            if self.record_token_times:
                times: list[float] = []
                for start, context, done in segments:
                    times.extend(start + elapsed(base, slope, n, context, j)
                                 for j in range(1, done + 1))
        claims: list[Request] = []  # one entry per reserved block a request is given
        for request in self.running:
            if segments:
                last_token = request.last_token_time
                if last_token != origin:
                    singles.append(origin + first0 - last_token)
                    stalled += 1
                request.num_computed += applied
                request.num_generated += applied
                request.last_token_time = end
                if self.record_token_times:
                    request.token_times.extend(times)
            held = request.num_blocks
            tokens = request.num_computed - applied + taken
            if tokens > held * block_size:
                ahead = -(-tokens // block_size) - held
                if ahead == 1:
                    claims.append(request)
                else:
                    claims.extend([request] * ahead)
        if claims:
            self.bm.claim_reserved(claims)
        gaps = self.gaps
        for number, (_, context, done) in enumerate(segments):
            first = base + slope * context
            last = first + slope * n * (done - 1)
            if number:
                gaps.add_run(first, last, done, n)
                continue
            if n - stalled:
                gaps.add_run(first, last, done, n - stalled)
            if stalled and done > 1:
                gaps.add_run(first + slope * n, last, done - 1, stalled)
        run.segments = None
        run.applied = run.taken = 0
        run.slack = None

    def cut_run(self, now: float, exact: bool = True) -> float | None:
        """End the decode run in flight at its first iteration boundary at or after `now`
        (an iteration is not stopped halfway): the run keeps its closed form with fewer
        iterations. Returns the new end, or None without a run or when it ends by then
        anyway; the simulator moves the instance's event there (`Simulator.interrupt`)."""
        run = self.run
        if run is None:
            return None
        if exact:
            self.advance_to(now)
        else:
            self.advance_lazy(now)
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
        """Apply the run's last `done` iterations, ending at `end`, and the segments
        advanced lazily before them (`sync_run`'s replay, in the same pass); True if a
        request finished."""
        # The closed form of `complete_tokens` (envs/core/tokens.py, the reference) applied
        # `done` times to every running request, each decoding one token per iteration;
        # each lazily applied segment's gaps and token times come out as its own apply
        # (`advance_to`) would have written them.
        run = self.run
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        segments = run.segments
        if segments is not None:
            self.sim.lazy_runs.pop(self.index, None)
            segments.append((start, context, done))
            origin, origin_context, _ = segments[0]
        else:
            origin, origin_context = start, context
        applied = run.applied + done  # tokens each request computes (one per iteration)
        taken = run.taken  # beyond its recorded ones, the tokens whose blocks it was given
        first = base + slope * origin_context
        block_size = self.block_size
        stalled = remaining = remaining_context = next_blocks = 0
        min_left = math.inf
        finished: list[Request] = []
        growth: list[tuple[Request, int]] = []  # (request, blocks its tokens filled)
        claims: list[Request] = []  # one entry per block `take_ahead` reserved for it
        singles = self.gaps.singles
        running = self.running
        if self.record_token_times:
            times = [seg_start + elapsed(base, slope, n, seg_context, j)
                     for seg_start, seg_context, seg_done in (segments or ((start, context,
                                                                             done),))
                     for j in range(1, seg_done + 1)]
            for request in running:
                request.token_times.extend(times)
        for request in running:
            last_token = request.last_token_time
            if last_token != origin:  # stalled before this run
                singles.append(origin + first - last_token)
                stalled += 1
            computed = request.num_computed
            blocks = request.num_blocks
            if taken and computed + taken > blocks * block_size:  # reserved by take_ahead
                ahead = -(-(computed + taken) // block_size) - blocks
                if ahead == 1:
                    claims.append(request)
                else:
                    claims.extend([request] * ahead)
                blocks += ahead
            computed += applied
            request.num_computed = computed
            generated = request.num_generated + applied
            request.num_generated = generated
            request.last_token_time = end
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
        gaps = self.gaps
        for number, (_, seg_context, seg_done) in enumerate(segments or ((start, context,
                                                                           done),)):
            seg_first = base + slope * seg_context
            seg_last = seg_first + slope * n * (seg_done - 1)
            if number:  # every request kept pace since the first segment
                gaps.add_run(seg_first, seg_last, seg_done, n)
                continue
            if n - stalled:
                gaps.add_run(seg_first, seg_last, seg_done, n - stalled)
            if stalled and seg_done > 1:  # after its first gap, a stalled one keeps pace
                gaps.add_run(seg_first + slope * n, seg_last, seg_done - 1, stalled)
        # Blocks were needed during the run, before anything finished at its end: take them
        # first, so a cached block is evicted exactly when iterating one by one would.
        if claims:
            self.bm.claim_reserved(claims)
        if growth:
            self.bm.allocate_each(growth)
        for request in finished:
            self._finish(request, end)
        self.num_iterations += done
        self.busy_time += end - start
        run.start = end
        run.context = context + n * done
        run.iterations -= done
        run.segments = None
        run.applied = run.taken = 0
        run.slack = None
        return bool(finished)


__all__ = ["DecodeRun", "DecodeRuns", "elapsed", "first_reaching"]
