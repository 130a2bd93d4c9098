"""Prefill/decode disaggregation: prefill pools, decode pools and the KV transfers between.

DistServe (Y. Zhong et al., "DistServe: Disaggregating Prefill and Decoding for
Goodput-optimized Large Language Model Serving", OSDI 2024) and Splitwise (P. Patel et al.,
"Splitwise: Efficient Generative LLM Inference Using Phase Splitting", ISCA 2024) run a
request's prompt on one instance and its decode on another, moving the KV cache between
them. What the simulator models:

    arrival --ROUTE (prefill instances only)--> a PrefillInstance runs the prompt
      (chunked prefill as configured) and samples the first token (TTFT is taken here)
    --> the request leaves the prefill instance's running set into its `handoff` queue,
      still holding its prefill-side KV blocks
    --PLACE (decode instances with room for its KV now; asked only when one has)-->
      blocks for its computed tokens are reserved on the decode instance
      (`BlockManager.reserve_transfer`) before the transfer starts; the request moves to
      the prefill instance's `sending` list; a TRANSFER event is scheduled at
      now + transfer time (`Network`, or the prefill pool's `CostModel.kv_transfer_time`:
      `kv_transfer_time`, which prices migration stages too)
    --TRANSFER event (its own handler, `Disaggregation.on_transfer_end`)--> the prefill
      side frees the request's blocks, the decode side's reservation becomes the
      request's (`claim_transfer`; `land_transfer`, which a migration's last stage
      shares, envs/core/migration.py), and the request joins the decode instance's
      `incoming` list; the decode instance takes it into its running set at its next
      event (now if idle; a decode run in flight is cut at its first iteration boundary
      at or after now, `Simulator.interrupt`) and decodes it to completion.

The prefill instance keeps serving its other requests during a transfer (overlap). A
request for which no decode instance has room waits in the cluster's hand-off queue (FIFO
over every prefill instance, `Disaggregation.pending`; it stays in its prefill instance's
`handoff` list, holding its prefill KV) and is retried whenever a decode instance ends an
iteration or run, or preempts (freeing KV), and at every prefill instance's event. A
request that no decode instance could ever serve (context, KV capacity, budget:
`Lifecycle.rejection_reason` of every decode instance) is rejected at arrival with the
reason `no_decode_instance_fits: ...`. A request of one output token
finishes on the prefill instance. The gap between the first token and the second includes
the handoff wait and the transfer (TPOT and token gaps see it).

Placements and transfer cuts advance decode instances lazily, and their runs end
without a pass over their requests (`DecodeRuns.advance_lazy`, lazy epochs,
envs/core/decode_runs.py): the numbers are those of eager advancing, and the requests'
token state catches up before anything reads it.

Not modelled: the decode instance's own prefix cache (transferred blocks are private),
layer-by-layer pipelining of the transfer with the prefill, contention of concurrent
transfers on a link (each transfer gets the link's full bandwidth). Pool sizes and TP are
inputs here; DistServe's placement search, which chooses them with this simulator as its
evaluator, is agents/heuristics/distserve.py. A request preempted by recompute on a decode
instance recomputes there.

Invariants (`Disaggregation.check`, run by `Simulator.check_invariants`): every request
in a handoff queue or in flight holds its prefill-side blocks; every transfer in flight has
exactly its reservation on its decode instance; no request is in two places.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from servegym.envs.core.events import EventKind
from servegym.envs.core.instance import Instance, SimulationError
from servegym.envs.core.request import Request
from servegym.envs.core.tokens import DecodeTally
from servegym.envs.protocol import Action, Decision, DecisionKind

if TYPE_CHECKING:
    from servegym.envs.core.simulator import Simulator

TRANSFER = EventKind.TRANSFER


class MostFreeKVPlacement:
    """PLACE default (disaggregation): the decode instance with the most free KV blocks
    among those with room for the request now; ties: the lowest index."""

    reads_token_state = False  # (see FCFSAdmission)

    def decide(self, decision: Decision) -> int:
        request = decision.request
        best, most = -1, -1
        for index, instance in enumerate(decision.candidates):
            free = instance.bm.num_free
            if free > most and instance.can_receive(request):
                best, most = index, free
        return best


@dataclass(frozen=True)
class Network:
    """The link between prefill and decode instances: `bandwidth_gbps` (Gbit/s per GPU,
    each GPU of a tensor-parallel group sends its KV shard over its own link) and
    `latency_s` per transfer. Without a `Network` the prefill pool's cost model prices a
    transfer (`CostModel.kv_transfer_time`: measured NVLink tables or the GPU's
    interconnect roofline)."""

    bandwidth_gbps: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        bandwidth = self.bandwidth_gbps
        if not isinstance(bandwidth, (int, float)) or not math.isfinite(bandwidth) or \
                bandwidth <= 0:
            raise ValueError(
                f"cluster.network.bandwidth_gbps must be a positive, finite number of "
                f"Gbit/s, got {bandwidth!r} (a KV transfer over a zero-bandwidth link would "
                "never end); e.g. 400 for NVLink-class, 100 for InfiniBand, 25 for Ethernet")
        latency = self.latency_s
        if not isinstance(latency, (int, float)) or not math.isfinite(latency) or latency < 0:
            raise ValueError(f"cluster.network.latency_s must be a finite number >= 0 "
                             f"seconds, got {latency!r}")

    def transfer_time(self, cost: Any, num_tokens: int) -> float:
        """Seconds to send the KV of `num_tokens` tokens of `cost`'s model."""
        from servegym.envs.costs.specs import kv_bytes_per_token_per_gpu

        shard = kv_bytes_per_token_per_gpu(cost.model, cost.tensor_parallel)
        return self.latency_s + num_tokens * shard * 8 / (self.bandwidth_gbps * 1e9)


