"""Live migration of running requests between the mixed instances of a cluster (Llumnix).

Llumnix (B. Sun et al., "Llumnix: Dynamic Scheduling for Large Language Model Serving",
OSDI 2024; its public code, github.com/AlibabaPAI/llumnix, `llumlet/migration_coordinator.py`)
moves a running request's KV cache to another instance while the request keeps decoding
on its source, so a rescheduling costs the request only a short stop. What the simulator
models (`cluster.migration: {interval_s, ...}`, `MigrationConfig`):

    every `interval_s` a MIGRATION_TICK event (optionally only when some instance's free
      KV fraction is below `trigger_free_kv`) asks MIGRATE decisions, up to `max_per_tick`
      of them until one answers STOP: candidates are the running requests of the cluster
      that are not migrating (instance by instance, each in admission order), the answer
      `Action(choice, target=j)` a candidate and a destination instance index
    --start--> the destination's blocks for the request's full KV blocks are reserved
      (`BlockManager.reserve_transfer`; a decode run in flight there is first cut at its
      iteration in flight, `Simulator.interrupt`, so its planned KV growth stays covered);
      stage 1 copies them: a MIGRATION_STAGE event at now + transfer time (`cluster.network`
      `Network`, else the source pool's `CostModel.kv_transfer_time`; priced as a
      hand-off's transfer is, `disagg.kv_transfer_time`)
    --stage end--> the source advanced to now (it kept decoding); if the blocks added
      meanwhile (partial last block included) are more than `last_stage_blocks`, the next
      stage copies the new full blocks (reservation grown first, `grow_transfer`); else
      the request stops: at the source's next iteration boundary (a run in flight is cut)
      it leaves the source's running set, the reservation grows to all its blocks and the
      last stage copies the rest
    --last stage end--> the source frees the request's blocks, the reservation becomes the
      request's (`claim_transfer`; landed as a hand-off's transfer is, `disagg.land_transfer`)
      and the request joins the destination's running set at
      its next iteration boundary (now if idle) with a free sequence slot (it waits,
      holding its KV there, while admissions fill every slot); its next token gap
      includes the stop.

Aborts (counted by reason in `Migration.aborts`; the destination's reservation is given
back, `cancel_transfer`, and the request stays where it is): the request finished or was
preempted on the source before a stage ended (`finished`, `preempted`), the destination
has no room for the next stage (`destination_full`), or more than `max_stages` stages
(`max_stages`: Llumnix aborts then too). Source blocks are freed only when the last stage
ends. Bad answers (a target equal to the source, one without room for the request's KV or
a sequence slot, an index out of range) are refused by the MIGRATE decision's validation
with `InvalidActionError` (envs/protocol.py); a request already migrating is never a
candidate.

Not modelled: contention between concurrent copies on a link (each stage gets the full
bandwidth), the copy's cost to the source's or destination's iterations (Llumnix measures
it as small), migrating waiting or swapped requests, prefix-cache sharing on the
destination (the copied blocks are private there), instance auto-scaling. Invariants
(`Migration.check`, run by `Simulator.check_invariants`): each migration's reservation is
exactly the blocks it has copied or is copying; the request holds its source blocks until
the end; no request is in two places; nothing is in flight at the end.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from servegym.envs.core.disagg import (
    Network,
    kv_transfer_time,
    land_transfer,
)
from servegym.envs.core.events import EventKind
from servegym.envs.core.instance import Instance, SimulationError
from servegym.envs.core.request import RUNNING, Request
from servegym.envs.protocol import STOP, Action, Decision, DecisionKind

if TYPE_CHECKING:
    from servegym.envs.core.simulator import Simulator

MIGRATION_STAGE = EventKind.MIGRATION_STAGE
MIGRATION_TICK = EventKind.MIGRATION_TICK
ABORT_REASONS = ("finished", "preempted", "destination_full", "max_stages")
CONFIG_KEYS = ("interval_s", "trigger_free_kv", "last_stage_blocks", "max_stages",
               "max_per_tick")


@dataclass(frozen=True)
class MigrationConfig:
    """`cluster.migration`: the controller's period `interval_s` (simulated seconds), the
    optional trigger `trigger_free_kv` (ask only when some instance's free KV fraction is
    below it), `last_stage_blocks` (the remainder at or below which the request stops for
    the last stage; Llumnix's `migration_last_stage_max_blocks`), `max_stages` (abort
    beyond it) and `max_per_tick` (MIGRATE decisions per tick at most)."""

    interval_s: float = 0.1
    trigger_free_kv: float | None = None
    last_stage_blocks: int = 1
    max_stages: int = 8
    max_per_tick: int = 1

    def __post_init__(self) -> None:
        interval = self.interval_s
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or \
                not math.isfinite(interval) or interval <= 0:
            raise ValueError(f"cluster.migration.interval_s must be a positive, finite number "
                             f"of seconds, got {interval!r} (e.g. 0.1)")
        trigger = self.trigger_free_kv
        if trigger is not None and (isinstance(trigger, bool) or
                                    not isinstance(trigger, (int, float)) or
                                    not 0 < trigger <= 1):
            raise ValueError(f"cluster.migration.trigger_free_kv is a fraction of an "
                             f"instance's KV blocks in (0, 1] or null, got {trigger!r}")
        for name, least in (("last_stage_blocks", 0), ("max_stages", 1), ("max_per_tick", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"cluster.migration.{name} must be an integer >= {least}, "
                                 f"got {value!r}")


def queue_demand(instance: Any) -> int:
    """Blocks the instance's queue needs on admission (waiting prompts + output so far):
    the part of Llumnix's virtual usage beyond the blocks in use."""
    size = instance.bm.block_size  # bm.blocks_for, inlined
    return sum(-(-(r.prompt_len + r.num_generated) // size) for r in instance.waiting)


def virtual_freeness(instance: Any, extra_usage: float = 0.0) -> float:
    """Llumnix's freeness: (capacity - (used + queue demand + `extra_usage`)) /
    max(1, running); what its migration policies (agents/heuristics/llumnix.py) and the
    MIGRATE observation (envs/observations.py) rank instances by."""
    bm = instance.bm
    usage = bm.num_used + queue_demand(instance) + extra_usage
    return (bm.num_blocks - usage) / max(1, len(instance.running))


def migration_from_config(spec: Any) -> MigrationConfig | None:
    """A `MigrationConfig` from `cluster.migration` (a mapping of `CONFIG_KEYS`); None:
    absent or false (no migration)."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, MigrationConfig):
        return spec
    if spec is True:
        return MigrationConfig()
    if not isinstance(spec, Mapping):
        raise ValueError(f"cluster.migration must be a mapping of {list(CONFIG_KEYS)} (or "
                         f"null), got {spec!r}")
    unknown = set(spec) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"cluster.migration: unknown key(s) {sorted(unknown)}; known: "
                         f"{list(CONFIG_KEYS)}")
    return MigrationConfig(**dict(spec))


class MigratingInstance(Instance):
    """A mixed instance of a cluster with live migration: takes migrated requests in and
    stops outgoing ones for their last stage, both at its iteration boundaries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.incoming: list[Request] = []  # migrated in, joining `running` at the next event
        self.stopping: list[LiveMigration] = []  # to leave `running` at the next event
        self.stopped: list[Request] = []  # out of the batch, last stage in flight

    def on_event(self, now: float) -> bool:
        # Instance.on_event with the migrations' stops and arrivals between finishing the
        # iteration in flight and planning the next.
        self._close_event(now)
        if self.stopping:
            self.sim.migration.stop(self, now)
        if self.incoming:
            # Migrated requests join while sequence slots are free (admissions may have
            # taken the slot counted at the start); the others wait here, holding their KV.
            room = self.config.max_num_seqs - len(self.running)
            if room > 0:
                self.running.extend(self.incoming[:room])
                del self.incoming[:room]
                self.aggregates = None  # the tally no longer covers every running request
        if not (self.running or self.waiting or self.swapped):
            return True
        return self._plan_decode_run(now)

    def build_next(self, now: float) -> Generator[Any, Any, None]:
        try:
            yield from Instance.build_next(self, now)
        except SimulationError:
            if not (self.stopped or self.bm.incoming):
                raise
            # KV held by migrations in flight (a request stopped for its last stage here,
            # or blocks reserved for one arriving) keeps a request out for now; the
            # migration's end or abort wakes the instance.

    def live_requests(self) -> list[Request]:
        return self.waiting + self.running + self.swapped + self.incoming + self.stopped


@dataclass(slots=True)
class LiveMigration:
    """One migration in flight: `request` from `source` to `target`; `copied` blocks
    copied by the stages that ended, `held` blocks reserved on `target` (those plus
    the stage in flight), `stages` started, `last` once stopped for the last stage."""

    number: int
    request: Request
    source: MigratingInstance
    target: MigratingInstance
    start: float
    preemptions: int  # the request's count at the start: a change means it was preempted
    copied: int = 0
    held: int = 0
    stages: int = 0
    last: bool = False
    stop_start: float = math.nan  # when the request left the source's batch
    end: float = math.nan
    outcome: str = ""  # "completed" or the abort reason, once it ended
    stage_times: list[float] = field(default_factory=list)


class Migration:
    """The simulator's live-migration machinery (module docstring): the controller's ticks
    and MIGRATE decisions, the migrations in flight (MIGRATION_STAGE events), aborts,
    statistics and invariant checks."""

    def __init__(self, sim: Simulator, config: MigrationConfig,
                 network: Network | None) -> None:
        self.sim = sim
        self.config = config
        self.network = network
        self.active: dict[int, LiveMigration] = {}
        self.ended: list[LiveMigration] = []  # every migration that ended, in order
        self.by_request: dict[int, LiveMigration] = {}
        self.next_number = 0
        self.num_started = 0
        self.num_completed = 0
        self.aborts: dict[str, int] = dict.fromkeys(ABORT_REASONS, 0)
        self.copied_blocks = 0
        self.stop_time_total = 0.0  # seconds migrated requests spent out of any batch
        self.num_ticks = 0
        self.num_decisions = 0

    # ---------------------------------------------------------------- the controller
    def seed(self) -> None:
        """The first tick, at the first arrival (the loop's `seed_events`)."""
        sim = self.sim
        if sim.arrival_times:
            sim.schedule_event(sim.arrival_times[0], MIGRATION_TICK, 0)

    def on_tick(self, _target: int, now: float) -> Generator[Decision, Action, None] | None:
        """The MIGRATION_TICK handler: schedule the next tick while work remains, then ask
        MIGRATE decisions if the trigger (if any) holds."""
        sim = self.sim
        interval = self.config.interval_s
        self.num_ticks += 1
        if sim.requests_in_system() > 0:
            sim.schedule_event(now + interval, MIGRATION_TICK, 0)
        elif sim.next_arrival_time < math.inf:
            # Idle: the next tick is the first on the grid at or after the next arrival.
            steps = max(1, math.ceil((sim.next_arrival_time - now) / interval))
            sim.schedule_event(now + steps * interval, MIGRATION_TICK, 0)
            return None
        else:
            return None
        trigger = self.config.trigger_free_kv
        if trigger is not None and not any(
                instance.bm.num_free < trigger * instance.bm.num_blocks
                for instance in sim.instances):
            return None
        return self._ask(now)

    def candidates(self) -> list[Request]:
        """MIGRATE's candidates: decoding requests (first token out) of every instance's
        running set that are not migrating, instance by instance, in admission order."""
        moving = self.by_request
        if not moving:
            return [request for instance in self.sim.instances for request in instance.running
                    if request.num_generated]
        return [request for instance in self.sim.instances for request in instance.running
                if request.num_generated and request.rid not in moving]

    def _ask(self, now: float) -> Generator[Decision, Action, None]:
        sim = self.sim
        for instance in sim.instances:
            instance.advance_to(now)  # policies see each instance as of now
        for _ in range(self.config.max_per_tick):
            candidates = self.candidates()
            if not candidates:
                return
            decision = Decision(DecisionKind.MIGRATE, now, candidates, cluster=sim)
            self.num_decisions += 1
            action = yield from sim.ask(decision)
            if action.choice == STOP:
                return
            self.start(candidates[action.choice], sim.instances[action.target], now)

    # ---------------------------------------------------------------- stages
    def transfer_time(self, source: Instance, blocks: int) -> float:
        return kv_transfer_time(self.network, source.cost, blocks * source.block_size)

    def can_migrate(self, request: Request, target: Instance) -> str:
        """'' if `request` may start migrating to `target` now, else why not."""
        if request.rid in self.by_request:
            return f"request {request.rid} is already migrating"
        if request.status != RUNNING or request.instance < 0 or not request.num_generated:
            return f"request {request.rid} is not running and decoding"
        source = self.sim.instances[request.instance]
        if request not in source.running:
            return f"request {request.rid} is not in instance {source.index}'s batch"
        if target.index == source.index:
            return f"target instance {target.index} is the request's source"
        if not target.can_receive(request):
            return (f"target instance {target.index} has no room for request "
                    f"{request.rid}'s KV ({target.bm.blocks_for(request.num_computed)} "
                    f"blocks, {target.bm.num_free} free) or no sequence slot")
        return ""

    def start(self, request: Request, target: MigratingInstance, now: float) -> LiveMigration:
        """Start migrating running `request` to `target` (checked: `can_migrate`)."""
        reason = self.can_migrate(request, target)
        if reason:
            raise SimulationError(f"cannot migrate: {reason}")
        source = self.sim.instances[request.instance]
        migration = LiveMigration(self.next_number, request, source, target, now,
                                  request.num_preemptions)
        self.next_number += 1
        self.active[migration.number] = migration
        self.by_request[request.rid] = migration
        self.num_started += 1
        self._next_stage(migration, now)
        return migration

    def _settle(self, instance: Instance, now: float) -> None:
        """`instance` as of now, its iteration in flight holding its blocks, and its decode
        run (planned against its free blocks) cut at that iteration, before its free
        blocks shrink."""
        run = instance.run
        if run is None:
            return  # nothing in flight: advance_to would do nothing
        instance.advance_to(now)
        if now <= run.start or instance.lazy is not None:
            # (past its start, eager advance_to gave the iteration in flight its blocks)
            instance.bm.catch_up(instance.running, ahead=1)
        self.sim.interrupt(instance)

    def _next_stage(self, migration: LiveMigration, now: float) -> None:
        request, source, target = migration.request, migration.source, migration.target
        source.advance_to(now)
        bm = target.bm
        full = request.num_computed // bm.block_size
        remainder = bm.blocks_for(request.num_computed) - migration.copied
        if remainder <= self.config.last_stage_blocks or full <= migration.copied:
            migration.last = True
            source.stopping.append(migration)
            sim = self.sim
            if source.run is not None:
                sim.interrupt(source)
            elif not source.event_pending:
                sim.schedule(now, source)
            return
        if migration.stages >= self.config.max_stages:
            self._abort(migration, "max_stages", now)
            return
        grow = full - migration.copied
        self._settle(target, now)
        if not bm.can_reserve_transfer(grow):
            self._abort(migration, "destination_full", now)
            return
        if migration.held:
            bm.grow_transfer(request, grow)
        else:
            bm.reserve_transfer(request, grow)
        migration.held += grow
        self._schedule_stage(migration, grow, now)

    def _schedule_stage(self, migration: LiveMigration, blocks: int, now: float) -> None:
        migration.stages += 1
        duration = self.transfer_time(migration.source, blocks)
        migration.stage_times.append(duration)
        self.sim.schedule_event(now + duration, MIGRATION_STAGE, migration.number)

    def stop(self, source: MigratingInstance, now: float) -> None:
        """At `source`'s iteration boundary: its stopping requests leave the batch and
        their last stages start (or the migrations abort)."""
        stopping, source.stopping = source.stopping, []
        for migration in stopping:
            request, target = migration.request, migration.target
            if self._gone(migration):
                continue
            bm = target.bm
            grow = bm.blocks_for(request.num_computed) - migration.held
            self._settle(target, now)
            if grow > 0 and not bm.can_reserve_transfer(grow):
                self._abort(migration, "destination_full", now)
                continue
            if migration.held:
                if grow > 0:
                    bm.grow_transfer(request, grow)
            else:
                bm.reserve_transfer(request, grow)
            migration.held += grow
            source.running.remove(request)
            source.stopped.append(request)
            source.aggregates = None
            migration.stop_start = now
            self._schedule_stage(migration, migration.held - migration.copied, now)

    def _gone(self, migration: LiveMigration) -> bool:
        """Abort (and say so) if the request finished or was preempted on its source."""
        request = migration.request
        if request.num_preemptions != migration.preemptions or \
                (request.status == RUNNING and request not in migration.source.running):
            self._abort(migration, "preempted", self.sim.now)
            return True
        if request.status != RUNNING:
            self._abort(migration, "finished", self.sim.now)
            return True
        return False

    def on_stage_end(self, number: int, now: float) -> None:
        """The MIGRATION_STAGE handler: the next stage, the stop, or the completion."""
        migration = self.active.get(number)
        if migration is None:
            raise SimulationError(f"migration {number} ended a stage but is not in flight")
        if migration.last:
            self._complete(migration, now)
            return
        if self._gone(migration):
            return
        migration.copied = migration.held
        self._next_stage(migration, now)

    def _complete(self, migration: LiveMigration, now: float) -> None:
        request, source, target = migration.request, migration.source, migration.target
        sim = self.sim
        source.stopped.remove(request)
        self._forget(migration, "completed", now)
        self.num_completed += 1
        self.copied_blocks += migration.held
        self.stop_time_total += now - migration.stop_start
        land_transfer(sim, request, source, target, now, exact=True)
        if not source.event_pending and (source.waiting or source.running or source.swapped):
            sim.schedule(now, source)  # the freed blocks may let a request in

    def _abort(self, migration: LiveMigration, reason: str, now: float) -> None:
        target = migration.target
        if migration.request.rid in target.bm.incoming:
            target.bm.cancel_transfer(migration.request)
            if target.waiting and not target.event_pending:
                self.sim.schedule(now, target)  # the freed blocks may let a request in
        self._forget(migration, reason, now)
        self.aborts[reason] += 1

    def _forget(self, migration: LiveMigration, outcome: str, now: float) -> None:
        del self.active[migration.number]
        del self.by_request[migration.request.rid]
        migration.outcome = outcome
        migration.end = now
        self.ended.append(migration)

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """Raise if a migration's reservation, blocks or place is inconsistent."""
        places: dict[int, int] = {}
        for instance in self.sim.instances:
            for request in instance.live_requests():
                if request.rid in places:
                    raise SimulationError(f"request {request.rid} is in two places: instances "
                                          f"{places[request.rid]} and {instance.index}")
                places[request.rid] = instance.index
        expected: dict[int, dict[int, int]] = {i.index: {} for i in self.sim.instances}
        for migration in self.active.values():
            request = migration.request
            if migration.held:
                expected[migration.target.index][request.rid] = migration.held
            if migration.last and request in migration.source.stopped and \
                    request.num_blocks < migration.held:
                raise SimulationError(f"migrating request {request.rid} holds "
                                      f"{request.num_blocks} blocks, sends {migration.held}")
            if migration.copied > migration.held:
                raise SimulationError(f"migration {migration.number} copied more blocks "
                                      "than it reserved")
        for instance in self.sim.instances:
            if instance.bm.incoming != expected[instance.index]:
                raise SimulationError(
                    f"instance {instance.index}: reservations {instance.bm.incoming} but "
                    f"migrations in flight {expected[instance.index]}")

    def check_drained(self) -> None:
        if self.active:
            raise SimulationError(f"{len(self.active)} migrations still in flight at the end")
        for instance in self.sim.instances:
            if instance.incoming or instance.stopped or instance.stopping or \
                    instance.bm.incoming:
                raise SimulationError(f"instance {instance.index} still holds migrations "
                                      "at the end")

    def stats(self) -> dict[str, float]:
        """Counts for reports and experiments (`serving/migrations`, ...)."""
        return {
            "migrations": float(self.num_completed),
            "migrations_started": float(self.num_started),
            "migrations_aborted": float(sum(self.aborts.values())),
            "migration_copied_blocks": float(self.copied_blocks),
            "migration_stop_time_s": self.stop_time_total,
            "migration_decisions": float(self.num_decisions),
        }


__all__ = ["ABORT_REASONS", "CONFIG_KEYS", "LiveMigration", "MigratingInstance", "Migration",
           "queue_demand", "virtual_freeness",
           "MigrationConfig", "migration_from_config"]
