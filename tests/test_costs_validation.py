"""Held-out evaluation: the hold-out rule, exact cases, and the committed error table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from servegym.envs.costs.catalog import load_calibration
from servegym.envs.costs.specs import get_gpu, get_model
from servegym.envs.costs.tables import TOKEN_OPS
from servegym.envs.costs.validation import (
    curve_errors,
    heldout_tokens,
    holdout_mask,
    iteration_errors,
    training_calibration,
)

ROOT = Path(__file__).resolve().parents[1]


def test_holdout_never_takes_the_ends() -> None:
    mask = holdout_mask(10, every=4)
    assert mask.tolist() == [False, False, True, False, False, False, True, False, False, False]
    assert not holdout_mask(3, every=2)[[0, 2]].any()


def test_linear_curves_interpolate_exactly_and_kinks_do_not() -> None:
    grid = np.arange(1.0, 40.0)
    assert curve_errors(grid, 3 + 2 * grid).summary()["max"] == pytest.approx(0, abs=1e-12)
    kinked = np.where(grid < 20, 1.0, grid - 18)
    assert curve_errors(grid, kinked).summary()["max"] > 0


def test_training_set_excludes_held_out_points() -> None:
    cal = load_calibration("Llama-2-70B", "A100", 2)
    held = heldout_tokens(cal.ops[0], 2)
    train = training_calibration(cal, 2, held)
    grid, _ = train.ops[0].curve("mlp_up_proj", 2, "num_tokens")
    assert not np.isin(held, grid).any()
    other_tp, _ = train.ops[0].curve("mlp_up_proj", 4, "num_tokens")  # other TPs untouched
    assert np.isin(held, other_tp).all()
    for op, key in (("attn_prefill", "num_tokens"), ("attn_decode", "batch_size")):
        kept = train.attention.rows(op, 2)[key]
        assert len(kept) and not np.isin(held, kept).any()


def test_iteration_error_is_small_where_attention_is_measured() -> None:
    cal = load_calibration("Llama-2-70B", "A100", 2)
    errors = iteration_errors(get_model("Llama-2-70B"), get_gpu("A100"), 2, cal)
    assert set(errors) == {"iteration_prefill", "iteration_decode"}
    for e in errors.values():
        assert e.summary()["points"] >= 5 and e.summary()["median"] < 0.05


def test_committed_error_table_covers_every_operation() -> None:
    result = json.loads((ROOT / "results" / "cost_fit_error.json").read_text())
    per_op = result["per_op"]
    assert set(TOKEN_OPS) - {"attn_kv_cache_save"} <= set(per_op)
    assert {"attn_prefill", "attn_decode", "all_reduce"} <= set(per_op)
    text = (ROOT / "results" / "cost_fit_error.md").read_text()
    for op, summary in per_op.items():
        if summary["median"] > result["target_median"]:
            assert f"{op} misses the target" in text  # each miss is named with a reason