def kv_transfer_time(network: Network | None, cost: Any, num_tokens: int) -> float:
    """Seconds to send the KV of `num_tokens` tokens of `cost`'s model: over `network`
    if there is one, else as the sender's cost model prices it (`kv_transfer_time`). The
    price of a hand-off's transfer here and of a migration stage (envs/core/migration.py)."""
    if network is not None:
        return network.transfer_time(cost, num_tokens)
    return cost.kv_transfer_time(num_tokens)


def land_transfer(sim: Any, request: Request, source: Instance, target: Instance,
                  now: float, exact: bool) -> None:
    """The end of a KV transfer of `request` from `source` to `target` (a hand-off here, a
    migration's last stage in envs/core/migration.py): the source frees the request's
    blocks, the target's reservation becomes the request's (`claim_transfer`), and the
    request joins the target's `incoming` list, taken into its running set at its next
    iteration boundary: a decode run in flight is cut there (`Simulator.interrupt`, lazily
    when `exact` is False), an idle target gets an event now. Waking the source is the
    caller's (its rule differs by role)."""
    source.bm.free(request)
    target.bm.claim_transfer(request)
    request.instance = target.index
    target.incoming.append(request)
    if target.run is not None:
        sim.interrupt(target, exact=exact)
    elif not target.event_pending:
        sim.schedule(now, target)


def network_from_config(spec: Any) -> Network | None:
    """A `Network` from `cluster.network` ({bandwidth_gbps, latency_s}); None: absent."""
    if spec is None:
        return None
    if isinstance(spec, Network):
        return spec
    spec = dict(spec)
    unknown = set(spec) - {"bandwidth_gbps", "latency_s"}
    if unknown:
        raise ValueError(f"cluster.network: unknown key(s) {sorted(unknown)}; known: "
                         "['bandwidth_gbps', 'latency_s']")
    if "bandwidth_gbps" not in spec:
        raise ValueError("cluster.network needs bandwidth_gbps (Gbit/s per GPU)")
    return Network(spec["bandwidth_gbps"], spec.get("latency_s", 0.0))


