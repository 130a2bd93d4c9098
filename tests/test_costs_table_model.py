"""TableCostModel: the decode contract, sums of measured ops, labels, factory fallback."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from servegym.envs.costs import (
    MissingTableError,
    RooflineCostModel,
    RooflineFallbackWarning,
    TableCostModel,
    UnknownSpecError,
    build_cost_model,
    kv_capacity_blocks,
    measured_combinations,
)
from servegym.envs.costs.attention_fit import AttentionShape, fit_attention
from servegym.envs.costs.catalog import load_calibration
from servegym.envs.costs.specs import get_gpu, get_model
from servegym.envs.costs.table_model import LAYER_OPS, interpolate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vidur_70b() -> TableCostModel:
    return TableCostModel("Llama-2-70B", "A100-80GB", 2, iteration_overhead_s=0.0,
                          network="pairwise_nvlink", vidur_compatible=True)


@pytest.fixture(scope="module")
def llama3_8b() -> TableCostModel:
    return TableCostModel("Llama-3-8B", "A100-80GB", 1)


def _measured_ms(model: TableCostModel, op: str, tokens: int) -> float:
    grid, ms = model.calibration.ops[0].curve(op, model.tensor_parallel, "num_tokens")
    assert tokens in grid, "pick a measured token count"
    return float(ms[grid.tolist().index(tokens)])


def test_prefill_is_the_sum_of_measured_ops_by_hand(vidur_70b: TableCostModel) -> None:
    # Vidur's accounting: 80 x (the 8 layer ops + one add + KV save + 2 all-reduces
    # + prefill attention); at a measured token count every op is its measured median.
    m, tokens = vidur_70b, 2048
    ops_ms = sum(_measured_ms(m, op, tokens) for op in LAYER_OPS) + _measured_ms(m, "add", tokens)
    net = m.calibration.network
    grid, ar_ms = net.curve("all_reduce", 2, "size_bytes")
    size = tokens * 8192 * 2
    assert size in grid
    allreduce_ms = float(ar_ms[grid.tolist().index(size)])
    add_floor = float(m.calibration.ops[0].curve("add", 2, "num_tokens")[1].min())
    kv_save_s = add_floor * 1e-3 + 2 * m.attention.decode[2] * tokens
    attention_s = float(m.attention.prefill_time(tokens, 0))
    expected = 80 * ((ops_ms + 2 * allreduce_ms) * 1e-3 + kv_save_s + attention_s)
    assert m.iteration_time([(tokens, 0)], 0, 0) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("model", "gpu", "tp"), [("Llama-2-7B", "H100", 1),
                                                  ("Llama-3-70B", "A100", 4),
                                                  ("Llama-2-70B", "A100", 2)])
def test_decode_coeffs_match_iteration_time(model: str, gpu: str, tp: int) -> None:
    cost = TableCostModel(model, gpu, tp, max_num_tokens=300)
    for n in (1, 2, 7, 64, 299, 300, 301, 1000):  # crossing the end of the tabulated range
        base, slope = cost.decode_coeffs(n)
        assert slope > 0 and base > 0
        for s in (n, 37 * n, 4000 * n):
            assert base + slope * s == pytest.approx(cost.iteration_time([], n, s), rel=1e-9)


def test_table_and_on_the_fly_agree() -> None:
    small = TableCostModel("Llama-2-7B", "A100", 2, max_num_tokens=64)
    large = TableCostModel("Llama-2-7B", "A100", 2, max_num_tokens=8192)
    for batch in ([(1000, 0)], [(300, 100), (200, 0)], [], [(5000, 3000)]):
        expected = large.iteration_time(batch, 100, 50_000)
        assert small.iteration_time(batch, 100, 50_000) == pytest.approx(expected, rel=1e-12)


def test_interpolate_is_linear_between_and_extrapolates_above() -> None:
    grid, values = np.array([1.0, 10, 20, 30, 40]), np.array([5.0, 5, 10, 15, 20])
    out = interpolate(grid, values, np.array([0, 1, 15, 40, 60]))
    assert out.tolist() == pytest.approx([5, 5, 7.5, 20, 30])  # slope 0.5 from the upper half


def test_monotone_in_work(llama3_8b: TableCostModel) -> None:
    prefill = [llama3_8b.iteration_time([(q, 0)], 0, 0) for q in (16, 128, 1024, 8192, 40_000)]
    assert prefill == sorted(prefill) and len(set(prefill)) == len(prefill)
    context = [llama3_8b.iteration_time([(256, c)], 0, 0) for c in (0, 512, 4096)]
    assert context == sorted(context) and context[-1] > context[0]
    decode = [llama3_8b.iteration_time([], 32, s) for s in (32, 32_000, 256_000)]
    assert decode == sorted(decode) and decode[-1] > decode[0]


def test_decode_step_equals_single_token_chunk_up_to_kernels(llama3_8b: TableCostModel) -> None:
    # Same tokens and sequences; only the attention kernel differs (prefill vs decode fit).
    as_decode = llama3_8b.iteration_time([], 1, 1001)
    as_chunk = llama3_8b.iteration_time([(1, 1000)], 0, 0)
    assert as_chunk == pytest.approx(as_decode, rel=0.1)


def test_measured_is_slower_than_ideal_and_close_to_roofline(llama3_8b: TableCostModel) -> None:
    # One decode step of Llama-3-8B streams ~16 GB of weights: at least 7.9 ms on an A100.
    m = get_model("Llama-3-8B")
    ideal = (m.weight_bytes - m.embedding_params * m.dtype_bytes) / get_gpu("A100").hbm_bandwidth
    measured = llama3_8b.iteration_time([], 1, 100) - llama3_8b.iteration_overhead_s
    assert ideal < measured < 1.6 * ideal
    roofline = RooflineCostModel("Llama-3-8B", "A100").iteration_time([(4096, 0)], 0, 0)
    assert llama3_8b.iteration_time([(4096, 0)], 0, 0) == pytest.approx(roofline, rel=0.5)


def test_tensor_parallel_speeds_up_and_adds_all_reduce() -> None:
    tp1 = TableCostModel("Llama-2-7B", "H100", 1).iteration_time([(4096, 0)], 0, 0)
    tp4 = TableCostModel("Llama-2-7B", "H100", 4).iteration_time([(4096, 0)], 0, 0)
    assert tp4 < 0.5 * tp1


def test_describe_labels_every_part(llama3_8b: TableCostModel) -> None:
    info = json.loads(json.dumps(llama3_8b.describe()))
    assert info["source"] == "measured"
    parts = info["parts"]
    assert parts["token_ops"].startswith("measured")
    assert parts["attention"].startswith("fitted") and "transferred" in parts["attention"]
    assert parts["kv_cache_save"].startswith("fitted")
    assert parts["lm_head"].startswith("fitted")
    assert parts["cpu_overhead"].startswith("assumed")
    assert 0.05 < info["attention_efficiencies"]["decode_kv_bytes"] <= 1.0


def test_own_attention_shape_is_fitted_directly(vidur_70b: TableCostModel) -> None:
    assert vidur_70b.attention_shape_measured
    assert "this shape measured" in vidur_70b.parts["attention"]
    assert vidur_70b.parts["lm_head"].startswith("left out")


def test_attention_fit_recovers_and_transfers_coefficients() -> None:
    m, g = get_model("Llama-2-70B"), get_gpu("A100")
    cal = load_calibration("Llama-2-70B", "A100", 2)
    shape = AttentionShape.of(m, g, 2)
    fit = fit_attention(cal.attention, 2, shape)
    assert all(c >= 0 for c in fit.prefill + fit.decode)
    # Twice the KV heads per GPU (TP1): every KV-byte term doubles, FLOP terms double too
    # (twice the query heads), launch floors stay.
    moved = fit.transfer(AttentionShape.of(m, g, 1), "test")
    assert moved.decode[2] == pytest.approx(2 * fit.decode[2])
    assert moved.prefill[3] == pytest.approx(2 * fit.prefill[3])
    assert moved.prefill[0] == fit.prefill[0] and moved.decode[0] == fit.decode[0]


def test_empty_batch_and_bad_batches(llama3_8b: TableCostModel) -> None:
    assert llama3_8b.iteration_time([], 0, 0) == 0.0
    assert llama3_8b.decode_coeffs(0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="decode_context_sum >= decode_count"):
        llama3_8b.iteration_time([], 4, 3)
    with pytest.raises(ValueError, match="new_tokens >= 1"):
        llama3_8b.iteration_time([(0, 5)], 0, 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        llama3_8b.decode_coeffs(1.5)


def test_swap_and_transfer_times(llama3_8b: TableCostModel) -> None:
    assert llama3_8b.swap_time(0) == 0.0 and llama3_8b.kv_transfer_time(0) == 0.0
    t1, t100 = llama3_8b.swap_time(1), llama3_8b.swap_time(100)
    assert t100 > 50 * t1
    assert 0 < llama3_8b.kv_transfer_time(10) < llama3_8b.kv_transfer_time(100_000)
    assert llama3_8b.parts["kv_transfer"].startswith("measured")


_chunks = st.lists(st.tuples(st.integers(1, 4096), st.integers(0, 8192)), max_size=6)


@settings(max_examples=100, deadline=None)
@given(chunks=_chunks, decode=st.integers(0, 256), mean_context=st.integers(1, 8192))
def test_positive_finite_and_more_work_takes_longer(
    llama3_8b: TableCostModel, chunks: list, decode: int, mean_context: int
) -> None:
    context = decode * mean_context
    t = llama3_8b.iteration_time(chunks, decode, context)
    if not chunks and not decode:
        assert t == 0.0
        return
    assert math.isfinite(t) and t >= llama3_8b.iteration_overhead_s
    assert llama3_8b.iteration_time([*chunks, (1, 0)], decode, context) >= t


# ---- factory and configs ------------------------------------------------------------


def test_auto_uses_tables_where_they_exist() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RooflineFallbackWarning)
        cost = build_cost_model("Llama-2-7B", "a100", 2)  # a fallback warning would raise
    assert isinstance(cost, TableCostModel) and cost.source == "measured"


def test_auto_falls_back_to_roofline_and_says_so_once() -> None:
    with pytest.warns(RooflineFallbackWarning) as caught:
        cost = build_cost_model("Llama-3-8B", "H100", 1, iteration_overhead_s=0.002,
                                network="dgx")
    assert isinstance(cost, RooflineCostModel) and cost.source == "roofline"
    assert cost.iteration_overhead_s == 0.002
    message = str(caught[0].message)
    assert "no measured cost table for Llama-3-8B on H100-80GB at TP1" in message
    assert "roofline" in message and "Llama-2-70B on A100-80GB" in message
    with warnings.catch_warnings(record=True) as again:  # default filters: once per process
        warnings.simplefilter("default")
        for _ in range(3):
            build_cost_model("Llama-3-8B", "H100", 1)
    assert len([w for w in again if w.category is RooflineFallbackWarning]) == 1


def test_measured_without_table_lists_the_available_ones() -> None:
    with pytest.raises(MissingTableError) as info:
        build_cost_model("Qwen2.5-7B", "L40S", 1, source="measured")
    message = str(info.value)
    assert "Qwen2.5-7B on L40S-" not in message and "Qwen2.5-7B on L40S at TP1" in message
    assert "Llama-3-8B on A100-80GB at TP 1,2,4,8" in message
    assert "profile_ops.py" in message


def test_roofline_is_forced_and_bad_arguments_are_clear() -> None:
    assert build_cost_model("Llama-2-7B", "A100", source="roofline").source == "roofline"
    with pytest.raises(ValueError, match="unknown cost source 'tables'"):
        build_cost_model("Llama-2-7B", "A100", source="tables")
    with pytest.raises(TypeError, match="unknown cost model option.*'overhead'"):
        build_cost_model("Llama-2-7B", "A100", overhead=1.0)
    with pytest.raises(UnknownSpecError, match="known models: Llama-2-7B"):
        build_cost_model("Llama-9", "A100")
    with pytest.raises(ValueError, match="unknown network 'ib'"):
        build_cost_model("Llama-2-7B", "A100", 2, network="ib")


def test_every_cost_config_builds_with_the_right_source() -> None:
    # task.yaml reads the env's task's pair (tests/test_headroom.py builds it for every id)
    configs = sorted(p for p in (ROOT / "conf" / "cost").glob("*.yaml") if p.stem != "task")
    covered = set()
    for path in configs:
        cfg = OmegaConf.load(path)
        key = (get_model(cfg.model).name, get_gpu(cfg.gpu).name, cfg.tensor_parallel)
        measured = key in measured_combinations()
        assert path.stem.endswith(f"_tp{cfg.tensor_parallel}") or path.stem == "llama3_8b_h100"
        cost = instantiate(cfg)
        assert cost.source == ("measured" if measured else "roofline"), path.name
        covered.add(key)
    runnable = set()
    for model, gpu, tp in measured_combinations():
        try:
            kv_capacity_blocks(model, gpu, tp)
            runnable.add((model, gpu, tp))
        except ValueError:
            pass  # weights do not fit (70B at TP1): no config
    assert runnable <= covered
    assert ("Llama-3-8B", "H100-80GB", 1) in covered
