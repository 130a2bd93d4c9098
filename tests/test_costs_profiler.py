"""The profiler runs on the CPU (tiny model, small grid) and its table feeds the predictor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from servegym.envs.core.metrics import atomic_write
from servegym.envs.costs import ModelSpec, TableCostModel
from servegym.envs.costs.catalog import Calibration
from servegym.envs.costs.profiler import ProfileGrid, profile_ops, registry_gpu_name
from servegym.envs.costs.tables import (
    ATTENTION_OPS,
    TOKEN_OPS,
    format_table,
    read_table,
    table_writer,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelSpec("tiny-test", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                 ffn_size=128, vocab_size=256, max_context=512)


@pytest.fixture(scope="module")
def profiled() -> tuple[dict, list[dict]]:
    threads = torch.get_num_threads()
    result = profile_ops(TINY, 2, ProfileGrid.small(), device="cpu", seed=0)
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    return result


def test_every_op_and_grid_point_is_measured(profiled) -> None:
    meta, rows = profiled
    grid = ProfileGrid.small()
    ops = {r["op"] for r in rows}
    assert ops == set(TOKEN_OPS) | set(ATTENTION_OPS)
    tokens = sorted({r["num_tokens"] for r in rows if r["op"] == "mlp_up_proj"})
    assert tokens == list(grid.token_counts)
    prefill = {(r["num_tokens"], r["context_tokens"]) for r in rows if r["op"] == "attn_prefill"}
    decode = {(r["batch_size"], r["context_tokens"]) for r in rows if r["op"] == "attn_decode"}
    assert prefill == set(grid.prefill) and decode == set(grid.decode)
    for r in rows:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["samples"] == grid.repeats
        assert r["tensor_parallel"] == 2
    assert meta["clock"] == "thread-cpu-time" and meta["threads"] == "1"
    assert meta["dtype"] == "bfloat16" and meta["torch"] == torch.__version__


def test_every_grid_point_is_timed(profiled) -> None:
    # Structure only: how the times relate (more tokens cost more) is a timing relation,
    # which noise on a shared machine decides at this tiny size (2-5% of repeats failed);
    # it belongs to the profiler's own runs (experiments/profile_ops.py, docs/costs.md).
    _, rows = profiled
    up = {r["num_tokens"]: r["median_ms"] for r in rows if r["op"] == "mlp_up_proj"}
    assert {1, 64} <= set(up)
    assert all(math.isfinite(r["median_ms"]) and r["median_ms"] > 0 for r in rows)


def test_cli_writes_a_table_the_predictor_reads(tmp_path: Path) -> None:
    import profile_ops as cli

    out = tmp_path / "table.csv.gz"
    args = ["--model", "Llama-2-7B", "--tp", "8", "--grid", "small", "--repeats", "2",
            "--warmup", "0", "--gpu", "A100", "--out", str(out), "--quiet"]
    cli.main(args)
    table = read_table(out)
    assert table.meta["source"] == "servegym-profiler"
    assert table.gpu == "A100-80GB" and table.model == "Llama-2-7B"
    assert table.tensor_parallel == (8,)
    with pytest.raises(FileExistsError, match="never overwritten"):
        cli.main(args)


def test_profiled_table_builds_a_cost_model(profiled, tmp_path: Path) -> None:
    meta, rows = profiled
    path = tmp_path / "tiny.csv"
    atomic_write(path, table_writer(format_table({**meta, "gpu": "A100-80GB",
                                                  "model": TINY.name}, rows), path))
    table = read_table(path)
    cost = TableCostModel(TINY, "A100", 2, calibration=Calibration((table,), table, 2, None))
    assert cost.attention_shape_measured
    assert cost.parts["kv_cache_save"].startswith("measured")
    assert cost.parts["all_reduce"].startswith("roofline")
    base, slope = cost.decode_coeffs(4)
    assert base + slope * 256 == pytest.approx(cost.iteration_time([], 4, 256), rel=1e-9)
    assert cost.iteration_time([(32, 0)], 0, 0) > 0


def test_grid_and_name_validation() -> None:
    with pytest.raises(ValueError, match="grid points must be >= 1"):
        ProfileGrid((0, 4), (), ())
    with pytest.raises(ValueError, match="repeats >= 1"):
        ProfileGrid((1,), (), (), repeats=0)
    with pytest.raises(ValueError, match="tensor_parallel=3"):
        profile_ops(TINY, 3, ProfileGrid.small())
    full = ProfileGrid.full()
    assert full.token_counts[0] == 1 and full.token_counts[-1] == 16384
    assert len(full.prefill) > 50 and len(full.decode) > 50
    assert registry_gpu_name("NVIDIA H100 80GB HBM3") == "H100-80GB"
    assert registry_gpu_name("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert registry_gpu_name("NVIDIA H200") == "H200"
    assert registry_gpu_name("Tesla T4") is None