class PrefillInstance(Instance):
    """An instance of a prefill pool: runs prompts, hands prefilled requests off."""

    role = "prefill"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handoff: list[Request] = []  # prefilled, waiting for a decode instance
        self.sending: list[Request] = []  # KV transfer in flight

    def rejection_reason(self, request: Request) -> str:
        return super().rejection_reason(request) or \
            self.sim.disagg.decode_rejection(request)

    def on_event(self, now: float) -> bool:
        # Instance.on_event with the hand-off between finishing and planning.
        self._close_event(now)
        running = self.running
        for request in running:
            if request.num_generated:
                # Prefilled (its first token is out): off to a decode instance.
                done = [r for r in running if r.num_generated]
                self.handoff.extend(done)
                self.sim.disagg.queue_handoffs(done, self)
                self.running = [r for r in running if not r.num_generated]
                break
        if self.sim.disagg.pending:
            return False  # build_next places the queued hand-offs
        return not (self.running or self.waiting or self.swapped)

    def build_next(self, now: float) -> Generator[Any, Any, None]:
        disagg = self.sim.disagg
        if disagg.pending:
            yield from disagg.place(now)
        if not (self.running or self.waiting or self.swapped):
            return
        plan = self.plan
        yield from self._build_batch(now)
        if plan.entries or plan.bulk or plan.extra_time:
            self._start_iteration(now)
            return
        if self.handoff or self.sending:
            return  # its KV is held for hand-offs; woken when they move
        raise SimulationError(
            f"prefill instance {self.index} cannot make progress at t={now}: "
            f"{len(self.waiting)} waiting, {len(self.running)} running, "
            f"{self.bm.num_free} KV blocks free")

    def live_requests(self) -> list[Request]:
        return self.waiting + self.running + self.swapped + self.handoff + self.sending


class DecodeInstance(Instance):
    """An instance of a decode pool: takes transferred requests and decodes them."""

    role = "decode"
    arrivals_cut_runs = False  # arrivals never join it; transfers cut its runs
    lazy_run_ends = True  # runs end without a pass over the requests (decode_runs.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.incoming: list[Request] = []  # transferred, joining `running` at the next event

    def on_event(self, now: float) -> bool:
        # Instance.on_event with the arrivals by transfer between finishing and planning.
        self._close_event(now)
        incoming = self.incoming
        if incoming:
            tally = self.aggregates
            if tally is not None and tally.count == len(self.running):
                # The tally of the run or iteration that just ended, extended by the
                # transferred requests (all decoding): what a pass over `running` would
                # count (`TokenBookkeeping`'s rule), without the pass.
                self.aggregates = joined_tally(tally, incoming, self.block_size)
            else:
                self.aggregates = None  # the tally no longer covers every running request
            self.running.extend(incoming)
            if self.lazy is not None:
                self.join_lazily(incoming)
            self.incoming = []
        disagg = self.sim.disagg
        if disagg.pending:  # `waiting_handoffs`, inlined
            disagg.wake_senders(now)
        if not (self.running or self.waiting or self.swapped):
            return True
        if self._plan_decode_run(now):
            return True
        self.sync_run()  # build_next reads the requests' token state
        return False

    def build_next(self, now: float) -> Generator[Any, Any, None]:
        preemptions = self.num_preemptions
        try:
            yield from Instance.build_next(self, now)
        except SimulationError:
            if not self.bm.incoming:
                raise
            # Blocks reserved for transfers in flight keep a recompute out for now; the
            # transfer's end wakes the instance.
        disagg = self.sim.disagg
        if disagg.pending and self.num_preemptions != preemptions:
            disagg.wake_senders(now)  # a preemption freed KV: retry the hand-offs now

    def live_requests(self) -> list[Request]:
        return self.waiting + self.running + self.swapped + self.incoming


def joined_tally(tally: DecodeTally, joining: list[Request], block_size: int
                 ) -> DecodeTally | None:
    """`tally` (every running request decoding) with the `joining` requests counted in,
    as `TokenBookkeeping` counts them (context: computed tokens + 1; whether the next
    token needs a new block); None if one of them is not decoding."""
    count, context, min_left, new_blocks = (tally.count, tally.context, tally.min_left,
                                            tally.new_blocks)
    for request in joining:
        computed = request.num_computed
        generated = request.num_generated
        if not generated or computed + 1 != request.prompt_len + generated:
            return None
        left = request.output_len - generated
        if left <= 0:
            return None
        count += 1
        context += computed + 1
        if left < min_left:
            min_left = left
        if computed + 1 > request.num_blocks * block_size:
            new_blocks += 1
    return DecodeTally(count, context, min_left, new_blocks)


