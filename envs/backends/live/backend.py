"""`LiveBackend`: the simulator's decision protocol on real vLLM v1 engines.

Same protocol as `servegym.envs.core.simulator.Simulator`:

    backend.reset(workload, seed)   # runs to the first decision nobody answers
    backend.next_decision()         # Decision | None
    backend.apply(action)
    backend.report()                # ServingReport (servegym.envs.core.metrics.build_report)
    backend.run(workload, seed)

Time is virtual. Each engine is driven step by step (`LLMEngine.step()`, in-process); a step
that starts at virtual time t ends at t + d, where d is the step's measured duration (this
thread's CPU time by default, or `perf_counter`), so a trace replays the same on a shared,
noisy machine and several engines take turns on one core. Arrivals are injected at their
virtual times; an instance's step results (tokens, finishes) land at its end time.

Decisions: before each step the instance mirrors vLLM v1's running loop (token budget,
chunked prefill, KV blocks) to find where KV runs short and asks PREEMPT there, then asks
ADMIT for waiting requests while one fits; the answers go to `PolicyScheduler` (see
`scheduler.py`), which makes vLLM carry them out. ROUTE is asked at arrival across instances.
Candidates are `servegym.envs.core.request.Request` mirrors, so every heuristic works unchanged.
Swap preemption is not offered (vLLM v1 preempts by recompute only).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.backends.live import configure_environment
from servegym.envs.backends.live.model import TinyLlamaSpec, ensure_tiny_llama
from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies, reset_policies
from servegym.envs.core.instance import InstanceConfig, TokenGaps
from servegym.envs.core.loop import DecisionLoop
from servegym.envs.core.metrics import ServingReport, build_report
from servegym.envs.core.occupancy import Occupancy
from servegym.envs.core.request import FINISHED, REJECTED, RUNNING, WAITING, Request
from servegym.envs.protocol import STOP, Action, Decision, DecisionKind, Policy

CLOCKS = ("thread_time", "perf_counter")
FIRST_TOKEN_ID = 3


class LiveCost:
    """Stands in for `Simulator.cost`: reports carry `source`; heuristics that ask for
    iteration times get them from `predictor` (a fitted model) when one is given."""

    def __init__(self, predictor: Any = None, source: str = "live-vllm") -> None:
        self.source = source
        self.predictor = predictor
        self.block_size = getattr(predictor, "block_size", 32)

    def iteration_time(self, chunks: Any, decodes: int, context: int) -> float:
        if self.predictor is None:
            raise RuntimeError("the live backend has no step-time predictor; pass predictor=")
        return self.predictor.iteration_time(chunks, decodes, context)

    def decode_coeffs(self, n: int) -> tuple[float, float]:
        return self.predictor.decode_coeffs(n)

    def swap_time(self, blocks: int) -> float:
        return math.inf  # no swap in vLLM v1

    def describe(self) -> dict[str, Any]:
        return {"source": self.source}


class LiveBlocks:
    """The part of `BlockManager` that policies and observations read, over vLLM's pool."""

    enable_prefix_caching = False
    prefix_hits = 0
    prefix_queries = 0

    enable_prefix_caching = False  # hits are vLLM's own business; policies see none

    def __init__(self, instance: LiveInstance) -> None:
        self.instance = instance
        self.num_blocks = instance.num_kv_blocks
        self.block_size = instance.block_size

    @property
    def num_free(self) -> int:
        return self.instance.block_pool.get_num_free_blocks()

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def count_prefix_hits(self, request: Request) -> tuple[int, int]:
        return 0, 0

    def can_swap_out(self, request: Request) -> bool:
        return False

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.instance.block_size)


