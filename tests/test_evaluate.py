"""The evaluation harness: goodput search, a small end-to-end run, files and the command line."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import eval_core
import numpy as np
import pytest
from eval_core import EvalSettings, evaluate, goodput_bracket, search_goodput
from eval_report import write_all
from sim_fixtures import AffineCost, make_workload

from servegym.envs.costs import RooflineCostModel

ROOT = Path(__file__).resolve().parents[1]

def test_goodput_bracket() -> None:
    rates = [1.0, 2.0, 3.0, 4.0]
    assert goodput_bracket(rates, [1.0, 0.95, 0.5, 0.1], 0.9) == (2.0, 3.0)
    assert goodput_bracket(rates, [0.5, 0.95, 0.99, 0.1], 0.9) == (0.0, 1.0)  # first run only
    assert goodput_bracket(rates, [1.0] * 4, 0.9) == (4.0, math.inf)


def test_goodput_search_converges_on_a_known_threshold() -> None:
    threshold = {"a": 7.3, "b": 30.0}  # b passes every swept rate: the search must expand
    policies = ("fcfs", "srpt-oracle")
    settings = EvalSettings(policies=policies, seeds=(0, 1), rates=(2.0, 4.0, 8.0, 16.0),
                            goodput_iterations=12, progress=False)
    names = dict(zip(policies, "ab", strict=True))

    def attainment(policy: str, rate: float) -> float:
        return 1.0 if rate <= threshold[names[policy]] else 0.5

    sweep = [{"policy": p, "rate": r, "seed": s, "serving/slo_attainment": attainment(p, r)}
             for p in policies for r in settings.rates for s in settings.seeds]

    def make_tasks(policy: str, rate: float) -> list:
        return [(policy, rate, seed) for seed in settings.seeds]

    def run(tasks: list) -> list:
        return [{"policy": p, "rate": r, "seed": s, "serving/slo_attainment": attainment(p, r)}
                for p, r, s in tasks]

    table, probes = search_goodput(settings, sweep, make_tasks, run)
    result = {row["policy"]: row for row in table}
    a, b = result["fcfs"], result["srpt-oracle"]
    assert a["goodput_rps"] <= 7.3 < a["upper_rps"] and a["upper_rps"] - a["goodput_rps"] < 0.01
    assert b["goodput_rps"] <= 30.0 < b["upper_rps"] < 60
    assert len(probes) == 12 * 2 * 2


def _tiny_workload():
    rng = np.random.default_rng(0)
    n = 400
    return make_workload(np.cumsum(rng.exponential(0.2, n)), rng.integers(10, 100, n),
                         rng.integers(5, 60, n), name="tiny")


CLUSTER = {"num_instances": 1, "instance": {"num_kv_blocks": 300, "max_num_seqs": 8,
                                            "max_num_batched_tokens": 256}}


def test_evaluate_end_to_end_writes_tables_and_plots(tmp_path: Path) -> None:
    settings = EvalSettings(policies=("fcfs", "srpt-oracle"), seeds=(0, 1), num_requests=150,
                            rate_fractions=(0.5, 1.0, 1.5), goodput_iterations=2,
                            ttft_slo=1.0, tpot_slo=0.05, progress=False)
    result = evaluate(_tiny_workload(), AffineCost(), CLUSTER, settings)
    assert result.saturation_rps > 0 and len(result.rates) == 3
    sweep = [r for r in result.rows if r["phase"] == "sweep"]
    assert len(sweep) == 2 * 3 * 2 and len(result.rows) == len(sweep) + 2 * 2 * 2
    assert all(r["serving/finished"] == 150 for r in result.rows)
    # One tenant: the worst tenant's attainment is the attainment `summarize` computes.
    assert all(r["serving/slo_attainment_worst_tenant"] == r["serving/slo_attainment"]
               for r in result.rows)
    # Every policy sees the same workload at a given rate and seed.
    by_key = {(r["policy"], r["rate"], r["seed"]): r for r in sweep}
    for rate in result.rates:
        assert by_key[("fcfs", rate, 0)]["serving/makespan_s"] > 0
        assert (by_key[("fcfs", rate, 1)]["serving/requests"]
                == by_key[("srpt-oracle", rate, 1)]["serving/requests"])
    assert set(result.latencies) == {"fcfs", "srpt-oracle"}
    out = tmp_path / "run"
    written = write_all(out, result, {"title": "tiny", "cost model": "affine"})
    names = {p.name for p in written}
    assert {"runs.csv", "goodput.csv", "summary.md", "slo_attainment.png", "ttft_p99.png",
            "tbt_p99.png", "latency_cdf.png"} <= names
    with open(out / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(result.rows) and "serving/slo_attainment" in rows[0]
    text = (out / "summary.md").read_text()
    assert "## Goodput" in text and "| srpt-oracle |" in text
    assert (out / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError, match="never overwritten"):
        write_all(out, result, {"title": "again"})


def test_results_do_not_depend_on_worker_processes() -> None:
    settings = dict(policies=("fcfs", "sjf-pred"), seeds=(0, 1), num_requests=100,
                    rates=(20.0, 60.0), goodput_iterations=1, progress=False)
    cost = RooflineCostModel("Llama-3-8B", "H100-80GB")  # picklable, unlike the test model
    one = evaluate(_tiny_workload(), cost, CLUSTER, EvalSettings(**settings))
    two = evaluate(_tiny_workload(), cost, CLUSTER, EvalSettings(**settings, jobs=2))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(one.rows) == strip(two.rows)


def test_seed_windows_and_default_slos() -> None:
    workload = _tiny_workload()
    settings = EvalSettings(policies=("fcfs",), num_requests=50, progress=False)
    first, again = (eval_core.seed_window(workload, settings, 3) for _ in range(2))
    np.testing.assert_array_equal(first.prompt_len, again.prompt_len)
    assert first.arrival_time[0] == 0 and len(first) == 50
    other = eval_core.seed_window(workload, settings, 4)
    assert not np.array_equal(first.prompt_len, other.prompt_len)
    slos = eval_core.with_default_slos(workload, 2.0, 0.1)
    assert slos.ttft_slo.max() == 2.0 and slos.tpot_slo.min() == 0.1
    with pytest.raises(ValueError, match="only 400"):
        eval_core.seed_window(workload, EvalSettings(policies=("fcfs",), num_requests=500,
                                                     progress=False), 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"policies": ("fcfs", "nope")}, "unknown policy 'nope'.*known policies"),
    ({"policies": ()}, "at least one policy"),
    ({"policies": ("fcfs", "fcfs")}, "twice"),
    ({"policies": ("fcfs",), "window": "middle"}, "window"),
    ({"policies": ("fcfs",), "rates": (5.0, -1.0)}, "positive"),
    ({"policies": ("fcfs",), "goodput_target": 1.5}, "fraction"),
])
def test_bad_settings_fail_before_simulating(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvalSettings(**kwargs)


def test_command_line_writes_a_new_folder_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    command = [sys.executable, str(ROOT / "experiments" / "evaluate.py"), "workload=azure_code",
               "policies=[fcfs,spf@sarathi]", "seeds=[0]", "num_requests=150", "rates=[2,4]",
               "goodput.iterations=1", "progress=false", f"hydra.run.dir={out}"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "## Goodput" in first.stdout
    with open(out / "runs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["policy"] for r in rows} == {"fcfs", "spf@sarathi"} and len(rows) == 2 * 2 + 2
    assert (out / ".hydra" / "config.yaml").exists()
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    for policies, message in (("[fcfs,nope]", "known policies"),
                              ("[fcfs@nope]", "known presets")):
        bad = subprocess.run([*command[:3], f"policies={policies}", f"hydra.run.dir={out}2"],
                             capture_output=True, text=True)
        assert bad.returncode != 0 and message in bad.stderr


def test_policy_labels_may_name_a_cluster_preset() -> None:
    assert eval_core.split_label("fcfs@sarathi") == ("fcfs", "sarathi")
    assert eval_core.split_label("srpt-pred(sigma=1.0)+lor") == ("srpt-pred(sigma=1.0)+lor", None)
    with pytest.raises(ValueError, match="spec@cluster_preset"):
        eval_core.split_label("@sarathi")
    settings = EvalSettings(policies=("fcfs", "fcfs@small"), seeds=(0,), num_requests=100,
                            rates=(3.0,), goodput_iterations=0, progress=False)
    with pytest.raises(ValueError, match="preset 'small'"):
        evaluate(_tiny_workload(), AffineCost(), CLUSTER, settings)
    small = {"num_instances": 1, "instance": {**CLUSTER["instance"], "max_num_seqs": 1,
                                              "max_num_batched_tokens": 64}}
    result = evaluate(_tiny_workload(), AffineCost(), CLUSTER, settings, {"small": small})
    e2e = {row["policy"]: row["serving/e2e_mean"] for row in result.rows}
    assert e2e["fcfs@small"] > e2e["fcfs"]  # one sequence at a time queues far longer


def test_tenant_attainment_by_hand() -> None:
    inf = np.inf
    records = {
        "status": np.array(["finished", "finished", "finished", "rejected"], dtype=object),
        "tenant": np.array([0, 0, 1, 1]),
        "arrival": np.array([0.0, 0.0, 0.0, 0.0]),
        "first_token": np.array([1.0, 3.0, 0.5, np.nan]),
        "finish": np.array([2.0, 4.0, 0.5, np.nan]),
        "output_tokens": np.array([11, 11, 1, 5]),
        "ttft_slo": np.array([2.0, 2.0, 1.0, inf]),
        "tpot_slo": np.array([0.1, 0.1, 0.1, inf]),
    }
    # Tenant 0: one met (TTFT 1, TPOT 0.1), one late. Tenant 1: a one-token request that met
    # its TTFT (no TPOT), and a rejected one.
    assert eval_core.tenant_attainment(records) == {0: 0.5, 1: 0.5}


def test_a_stalled_windows_row_has_every_summary_metric() -> None:
    """Rows of stalled windows (NaN) must carry the same serving/ keys as a summary, or
    averaging a mix of both fails (agents.evaluation.policy_means)."""
    from servegym.agents.evaluation import policy_means, stalled_metrics
    from servegym.envs.core.instance import InstanceConfig
    from servegym.envs.core.simulator import Simulator

    summary = Simulator(AffineCost(), InstanceConfig(num_kv_blocks=64)).run(
        make_workload([0.0, 0.1], [32, 16], [4, 4])).summary
    assert set(stalled_metrics()) == {k for k in summary if k.startswith("serving/")}
    rows = [{"policy": "p", **summary},
            {"policy": "p", **dict.fromkeys(stalled_metrics(), math.nan)}]
    assert set(policy_means(rows)["p"]) == set(stalled_metrics())
