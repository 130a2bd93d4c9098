"""Tests for servegym.envs.costs: specs, KV capacity and the roofline cost model."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegym.envs.costs import (
    GPUS,
    MODELS,
    CostModel,
    ModelSpec,
    RooflineCostModel,
    UnknownSpecError,
    get_gpu,
    get_model,
    kv_capacity_blocks,
)

GiB = 1 << 30


@pytest.fixture(scope="module")
def llama7b_a100() -> RooflineCostModel:
    return RooflineCostModel("Llama-2-7B", "A100-80GB")


# ---- specs ------------------------------------------------------------------------


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        MODELS["x"] = MODELS["Llama-2-7B"]  # type: ignore[index]
    with pytest.raises(TypeError):
        GPUS["x"] = GPUS["H200"]  # type: ignore[index]


def test_lookup_is_case_insensitive_with_gpu_aliases() -> None:
    assert get_model("llama-3-8b") is MODELS["Llama-3-8B"]
    assert get_gpu("a100") is GPUS["A100-80GB"]
    assert get_gpu("H100") is GPUS["H100-80GB"]
    assert get_gpu("l40s") is GPUS["L40S"]


@pytest.mark.parametrize(
    ("lookup", "registry"), [(get_model, MODELS), (get_gpu, GPUS)], ids=["model", "gpu"]
)
def test_unknown_names_list_the_known_ones(lookup, registry) -> None:
    with pytest.raises(UnknownSpecError) as info:
        lookup("GPT-5-Nano")
    message = str(info.value)
    assert "GPT-5-Nano" in message
    for name in registry:
        assert name in message
    # Catchable as either family, whichever the caller expects.
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)


def test_llama2_7b_shapes_match_model_card() -> None:
    m = get_model("Llama-2-7B")
    assert m.head_dim == 128
    assert m.kv_dim == 4096
    # Published size: 6.74B parameters.
    assert m.num_params == pytest.approx(6.74e9, rel=0.005)
    assert m.weight_bytes == 2 * m.num_params
    assert m.kv_bytes_per_token == 2 * 32 * 4096 * 2  # 512 KiB


@pytest.mark.parametrize(
    ("name", "billions"),
    [("Llama-2-70B", 69.0), ("Llama-3-8B", 8.03), ("Mistral-7B", 7.24), ("Qwen2.5-7B", 7.6)],
)
def test_param_counts_match_model_cards(name: str, billions: float) -> None:
    assert get_model(name).num_params == pytest.approx(billions * 1e9, rel=0.01)


def test_gqa_kv_size() -> None:
    m = get_model("Llama-3-70B")
    assert m.kv_dim == 8 * 128
    assert m.kv_bytes_per_token == 2 * 80 * 1024 * 2


def test_bad_model_spec_is_rejected() -> None:
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        ModelSpec("odd", 2, 100, 3, 3, 400, 1000, 128)
    with pytest.raises(ValueError, match="num_layers must be > 0"):
        ModelSpec("empty", 0, 128, 2, 2, 400, 1000, 128)


# ---- KV capacity ------------------------------------------------------------------


def test_kv_capacity_by_hand() -> None:
    # Llama-2-7B on one A100-80GB with 2 GiB reserved, 16-token blocks.
    params = 2 * 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    weights = 2 * params
    usable = 80 * GiB * 0.9 - weights - 2 * GiB
    block_bytes = 16 * (2 * 32 * 4096 * 2)  # 16 tokens x K,V x 32 layers x 4096 x bf16
    expected = int(usable // block_bytes)
    got = kv_capacity_blocks("Llama-2-7B", "A100-80GB", 1, activation_reserve_bytes=2 * GiB)
    assert got == expected
    assert 7000 < got < 8000  # sanity: vLLM reports ~7.3k blocks for this setup


def test_kv_capacity_splits_blocks_across_tp() -> None:
    # At tp=2 each GPU holds half of every block and half of the weights.
    m, g = get_model("Llama-3-70B"), get_gpu("H100")
    got = kv_capacity_blocks(m, g, 4, block_size=32, activation_reserve_bytes=GiB)
    usable = g.memory_bytes * 0.9 - m.weight_bytes / 4 - GiB
    assert got == math.floor(usable / (32 * m.kv_bytes_per_token / 4))


def test_kv_capacity_default_reserve_is_moderate() -> None:
    no_reserve = kv_capacity_blocks("Llama-2-7B", "A100", 1, activation_reserve_bytes=0)
    default = kv_capacity_blocks("Llama-2-7B", "A100", 1)
    reserved_bytes = (no_reserve - default) * 16 * get_model("Llama-2-7B").kv_bytes_per_token
    assert 1 * GiB <= reserved_bytes <= 4 * GiB


def test_kv_capacity_error_when_weights_do_not_fit() -> None:
    with pytest.raises(ValueError) as info:
        kv_capacity_blocks("Llama-2-70B", "A100-80GB", 1)
    message = str(info.value)
    assert "Llama-2-70B" in message
    assert "A100-80GB" in message
    assert "tensor_parallel" in message
    assert kv_capacity_blocks("Llama-2-70B", "A100-80GB", 4) > 0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"tensor_parallel": 0}, "tensor_parallel must be >= 1"),
        ({"tensor_parallel": 3}, "not divisible by tensor_parallel=3"),
        ({"tensor_parallel": 1, "block_size": 0}, "block_size"),
        ({"tensor_parallel": 1, "gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"tensor_parallel": 1, "activation_reserve_bytes": -1}, "activation_reserve_bytes"),
    ],
)
def test_kv_capacity_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        kv_capacity_blocks("Llama-2-7B", "A100", **kwargs)


def test_tp_beyond_kv_heads_replicates() -> None:
    # Qwen2.5-7B has 4 KV heads; tp=4 is one per GPU. 28 heads do not split 8 ways.
    assert kv_capacity_blocks("Qwen2.5-7B", "H100", 4) > 0
    with pytest.raises(ValueError, match="28 attention heads"):
        kv_capacity_blocks("Qwen2.5-7B", "H100", 8)


# ---- roofline ---------------------------------------------------------------------


def test_is_a_cost_model(llama7b_a100: RooflineCostModel) -> None:
    assert isinstance(llama7b_a100, CostModel)
    assert llama7b_a100.source == "roofline"
    assert llama7b_a100.block_size == 16


def test_decode_batch_one_is_weight_bandwidth_bound(llama7b_a100: RooflineCostModel) -> None:
    m, g = get_model("Llama-2-7B"), get_gpu("A100-80GB")
    # One token reads every weight except the embedding table (only one row is looked up).
    streamed = m.weight_bytes - m.vocab_size * m.hidden_size * m.dtype_bytes
    expected = streamed / (g.hbm_bandwidth * 0.8) + 1e-3
    assert llama7b_a100.iteration_time([], 1, 128) == pytest.approx(expected, rel=0.03)


def test_large_prefill_is_compute_bound(llama7b_a100: RooflineCostModel) -> None:
    m, g = get_model("Llama-2-7B"), get_gpu("A100-80GB")
    tokens = 2048
    expected = 2 * m.num_params * tokens / (g.peak_flops * 0.6)
    assert llama7b_a100.iteration_time([(tokens, 0)], 0, 0) == pytest.approx(expected, rel=0.15)


def test_monotone_in_tokens(llama7b_a100: RooflineCostModel) -> None:
    times = [llama7b_a100.iteration_time([(q, 0)], 0, 0) for q in (1, 16, 128, 512, 2048, 8192)]
    assert times == sorted(times)
    assert len(set(times)) == len(times)
    decodes = [llama7b_a100.iteration_time([], n, 500 * n) for n in (1, 8, 64, 256)]
    assert decodes == sorted(decodes)


def test_monotone_in_context(llama7b_a100: RooflineCostModel) -> None:
    prefill = [llama7b_a100.iteration_time([(256, c)], 0, 0) for c in (0, 512, 2048, 8192)]
    assert prefill == sorted(prefill)
    assert prefill[-1] > prefill[0]
    decode = [llama7b_a100.iteration_time([], 32, s) for s in (32, 1000, 32_000, 128_000)]
    assert decode == sorted(decode)
    assert decode[-1] > decode[0]


def test_prefill_attention_on_cached_context_by_hand(llama7b_a100: RooflineCostModel) -> None:
    # 512 new tokens attending to 8192 cached ones: 512 * 8192 extra (query, key) pairs,
    # 4 FLOPs per pair per head dim (QK^T and PV), 32 heads of 128, 32 layers.
    # Compute-bound: the extra KV read (8192 x 16 KiB per layer) is ~10x cheaper.
    extra_flops = 4 * 512 * 8192 * 128 * 32 * 32
    expected = extra_flops / (312e12 * 0.6)
    with_context = llama7b_a100.iteration_time([(512, 8192)], 0, 0)
    without = llama7b_a100.iteration_time([(512, 0)], 0, 0)
    assert with_context - without == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("model", ["Llama-2-7B", "Llama-3-70B"])
@pytest.mark.parametrize("tp", [1, 4])
def test_decode_coeffs_match_iteration_time(model: str, tp: int) -> None:
    cost = RooflineCostModel(model, "H100", tensor_parallel=tp, max_num_tokens=512)
    for n in (1, 3, 64, 511, 512, 513, 2000):  # crossing the end of the table
        base, slope = cost.decode_coeffs(n)
        for s in (n, 10 * n, 4000 * n):
            assert base + slope * s == pytest.approx(cost.iteration_time([], n, s), rel=1e-9)


def test_table_and_on_the_fly_agree() -> None:
    small = RooflineCostModel("Mistral-7B", "H200", tensor_parallel=2, max_num_tokens=64)
    large = RooflineCostModel("Mistral-7B", "H200", tensor_parallel=2, max_num_tokens=4096)
    for batch in ([(1000, 0)], [(300, 100), (200, 0)], []):
        expected = large.iteration_time(batch, 100, 50_000)
        assert small.iteration_time(batch, 100, 50_000) == pytest.approx(expected, rel=1e-12)


def test_decode_step_equals_single_token_chunk(llama7b_a100: RooflineCostModel) -> None:
    # Convention: decode context = cached tokens + 1, the same work as chunk (1, cached).
    as_decode = llama7b_a100.iteration_time([], 1, 1001)
    as_chunk = llama7b_a100.iteration_time([(1, 1000)], 0, 0)
    assert as_decode == pytest.approx(as_chunk, rel=1e-9)


def test_tensor_parallel_speeds_up_large_prefill() -> None:
    batch = [(4096, 0)]
    tp1 = RooflineCostModel("Llama-3-8B", "H100", tensor_parallel=1).iteration_time(batch, 0, 0)
    tp2 = RooflineCostModel("Llama-3-8B", "H100", tensor_parallel=2).iteration_time(batch, 0, 0)
    assert tp2 < 0.75 * tp1


def test_swap_time_is_linear(llama7b_a100: RooflineCostModel) -> None:
    assert llama7b_a100.swap_time(0) == 0.0
    t1, t10, t100 = (llama7b_a100.swap_time(n) for n in (1, 10, 100))
    assert t100 - t10 == pytest.approx(10 * (t10 - t1), rel=1e-9)
    # 100 blocks of 16 tokens x 512 KiB over a 25 GB/s PCIe link.
    assert t100 == pytest.approx(100 * 16 * 524288 / 25e9, rel=0.02)
    assert llama7b_a100.swap_time(100) > RooflineCostModel("Llama-2-7B", "A100", 2).swap_time(100)


def test_kv_transfer_time(llama7b_a100: RooflineCostModel) -> None:
    assert llama7b_a100.kv_transfer_time(0) == 0.0
    expected = 5e-6 + 1000 * 524288 / 300e9
    assert llama7b_a100.kv_transfer_time(1000) == pytest.approx(expected, rel=1e-9)


def test_empty_batch_takes_no_time(llama7b_a100: RooflineCostModel) -> None:
    assert llama7b_a100.iteration_time([], 0, 0) == 0.0
    assert llama7b_a100.decode_coeffs(0) == (0.0, 0.0)


def test_describe_is_json(llama7b_a100: RooflineCostModel) -> None:
    info = json.loads(json.dumps(llama7b_a100.describe()))
    assert info["source"] == "roofline"
    assert info["model"] == "Llama-2-7B"
    assert info["gpu"] == "A100-80GB"
    assert info["tensor_parallel"] == 1
    assert info["compute_efficiency"] == 0.6
    assert info["memory_efficiency"] == 0.8
    assert info["iteration_overhead_s"] == 1e-3


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"model": "Llama-9"}, UnknownSpecError, "known models: Llama-2-7B"),
        ({"gpu": "TPU"}, UnknownSpecError, "known GPUs: A100-80GB"),
        ({"tensor_parallel": 3}, ValueError, "tensor_parallel=3"),
        ({"tensor_parallel": 0}, ValueError, "tensor_parallel must be >= 1"),
        ({"compute_efficiency": 0.0}, ValueError, r"compute_efficiency must be .* \(0, 1\]"),
        ({"memory_efficiency": 1.2}, ValueError, r"memory_efficiency must be .* \(0, 1\]"),
        ({"iteration_overhead_s": -1.0}, ValueError, "iteration_overhead_s must be"),
        ({"block_size": 0}, ValueError, "block_size must be >= 1"),
        ({"max_num_tokens": 2.5}, TypeError, "max_num_tokens must be an int"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, error: type, pattern: str) -> None:
    args = {"model": "Llama-2-7B", "gpu": "A100", **kwargs}
    with pytest.raises(error, match=pattern):
        RooflineCostModel(**args)


@pytest.mark.parametrize(
    ("batch", "pattern"),
    [
        (([], -1, 0), "decode_count >= 0"),
        (([], 4, 3), "decode_context_sum >= decode_count"),
        (([], 0, 10), "no context without requests"),
        (([(0, 5)], 0, 0), "new_tokens >= 1"),
        (([(5, -1)], 0, 0), "cached_context_tokens >= 0"),
    ],
)
def test_bad_batches(llama7b_a100: RooflineCostModel, batch: tuple, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        llama7b_a100.iteration_time(*batch)


def test_bad_counts(llama7b_a100: RooflineCostModel) -> None:
    with pytest.raises(ValueError, match="num_blocks must be >= 0"):
        llama7b_a100.swap_time(-1)
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        llama7b_a100.kv_transfer_time(-1)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        llama7b_a100.decode_coeffs(1.5)


_chunks = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 32_768)), min_size=0, max_size=8)


@settings(max_examples=200, deadline=None)
@given(chunks=_chunks, decode=st.integers(0, 512), mean_context=st.integers(1, 32_768))
def test_iteration_time_positive_and_finite(
    llama7b_a100: RooflineCostModel, chunks: list, decode: int, mean_context: int
) -> None:
    context = decode * mean_context
    t = llama7b_a100.iteration_time(chunks, decode, context)
    if not chunks and not decode:
        assert t == 0.0
        return
    assert math.isfinite(t)
    assert t >= llama7b_a100.iteration_overhead_s
    # Adding work never makes an iteration faster.
    assert llama7b_a100.iteration_time([*chunks, (1, 0)], decode, context) >= t