class LiveInstance:
    """One vLLM engine plus the mirror state decisions read (waiting / running queues)."""

    swap_enabled = False
    bulk = 0
    pool = 0  # live engines are one pool

    def __init__(self, index: int, backend: LiveBackend, engine: Any) -> None:
        self.index = index
        self.sim = backend
        self.config: InstanceConfig = backend.config
        self.cost = backend.cost
        self.engine = engine
        core = engine.engine_core.engine_core
        self.scheduler = core.scheduler
        self.kv = self.scheduler.kv_cache_manager
        self.block_pool = self.kv.block_pool  # vLLM's; `pool` is our pool index
        self.num_kv_blocks = self.block_pool.num_gpu_blocks - 1  # block 0 is vLLM's null block
        self.block_size = self.config.block_size
        self.max_model_len = backend.max_model_len
        self.watermark_blocks = int(self.config.watermark * self.num_kv_blocks)
        self.bm = LiveBlocks(self)
        self.reset_state()

    def reset_state(self) -> None:
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.swapped: list[Request] = []
        self.by_id: dict[str, Request] = {}  # vLLM's internal request id -> mirror
        self.by_external: dict[str, Request] = {}  # our id (episode-rid) -> mirror
        self.engine_ids: dict[int, str] = {}  # rid -> vLLM's internal id
        self.batch: list[tuple[Request, int]] = []
        self.budget = self.config.max_num_batched_tokens
        self.free_at = math.inf  # virtual time of this instance's next event
        self.pending: Any = None  # (start, outputs) of the step in flight
        self.num_iterations = 0
        self.num_decode_runs = 0
        self.num_preemptions = 0
        self.busy_time = 0.0
        self.gaps = TokenGaps()
        self.kv_times = array("d")
        self.kv_used = array("q")
        self.step_log: list[tuple] = []
        self.mismatches = {"admit": 0, "preempt": 0}
        self._free = 0
        self._seqs = 0

    # ------------------------------------------------------------ rules the policies read
    def rejection_reason(self, request: Request) -> str:
        total = request.prompt_len + request.output_len
        if total > self.max_model_len:
            return f"exceeds_context: {total} tokens > max_model_len {self.max_model_len}"
        blocks = self.bm.blocks_for(total - 1)
        if blocks > self.num_kv_blocks:
            return f"exceeds_kv_capacity: needs {blocks} blocks, instance has {self.num_kv_blocks}"
        return ""

    def can_admit(self, request: Request) -> bool:
        if self._seqs >= self.config.max_num_seqs or self.budget <= 0:
            return False
        remaining = request.prompt_len + request.num_generated - request.num_computed
        if self.sim.reserve_full_prompt:  # vLLM's default: the whole sequence must fit
            tokens = request.prompt_len + request.num_generated
            watermark = self.watermark_blocks if self.batch else 0
            return self.bm.blocks_for(tokens) - request.num_blocks + watermark <= self._free
        chunk = min(remaining, self.budget)
        watermark = self.watermark_blocks if self.batch else 0
        return (self.bm.blocks_for(request.num_computed + chunk) - request.num_blocks
                + watermark <= self._free)

    def admissible(self, requests: list[Request]) -> list[bool]:
        return [self.can_admit(request) for request in requests]

    def can_receive(self, request: Request) -> bool:
        """Never: a live engine takes no KV by transfer (no KV connector is wired, and the
        live backend refuses every cluster option that would move KV), so no decision
        whose mask asks this can offer a live instance."""
        return False

    def any_admissible(self) -> bool:
        return any(map(self.can_admit, self.waiting))

    def can_stop_admitting(self) -> bool:
        return bool(self.batch or self.running) or not self.any_admissible()

    # ------------------------------------------------------------ planning one step
    def plan(self, now: float) -> Generator[Decision, Action, tuple[list[str], list[str]]]:
        """Mirror vLLM v1's schedule(): PREEMPT where KV runs short, then ADMIT."""
        ask = self.sim.ask
        self.batch = []
        self.budget = self.config.max_num_batched_tokens
        self._free = self.bm.num_free
        planned_blocks: dict[int, int] = {}
        victims: list[Request] = []
        order = [r for r in self._vllm_running_order()]
        index = 0
        while index < len(order) and self.budget > 0:
            request = order[index]
            num_new = min(request.prompt_len + request.num_generated - request.num_computed,
                          self.budget)
            if num_new <= 0:
                index += 1
                continue
            need = self.bm.blocks_for(request.num_computed + num_new) - request.num_blocks
            victim_self = False
            while need > self._free:
                decision = Decision(DecisionKind.PREEMPT, now, order, instance=self,
                                    request=request)
                action = yield from ask(decision)
                victim = order[action.choice]
                position = order.index(victim)
                order.pop(position)
                victims.append(victim)
                self._free += victim.num_blocks + planned_blocks.pop(victim.rid, 0)
                if position < index:  # was planned already: give back its tokens
                    index -= 1
                    for j, (r, n) in enumerate(self.batch):
                        if r is victim:
                            self.budget += n
                            del self.batch[j]
                            break
                if victim is request:
                    victim_self = True
                    break
            if victim_self:
                break  # vLLM stops scheduling running requests here
            self._free -= need
            planned_blocks[request.rid] = need
            self.budget -= num_new
            self.batch.append((request, num_new))
            index += 1
        admitted: list[Request] = []
        if not victims:
            self._seqs = len(order)
            waiting = [r for r in self.waiting]
            admit_internal = self.sim.admit_is_internal
            while waiting and self._seqs < self.config.max_num_seqs and self.budget > 0:
                if not admit_internal and not any(map(self.can_admit, waiting)):
                    break
                decision = Decision(DecisionKind.ADMIT, now, waiting, instance=self)
                action = yield from ask(decision)
                if action.choice == STOP:
                    break
                request = waiting.pop(action.choice)
                remaining = request.prompt_len + request.num_generated
                chunk = min(remaining, self.budget)
                self._free -= self.bm.blocks_for(chunk)
                self.budget -= chunk
                self._seqs += 1
                self.batch.append((request, chunk))
                admitted.append(request)
        self._planned = (admitted, victims)
        return [self._rid(r) for r in admitted], [self._rid(r) for r in victims]

    def _vllm_running_order(self) -> list[Request]:
        return [self.by_id[r.request_id] for r in self.scheduler.running
                if r.request_id in self.by_id]

    def _rid(self, request: Request) -> str:
        return self.engine_ids[request.rid]

    # ------------------------------------------------------------ running one step
    def launch(self, now: float, plan: tuple[list[str], list[str]] | None) -> bool:
        """Run one engine step at virtual time `now`; False if it scheduled nothing."""
        scheduler = self.scheduler
        scheduler.plan = plan
        clock = self.sim.clock_fn
        scheduler.clock = clock
        scheduler.hook_seconds = 0.0
        start = clock()
        outputs = self.engine.step()
        # The plan's queue shuffling is servegym's cost, not the engine's: not timed.
        duration = (clock() - start - scheduler.hook_seconds) * self.sim.time_scale
        out = scheduler.last_output
        scheduler.last_output = None
        if out is None or out.total_num_scheduled_tokens == 0:
            return False
        self._apply_schedule(now, out)
        self.kv_times.append(now)
        self.kv_used.append(self.bm.num_used)
        self.pending = (now, outputs, out)
        self.free_at = now + duration
        return True

    def _apply_schedule(self, now: float, out: Any) -> None:
        """Admissions and preemptions take effect when the batch is built, as in the sim."""
        preempted = set(out.preempted_req_ids or ())
        admitted_ids = [r.req_id for r in out.scheduled_new_reqs]
        admitted_ids += [rid for rid in out.scheduled_cached_reqs.req_ids
                         if rid in self.by_id and self.by_id[rid].status == WAITING]
        planned_admit, planned_victims = getattr(self, "_planned", ([], []))
        if {self._rid(r) for r in planned_victims} != preempted:
            self.mismatches["preempt"] += 1
        if {self._rid(r) for r in planned_admit} != set(admitted_ids):
            self.mismatches["admit"] += 1
        for rid in preempted:
            request = self.by_id[rid]
            self.running.remove(request)
            request.num_preemptions += 1
            request.recomputed_tokens += request.num_computed
            request.num_computed = 0
            request.num_blocks = 0
            request.status = WAITING
            self.waiting.insert(0, request)
            self.num_preemptions += 1
        for rid in admitted_ids:
            request = self.by_id[rid]
            self.waiting.remove(request)
            request.status = RUNNING
            if request.first_scheduled != request.first_scheduled:
                request.first_scheduled = now
            self.running.append(request)
        # Batch composition, for calibration: (prefill chunks, decodes, decode context).
        chunks, decodes, context = [], 0, 0
        for rid, n in out.num_scheduled_tokens.items():
            request = self.by_id[rid]
            computed = request.num_computed
            if n == 1 and computed + 1 == request.prompt_len + request.num_generated:
                decodes += 1
                context += computed + 1
            else:
                chunks.append((n, computed))
        self.batch_composition = (chunks, decodes, context)

    def complete(self, now: float) -> None:
        """The step in flight ends at `now`: tokens and finishes land."""
        start, outputs, _ = self.pending
        self.pending = None
        self.num_iterations += 1
        self.busy_time += now - start
        chunks, decodes, context = self.batch_composition
        self.step_log.append((start, now - start, tuple(chunks), decodes, context))
        singles = self.gaps.singles
        for output in outputs:
            request = self.by_external.get(output.request_id)
            if request is None:
                continue
            generated = len(output.outputs[0].token_ids)
            if generated > request.num_generated:
                if request.num_generated == 0:
                    request.first_token_time = now
                    self.sim.record_first_token(request)
                else:
                    singles.append(now - request.last_token_time)
                request.num_generated = generated
                request.last_token_time = now
            if output.finished:
                request.status = FINISHED
                request.finish_time = now
                request.num_computed = request.num_blocks = 0
                self.running.remove(request)
                del self.by_external[output.request_id]
                del self.by_id[self.engine_ids.pop(request.rid)]
                self.sim.record_departure(request, now)
        for vreq in self.scheduler.running:
            request = self.by_id.get(vreq.request_id)
            if request is not None:
                request.num_computed = vreq.num_computed_tokens
                request.num_blocks = len(self.kv.get_block_ids(vreq.request_id)[0])

    def enqueue(self, request: Request, now: float) -> None:
        request.instance = self.index
        reason = self.rejection_reason(request)
        if reason:
            request.status = REJECTED
            request.reject_reason = reason
            self.sim.record_departure(request, now)
            return
        from vllm import SamplingParams

        self.waiting.append(request)
        external = f"{self.sim.episode}-{request.rid}"
        params = SamplingParams(max_tokens=request.output_len, min_tokens=request.output_len,
                                ignore_eos=True, temperature=0.0, detokenize=False)
        internal = self.engine.add_request(
            external, {"prompt_token_ids": self.sim.prompt_tokens(request)}, params,
            arrival_time=request.arrival_time)
        self.by_id[internal] = request
        self.by_external[external] = request
        self.engine_ids[request.rid] = internal
        if self.pending is None and self.free_at == math.inf:
            self.free_at = now
            self.sim.wake(self)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------ the shared loop's hooks
    def on_event(self, now: float) -> bool:
        """The step in flight (if any) ends at `now`; True when there is nothing to plan."""
        if self.pending is not None:
            self.complete(now)
        self.free_at = math.inf
        self.event_pending = False
        return not self.has_work()

    def build_next(self, now: float) -> Generator[Decision, Action, None]:
        """Plan (through the hook's decisions) and launch the next engine step."""
        plan = None
        if self.sim.hook:
            plan = yield from self.plan(now)
        if self.launch(now, plan):
            self.sim.wake(self)
        elif self.sim.next_arrival_time == math.inf:
            raise RuntimeError(
                f"live instance {self.index} cannot make progress at t={now}: "
                f"{len(self.waiting)} waiting, {len(self.running)} running")
        # else: idle until the next arrival wakes it (`LiveBackend.after_arrival`)

    def advance_to(self, now: float) -> None:
        """Nothing to catch up: a live engine's state is always as of its last step."""


