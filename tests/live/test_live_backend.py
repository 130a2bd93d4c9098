"""The live backend: protocol, decisions carried out by vLLM, routing, calibration."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from servegym.envs.core.decisions import (
    STOP,
    DecisionKind,
    LatestArrivalPreemption,
    default_policies,
)
from servegym.envs.workloads.workload import Workload


class ToFirst:
    def decide(self, decision):
        return 0


class EarliestVictim:
    """Preempts the earliest-admitted running request: the opposite of vLLM's choice."""

    def __init__(self):
        self.victims = []

    def decide(self, decision):
        self.victims.append(decision.candidates[0].rid)
        return 0


def policies(overrides=None):
    chosen = default_policies()
    chosen[DecisionKind.ROUTE] = ToFirst()
    chosen.update(overrides or {})
    return chosen


def small_workload(n=24, seed=0, gap=0.01, prompt=(20, 300), output=(5, 60)):
    rng = np.random.default_rng(seed)
    return Workload.from_lengths(np.cumsum(rng.exponential(gap, n)),
                                 rng.integers(*prompt, n), rng.integers(*output, n))


def test_tiny_model_is_written_deterministically(tmp_path):
    from servegym.envs.backends.live.model import TinyLlamaSpec, ensure_tiny_llama

    spec = TinyLlamaSpec(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                         intermediate_size=128, vocab_size=256, seed=3)
    digests = []
    for run in range(2):
        folder = ensure_tiny_llama(spec, tmp_path / str(run))
        digests.append(hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
        assert (folder / "config.json").exists()
    assert digests[0] == digests[1]


def test_fcfs_run_finishes_every_request(live_backend):
    live_backend.policies = policies()
    workload = small_workload()
    report = live_backend.run(workload, seed=0)
    records = report.records
    assert (records["status"] == "finished").all()
    assert (records["generated_tokens"] == records["output_tokens"]).all()
    assert (records["first_token"] >= records["arrival"]).all()
    assert (records["finish"] >= records["first_token"]).all()
    assert report.summary["serving/ttft_p50"] > 0
    assert report.counters["hook_mismatch_admit"] == 0
    assert report.counters["hook_mismatch_preempt"] == 0
    assert report.cost_source.startswith("live-vllm")


def test_the_live_backend_implements_the_protocols(live_backend):
    from servegym.envs.protocol import Backend, ClusterView, InstanceView, KVView

    live_backend.policies = policies()
    live_backend.run(small_workload(), seed=0)
    assert isinstance(live_backend, Backend) and isinstance(live_backend, ClusterView)
    for instance in live_backend.instances:
        assert isinstance(instance, InstanceView) and isinstance(instance.bm, KVView)


def test_policy_victim_is_the_one_vllm_preempts(live_backend):
    victim_policy = EarliestVictim()
    live_backend.policies = policies({DecisionKind.PREEMPT: victim_policy})
    # Long outputs on a 64-block pool force preemptions.
    workload = small_workload(n=20, gap=0.001, prompt=(200, 400), output=(150, 300))
    report = live_backend.run(workload, seed=1)
    assert victim_policy.victims, "the workload should run out of KV"
    preempted = report.records["preemptions"]
    assert preempted.sum() == len(victim_policy.victims)
    assert report.counters["hook_mismatch_preempt"] == 0
    assert (report.records["status"] == "finished").all()


def test_stepped_admission_follows_the_agent(live_backend):
    live_backend.policies = {k: v for k, v in policies().items() if k != DecisionKind.ADMIT}
    prompts = np.array([400, 50, 300, 20, 200, 100])
    workload = Workload.from_lengths(np.zeros(6), prompts, np.full(6, 3))
    live_backend.reset(workload, seed=0)
    asked = 0
    while (decision := live_backend.next_decision()) is not None:
        assert decision.kind == DecisionKind.ADMIT
        mask = decision.mask()
        # Shortest prompt first, one admission per step.
        if asked and decision.can_stop() and decision.instance.batch:
            live_backend.apply(STOP)
            continue
        order = np.argsort([r.prompt_len for r in decision.candidates])
        live_backend.apply(int(next(i for i in order if mask[i])))
        asked += 1
    report = live_backend.report()
    first = report.records["first_scheduled"]
    assert list(np.argsort(first, kind="stable")) == list(np.argsort(prompts, kind="stable"))
    assert report.counters["hook_mismatch_admit"] == 0


def test_routing_across_two_engines(live_backend):
    from servegym.envs.core.decisions import RoundRobinRouting

    live_backend.policies = {**default_policies(), DecisionKind.ROUTE: RoundRobinRouting()}
    report = live_backend.run(small_workload(n=16), seed=0)
    instances = report.records["instance"]
    assert set(instances.tolist()) == {0, 1}
    assert all(i.num_iterations > 0 for i in live_backend.instances)
    assert (report.records["status"] == "finished").all()


def test_vanilla_vllm_matches_the_hook_with_default_policies(live_backend):
    """Without the hook vLLM schedules by itself; FCFS + latest-arrival give the same run
    (same admissions and preemptions; times differ only by step-time noise)."""
    workload = small_workload(n=20, gap=0.001, prompt=(200, 400), output=(150, 300))
    live_backend.policies = policies({DecisionKind.PREEMPT: LatestArrivalPreemption()})
    hooked = live_backend.run(workload, seed=2)
    live_backend.hook = False
    try:
        vanilla = live_backend.run(workload, seed=2)
    finally:
        live_backend.hook = True
    assert hooked.records["preemptions"].sum() == vanilla.records["preemptions"].sum()
    assert hooked.summary["serving/iterations"] == vanilla.summary["serving/iterations"]


def test_calibration_table_round_trip_and_fit(live_backend, tmp_path):
    from servegym.envs.backends.live.calibrate import (
        StepCostModel,
        error_summary,
        fit_steps,
        load_step_model,
        profile_engine,
        relative_errors,
        rows_to_table,
        write_table,
    )
    from servegym.envs.costs.tables import read_table

    rows = profile_engine(live_backend.instances[1], decodes=(0, 2, 8), contexts=(64, 256),
                          prefills=(0, 32, 256), repeats=2)
    assert len(rows) >= 20
    path = write_table(rows_to_table(rows, {"kind": "ops", "source": "test", "gpu": "cpu",
                                            "model": "tiny"}), tmp_path / "steps.csv")
    table = read_table(path)
    assert all(op.startswith("engine_step_c") for op in table.ops)
    model = load_step_model(path)
    assert model.iteration_time([], 0, 0) == 0.0
    base, slope = model.decode_coeffs(4)
    assert model.iteration_time([], 4, 400) == pytest.approx(base + slope * 400)
    errors = error_summary(relative_errors(StepCostModel(fit_steps(rows)), rows))
    assert errors["p50"] < 0.5  # a sanity bound: the machine is shared and noisy


def test_build_backend_gives_a_live_backend_with_cpu_settings():
    from servegym.envs.backends import build_backend
    from servegym.envs.backends.live.backend import LiveBackend

    backend = build_backend("live", instance={"num_kv_blocks": 96, "block_size": 16},
                            debug_checks=True)
    assert isinstance(backend, LiveBackend)
    assert backend.config.block_size == 32  # the CPU attention kernel needs multiples of 32
    assert backend.config.num_kv_blocks == 96
    with pytest.raises(ValueError, match="recompute only"):
        build_backend("live", instance={"swap_space_blocks": 8})
    with pytest.raises(ValueError, match="unknown backend"):
        build_backend("remote")
