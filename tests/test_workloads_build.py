"""The builder, its transforms (split, window, rate, clipping), Hydra configs and the stats CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegym.envs.workloads import (
    Workload,
    WorkloadError,
    WorkloadWarning,
    build_workload,
    build_workload_with_report,
    split_by_time,
    time_window,
)
from servegym.envs.workloads.stats import load_from_overrides, main, workload_stats

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "workload").glob("*.yaml"))
AZURE = {"kind": "azure", "trace": "conv"}
POISSON = {"kind": "synthetic", "num_requests": 500,
           "arrivals": {"process": "poisson", "rate": 2.0},
           "prompt": {"dist": "uniform", "low": 100, "high": 9000},
           "output": {"dist": "fixed", "value": 100}}


# ---------------------------------------------------------------------- transforms


def test_split_rule_by_hand() -> None:
    w = Workload.from_lengths([0.0, 3.0, 7.0, 7.5, 10.0], 1, 1)  # cut at 0 + 0.7 * 10 = 7
    train, test = split_by_time(w, "train"), split_by_time(w, "test")
    assert train.arrival_time.tolist() == [0.0, 3.0, 7.0]  # at the cut: train
    assert test.arrival_time.tolist() == [0.5, 3.0]  # shifted by -7
    assert (train.name, test.name) == ("workload[train]", "workload[test]")
    with pytest.raises(WorkloadError, match="'train' or 'test'"):
        split_by_time(w, "validation")


def test_split_partitions_a_real_trace() -> None:
    _, report = build_workload_with_report(AZURE)
    train = build_workload(AZURE, split="train")
    test = build_workload(AZURE, split="test")
    assert len(train) + len(test) == 19_366
    assert train.arrival_time[-1] <= 0.7 * 3501.7 < train.arrival_time[-1] + test.arrival_time[0]
    assert report.requests == 19_366


def test_window_by_hand() -> None:
    w = Workload.from_lengths([0.0, 1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4, 5], 1)
    part = time_window(w, 1.0, 3.0)
    assert part.arrival_time.tolist() == [0.0, 1.0] and part.prompt_len.tolist() == [2, 3]
    assert time_window(w, 2.5, None).prompt_len.tolist() == [4, 5]
    with pytest.raises(WorkloadError, match="window end"):
        time_window(w, 3.0, 1.0)


def test_transform_order_and_report() -> None:
    w, report = build_workload_with_report(
        AZURE, split="test", window=[100, 900], num_requests=1000, rate=20.0,
        max_total_tokens=2048, ttft_slo=2.0, tpot_slo=0.1, name="x",
    )
    assert len(w) == 1000 and w.name == "x"
    assert w.summary()["mean_rate"] == pytest.approx(20.0, rel=1e-9)  # rate after the head
    assert np.all(w.prompt_len + w.output_len <= 2048)
    assert report.clipped > 0 and f"clipped {report.clipped:,} of 1,000" in str(report)
    assert np.all(w.ttft_slo == 2.0) and np.all(w.tpot_slo == 0.1)
    text = str(report)
    for step in ("split test", "window [100, 900)", "first 1,000", "rate:", "clipped"):
        assert step in text
    with pytest.warns(WorkloadWarning, match="clipped"):
        build_workload(AZURE, num_requests=100, max_total_tokens=1024)


def test_one_seed_fixes_everything() -> None:
    moon = {"kind": "mooncake"}
    a = build_workload(moon, seed=3, num_requests=50)
    b = build_workload(moon, seed=3, num_requests=50)
    c = build_workload(moon, seed=4, num_requests=50)
    assert a.arrival_time.tobytes() == b.arrival_time.tobytes()
    assert not np.array_equal(a.arrival_time, c.arrival_time)
    assert tuple(a.prefix_hashes) == tuple(b.prefix_hashes)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"source": {"kind": "azur"}}, r"source\.kind = 'azur': choose one of"),
        ({"source": {"kind": "azure", "trac": "conv"}}, r"source: unknown option\(s\) trac"),
        ({"source": {**POISSON, "arrivals": {"process": "poisson", "rat": 1}}},
         r"source\.arrivals: unknown option\(s\) rat"),
        ({"source": AZURE, "split": "dev"}, "split = 'dev'"),
        ({"source": AZURE, "window": [5]}, r"window = \[5\]: give \[start, end\]"),
        ({"source": AZURE, "window": [5000, 6000]}, "no request arrives in it"),
        ({"source": AZURE, "rate": 0}, "rate = 0"),
        ({"source": AZURE, "num_requests": 0}, "num_requests = 0"),
        ({"source": AZURE, "max_total_tokens": 1}, "max_total_tokens = 1"),
        ({"source": AZURE, "seed": -1}, "seed = -1"),
        ({"source": "azure"}, "source must be a mapping with 'kind'"),
    ],
)
def test_bad_build_arguments_say_what_is_wrong(kwargs: dict, pattern: str) -> None:
    with pytest.raises(WorkloadError, match=pattern):
        build_workload(**kwargs)


# ---------------------------------------------------------------------- Hydra configs


def test_configs_cover_every_trace_and_generator() -> None:
    expected = {"azure_conv", "azure_code", "mooncake_conv", "sharegpt", "arxiv",
                "servegen_m_large", "servegen_m_mid", "servegen_m_small", "servegen_mm_image",
                "poisson_fixed", "poisson_lognormal", "gamma_zipf", "onoff_uniform",
                "diurnal_empirical", "multi_tenant", "multi_turn"}
    assert expected <= set(CONFIGS)
    for name in CONFIGS:
        text = (ROOT / "conf" / "workload" / f"{name}.yaml").read_text()
        assert "_target_: servegym.envs.workloads.build_workload" in text
        assert "seed: ${seed}" in text
        for key in ("rate:", "window:", "split:", "num_requests:", "max_total_tokens:"):
            assert key in text, (name, key)


def test_overrides_reach_the_builder() -> None:
    w, report = load_from_overrides(["workload=mooncake_conv", "workload.num_requests=300",
                                     "workload.split=test", "seed=5",
                                     "cluster.instance.block_size=32"])
    assert len(w) == 300 and w.name == "mooncake_conv[test]" and w.prefix_block_size == 32
    assert "split test" in report
    again, _ = load_from_overrides(["workload=mooncake_conv", "workload.num_requests=300",
                                    "workload.split=test", "seed=5",
                                    "cluster.instance.block_size=32"])
    assert again.arrival_time.tobytes() == w.arrival_time.tobytes()
    windowed, _ = load_from_overrides(["workload=azure_code", "workload.window=[600,1200]",
                                       "workload.rate=4"])
    assert windowed.summary()["mean_rate"] == pytest.approx(4.0)


# ---------------------------------------------------------------------- stats CLI


README_STATS = {
    # rows, span s, mean rate, peak 1-min rate, peak count, CV, input mean/p50/p99,
    # output mean/p50/p99 (the traces' README, rounded as printed there).
    "azure_conv": (19_366, 3502, 5.53, 8.45, 507, 1.09, (1155, 1020, 4142), (211.1, 129, 601)),
    "azure_code": (8_819, 3436, 2.57, 10.53, 632, 13.15, (2048, 1469, 7436), (27.9, 13, 251)),
    "mooncake_conv": (12_031, 3537, 3.40, 4.12, 247, 3.03, (12_035, 6909, 85_400),
                      (342.6, 350, 1119)),
}


@pytest.mark.parametrize("name", sorted(README_STATS))
def test_stats_cli_reproduces_the_readme(name: str, capsys: pytest.CaptureFixture) -> None:
    overrides = [f"workload={name}", "--json"]
    if name.startswith("mooncake"):
        overrides.append("workload.source.arrivals=batch")  # the README uses the raw ticks
    assert main(overrides) == 0
    s = json.loads(capsys.readouterr().out)
    rows, span, rate, peak, peak_count, iat_cv, prompt, output = README_STATS[name]
    assert s["rows"] == rows and round(s["span_s"]) == span
    assert round(s["mean_rate"], 2) == rate and round(s["peak_1min_rate"], 2) == peak
    assert s["peak_1min_count"] == peak_count and round(s["iat_cv"], 2) == iat_cv
    assert (round(s["input_mean"]), s["input_p50"]) == prompt[:2]
    assert s["input_p99"] == pytest.approx(prompt[2], abs=0.5)
    assert round(s["output_mean"], 1) == output[0] and s["output_p50"] == output[1]
    # p99s that fall on .5 (251.5, 1118.5) are printed rounded either way in the README.
    assert s["output_p99"] == pytest.approx(output[2], abs=0.5)


def test_stats_by_hand() -> None:
    w = Workload.from_lengths([0.0, 1.0, 3.0, 70.0], [1, 2, 3, 4], [5, 5, 5, 5])
    s = workload_stats(w)
    assert (s["rows"], s["span_s"], s["mean_rate"]) == (4, 70.0, 4 / 70)
    assert (s["peak_1min_count"], s["peak_1min_rate"]) == (3, 0.05)
    gaps = np.array([1.0, 2.0, 67.0])
    assert s["iat_cv"] == pytest.approx(gaps.std() / gaps.mean())
    shared = Workload.from_lengths([0.0, 1.0], 32, 1, prefix_hashes=[(1, 2), (1, 3)])
    assert workload_stats(shared)["prefix_hit_ratio"] == 0.25


def test_stats_module_runs_as_a_script() -> None:
    done = subprocess.run([sys.executable, "-m", "servegym.envs.workloads.stats",
                           "workload=azure_code"], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    assert "| rows | 8,819 |" in done.stdout and "| CV of inter-arrival times | 13.15 |" in \
        done.stdout
    assert "RuntimeWarning" not in done.stderr


def test_bench_cases_run_small() -> None:
    import bench_workloads

    rows = [{"case": name, "what": what, **bench_workloads.measure(call, 1)}
            for name, what, call in bench_workloads.cases(2_000)
            if not name.startswith("servegen")]  # the 1-hour pool case is slow to repeat
    assert {row["case"] for row in rows} >= {"azure_conv load", "poisson + lognormal"}
    assert all(row["requests"] > 0 and row["median_s"] > 0 for row in rows)
    assert "< 1 s: met" in bench_workloads.format_table(rows)
