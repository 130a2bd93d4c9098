"""Every workload config, built through Hydra, runs through the simulator end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import RooflineCostModel
from servegym.envs.workloads import Workload
from servegym.envs.workloads.stats import load_from_overrides

ROOT = Path(__file__).resolve().parents[1]
FINISHED, REJECTED = "finished", "rejected"  # ServingReport status strings
CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "workload").glob("*.yaml"))


def simulate(workload: Workload):
    sim = Simulator(RooflineCostModel("Llama-3-8B", "H100-80GB"),
                    InstanceConfig(enable_prefix_caching=True))
    return sim.run(workload, seed=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_runs_through_the_simulator(name: str) -> None:
    workload, _ = load_from_overrides([f"workload={name}", "workload.num_requests=120"])
    assert 0 < len(workload) <= 120
    report = simulate(workload)
    status = report.records["status"]
    assert np.all((status == FINISHED) | (status == REJECTED))
    reasons = [r for r, s in zip(report.reject_reasons, status, strict=True) if s == REJECTED]
    assert all(reasons), "every rejected request carries its reason"
    assert np.count_nonzero(status == FINISHED) > 0


def test_mooncake_prefix_caching_hits() -> None:
    workload, _ = load_from_overrides(["workload=mooncake_conv", "workload.num_requests=300",
                                       "workload.max_total_tokens=8192"])
    report = simulate(workload)
    assert np.all(report.records["status"] == FINISHED)
    assert report.records["prefix_hit_tokens"].sum() > 0
    assert report.summary["serving/prefix_cache_hit_rate"] > 0.05


def test_multi_turn_prefix_caching_hits() -> None:
    workload, _ = load_from_overrides(["workload=multi_turn", "workload.num_requests=300"])
    report = simulate(workload)
    assert report.summary["serving/prefix_cache_hit_rate"] > 0.3


def test_simulate_script_takes_workload_overrides(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "experiments" / "simulate.py"),
               "workload=mooncake_conv", "workload.num_requests=2000", "workload.split=test",
               "cluster.instance.enable_prefix_caching=true", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    assert "mooncake_conv[test]: 2000 requests" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert summary["serving/finished"] + summary["serving/rejected"] == 2000
