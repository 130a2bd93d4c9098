"""Typed events of the simulator's kernel, and how one is cancelled.

The simulator keeps one heap of entries ``(time, priority, counter, kind, target,
generation)``, ordered by time, then `priority` (arrivals of an instant go before any
instance plans: `ARRIVAL_PRIORITY` < `INSTANCE_PRIORITY`), then `counter` (a per-run
sequence number), so ties resolve the same way every run. Arrivals themselves come from the
workload's sorted arrival times through a cursor, not the heap.

Kinds (`EventKind`):
    INSTANCE  the end of an instance's iteration or decode run, or a wake-up (`target` is
              the instance index): the instance finishes what was in flight and plans the
              next iteration, which may ask decisions.
    TRANSFER  the end of a KV transfer from a prefill instance to a decode instance
              (prefill/decode disaggregation; `target` is the transfer's number in the
              simulator's table of transfers in flight, envs/core/disagg.py): its handler
              frees the prefill side's blocks and hands the request to the decode instance.
              Transfers are never cancelled (their generation is always 0).
    RELEASE   a closed-loop session's next turn or an agentic program's next call becomes
              due (its parents finished, plus the think or tool time; `target` is the
              request's row in the workload, envs/core/release.py): its handler makes the
              request, which the loop routes like an arrival. Same priority as arrivals, so
              it is queued before any instance plans at that instant; never cancelled.
    MIGRATION_STAGE  the end of one stage of a live migration's KV copy between mixed
              instances (Llumnix; `target` is the migration's number,
              envs/core/migration.py): its handler starts the next stage, stops the
              request for the last one, completes or aborts the migration. Never cancelled.
    MIGRATION_TICK  the migration controller's check (every `cluster.migration.
              interval_s`): its handler asks MIGRATE decisions (a handler may return a
              generator of decisions, which the loop yields from). Priority after the
              instances of the instant, so it sees the batches they planned.

Cancellation is lazy (as in SimPy's and many kernels' heaps): each target has a
generation counter; an entry carries the generation it was pushed with, and an entry whose
generation is no longer its target's current one is dropped when popped. Bumping the
generation cancels every pending entry of that target in O(1). `Simulator.interrupt`
uses it to cut a planned decode run short at the first iteration boundary at or after
now (a GPU does not stop an iteration halfway), which later events such as KV transfers
or migrations between pools need. The closed-form decode runs stay: a cut run is the
same run with fewer iterations, and the results equal the uncut simulation to float
rounding (tests/test_properties.py).
"""

from __future__ import annotations

from enum import IntEnum

ARRIVAL_PRIORITY = 0  # arrivals of an instant are enqueued before any instance plans
TRANSFER_PRIORITY = 1  # a transfer ending at an instant lands before instances plan then
RELEASE_PRIORITY = ARRIVAL_PRIORITY  # a released request is an arrival
RETAIN_EXPIRY_PRIORITY = 1  # a pin's TTL ending at an instant frees KV before instances plan
INSTANCE_PRIORITY = 2
MIGRATION_STAGE_PRIORITY = 1  # like a transfer: lands before instances plan
MIGRATION_TICK_PRIORITY = 3  # after the instances of the instant planned


class EventKind(IntEnum):
    INSTANCE = 0
    TRANSFER = 1
    MIGRATION_STAGE = 2
    MIGRATION_TICK = 3
    RETAIN_EXPIRY = 5  # a retention pin's TTL ran out (envs/core/retention.py)
    RELEASE = 4


__all__ = ["ARRIVAL_PRIORITY", "INSTANCE_PRIORITY", "MIGRATION_STAGE_PRIORITY",
           "MIGRATION_TICK_PRIORITY", "RELEASE_PRIORITY", "RETAIN_EXPIRY_PRIORITY",
           "TRANSFER_PRIORITY", "EventKind"]
