"""One serving instance: queues, a KV block manager, and the batch builder; a facade.

`Instance` is the simulator's implementation of the `InstanceView` protocol
(envs/protocol.py) and of what the decision loop (envs/core/loop.py) asks of an instance:
`on_event(now)` ends what was in flight and plans a decode run if one can start (a plain
call: the common events cost no generator); `build_next(now)` builds and starts the next
iteration, asking ADMIT / PREEMPT decisions; `enqueue(request, now)`; `advance_to(now)`.
The work is split by responsibility, one mixin per module, all over the one object's
state (composition would cost an attribute hop in the hot loops; measured in
results/bench_core_change.md):

* envs/core/lifecycle.py, `Lifecycle`: rejection, enqueueing, start, preemption, finish;
* envs/core/batching.py, `BatchBuilding`: vllm_v1 / vllm_v0 batches, admission, making
  room by preemption, group scheduling; the batch is an `IterationPlan`;
* envs/core/tokens.py, `TokenBookkeeping`: the end of an iteration; `complete_tokens` is
  the reference token rule that the fast paths copy;
* envs/core/decode_runs.py, `DecodeRuns`: closed-form runs of decode iterations;
* envs/core/kv_cache.py, `BlockManager` (`bm`): the only writer of KV state.

State shared between them: the queues (`waiting`, `running`, `swapped`), the batch
(`plan`), the decode run in flight (`run`, a `DecodeRun`), the `DecodeTally` left by the
last iteration or run (`aggregates`), the statistics. `batch`, `bulk` and `budget` are the
plan's, read-only, for the views.
"""

from __future__ import annotations

from array import array
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from servegym.envs.core.batching import BatchBuilding, IterationPlan
from servegym.envs.core.decode_runs import DecodeRun, DecodeRuns, elapsed, first_reaching
from servegym.envs.core.kv_cache import BlockManager
from servegym.envs.core.kv_tiers import KVTier, TierStore, tiers_from_config
from servegym.envs.core.lifecycle import Lifecycle
from servegym.envs.core.request import Request
from servegym.envs.core.tokens import DecodeTally, TokenBookkeeping, TokenGaps

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
    # Lower KV tiers below the GPU, fastest first (envs/core/kv_tiers.py): mappings
    # {name, capacity_gb | capacity_blocks, bandwidth_gb_s, latency_s}; () = none.
    kv_tiers: tuple[KVTier, ...] = ()

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
        object.__setattr__(self, "kv_tiers", tiers_from_config(self.kv_tiers))
        if self.kv_tiers and not self.enable_prefix_caching:
            raise ValueError("kv_tiers hold prefix-cache blocks evicted from the GPU: set "
                             "enable_prefix_caching: true, or drop kv_tiers")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization is a fraction in (0, 1], got "
                             f"{self.gpu_memory_utilization}")


