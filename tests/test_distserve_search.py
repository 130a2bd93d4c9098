"""DistServe's placement search (agents/heuristics/distserve.py): the candidates, the
choice, determinism and the bad-input messages. Tiny workloads: a few simulations each."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from servegym.agents.heuristics.distserve import (
    PlacementCandidate,
    placement_candidates,
    search_placement,
)

MODEL, GPU = "Llama-3-8B", "H100-80GB"


@pytest.fixture(autouse=True)
def _quiet_roofline():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def lengths(n: int = 80, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(100, 1500, n), rng.integers(2, 120, n)


def test_candidates_cover_the_budget_exactly_once():
    candidates = placement_candidates(4, (1, 2))
    labels = [c.label for c in candidates]
    assert len(labels) == len(set(labels)) == 11
    assert all(c.gpus <= 4 and c.prefill_instances >= 1 and c.decode_instances >= 1
               for c in candidates)
    assert PlacementCandidate(3, 1, 1, 1) in candidates
    assert PlacementCandidate(1, 2, 1, 2) in candidates
    assert PlacementCandidate(2, 2, 1, 1) not in candidates  # 5 GPUs


def test_candidates_are_bounded():
    with pytest.raises(ValueError, match="max_candidates"):
        placement_candidates(16, (1, 2, 4), max_candidates=10)


def test_budget_below_one_prefill_and_one_decode():
    with pytest.raises(ValueError, match="smaller than one prefill and one decode"):
        placement_candidates(3, (2, 4))
    prompts, outputs = lengths()
    with pytest.raises(ValueError, match="budget_gpus must be an integer >= 2"):
        search_placement(MODEL, GPU, 1, prompts, outputs, 0.5, 0.05)


def test_no_tp_degree_with_a_cost_table():
    prompts, outputs = lengths()
    # No measured table for Llama-3-8B on H100: with source="measured" nothing is left.
    with pytest.raises(ValueError, match="no TP degree .* has a cost model"):
        search_placement(MODEL, GPU, 4, prompts, outputs, 0.5, 0.05, source="measured")


@pytest.mark.parametrize("kwargs, message", [
    ({"ttft_slo": 0.0}, "ttft_slo must be a positive"),
    ({"tpot_slo": float("inf")}, "tpot_slo must be a positive"),
    ({"attainment": 1.5}, "attainment is a fraction"),
    ({"rate_range": (2.0, 1.0)}, "rate_range"),
    ({"bisect_steps": 0}, "bisect_steps"),
])
def test_bad_settings(kwargs, message):
    prompts, outputs = lengths()
    settings = {"ttft_slo": 0.5, "tpot_slo": 0.05, **kwargs}
    with pytest.raises(ValueError, match=message):
        search_placement(MODEL, GPU, 2, prompts, outputs, settings.pop("ttft_slo"),
                         settings.pop("tpot_slo"), **settings)


def test_mismatched_lengths():
    prompts, outputs = lengths()
    with pytest.raises(ValueError, match="one length"):
        search_placement(MODEL, GPU, 2, prompts, outputs[:-1], 0.5, 0.05)


def test_search_picks_the_best_per_gpu_and_is_deterministic():
    prompts, outputs = lengths()
    first = search_placement(MODEL, GPU, 3, prompts, outputs, 0.5, 0.05, tp_degrees=(1,),
                             bisect_steps=3, rate_range=(1.0, 200.0))
    again = search_placement(MODEL, GPU, 3, prompts, outputs, 0.5, 0.05, tp_degrees=(1,),
                             bisect_steps=3, rate_range=(1.0, 200.0))
    assert first.table() == again.table()
    assert [r["placement"] for r in first.table()] == \
        ["1P(TP1)+1D(TP1)", "1P(TP1)+2D(TP1)", "2P(TP1)+1D(TP1)"]
    best = max(r["goodput_per_gpu"] for r in first.table())
    assert first.best.goodput_per_gpu == best > 0
    assert first.best.attainment >= 0.9
    assert all(r["simulations"] == 4 for r in first.table())
    prefill, decode = first.pools
    assert (prefill.role, decode.role) == ("prefill", "decode")
    assert (prefill.count, decode.count) == (first.best.candidate.prefill_instances,
                                             first.best.candidate.decode_instances)
    assert first.skipped == {}


def test_tp_degrees_too_wide_for_the_budget_are_skipped_with_a_reason():
    from servegym.agents.heuristics.distserve import _usable_degrees
    from servegym.envs.core.instance import InstanceConfig

    costs, skipped = _usable_degrees("Llama-2-70B", "A100-80GB", 4, (1, 2, 4), "auto",
                                     InstanceConfig())
    assert sorted(costs) == [2]
    assert "no room for a KV block" in skipped[1]
    assert "leaves no GPU" in skipped[4]


def test_tighter_slo_never_raises_goodput():
    prompts, outputs = lengths()
    loose = search_placement(MODEL, GPU, 2, prompts, outputs, 1.0, 0.1, tp_degrees=(1,),
                             bisect_steps=4, rate_range=(1.0, 200.0))
    tight = search_placement(MODEL, GPU, 2, prompts, outputs, 0.02, 0.002, tp_degrees=(1,),
                             bisect_steps=4, rate_range=(1.0, 200.0))
    assert tight.best.goodput_per_gpu < loose.best.goodput_per_gpu
    assert loose.best.goodput_per_gpu > 1.0


def test_reproduction_script_writes_table_json_and_plot_and_never_overwrites(tmp_path):
    import json

    import distserve  # experiments/ is on pytest's pythonpath (pyproject.toml)

    args = ["--requests", "50", "--bisect", "1", "--search-bisect", "1", "--scales", "1",
            "--out", str(tmp_path), "--name", "smoke"]
    distserve.main(args)
    payload = json.loads((tmp_path / "smoke.json").read_text())
    (row,) = payload["rows"]
    assert set(distserve.SYSTEMS) <= set(row)
    assert row["searched_placement"] == payload["searches"][0]["chosen"]
    assert len(payload["searches"][0]["candidates"]) == 11  # 4 GPUs, TP 1 and 2
    text = (tmp_path / "smoke.md").read_text()
    assert "distserve-search" in text and "7.4x" in text and "smoke.png" in text
    assert (tmp_path / "smoke.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="never overwritten"):
        distserve.main(args)
    with pytest.raises(SystemExit, match="--scales"):
        distserve.main([*args[:-1], "other", "--scales", "1,x"])
