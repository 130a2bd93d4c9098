"""The README's example and the experiment scripts run (small sizes; no timing asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    summary = namespace["report"].summary
    assert summary["serving/finished"] + summary["serving/rejected"] == 19_366
    assert namespace["sim"].report().summary["serving/finished"] == 100


def test_simulate_writes_results_and_never_overwrites(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "experiments" / "simulate.py"), "workload=azure_code",
               f"hydra.run.dir={tmp_path / 'run'}"]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "TTFT p50" in first.stdout and "cost source" in first.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["summary"]
    assert summary["serving/finished"] + summary["serving/rejected"] == 8_819
    assert (tmp_path / "run" / "requests.csv").read_text().count("\n") == 8_820
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["summary"] == summary


def test_bench_case_reports_rates() -> None:
    import bench_sim

    row = bench_sim.run_case("a", 300)
    assert row["requests"] == 300 and row["iterations"] > 300
    assert row["requests_per_s"] > 0 and row["cost_source"] == "measured"
    assert "| a | 300 |" in bench_sim.format_table([row])


def test_existing_results_are_not_overwritten(tmp_path: Path) -> None:
    from servegym.envs.core.metrics import atomic_write

    target = tmp_path / "x.json"
    atomic_write(target, lambda h: h.write("1"))
    with pytest.raises(FileExistsError, match="never overwritten"):
        atomic_write(target, lambda h: h.write("2"))
    assert target.read_text() == "1"


def test_suite_repeat_stops_at_the_first_failing_run_and_counts_the_passes(
        tmp_path: Path) -> None:
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert False\n")
    script = str(ROOT / "experiments" / "suite_repeat.py")
    out = tmp_path / "results"
    for name, target, runs in (("ok", "test_ok.py", 2), ("bad", "test_bad.py", 3)):
        done = subprocess.run([sys.executable, script, "--runs", str(runs), "--hogs", "1",
                               "--out", str(out), "--name", name,
                               str(tmp_path / target)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
    ok = json.loads((out / "ok.json").read_text())
    assert ok["passed_in_a_row"] == 2 and [r["status"] for r in ok["runs"]] == [0, 0]
    assert ok["runs"][0]["summary"].startswith("1 passed")
    bad = json.loads((out / "bad.json").read_text())
    assert bad["passed_in_a_row"] == 0 and len(bad["runs"]) == 1  # stopped at run 1
    assert "test_bad.py::test_bad" in bad["runs"][0]["failures"][0]
    again = subprocess.run([sys.executable, script, "--out", str(out), "--name", "ok"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "never overwritten" in again.stderr