class Instance(Lifecycle, BatchBuilding, TokenBookkeeping, DecodeRuns):
    """One simulated instance (module docstring); `simulator` is its `ClusterView` and
    the decision loop that schedules its events. `role` is its pool's: "mixed" here;
    prefill and decode instances of a disaggregated cluster are the subclasses of
    envs/core/disagg.py."""

    role = "mixed"

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
            tiers=_tier_store(config, cost_model) if config.kv_tiers else None,
        )
        # KV retention between a session's calls (envs/core/retention.py), or None.
        self.retention = getattr(simulator, "retention", None)
        self.retain_queue: list[tuple[Request, list[int]]] = []  # RETAIN questions to ask
        self.block_size = config.block_size
        self.v0 = config.mode == "vllm_v0"
        self.watermark_blocks = int(config.watermark * num_kv_blocks)
        self.swap_enabled = config.swap_space_blocks > 0
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self.plan = IterationPlan()  # the iteration being built or in flight
        self.run: DecodeRun | None = None  # the decode run in flight
        self.event_pending = False
        self.decode_coeffs: list[tuple[float, float] | None] = [None] * (config.max_num_seqs + 1)
        # Left by the iteration or run that just ended when every running request decodes;
        # read once by the next plan.
        self.aggregates: DecodeTally | None = None
        self.run_aggregates: DecodeTally | None = None
        # Statistics.
        self.num_iterations = 0
        self.num_decode_runs = 0
        self.num_preemptions = 0
        self.busy_time = 0.0
        self.gaps = TokenGaps()
        self.kv_times = array("d")
        self.kv_used = array("q")

    # ================================================================ the views' fields
    @property
    def batch(self) -> list[tuple[Request, int]]:
        """Entries `(request, new tokens)` of the batch being built or in flight."""
        return self.plan.entries

    @property
    def bulk(self) -> int:
        """vllm_v1: the first `bulk` running requests decode in this batch as a group."""
        return self.plan.bulk

    @property
    def budget(self) -> int:
        """Tokens left in the batch being built."""
        return self.plan.budget

    @property
    def bulk_blocks(self) -> int:
        """KV blocks reserved for the group, not yet on its requests."""
        return self.bm.reserved

    # ================================================================ the loop's calls
    def on_event(self, now: float) -> bool:
        """End what was in flight at `now` and plan a decode run if one can start.

        True when the instance is settled (a run planned, or idle); False when a batch must
        be built, which may ask decisions: then the simulator runs `build_next`. Split so
        the common events cost a plain call, not a generator.
        """
        self._close_event(now)
        if self.retain_queue:
            return False  # build_next asks the RETAIN decisions, then plans
        if not (self.running or self.waiting or self.swapped):
            return True
        return self._plan_decode_run(now)

    def _close_event(self, now: float) -> None:
        """The work this instance's event ends: its decode run, or its iteration (the fast
        path or the reference token rule); shared by every role's `on_event`."""
        self.aggregates = None
        if self.run is not None:
            self._finish_run(now)
        else:
            plan = self.plan
            if plan.entries or plan.bulk or plan.extra_time:
                if self.sim.decode_runs:
                    self._finish_iteration_fast(now)
                else:
                    self._finish_iteration_reference(now)
        self.event_pending = False
        if self.retain_queue and self.retention.policy is not None:
            self.retention.answer_inline(self, now)  # RETAIN by its policy, before planning

    def build_next(self, now: float) -> Generator[Any, Any, None]:
        """Build and start the next iteration at `now` (after `on_event` returned False)."""
        plan = self.plan
        if self.retain_queue:  # surfaced RETAIN decisions (on_event returned early)
            yield from self.retention.ask(self, now)
            if not (self.running or self.waiting or self.swapped):
                return
            if self._plan_decode_run(now):
                return
        attempts = 0
        while attempts < 3:
            yield from self._build_batch(now)
            if plan.entries or plan.bulk or plan.extra_time:
                self._start_iteration(now)
                return
            if not (self.running or self.waiting or self.swapped):
                return
            if self._plan_decode_run(now):
                return
            if self.retention is not None and self.waiting and \
                    self.retention.release_for_room(self):
                continue  # pinned KV kept a waiting request out: release a pin, retry
            attempts += 1
        raise SimulationError(
            f"instance {self.index} cannot make progress at t={now}: "
            f"{len(self.waiting)} waiting, {len(self.running)} running, "
            f"{len(self.swapped)} swapped, {self.bm.num_free} KV blocks free"
        )

    def _start_iteration(self, now: float) -> None:
        plan = self.plan
        duration = self.cost.iteration_time(plan.chunks, plan.decodes, plan.decode_context)
        duration += plan.extra_time
        plan.start = now
        self._sample_kv(now)
        self.sim.schedule(now + duration, self)
        self.event_pending = True

    def _sample_kv(self, now: float) -> None:
        self.kv_times.append(now)
        self.kv_used.append(self.bm.num_used)


def _tier_store(config: InstanceConfig, cost_model: Any) -> TierStore:
    """The lower KV tiers of an instance, sized by its model's KV bytes per block (per GPU
    of the tensor-parallel group)."""
    from servegym.envs.costs.specs import kv_bytes_per_token_per_gpu

    model = getattr(cost_model, "model", None)
    if not hasattr(model, "num_layers"):
        raise ValueError("kv_tiers need the cost model's model spec to size KV blocks in "
                         f"bytes; this cost model ({type(cost_model).__name__}) names none")
    block_bytes = config.block_size * kv_bytes_per_token_per_gpu(
        model, getattr(cost_model, "tensor_parallel", 1))
    return TierStore(config.kv_tiers, block_bytes)


# The names this module had before the split (tests, the live backend).
_elapsed = elapsed
_first_reaching = first_reaching

__all__ = ["MODES", "Instance", "InstanceConfig", "SimulationError", "TokenGaps"]
