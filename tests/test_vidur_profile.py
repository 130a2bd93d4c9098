"""The Vidur compatibility profile: Vidur's KV planner, request sampling, NCCL launch term
and GQA attention factor (envs/costs/crosscheck.py), each off in servegym's defaults."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from servegym.envs.costs import build_cost_model
from servegym.envs.costs.crosscheck import (
    VIDUR_GQA_ATTENTION_OVERHEAD,
    VIDUR_NCCL_LAUNCH_OVERHEAD_S,
    vidur_clip_lengths,
    vidur_crosscheck_workload,
    vidur_poisson_arrivals,
    vidur_trace_order,
)
from servegym.envs.costs.specs import (
    kv_capacity_blocks,
    vidur_kv_capacity_blocks,
    vidur_layer_params_per_gpu,
)
from servegym.envs.workloads import load_azure_2023
from servegym.envs.workloads.arrivals import poisson_arrivals, vidur_capped_rate
from servegym.envs.workloads.workload import WorkloadError

ROOT = Path(__file__).resolve().parents[1]
SETTING = ("Llama-2-70B", "A100-80GB", 2)


def _experiment(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text())


# ---- KV capacity -------------------------------------------------------------------------

def test_vidur_planner_counts_layer_weights_only() -> None:
    # Per GPU at TP2: QKV 8192 x 128 x (32 + 2 x 4) + O 8192 x 128 x 32 + MLP 3 x 8192 x
    # 28672 / 2 (Vidur's ParamCounter: no norms, embedding or LM head).
    assert vidur_layer_params_per_gpu("Llama-2-70B", 2) == 41_943_040 + 33_554_432 + 352_321_536
    # 80 GiB x 0.9 - 80 layers x 2 bytes x that = 8.86e9 bytes; one 4096-token request's KV
    # is 2 x 2 x 128 x 4 x 4096 x 80 = 671,088,640 bytes: 13 requests x 256 blocks.
    assert vidur_kv_capacity_blocks(*SETTING) == 13 * 256 == 3328


def test_default_capacity_is_unchanged_and_smaller() -> None:
    assert kv_capacity_blocks(*SETTING) == 2487
    assert vidur_kv_capacity_blocks(*SETTING, memory_margin_fraction=0.0) > 3328


def test_experiments_use_the_planners_numbers() -> None:
    forward, reverse = _experiment("vidur_crosscheck"), _experiment("vidur_crosscheck_reverse")
    assert forward["cluster"]["instance"]["num_kv_blocks"] == vidur_kv_capacity_blocks(
        *SETTING, block_size=16, max_request_tokens=forward["workload"]["max_total_tokens"])
    assert reverse["cluster"]["instance"]["num_kv_blocks"] == kv_capacity_blocks(*SETTING)
    assert reverse["defaults"] == ["vidur_crosscheck"]
    cost = forward["cost"]
    assert cost["allreduce_launch_overhead_s"] == VIDUR_NCCL_LAUNCH_OVERHEAD_S
    assert cost["gqa_attention_overhead"] == VIDUR_GQA_ATTENTION_OVERHEAD
    assert forward["workload"]["sampling"] == "vidur" and forward["workload"]["seed"] == 42


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"max_request_tokens": 0}, "max_request_tokens must be"),
    ({"max_request_tokens": 8}, "below one block"),
    ({"memory_margin_fraction": 1.0}, "memory_margin_fraction"),
    ({"block_size": 1.5}, "block_size must be"),
])
def test_vidur_planner_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        vidur_kv_capacity_blocks(*SETTING, **kwargs)


def test_vidur_planner_refuses_when_no_request_fits() -> None:
    with pytest.raises(ValueError, match="fits no whole"):
        vidur_kv_capacity_blocks("Llama-2-70B", "A100-80GB", 1)


# ---- cost terms ----------------------------------------------------------------------------

def _cost(**options: float):
    return build_cost_model(*SETTING, source="measured", network="pairwise_nvlink",
                            vidur_compatible=True, iteration_overhead_s=0.0, **options)


BATCHES = [([], 1, 100), ([], 7, 3000), ([(512, 0)], 0, 0), ([(100, 0), (50, 10)], 3, 900)]


def test_terms_are_off_by_default() -> None:
    plain, zeros = _cost(), _cost(allreduce_launch_overhead_s=0.0, gqa_attention_overhead=0.0)
    for batch in BATCHES:
        assert plain.iteration_time(*batch) == zeros.iteration_time(*batch)
    info = plain.describe()
    assert info["allreduce_launch_overhead_s"] == 0.0 and info["gqa_attention_overhead"] == 0.0
    assert "allreduce_launch" not in info["parts"] and "gqa_attention" not in info["parts"]


def test_nccl_launch_adds_two_per_layer_per_iteration() -> None:
    plain, launch = _cost(), _cost(allreduce_launch_overhead_s=VIDUR_NCCL_LAUNCH_OVERHEAD_S)
    for batch in BATCHES:
        extra = launch.iteration_time(*batch) - plain.iteration_time(*batch)
        assert extra == pytest.approx(80 * 2 * 2e-5, rel=1e-9)  # 3.2 ms
    base_plain, _ = plain.decode_coeffs(4)
    base_launch, _ = launch.decode_coeffs(4)
    assert base_launch - base_plain == pytest.approx(3.2e-3, rel=1e-9)
    assert launch.iteration_time([], 0, 0) == 0.0
    # No all-reduce at TP1, so no launch term either.
    tp1 = dict(source="measured", iteration_overhead_s=0.0)
    one = build_cost_model("Llama-2-7B", "A100-80GB", 1, **tp1)
    one_launch = build_cost_model("Llama-2-7B", "A100-80GB", 1, allreduce_launch_overhead_s=1e-3,
                                  **tp1)
    assert one.iteration_time([], 3, 300) == one_launch.iteration_time([], 3, 300)


def test_gqa_factor_scales_attention_of_batched_decodes_and_prefills() -> None:
    plain, gqa = _cost(), _cost(gqa_attention_overhead=VIDUR_GQA_ATTENTION_OVERHEAD)
    d0, d1, d2 = plain._decode
    # One decode, one prefill chunk: Vidur applies the factor to batches of more than one.
    assert gqa.iteration_time([], 1, 100) == plain.iteration_time([], 1, 100)
    assert gqa.iteration_time([(512, 0)], 0, 0) == plain.iteration_time([(512, 0)], 0, 0)
    extra = gqa.iteration_time([], 7, 3000) - plain.iteration_time([], 7, 3000)
    assert extra == pytest.approx(0.1 * (d0 + 7 * d1 + 3000 * d2), rel=1e-9)
    two = [(100, 0), (50, 10)]
    prefill = plain.iteration_time(two, 0, 0) - plain.iteration_time([], 0, 0)
    assert gqa.iteration_time(two, 0, 0) > plain.iteration_time(two, 0, 0)
    assert gqa.iteration_time(two, 0, 0) < plain.iteration_time(two, 0, 0) + 0.1 * prefill
    for n, context in ((1, 50), (2, 300), (64, 90_000)):
        base, slope = gqa.decode_coeffs(n)
        assert base + slope * context == pytest.approx(gqa.iteration_time([], n, context),
                                                       rel=1e-9)


def test_gqa_factor_needs_a_grouped_query_model() -> None:
    mha = dict(source="measured", iteration_overhead_s=0.0)  # Llama-2-7B: 32 q = 32 kv heads
    plain = build_cost_model("Llama-2-7B", "A100-80GB", 1, **mha)
    gqa = build_cost_model("Llama-2-7B", "A100-80GB", 1, gqa_attention_overhead=0.1, **mha)
    assert gqa.iteration_time([], 8, 4000) == plain.iteration_time([], 8, 4000)


@pytest.mark.parametrize("option", ["allreduce_launch_overhead_s", "gqa_attention_overhead"])
@pytest.mark.parametrize("value", [-1e-5, math.inf, True, "0.1"])
def test_bad_term_values(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{option} must be a finite number >= 0"):
        _cost(**{option: value})


# ---- request sampling ----------------------------------------------------------------------

def test_trace_order_is_pandas_sample_with_vidur_seed() -> None:
    # pandas 3.1.1: DataFrame(range(19366)).sample(frac=1, random_state=42).index[:8]
    assert vidur_trace_order(19_366, 42)[:8].tolist() == [9326, 19040, 11765, 14834, 8149,
                                                          2117, 2879, 5883]
    order = vidur_trace_order(19_366, 42)
    assert np.array_equal(np.sort(order), np.arange(19_366))


@pytest.mark.parametrize("seed", [0, 42, 2**40 + 7])
def test_arrivals_replay_pythons_random_stream(seed: int) -> None:
    stream = random.Random(seed)
    expected, now = [], 0.0
    for _ in range(500):  # Vidur's PoissonRequestIntervalGenerator at qps 2
        now += min(-math.log(1.0 - stream.random()) / 2.0, (1.0 / 2.0) * 3.0)
        expected.append(now)
    assert vidur_poisson_arrivals(500, 2.0, seed).tolist() == expected


def test_capped_arrivals_rate_and_cap() -> None:
    arrivals = vidur_poisson_arrivals(10_000, 1.0, 42)
    gaps = np.diff(arrivals, prepend=0.0)
    assert gaps.max() <= 3.0 and np.count_nonzero(gaps == 3.0) > 300  # ~e^-3 of the gaps
    assert 10_000 / arrivals[-1] == pytest.approx(vidur_capped_rate(1.0), rel=0.02)
    assert vidur_capped_rate(1.0) == pytest.approx(1.0524, abs=1e-4)


def test_vidur_clip_takes_the_excess_in_proportion() -> None:
    prompt, output = vidur_clip_lengths(np.array([4000, 100, 5000]), np.array([200, 50, 1]),
                                        4096)
    # 104 too many: ceil(104 x 4000/4200) = 100 off the prompt, ceil(104 x 200/4200) = 5 off
    # the output; a request that fits is kept; every part keeps >= 1 token.
    assert prompt.tolist() == [3900, 100, 4095] and output.tolist() == [195, 50, 1]
    with pytest.raises(ValueError, match="max_tokens must be"):
        vidur_clip_lengths(prompt, output, 1)


def test_vidur_sampling_workload() -> None:
    trace = load_azure_2023("conv")
    w = vidur_crosscheck_workload(num_requests=1000, seed=42, sampling="vidur")
    order = vidur_trace_order(len(trace), 42)[:1000]
    prompt, output = vidur_clip_lengths(trace.prompt_len, trace.output_len, 4096)
    assert np.array_equal(w.prompt_len, prompt[order])
    assert np.array_equal(w.output_len, output[order])
    assert np.array_equal(w.arrival_time, vidur_poisson_arrivals(1000, 1.0, 42))
    assert np.all(w.prompt_len + w.output_len <= 4096)
    # Servegym's sampling stays: trace order from its first row.
    mine = vidur_crosscheck_workload(num_requests=1000, seed=42)
    assert mine.prompt_len[:5].tolist() == np.minimum(trace.prompt_len[:5], 4095).tolist()


def test_vidur_sampling_stops_at_the_trace_end() -> None:
    assert len(vidur_crosscheck_workload(num_requests=19_366, sampling="vidur")) == 19_366
    with pytest.raises(ValueError, match="exceeds the trace's 19366 rows"):
        vidur_crosscheck_workload(num_requests=19_367, sampling="vidur")
    with pytest.raises(ValueError, match="unknown sampling"):
        vidur_crosscheck_workload(sampling="Vidur")


def test_poisson_cap_option() -> None:
    plain = poisson_arrivals(2000, 1.0, np.random.default_rng(5))
    same = poisson_arrivals(2000, 1.0, np.random.default_rng(5), max_gap_s=None)
    capped = poisson_arrivals(2000, 1.0, np.random.default_rng(5), max_gap_s=3.0)
    assert np.array_equal(plain, same)
    gaps, capped_gaps = np.diff(plain, prepend=0.0), np.diff(capped, prepend=0.0)
    assert np.allclose(capped_gaps, np.minimum(gaps, 3.0))
    assert capped_gaps.max() <= 3.0 + 1e-9 < gaps.max()
    with pytest.raises(WorkloadError, match="max_gap_s"):
        poisson_arrivals(10, 1.0, np.random.default_rng(5), max_gap_s=0.0)


# ---- bench_sim's Vidur reference -----------------------------------------------------------

def test_bench_sim_prints_the_measured_reference_and_its_conditions() -> None:
    import bench_sim

    text = bench_sim.reference_text()
    assert "30-37x measured side by side" in text and "7d47513" in text
    assert "576-685 req/s at 10k" in text and "one core each" in text and "920" not in text
    row = {"case": "a", "requests": 10_000, "instances": 1, "rate_rps": 1.0,
           "requests_per_s": 20_736.0, "iterations_per_s": 1.0, "peak_rss_mb": 1.0,
           "decode_runs": 1, "iterations": 1, "simulated_s": 1.0}
    table = bench_sim.format_table([row, {**row, "requests": 2_000}])
    assert "| 576-685 | 30-36 | 430 |" in table  # 20,736 / 685 and / 576
    assert table.splitlines()[-1].count("n/a") == 3  # no Vidur figure at 2,000 requests


def test_crosscheck_script_reads_vidurs_request_metrics(tmp_path: Path) -> None:
    import vidur_crosscheck

    rows = ["Request Id,prefill_e2e_time,request_e2e_time,request_num_prefill_tokens,"
            "request_num_decode_tokens,request_num_restarts"]
    rows += [f"{i},{0.1 * (i + 1)},{1.0 * (i + 1)},{100 + i},{10 + i},{i % 2}"
             for i in reversed(range(10))]
    (tmp_path / "request_metrics.csv").write_text("\n".join(rows) + "\n")
    metrics, lengths = vidur_crosscheck.vidur_run(tmp_path)
    assert metrics["ttft_p50"] == pytest.approx(0.55) and metrics["e2e_p90"] == pytest.approx(9.1)
    assert metrics["preemptions"] == 5
    assert lengths[:2] == [(100, 10), (101, 11)]  # sorted by request id
    with pytest.raises(FileNotFoundError, match="request_metrics.csv"):
        vidur_crosscheck.vidur_run(tmp_path / "missing")
