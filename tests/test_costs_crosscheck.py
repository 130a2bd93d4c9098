"""Vidur's setting: the workload builder and the one-command experiment, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegym.envs.costs.crosscheck import vidur_crosscheck_workload

ROOT = Path(__file__).resolve().parents[1]


def test_workload_is_poisson_clipped_cycled_and_seeded() -> None:
    w = vidur_crosscheck_workload(num_requests=25_000, rate=2.0, seed=3)
    assert len(w) == 25_000  # more than the trace's 19,366 rows: lengths cycle
    assert np.all(np.diff(w.arrival_time) >= 0)
    assert np.mean(np.diff(w.arrival_time)) == pytest.approx(0.5, rel=0.03)
    assert np.all(w.prompt_len + w.output_len <= 4096)
    assert np.array_equal(w.prompt_len[19_366:19_466], w.prompt_len[:100])
    again = vidur_crosscheck_workload(num_requests=25_000, rate=2.0, seed=3)
    assert np.array_equal(w.arrival_time, again.arrival_time)
    other = vidur_crosscheck_workload(num_requests=100, rate=2.0, seed=4)
    assert not np.array_equal(w.arrival_time[:100], other.arrival_time)


@pytest.mark.parametrize(("kwargs", "pattern"), [({"num_requests": 0}, "num_requests"),
                                                 ({"rate": 0.0}, "rate must be > 0")])
def test_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        vidur_crosscheck_workload(**kwargs)


def test_experiment_runs_in_one_command(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "experiments" / "simulate.py"),
               "experiment=vidur_crosscheck", "workload.num_requests=300",
               f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    out = done.stdout
    assert ("300 requests on 1 x Llama-2-70B on A100-80GB (tp=2, vllm_v0, 3328 KV blocks"
            in out)  # Vidur's memory planner (the profile), not servegym's 2,487
    for metric in ("TTFT p50 / p90 / p99", "TBT p50 / p90 / p99", "E2E p50 / p90 / p99"):
        assert metric in out
    payload = json.loads((tmp_path / "run" / "summary.json").read_text())
    cost = payload["cost_model"]
    assert cost["source"] == "measured" and cost["vidur_compatible"] is True
    assert cost["network"] == "pairwise_nvlink" and cost["iteration_overhead_s"] == 0.0
    assert cost["allreduce_launch_overhead_s"] == 2e-5 and cost["gqa_attention_overhead"] == 0.1
    assert "this shape measured" in cost["parts"]["attention"]
    config = payload["config"]
    assert config["cluster"]["instance"]["max_num_seqs"] == 128
    assert config["cluster"]["instance"]["watermark"] == 0.01
    assert config["workload"]["rate"] == 1.0
    assert payload["summary"]["serving/finished"] == 300


def test_reverse_experiment_forces_servegyms_capacity(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "experiments" / "simulate.py"),
               "experiment=vidur_crosscheck_reverse", "workload.num_requests=200",
               f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "200 requests on 1 x Llama-2-70B on A100-80GB (tp=2, vllm_v0, 2487 KV blocks" in (
        done.stdout)
    payload = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert payload["config"]["workload"]["sampling"] == "vidur"
    assert payload["cost_model"]["gqa_attention_overhead"] == 0.1