class LiveBackend(DecisionLoop, Occupancy):
    """`num_instances` in-process vLLM engines behind a router; the simulator's protocol.

    Args:
        instance_config: batching settings (vLLM's names); `num_kv_blocks` sets vLLM's
            `num_gpu_blocks_override`; `block_size` must be a multiple of 32 on CPU.
        policies: as for `Simulator` (kinds left out surface through `next_decision()`).
        model: a `TinyLlamaSpec` (random weights, written on first use) or a model folder.
        clock: `thread_time` (this thread's CPU time per step; robust on a shared machine)
            or `perf_counter` (wall time).
        time_scale: multiplies measured step times (e.g. to stretch a tiny model's steps).
        predictor: optional fitted step-time model, for heuristics that ask `cost`.
        hook: False runs vLLM's own scheduler untouched (FCFS, latest-arrival preemption).
        reserve_full_prompt: vLLM's `scheduler_reserve_full_isl` (its default is True: admit
            only if the whole sequence fits in KV). False (ours) checks only the first chunk,
            the rule the simulator implements.
    """

    def __init__(
        self,
        instance_config: InstanceConfig | None = None,
        num_instances: int = 1,
        policies: Mapping[DecisionKind, Policy] | None = None,
        model: TinyLlamaSpec | str | Path | None = None,
        clock: str = "thread_time",
        time_scale: float = 1.0,
        predictor: Any = None,
        hook: bool = True,
        reserve_full_prompt: bool = False,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        self.config = instance_config or InstanceConfig(block_size=32, num_kv_blocks=64,
                                                        max_num_batched_tokens=512,
                                                        max_num_seqs=32, max_model_len=1024)
        if self.config.mode != "vllm_v1" or self.config.enable_prefix_caching:
            raise ValueError("the live backend runs vllm_v1 without prefix caching")
        if self.config.swap_space_blocks:
            raise ValueError("vLLM v1 preempts by recompute only; set swap_space_blocks=0")
        self.num_instances = num_instances
        self.policies: dict[DecisionKind, Policy] = (
            default_policies() if policies is None else dict(policies)
        )
        self.model = model or TinyLlamaSpec()
        self.clock_fn = time.thread_time if clock == "thread_time" else time.perf_counter
        self.clock = clock
        self.time_scale = time_scale
        self.cost = LiveCost(predictor, source=f"live-vllm ({clock})")
        self.pools = (Pool("live", self.config, self.cost, num_instances),)  # one pool
        self.hook = hook
        self.reserve_full_prompt = reserve_full_prompt
        self.dtype = dtype
        self.engine_seed = seed
        self.max_model_len = self.config.max_model_len or 2048
        self.instances: list[LiveInstance] = []
        self.episode = 0
        self.workload = None
        self._decision: Decision | None = None
        self._done = True

    # ------------------------------------------------------------ engines
    def _model_path(self) -> str:
        if isinstance(self.model, TinyLlamaSpec):
            return str(ensure_tiny_llama(self.model))
        return str(self.model)

    def build_engines(self) -> None:
        """Start the engines now (`reset` does it on first use)."""
        if not self.instances:
            self._build_engines()

    def _build_engines(self) -> None:
        configure_environment()
        import torch
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        from servegym.envs.backends.live.scheduler import PolicyScheduler

        torch.set_num_threads(1)
        cfg = self.config
        path = self._model_path()
        for index in range(self.num_instances):
            args = EngineArgs(
                model=path, skip_tokenizer_init=True, dtype=self.dtype,
                max_model_len=self.max_model_len, max_num_seqs=cfg.max_num_seqs,
                max_num_batched_tokens=cfg.max_num_batched_tokens, block_size=cfg.block_size,
                num_gpu_blocks_override=(cfg.num_kv_blocks + 1 if cfg.num_kv_blocks else None),
                enable_prefix_caching=False, enable_chunked_prefill=cfg.enable_chunked_prefill,
                enforce_eager=True, seed=self.engine_seed, async_scheduling=False,
                scheduler_cls=PolicyScheduler, disable_log_stats=True,
                scheduler_reserve_full_isl=self.reserve_full_prompt, watermark=cfg.watermark,
            )
            engine = LLMEngine.from_engine_args(args)
            self.instances.append(LiveInstance(index, self, engine))
        self.num_kv_blocks = self.instances[0].num_kv_blocks

    def close(self) -> None:
        for instance in self.instances:
            instance.engine.engine_core.shutdown()
        self.instances = []

    # ------------------------------------------------------------ protocol
    def reset(self, workload: Any, seed: int = 0) -> None:
        if getattr(workload, "parents", None) is not None:
            raise ValueError(
                f"workload {workload.name!r} is closed loop (sessions or programs whose calls "
                "wait for earlier ones); the live backend replays arrival times only and "
                "does not release calls by their dependencies: use backend='sim'")
        if not self.instances:
            self._build_engines()
        self._drain_engines()
        self.episode += 1
        self.workload = workload
        self.rng = np.random.default_rng(seed)
        reset_policies(self.policies, self.rng)
        self._token_rng = np.random.default_rng([seed, 7])
        vocab = getattr(self.model, "vocab_size", 2048)
        self._vocab = vocab
        self.now = 0.0
        for instance in self.instances:
            instance.reset_state()
        self.requests: list[Request] = []
        self.reset_occupancy(workload.arrival_time.tolist())
        arrivals = self.arrival_times
        self.next_arrival_time = arrivals[0] if arrivals else math.inf
        self.admit_is_internal = DecisionKind.ADMIT in self.policies
        self.admit_head_only = False
        self.start_loop()  # the decision loop the simulator runs too (envs/core/loop.py)

    def _drain_engines(self) -> None:
        for instance in self.instances:
            engine = instance.engine
            ids = [r for r in list(instance.scheduler.requests)]
            if ids:
                engine.abort_request(ids, internal=True)
            while engine.has_unfinished_requests():
                engine.step()

    def run(self, workload: Any = None, seed: int = 0) -> ServingReport:
        if workload is not None:
            self.reset(workload, seed)
        if self._decision is not None:
            raise RuntimeError(f"no policy answers {self._decision.kind.name} decisions")
        return self.report()

    def report(self) -> ServingReport:
        if not self._done:
            raise RuntimeError("run not finished; answer the pending decisions first")
        report = build_report(self)
        report.counters["hook_mismatch_admit"] = float(
            sum(i.mismatches["admit"] for i in self.instances))
        report.counters["hook_mismatch_preempt"] = float(
            sum(i.mismatches["preempt"] for i in self.instances))
        return report

    def step_log(self) -> list[tuple]:
        """(start, duration, prefill chunks, decodes, decode context) of every step."""
        return [entry for instance in self.instances for entry in instance.step_log]

    # ------------------------------------------------------------ internals
    def wake(self, instance: LiveInstance) -> None:
        self.schedule(instance.free_at, instance)

    def after_arrival(self) -> None:
        for instance in self.instances:  # stalled instances retry on arrivals
            if instance.pending is None and instance.free_at == math.inf \
                    and instance.has_work():
                instance.free_at = self.now
                self.wake(instance)

    def prompt_tokens(self, request: Request) -> list[int]:
        return self._token_rng.integers(FIRST_TOKEN_ID, self._vocab,
                                        request.prompt_len).tolist()

    def _make_request(self, index: int) -> Request:
        w = self.workload
        request = Request(
            index, float(w.arrival_time[index]), int(w.prompt_len[index]),
            int(w.output_len[index]), int(w.tenant[index]), int(w.priority[index]),
            float(w.ttft_slo[index]), float(w.tpot_slo[index]), None,
        )
        self.requests.append(request)
        self.record_arrival(request)
        return request

LIVE_DEFAULTS = {
    "block_size": 32, "num_kv_blocks": 64, "max_num_batched_tokens": 512, "max_num_seqs": 32,
    "max_model_len": 1024,
}


def live_instance_config(instance: Mapping[str, Any] | None = None) -> InstanceConfig:
    """An `InstanceConfig` for a CPU engine: the env's settings over small live defaults
    (block size a multiple of 32, a KV pool of a few thousand tokens); settings the live
    backend cannot honour (swap, prefix caching, vllm_v0) raise in `LiveBackend`."""
    fields = dict(LIVE_DEFAULTS)
    fields.update(instance or {})
    if fields["block_size"] % 32:
        fields["block_size"] = 32
    return InstanceConfig(**fields)


def step_rows(backend: LiveBackend) -> list[tuple]:
    """The live run's steps as calibration rows: (chunks, decodes, context, seconds)."""
    return [(list(chunks), decodes, context, duration)
            for _, duration, chunks, decodes, context in backend.step_log()]
