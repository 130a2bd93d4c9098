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

Lazy advancing (`advance_lazy`, `take_ahead`, `LazyEpoch`): a disaggregated cluster's
placements read only a decode instance's counts (free KV, queue lengths), yet each one
would pass over every running request of every decode instance, and each transfer's
join would end a run with another pass. On a decode instance the requests' token state
(`num_computed`, `num_generated`, `last_token_time`, token times) may instead lag, for an
epoch: one pass at its start counts every running request into a finish heap (when its
output completes) and a block heap (its next token that needs a new KV block), counted
in tokens applied since the epoch began; a request joining by transfer is counted in
when it joins. Advancing the run (a placement, a cut) and ending it then move only the
instance's own state, exactly as `_apply_run` would: the run's clock, context and
iterations, the statistics, the token gaps (the requests whose first gap of the run is a
single, those that joined, in running order), the KV sample, and each request's KV
blocks (`bm.allocate_blocks`, request by request, from the block heap: free KV is
exact); at a run's end the requests that finish come off the finish heap, are synced and
finish in running order, and the tally for the next plan (count, context, least output
left, new blocks) comes from the heaps. `sync_run` ends the epoch, giving every request
its lagging tokens; it runs before anything reads token state: `advance_to`, a plan that
cannot start from the tally, a batch build, `Simulator.check_invariants`, and every
decision whose policy does not declare `reads_token_state = False` (`DecisionLoop.ask`;
the simulator keeps the instances in an epoch in `lazy_runs`). tests/test_lazy_decode.py
checks that lazy and eager runs agree exactly.

`Simulator(decode_runs=False)` plans no runs (the reference path);
tests/test_properties.py checks that both paths, and cut runs, give the same numbers.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
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
    # (now, start, first_reaching(now - start)) of the last advance that applied nothing:
    # the cut at the same moment reuses it.
    probe: tuple[float, float, int] | None = None


@dataclass(slots=True)
class LazyEpoch:
    """A decode instance's requests advanced lazily (module docstring): `applied` tokens
    (one per iteration) since the epoch began, of which each request lags the part since
    it joined (`joined`: rid -> `applied` then); the finish heap (`applied` at which a
    request's output is complete, order, request); the KV blocks given through token
    `taken` (counted in `applied`): a request's tokens that need a new block recur every
    `block_size`, so each request sits in the bucket of that residue (`buckets`;
    `residue`: rid -> its bucket, -1 while in `pending`, a heap (first such token, order,
    request) of those holding a whole spare block, rare); the requests whose first
    lazily applied iteration is still to come (`stalled`, in running order: their first
    gap is a single); the last boundary applied (`end`) and,
    recording token times, every boundary since the epoch began (`times`; `first_time`:
    rid -> its index there at joining)."""

    applied: int = 0
    order: int = 0
    joined: dict[int, int] = field(default_factory=dict)
    finish: list[tuple[int, int, Request]] = field(default_factory=list)
    taken: int = 0
    buckets: list[list[Request]] = field(default_factory=list)
    residue: dict[int, int] = field(default_factory=dict)
    pending: list[tuple[int, int, Request]] = field(default_factory=list)
    stalled: list[Request] = field(default_factory=list)
    end: float = 0.0
    times: list[float] | None = None
    first_time: dict[int, int] = field(default_factory=dict)


def elapsed(base: float, slope: float, n: int, context: int, iterations: int) -> float:
    """Duration of `iterations` decode iterations; the j-th reads context + n*(j-1) tokens."""
    return iterations * (base + slope * context) + slope * n * (iterations * (iterations - 1) / 2)


SETTLE_STEPS = 8  # first_reaching's exact-count corrections (the rounding needs 1 or 2)


