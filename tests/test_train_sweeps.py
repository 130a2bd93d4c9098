"""train.py as a command: multirun, a failing job, kill and resume, aggregation, launchers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aggregate
import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = ["env.episode_requests=32", "eval.episodes=2", "eval.baselines=[fcfs,spf]",
        "eval.freq=0", "checkpoint.freq=0", "progress=false", "logger=none",
        "agent.warm_start.steps=64", "agent.warm_start.epochs=1"]  # a quick imitation start


def train(args: list[str], cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


def test_multirun_and_aggregation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    result = train(["-m", "agent=maskable_ppo,ppo", "seed=0,1", "agent.total_timesteps=64",
           "agent.n_steps=64", "agent.batch_size=64", "agent.n_epochs=1", *TINY,
           f"hydra.sweep.dir={sweep}"], tmp_path)
    found = jobs(sweep)
    assert len(found) == 4
    assert f"sweep folder: {sweep}" in result.stdout
    assert f"aggregate it: python experiments/aggregate.py {sweep}" in result.stdout
    first = aggregate.aggregate([sweep])  # default: beside the jobs; a re-run, a new folder
    assert first == sweep / "aggregate" and (first / "summary.md").is_file()
    again = aggregate.aggregate([sweep])
    assert again.parent == sweep and again.name.startswith("aggregate_")
    assert len(jobs(sweep)) == 4  # the aggregates are not jobs
    for job in found:
        assert (job / "metrics.json").is_file() and (job / "eval.csv").is_file()
    seeds = {json.loads((job / "metrics.json").read_text())["seed"] for job in found}
    assert seeds == {0, 1}

    out = aggregate.aggregate([sweep], tmp_path / "results")
    summary = (out / "summary.md").read_text()
    assert "| agent [agent=maskable_ppo] | 2 |" in summary and "| agent [agent=ppo] |" in summary
    assert "| fcfs | 2 |" in summary and "±" in summary
    assert "python train.py -m agent=maskable_ppo,ppo seed=0,1" in summary
    for name in ("summary.csv", "runs.csv", "summary.png", "jobs/0/metrics.json",
                 "jobs/3/eval.csv"):
        assert (out / name).is_file(), name
    with pytest.raises(FileExistsError):
        aggregate.aggregate([sweep], out)
    with pytest.raises(SystemExit) as refused:  # the command: a message, no traceback
        aggregate.main([str(sweep), "--out", str(out)])
    assert refused.value.code == 2
    assert "aggregates are never overwritten" in capsys.readouterr().err


def test_a_failing_job_keeps_the_others_results(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = train(["-m", "agent=heuristic", "agent.policy=spf,no-such-policy", *TINY,
                    f"hydra.sweep.dir={sweep}"], tmp_path, check=False)
    assert result.returncode != 0
    good, bad = jobs(sweep)
    assert (good / "metrics.json").is_file()
    assert not (bad / "metrics.json").exists()
    assert "unknown policy 'no-such-policy'" in json.loads((bad / "failed.json").read_text())[
        "error"]
    found, failed = aggregate.find_jobs([sweep])
    assert len(found) == 1 and failed == [bad]
    summary = (aggregate.aggregate([sweep], tmp_path / "out") / "summary.md").read_text()
    assert "1 failed" in summary and str(bad) in summary


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    first = tmp_path / "first"
    args = ["agent.total_timesteps=4096", "agent.n_envs=1", "agent.n_steps=64",
            "agent.batch_size=64",
            "agent.n_epochs=1", "checkpoint.freq=256", *[o for o in TINY if "checkpoint" not in o],
            f"hydra.run.dir={first}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(first.glob("checkpoints/step_*/agent.json")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (first / "metrics.json").exists()
    saved = sorted(first.glob("checkpoints/step_*"))

    second = tmp_path / "second"
    refused = train([f"resume={first}", "seed=5", f"hydra.run.dir={tmp_path / 'x'}"], tmp_path,
                    check=False)
    assert refused.returncode != 0 and "drop the other overrides ['seed=5']" in refused.stderr
    train([f"resume={first}", "progress=false", f"hydra.run.dir={second}"], tmp_path)
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["train"]["timesteps"] == 4096
    resumed_from = Path(metrics["train"]["resumed_from"])
    assert resumed_from.parent == first / "checkpoints" and resumed_from in saved
    assert metrics["config"]["agent"]["total_timesteps"] == 4096
    assert (second / "model" / "model.zip").is_file()
    assert sorted(first.glob("checkpoints/step_*")) == saved  # the killed run is untouched


def test_ctrl_c_writes_an_interrupted_record(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["agent.total_timesteps=100000", "agent.n_envs=1", "agent.n_steps=64",
            "agent.batch_size=64", "agent.n_epochs=1", "checkpoint.freq=128",
            *[o for o in TINY if "checkpoint" not in o], f"hydra.run.dir={run}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    # A terminal's Ctrl-C reaches a process whose SIGINT is at its default; a child
    # inherits an ignored SIGINT from its parent (some test or plugin in this pytest process
    # may have set SIG_IGN), and then Python never raises KeyboardInterrupt: reset it.
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(run.glob("checkpoints/step_*/agent.json")):  # training is under way
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    status = Path(f"/proc/{process.pid}/status")
    if status.exists():  # Linux: the child must not ignore SIGINT (bit 2 of SigIgn)
        ignored = int(next(line.split()[1] for line in status.read_text().splitlines()
                           if line.startswith("SigIgn:")), 16)
        assert not ignored & (1 << (signal.SIGINT - 1)), "train.py ignores SIGINT"
    process.send_signal(signal.SIGINT)
    try:  # a hang guard, not a timing assertion: generous for a loaded shared machine
        code = process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("train.py did not stop within 5 minutes of Ctrl-C; stderr:\n"
                             + process.communicate()[1].decode()[-4000:]) from None
    assert code != 0
    record = json.loads((run / "failed.json").read_text())
    assert record["status"] == "interrupted"
    assert record["reason"] == "interrupted by the user (Ctrl-C)"
    assert not (run / "metrics.json").exists()


def test_a_finished_run_resumes_from_its_final_model(tmp_path: Path) -> None:
    first = tmp_path / "first"
    # the roofline pair, whose fallback notice must come once a run
    args = ["cost=llama3_8b_h100", "agent.total_timesteps=512", "agent.n_envs=1",
            "agent.n_steps=64",
            "agent.batch_size=64", "agent.n_epochs=1", "checkpoint.freq=200",
            *[o for o in TINY if "checkpoint" not in o], f"hydra.run.dir={first}"]
    result = train(args, tmp_path)
    assert result.stderr.count("RooflineFallbackWarning") == 1  # the cost notice, once a run
    steps = [json.loads((p / "agent.json").read_text())["timesteps"]
             for p in sorted(first.glob("checkpoints/step_*"))]
    assert steps and all(s % 64 == 0 for s in steps)  # taken between rollouts
    assert steps == [256, 448]  # crossings of 200 and 400, saved at the next rollout
    second = tmp_path / "second"
    train([f"resume={first}", "progress=false", f"hydra.run.dir={second}"], tmp_path)
    metrics = json.loads((second / "metrics.json").read_text())
    assert Path(metrics["train"]["resumed_from"]) == first / "model"
    assert metrics["train"]["timesteps"] == 512


def test_submitit_local_launcher_runs_a_sweep(tmp_path: Path) -> None:
    """The SLURM launcher's path, run by submitit's local executor (what
    hydra/launcher=slurm runs on a cluster, job by job)."""
    sweep = tmp_path / "sweep"
    result = train(["-m", "hydra/launcher=slurm_local", "agent=heuristic",
                    "agent.policy=fcfs,spf", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    found = jobs(sweep)
    assert len(found) == 2
    policies = {json.loads((job / "metrics.json").read_text())["config"]["agent"]["policy"]
                for job in found}
    assert policies == {"fcfs", "spf"}
    assert list((sweep / ".submitit").glob("*/*_submitted.pkl"))  # went through submitit
    assert f"sweep folder: {sweep}" in result.stdout
    slurm = train(["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "--cfg", "hydra"],
                  tmp_path)  # composes the SLURM launcher (nothing is submitted)
    assert "SlurmLauncher" in slurm.stdout and "partition: cpu" in slurm.stdout


def test_optuna_sweeper_returns_the_sweep_metric(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    train(["-m", "experiment=optuna_maskable_ppo", "hydra.sweeper.n_trials=2",
           "agent.total_timesteps=64", "agent.n_steps=64", "agent.batch_size=64",
           "eval.episodes=1", "env.episode_requests=32", "logger=none", "progress=false",
           f"hydra.sweep.dir={sweep}"], tmp_path)
    best = (sweep / "optimization_results.yaml").read_text()
    assert "best_value" in best and "agent.learning_rate" in best
    values = [json.loads((job / "metrics.json").read_text())["objective"]["value"]
              for job in jobs(sweep)]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_processes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "joblib"
    train(["-m", "hydra/launcher=joblib_local", "agent=heuristic", "seed=0,1", *TINY,
           f"hydra.sweep.dir={sweep}"], tmp_path)
    assert all((job / "metrics.json").is_file() for job in jobs(sweep))
    assert len(jobs(sweep)) == 2


@pytest.mark.slow
def test_ray_launcher_in_a_loopback_only_namespace(tmp_path: Path) -> None:
    """Ray on this machine only: a new network namespace whose one interface is loopback."""
    pytest.importorskip("ray")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip for a loopback-only network namespace")
    sweep = tmp_path / "ray"
    command = " ".join([
        "ip link set lo up;", sys.executable, str(ROOT / "train.py"), "-m",
        "hydra/launcher=ray_local", "agent=heuristic", "seed=0,1", *[f"'{o}'" for o in TINY],
        f"hydra.sweep.dir={sweep}",
    ])
    env = {**os.environ, "WANDB_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run(["unshare", "--net", "sh", "-c", command], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(jobs(sweep)) == 2
    assert all((job / "metrics.json").is_file() for job in jobs(sweep))
