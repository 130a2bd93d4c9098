"""The discrete-event simulator: a cluster of instances behind a router.

All state lives on the `Simulator` object. The decision loop is the one every backend
shares (`servegym.envs.core.loop.DecisionLoop`): typed heap entries (envs/core/events.py)
for the iteration and decode-run ends (and wake-ups) of instances, ordered by (time,
priority, counter) so ties resolve the same way every run, each with a generation so a
pending one can be cancelled (`interrupt` cuts a decode run short); arrivals from the
workload's sorted arrays through a cursor, first at equal times. Decisions are asked
through one generator: those with a configured policy are answered inline, the others are
handed to the caller by `next_decision()` and answered by `apply()` (how the Gymnasium envs
step decision by decision). The simulator supplies the instances (envs/core/instance.py),
the requests, the invariant checks and the end-of-run check. A closed-loop workload
(sessions, agentic programs: `Workload.parents`) adds `Releases` (envs/core/release.py):
the cursor then reads only its roots, and every other request is released by a RELEASE
event when its parents have finished.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from servegym.envs.core.cluster import Pool, check_pools
from servegym.envs.core.decisions import default_policies, reset_policies
from servegym.envs.core.disagg import ROLE_CLASSES, Disaggregation, Network, network_from_config
from servegym.envs.core.events import EventKind
from servegym.envs.core.instance import Instance, InstanceConfig
from servegym.envs.core.loop import DecisionLoop
from servegym.envs.core.metrics import ServingReport, build_report
from servegym.envs.core.occupancy import Occupancy
from servegym.envs.core.release import Releases
from servegym.envs.core.request import REJECTED, Request
from servegym.envs.protocol import Decision, DecisionKind, Policy

if TYPE_CHECKING:
    from servegym.envs.core.migration import Migration, MigrationConfig
    from servegym.envs.core.retention import Retention
    from servegym.envs.costs.base import CostModel
    from servegym.envs.workloads.workload import Workload

# The latest arrival a workload may have, in seconds (about 31.7 years): far beyond any
# trace, and small enough that a float clock still resolves microseconds' worth of
# iterations there, so every time-advancing loop ends (a row at 1e57 s would not).
MAX_TIME_S = 1e9


class Simulator(DecisionLoop, Occupancy):
    """Simulates a cluster of instances behind a router; implements the `Backend` and
    `ClusterView` protocols (envs/protocol.py).

    Args:
        cost_model: iteration times (its `source` is stamped on every report).
        instance_config: batching mode, budgets and KV settings of every instance.
        num_instances: instances behind the router.
        pools: instead of the three above, the cluster as `Pool`s (envs/core/cluster.py),
            each with its own config, cost model and count: a heterogeneous cluster.
            `config`, `cost` and `num_kv_blocks` then describe the first pool and
            `max_model_len` is the smallest of the pools' (a request must fit anywhere).
        policies: answers per decision kind; kinds left out are surfaced by
            `next_decision()` for the caller to `apply()`. Default: all three defaults
            (round-robin routing, FCFS admission, latest-arrival preemption).
        record_token_times: keep every token's timestamp on each request (memory heavy).
        decode_runs: the fast paths: decode-only stretches advanced in closed form, and
            all-decoding batches scheduled as a group (off: one event per iteration, one
            batch entry per request; the results agree to float rounding, as tests check).
        debug_checks: after every event, check KV invariants and that time never goes back.
        network: a disaggregated cluster's link between prefill and decode instances
            (`Network` or {bandwidth_gbps, latency_s}); None: the prefill pool's cost
            model prices transfers (envs/core/disagg.py); with `migration`, the link
            live migrations copy over.
        retention: KV retention between a session's calls (Continuum,
            envs/core/retention.py): the RETAIN policy (one with `decide`, or the older
            `ttl(request, instance, now)` form, rounded up to the menu); shorthand for
            `policies[RETAIN]` with retention on. None: as `retain_ttls` says.
        retain_ttls: the RETAIN menu's TTLs in seconds (`cluster.retain_ttls`); given (or
            with `retention`), RETAIN is asked when a call with a next call finishes,
            answered by `policies[RETAIN]` or surfaced; None and no `retention`: off.
        migration: live migration between mixed instances (Llumnix;
            `cluster.migration: {interval_s, trigger_free_kv, last_stage_blocks,
            max_stages, max_per_tick}`, envs/core/migration.py); None: none.
    """

    def __init__(
        self,
        cost_model: CostModel | None = None,
        instance_config: InstanceConfig | None = None,
        num_instances: int = 1,
        policies: Mapping[DecisionKind, Policy] | None = None,
        record_token_times: bool = False,
        decode_runs: bool = True,
        debug_checks: bool = False,
        pools: Sequence[Pool] | None = None,
        network: Network | Mapping[str, float] | None = None,
        retention: Any = None,
        migration: Mapping[str, Any] | None = None,
        retain_ttls: Sequence[float] | None = None,
    ) -> None:
        if pools is None:
            if cost_model is None:
                raise ValueError("Simulator needs a cost_model (or pools, each with its own)")
            if num_instances < 1:
                raise ValueError(f"num_instances must be >= 1, got {num_instances}")
            pools = (Pool("default", instance_config or InstanceConfig(), cost_model,
                          num_instances),)
        elif cost_model is not None or instance_config is not None or num_instances != 1:
            raise ValueError("give either pools or cost_model/instance_config/num_instances")
        self.pools = check_pools(pools)
        self.network = network_from_config(network)
        self.disaggregated = any(pool.role != "mixed" for pool in self.pools)
        self.migration_config = _migration_config(migration)
        if self.migration_config is not None and self.disaggregated:
            raise ValueError("cluster.migration moves requests between mixed instances; "
                             "migration in a prefill/decode cluster is not modelled (drop "
                             "migration or use mixed pools)")
        if self.migration_config is not None and sum(p.count for p in self.pools) < 2:
            raise ValueError("cluster.migration needs at least 2 instances to migrate "
                             "between; this cluster has 1")
        if self.network is not None and not self.disaggregated and \
                self.migration_config is None:
            raise ValueError("cluster.network prices KV transfers between prefill and decode "
                             "pools or live migrations; this cluster has none (drop "
                             "network, set pool roles or cluster.migration)")
        self.cost = self.pools[0].cost
        self.config = self.pools[0].config
        self.num_instances = sum(pool.count for pool in self.pools)
        self.policies: dict[DecisionKind, Policy] = (
            default_policies() if policies is None else dict(policies)
        )
        self.record_token_times = record_token_times
        self.decode_runs = decode_runs
        self.debug_checks = debug_checks
        # KV retention between a session's calls (RETAIN, envs/core/retention.py;
        # agents/heuristics/retention.py); None: off, and the module is not imported.
        self.retention: Retention | None = None
        if retention is not None or retain_ttls is not None:
            from servegym.envs.core.retention import Retention, as_retain_policy

            if retention is not None:
                if policies is not None and DecisionKind.RETAIN in policies:
                    raise ValueError("give the RETAIN policy once: retention= or "
                                     "policies[DecisionKind.RETAIN], not both")
                self.policies[DecisionKind.RETAIN] = as_retain_policy(retention)
            self.retention = Retention(*(() if retain_ttls is None else (retain_ttls,)))
        self.pool_kv_blocks = [_kv_blocks(pool) for pool in self.pools]
        self.pool_model_len = [pool.config.max_model_len or _model_context(pool.cost)
                               for pool in self.pools]
        self.num_kv_blocks = self.pool_kv_blocks[0]
        self.max_model_len = min(self.pool_model_len)
        self.workload: Workload | None = None
        self.disagg: Disaggregation | None = None
        self.releases: Releases | None = None
        self.migration: Migration | None = None
        self._decision: Decision | None = None
        self._done = True

    def _instance_class(self, role: str) -> type[Instance]:
        """The instance class for a pool role (`ROLE_CLASSES`), or one that can migrate
        (Llumnix) when the cluster migrates."""
        if self.migration_config is not None:
            from servegym.envs.core.migration import MigratingInstance

            return MigratingInstance
        return ROLE_CLASSES[role]

    # ================================================================ Backend protocol
    def reset(self, workload: Workload, seed: int = 0) -> None:
        block_size = self.config.block_size
        if workload.prefix_hashes is not None and workload.prefix_block_size != block_size:
            raise ValueError(
                f"workload prefix hashes use {workload.prefix_block_size}-token blocks but the "
                f"instances use {self.config.block_size}; rebuild the hashes at the KV block size"
            )
        if len(workload) and not float(workload.arrival_time[-1]) <= MAX_TIME_S:
            raise ValueError(
                f"the workload's last arrival is at {float(workload.arrival_time[-1]):g} s, "
                f"beyond the simulator's horizon of {MAX_TIME_S:g} s (about 31 years): check "
                "the trace's timestamps and their unit (a typo year, or ms read as s)")
        self.workload = workload
        self.lazy_runs: dict[int, Instance] = {}  # decode runs advanced lazily (loop.py)
        self.rng = np.random.default_rng(seed)
        reset_policies(self.policies, self.rng)
        self.now = 0.0
        self._last_checked_time = -math.inf
        self.instances = []
        for number, pool in enumerate(self.pools):
            kind = self._instance_class(pool.role)
            for _ in range(pool.count):
                self.instances.append(kind(
                    len(self.instances), pool.config, pool.cost, self.pool_kv_blocks[number],
                    self.pool_model_len[number], self, self.record_token_times, pool=number))
        self.disagg = None
        self.event_handlers = {}
        if self.disaggregated:
            self.disagg = Disaggregation(self, self.network)
            self.event_handlers[EventKind.TRANSFER] = self.disagg.on_transfer_end
        self.migration = None
        if self.migration_config is not None:
            from servegym.envs.core.migration import Migration

            self.migration = Migration(self, self.migration_config, self.network)
            self.event_handlers[EventKind.MIGRATION_STAGE] = self.migration.on_stage_end
            self.event_handlers[EventKind.MIGRATION_TICK] = self.migration.on_tick
        self.requests: list[Request] = []
        if self.retention is not None:
            self.retention.reset(self)
            self.event_handlers[EventKind.RETAIN_EXPIRY] = self.retention.on_expiry
        self.__dict__.pop("record_departure", None)  # a closed-loop run's hook, below
        if workload.parents is not None:  # closed loop: the cursor reads the roots only
            self.releases = Releases(self, workload)
            self.event_handlers[EventKind.RELEASE] = self.releases.on_release
            self.record_departure = self._record_departure_closed  # type: ignore[method-assign]
            self.reset_occupancy(self.releases.root_times)
        else:
            self.releases = None
            self.reset_occupancy(workload.arrival_time.tolist())
        self.admit_is_internal = DecisionKind.ADMIT in self.policies
        admit_policy = self.policies.get(DecisionKind.ADMIT)
        self.admit_head_only = bool(getattr(admit_policy, "head_of_line", False))
        self.start_loop()  # the shared decision loop (envs/core/loop.py)

    def run(self, workload: Workload | None = None, seed: int = 0) -> ServingReport:
        """Simulate to completion, answering every decision with the configured policies."""
        if workload is not None:
            self.reset(workload, seed)
        while self._decision is not None:
            kind = self._decision.kind
            raise RuntimeError(
                f"no policy answers {kind.name} decisions; pass one in `policies` or drive the "
                "simulator with next_decision()/apply()"
            )
        return self.report()

    def report(self) -> ServingReport:
        if not self._done:
            raise RuntimeError("simulation not finished; answer the pending decisions first")
        return build_report(self)

    def routable_instances(self) -> list[Instance]:
        """ROUTE's candidates: every instance, or a disaggregated cluster's prefill ones."""
        if self.disagg is not None:
            return list(self.disagg.prefills)
        return self.instances

    def seed_events(self) -> None:
        if self.migration is not None:
            self.migration.seed()  # the controller's first tick

    def interrupt(self, instance: Instance, exact: bool = True) -> float | None:
        """Cut `instance`'s decode run short at its first iteration boundary at or after
        now: its pending event is cancelled and one at that boundary takes its place (see
        envs/core/events.py). Returns the new end, or None when no decode run is in flight
        or it ends by then anyway. Call between decisions (the simulator is at `now`).
        `exact` False: the run is advanced lazily (`DecodeRuns.advance_lazy`)."""
        end = instance.cut_run(self.now, exact)
        if end is None:
            return None
        self.cancel_pending(instance)  # the planned end is dropped when popped
        self.schedule(end, instance)
        return end

    def arrivals_since(self, time: float) -> int:
        """Requests that arrived at or after `time` (so far), releases included."""
        releases = self.releases
        if releases is None:
            return Occupancy.arrivals_since(self, time)
        return releases.arrivals_since(time)

    def _record_departure_closed(self, request: Request, time: float) -> None:
        Occupancy.record_departure(self, request, time)
        self.releases.on_departure(request, time)

    def _make_request(self, index: int, arrival: float | None = None) -> Request:
        """Request `index` (the cursor's; with closed-loop releases, the cursor's root, or
        the row `index` released or rejected at `arrival`)."""
        w = self.workload
        releases = self.releases
        if releases is not None and arrival is None:
            index = releases.roots[index]
        request = Request(
            index,
            float(w.arrival_time[index]) if arrival is None else arrival,
            int(w.prompt_len[index]),
            int(w.output_len[index]),
            int(w.tenant[index]),
            int(w.priority[index]),
            float(w.ttft_slo[index]),
            float(w.tpot_slo[index]),
            w.prefix_hashes[index] if w.prefix_hashes is not None else None,
        )
        if self.record_token_times:
            request.token_times = []
        if releases is not None:
            releases.annotate(request)
        self.requests.append(request)
        self.record_arrival(request)
        return request

    def check_invariants(self, time: float) -> None:
        """Raise if the clock went back or an instance's KV accounting is broken (every
        live request's blocks, the free and cached pools); `debug_checks` calls it after
        every event, and a fuzzer may wrap it to count events."""
        if time < self._last_checked_time:
            raise RuntimeError(f"time went backwards: {time} after {self._last_checked_time}")
        self._last_checked_time = time
        self.sync_lazy_runs()  # per-request blocks as eager advancing leaves them
        for instance in self.instances:
            instance.bm.check(instance.live_requests())
            if instance.bm.num_used > instance.bm.num_blocks:
                raise RuntimeError("more KV blocks used than exist")
        if self.disagg is not None:
            self.disagg.check()  # reservations, transfers in flight, hand-offs
        if self.migration is not None:
            self.migration.check()  # reservations, migrations in flight, places

    def _on_drained(self) -> None:
        if self.retention is not None and self.retention.pins:
            raise RuntimeError(f"{len(self.retention.pins)} retention pins outlived the run "
                               "(their expiry events should have released them)")
        for instance in self.instances:
            if instance.waiting or instance.running or instance.swapped:
                raise RuntimeError(f"instance {instance.index} still holds requests at the end")
            instance.bm.check([])
        if self.disagg is not None:
            self.disagg.check_drained()
        if self.migration is not None:
            self.migration.check_drained()
        for request in self.requests:
            if request.status == REJECTED:
                continue
            if request.num_generated != request.output_len:
                raise RuntimeError(f"request {request.rid} ended unfinished: {request!r}")


# envs/core/migration.py and envs/core/retention.py are imported only by a cluster that
# uses them, so a mixed cluster's process does not hold their code (experiments/
# bench_core_change.py measures its memory). envs/core/disagg.py is imported here: it
# holds PLACE's default policy, which `default_policies` builds for every simulator.


def _migration_config(spec: Any) -> MigrationConfig | None:
    """`cluster.migration` as a `MigrationConfig` (None: absent or false)."""
    if spec is None or spec is False:
        return None
    from servegym.envs.core.migration import migration_from_config

    return migration_from_config(spec)


def _kv_blocks(pool: Pool) -> int:
    """KV blocks per instance of `pool`: its config's, else what its GPU memory holds."""
    config, cost = pool.config, pool.cost
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    from servegym.envs.costs.specs import kv_capacity_blocks

    return kv_capacity_blocks(cost.model, cost.gpu, cost.tensor_parallel,
                              block_size=config.block_size,
                              gpu_memory_utilization=config.gpu_memory_utilization)


def _model_context(cost_model: Any) -> int:
    model = getattr(cost_model, "model", None)
    context = getattr(model, "max_context", None)
    if context is None:
        raise ValueError("set InstanceConfig.max_model_len: the cost model names no model context")
    return int(context)