@dataclass(slots=True)
class Transfer:
    """A KV transfer in flight: `request` from prefill instance `source` to decode
    instance `target`, `blocks` reserved there, from `start` to `end`."""

    request: Request
    source: PrefillInstance
    target: DecodeInstance
    blocks: int
    start: float
    end: float


class Disaggregation:
    """The simulator's hand-off machinery (module docstring): placement decisions, the
    transfers in flight (TRANSFER events), wake-ups, rejection and invariant checks."""

    def __init__(self, sim: Simulator, network: Network | None) -> None:
        self.sim = sim
        self.network = network
        self.prefills: list[PrefillInstance] = [
            i for i in sim.instances if isinstance(i, PrefillInstance)]
        self.decodes: list[DecodeInstance] = [
            i for i in sim.instances if isinstance(i, DecodeInstance)]
        self.transfers: dict[int, Transfer] = {}
        # Prefilled requests waiting for a decode instance, in hand-off order, with the
        # prefill instance holding each (also in its `handoff` list).
        self.pending: list[tuple[Request, PrefillInstance]] = []
        self.next_transfer = 0
        self.num_transfers = 0
        self.transfer_time_total = 0.0
        self.transferred_tokens = 0

    # ---------------------------------------------------------------- arrival
    def decode_rejection(self, request: Request) -> str:
        """'' if some decode instance could ever serve `request`, else why none can."""
        reasons = []
        for instance in self.decodes:
            reason = instance.rejection_reason(request)
            if not reason:
                return ""
            reasons.append(reason)
        return f"no_decode_instance_fits: {reasons[0]}"

    # ---------------------------------------------------------------- placement
    def transfer_time(self, source: Instance, num_tokens: int) -> float:
        return kv_transfer_time(self.network, source.cost, num_tokens)

    def queue_handoffs(self, requests: list[Request], source: PrefillInstance) -> None:
        """Prefilled `requests` of `source` join the cluster's hand-off queue (FIFO)."""
        self.pending.extend((request, source) for request in requests)

    def place(self, now: float) -> Generator[Decision, Action, None]:
        """Ask a PLACE decision for each queued hand-off (the cluster's FIFO, whichever
        prefill instance holds it) that some decode instance has room for now, in queue
        order, and start its transfer. The decision's `instance` is the holder."""
        decodes = self.decodes
        for instance in decodes:
            # Placement sees each decode instance as of now, the iteration in flight
            # holding its blocks (advance_lazy does that itself, except when a run starts
            # right now; without a run there is nothing in flight to advance). Lazily:
            # the requests' token state follows when something reads it (`ask` syncs
            # for a policy that reads token state, the run's end).
            run = instance.run
            if run is None:
                continue
            if now > run.start:
                instance.advance_lazy(now)
            else:
                instance.take_ahead()
        pending = self.pending
        position = 0
        sim = self.sim
        while position < len(pending):
            request, source = pending[position]
            for instance in decodes:
                if instance.can_receive(request):
                    break
            else:
                position += 1
                continue
            decision = Decision(DecisionKind.PLACE, now, decodes, instance=source,
                                request=request, cluster=sim)
            action = yield from sim.ask(decision)
            del pending[position]
            source.handoff.remove(request)
            self._start_transfer(request, source, decodes[action.choice], now)

    def _start_transfer(self, request: Request, source: PrefillInstance,
                        target: DecodeInstance, now: float) -> None:
        sim = self.sim
        if target.run is not None:
            # A decode run planned its KV growth against the free blocks of its start:
            # end it at the iteration in flight (whose blocks it holds) before reserving.
            sim.interrupt(target, exact=False)
        tokens = request.num_computed
        blocks = target.bm.blocks_for(tokens)
        target.bm.reserve_transfer(request, blocks)
        duration = self.transfer_time(source, tokens)
        number = self.next_transfer
        self.next_transfer += 1
        self.transfers[number] = Transfer(request, source, target, blocks, now, now + duration)
        source.sending.append(request)
        self.num_transfers += 1
        self.transfer_time_total += duration
        self.transferred_tokens += tokens
        sim.schedule_event(now + duration, TRANSFER, number)

    def on_transfer_end(self, number: int, now: float) -> None:
        """The TRANSFER event's handler: free the sender's blocks, give the receiver's
        reservation to the request, hand the request to the decode instance."""
        transfer = self.transfers.pop(number)
        request, source, target = transfer.request, transfer.source, transfer.target
        sim = self.sim
        source.sending.remove(request)
        land_transfer(sim, request, source, target, now, exact=False)
        if not source.event_pending and (source.waiting or source.handoff):
            sim.schedule(now, source)  # the freed blocks may let a prompt in

    # ---------------------------------------------------------------- retries
    def waiting_handoffs(self) -> bool:
        return bool(self.pending)

    def wake_senders(self, now: float) -> None:
        """A decode instance may have freed KV: the hand-off queue is retried at `now` by
        the first prefill instance without an event pending (any prefill instance's event
        retries the whole queue)."""
        sim = self.sim
        for instance in self.prefills:
            if instance.event_pending:
                continue
            sim.schedule(now, instance)
            return

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """Raise if a transfer's reservation, a hand-off's blocks, or a request's place
        is inconsistent (module docstring)."""
        places: dict[int, str] = {}
        for instance in self.sim.instances:
            for request in instance.live_requests():
                if request.rid in places:
                    raise SimulationError(f"request {request.rid} is in two places: "
                                          f"{places[request.rid]} and instance {instance.index}")
                places[request.rid] = f"instance {instance.index}"
        expected: dict[int, dict[int, int]] = {d.index: {} for d in self.decodes}
        for transfer in self.transfers.values():
            request = transfer.request
            if request not in transfer.source.sending:
                raise SimulationError(f"transfer of request {request.rid} has no sender")
            if request.num_blocks < transfer.blocks and not request.cached_hashes:
                raise SimulationError(f"request {request.rid} in transfer holds "
                                      f"{request.num_blocks} blocks, sends {transfer.blocks}")
            expected[transfer.target.index][request.rid] = transfer.blocks
        for instance in self.decodes:
            if instance.bm.incoming != expected[instance.index]:
                raise SimulationError(
                    f"decode instance {instance.index}: reservations {instance.bm.incoming} "
                    f"but transfers in flight {expected[instance.index]}")
        queued = [(request.rid, source.index) for request, source in self.pending]
        held = sorted((r.rid, i.index) for i in self.prefills for r in i.handoff)
        if sorted(queued) != held:
            raise SimulationError(f"hand-off queue {queued} disagrees with the prefill "
                                  f"instances' hand-offs {held}")
        for instance in self.prefills:
            for request in instance.handoff:
                if request.num_blocks < instance.bm.blocks_for(request.num_computed):
                    raise SimulationError(f"request {request.rid} waits for a decode "
                                          "instance without its prefill KV")

    def check_drained(self) -> None:
        if self.transfers or self.pending:
            raise SimulationError(f"{len(self.transfers)} KV transfers still in flight at the end")
        for instance in self.prefills:
            if instance.handoff or instance.sending:
                raise SimulationError(f"prefill instance {instance.index} still holds "
                                      "hand-offs at the end")
        for instance in self.decodes:
            if instance.incoming or instance.bm.incoming:
                raise SimulationError(f"decode instance {instance.index} still expects "
                                      "transfers at the end")


ROLE_CLASSES = {"mixed": Instance, "prefill": PrefillInstance, "decode": DecodeInstance}

__all__ = ["DecodeInstance", "Disaggregation", "Network", "PrefillInstance", "ROLE_CLASSES",
           "Transfer", "kv_transfer_time", "land_transfer", "network_from_config"]