def first_reaching(base: float, slope: float, n: int, context: int, horizon: float) -> int:
    """Smallest iteration count >= 1 whose run lasts at least `horizon` seconds."""
    per = base + slope * context  # `elapsed` inlined below, term by term (same floats)
    if horizon <= per or horizon <= 0:
        return 1  # the first iteration reaches it (the common case: a mid-run probe)
    step = slope * n
    a = step / 2
    b = per - a
    estimate = (-b + math.sqrt(b * b + 4 * a * horizon)) / (2 * a) if a > 0 else horizon / b
    count = max(1, math.ceil(estimate))
    # The quadratic's rounding can be off by one either way; settle it exactly, in a
    # bounded number of steps: far beyond any simulated horizon (Simulator.MAX_TIME_S),
    # where adding one iteration no longer changes the float sum, the estimate stands.
    for _ in range(SETTLE_STEPS):
        if count > 1 and (count - 1) * per + step * ((count - 1) * (count - 2) / 2) >= \
                horizon:
            count -= 1
        elif count * per + step * (count * (count - 1) / 2) < horizon:
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
    lazy_run_ends = False  # decode instances end their runs lazily (envs/core/disagg.py)
    lazy: LazyEpoch | None = None  # the lazy epoch in progress (module docstring)
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
            if self.lazy is not None:
                self.sync_run()  # the pass below reads token state
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
        if self.lazy is not None:  # a lazy epoch in progress: advance it, then sync
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

    # ------------------------------------------------------------ lazy advancing
    def advance_lazy(self, now: float) -> None:
        """`advance_to` with the requests' token state left lagging (module docstring):
        the run's clock, context and iteration count, the statistics, the token gaps,
        each request's KV blocks and the KV sample come out as `advance_to` makes them."""
        run = self.run
        if run is None or now <= run.start:
            return
        epoch = self.lazy or self._start_epoch()
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        reach = first_reaching(base, slope, n, context, now - start)
        done = min(reach - 1, run.iterations - 1)
        if done > 0:
            self._lazy_segment(epoch, done, start + elapsed(base, slope, n, context, done))
        else:
            run.probe = (now, start, reach)
        if epoch.applied + 1 > epoch.taken:
            self._give_blocks(epoch, epoch.applied + 1)  # the iteration in flight
        self._sample_kv(now)

    def take_ahead(self) -> None:
        """`bm.catch_up(running, ahead=1)` of a run that starts now, lazily."""
        epoch = self.lazy or self._start_epoch()
        self._give_blocks(epoch, epoch.applied + 1)

    def _start_epoch(self) -> LazyEpoch:
        """Begin lazy advancing: one pass over the running requests (synced now)."""
        epoch = self.lazy = LazyEpoch()
        epoch.buckets = [[] for _ in range(self.block_size)]
        self.sim.lazy_runs[self.index] = self
        run = self.run
        origin = run.start if run is not None else math.nan
        block_size = self.block_size
        if self.record_token_times:
            epoch.times = []
        for request in self.running:
            self._lazy_join(epoch, request, block_size)
            if request.last_token_time == origin:
                epoch.stalled.pop()  # kept pace: its gaps are the run's
        return epoch

    def _lazy_join(self, epoch: LazyEpoch, request: Request, block_size: int) -> None:
        """Count `request` (synced, running from now on) into the epoch."""
        applied = epoch.applied
        order = epoch.order
        epoch.order = order + 1
        rid = request.rid
        epoch.joined[rid] = applied
        heapq.heappush(epoch.finish, (applied + request.output_len - request.num_generated,
                                      order, request))
        # Its first token that needs a new block (its blocks cover those before).
        token = applied + request.num_blocks * block_size - request.num_computed + 1
        if token <= applied + block_size:
            residue = token % block_size
            epoch.buckets[residue].append(request)
            epoch.residue[rid] = residue
        else:  # a whole spare block: its bucket from that token on
            heapq.heappush(epoch.pending, (token, order, request))
            epoch.residue[rid] = -1
        epoch.stalled.append(request)
        if epoch.times is not None:
            epoch.first_time[rid] = len(epoch.times)

    def _lazy_segment(self, epoch: LazyEpoch, done: int, end: float) -> None:
        """`done` iterations of the run, ending at `end`, applied to everything but the
        requests' token state, as `_apply_run` applies them: the gaps (the stalled
        requests' singles in running order), the statistics, the run's own state."""
        run = self.run
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        first = base + slope * context
        last = first + slope * n * (done - 1)
        gaps = self.gaps
        stalled = epoch.stalled
        count = len(stalled)
        if count:
            singles = gaps.singles
            for request in stalled:
                singles.append(start + first - request.last_token_time)
            epoch.stalled = []
        if n - count:
            gaps.add_run(first, last, done, n - count)
        if count and done > 1:  # after its first gap, a stalled request keeps the pace
            gaps.add_run(first + slope * n, last, done - 1, count)
        if epoch.times is not None:
            epoch.times.extend([start + elapsed(base, slope, n, context, j)
                                for j in range(1, done + 1)])
        epoch.applied += done
        epoch.end = end
        self.num_iterations += done
        self.busy_time += end - start
        run.start = end
        run.context = context + n * done
        run.iterations -= done

    def _give_blocks(self, epoch: LazyEpoch, through: int) -> None:
        """Give each request the KV blocks that its tokens up to `through` (counted in
        `epoch.applied`) fill: those of the residues passed since `taken`, bucket by
        bucket."""
        taken = epoch.taken
        if through <= taken:
            return
        block_size = self.block_size
        buckets = epoch.buckets
        bm = self.bm
        for token in range(taken + 1, min(through, taken + block_size) + 1):
            bucket = buckets[token % block_size]
            if bucket:
                count = 1 + (through - token) // block_size
                for request in bucket:
                    bm.allocate_blocks(request, count)
        pending = epoch.pending
        while pending and pending[0][0] <= through:
            token, _, request = heapq.heappop(pending)
            residue = epoch.residue
            if residue.get(request.rid) != -1:
                continue  # it finished
            bm.allocate_blocks(request, 1 + (through - token) // block_size)
            residue[request.rid] = token % block_size
            buckets[token % block_size].append(request)
        epoch.taken = through

    def _new_pending_blocks(self, epoch: LazyEpoch, token: int) -> int:
        """How many requests in `epoch.pending` need a new block first for `token` (>
        `taken`); those in the buckets need one when `token` is their residue."""
        count = 0
        for first, _, request in epoch.pending:
            if first == token and epoch.residue.get(request.rid) == -1:
                count += 1
        return count

    def _sync_request(self, epoch: LazyEpoch, request: Request) -> None:
        lag = epoch.applied - epoch.joined[request.rid]
        if lag:
            request.num_computed += lag
            request.num_generated += lag
            request.last_token_time = epoch.end
            if epoch.times is not None:
                request.token_times.extend(epoch.times[epoch.first_time[request.rid]:])

    def sync_run(self) -> None:
        """End the lazy epoch: every running request's token state as eager advancing
        leaves it (its KV blocks already are)."""
        epoch = self.lazy
        if epoch is None:
            return
        self.lazy = None
        self.sim.lazy_runs.pop(self.index, None)
        for request in self.running:
            self._sync_request(epoch, request)

    def join_lazily(self, requests: list[Request]) -> None:
        """`requests` (synced) join `running` while an epoch is in progress."""
        epoch = self.lazy
        block_size = self.block_size
        for request in requests:
            self._lazy_join(epoch, request, block_size)

    def _finish_run_lazily(self, now: float) -> None:
        """`_finish_run` in a lazy epoch: the last segment, the blocks it filled, the
        requests that finish (synced, in running order), and the tally for the next plan
        without a pass over the others."""
        run = self.run
        epoch = self.lazy or self._start_epoch()
        self._lazy_segment(epoch, run.iterations, now)
        applied = epoch.applied
        self._give_blocks(epoch, applied)
        finish = epoch.finish
        context = run.context
        finished = []
        while finish and finish[0][0] <= applied:
            request = heapq.heappop(finish)[2]
            self._sync_request(epoch, request)
            context -= request.num_computed + 1
            residue = epoch.residue.pop(request.rid)
            if residue >= 0:
                epoch.buckets[residue].remove(request)
            del epoch.joined[request.rid]
            epoch.first_time.pop(request.rid, None)
            finished.append(request)
        new_blocks = len(epoch.buckets[(applied + 1) % self.block_size])
        if epoch.pending:
            new_blocks += self._new_pending_blocks(epoch, applied + 1)
        self.run_aggregates = DecodeTally(
            run.n - len(finished), context, finish[0][0] - applied if finish else math.inf,
            new_blocks)
        for request in finished:
            self._finish(request, now)
        if finished:
            self.running = [r for r in self.running if r.status == RUNNING]
        self.run = None
        self.aggregates = self.run_aggregates
        if not self.running:
            self.sync_run()  # nothing left lagging

    def cut_run(self, now: float, exact: bool = True) -> float | None:
        """End the decode run in flight at its first iteration boundary at or after `now`
        (an iteration is not stopped halfway): the run keeps its closed form with fewer
        iterations. Returns the new end, or None without a run or when it ends by then
        anyway; the simulator moves the instance's event there (`Simulator.interrupt`).
        With `exact` False the run is advanced lazily (`advance_lazy`)."""
        run = self.run
        if run is None:
            return None
        if exact:
            self.advance_to(now)
        else:
            self.advance_lazy(now)
        start, n, base, slope, context = run.start, run.n, run.base, run.slope, run.context
        probe = run.probe
        if probe is not None and probe[0] == now and probe[1] == start:
            keep = probe[2]  # the advance just computed it
        else:
            keep = first_reaching(base, slope, n, context, now - start)
        if keep >= run.iterations:
            return None
        run.iterations = keep
        return start + elapsed(base, slope, n, context, keep)

    def _finish_run(self, now: float) -> None:
        if self.lazy is not None or self.lazy_run_ends:
            self._finish_run_lazily(now)
            return
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
        stalled = remaining_context = next_blocks = 0
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
            capacity = blocks * block_size  # tokens its blocks hold
            if computed > capacity:
                need = -(-computed // block_size) - blocks
                growth.append((request, need))
                # what it holds once `allocate_each` below has run
                capacity = (blocks + need) * block_size
            left = request.output_len - generated
            if left == 0:
                finished.append(request)
            else:
                remaining_context += computed  # the + 1 of each is added below, once
                if left < min_left:
                    min_left = left
                if computed >= capacity:  # its next token, computed + 1, needs a block
                    next_blocks += 1
        # Every request that did not finish goes on decoding and reads computed + 1.
        remaining = len(running) - len(finished)
        remaining_context += remaining
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


__all__ = ["DecodeRun", "DecodeRuns", "LazyEpoch", "elapsed", "first_reaching"]
