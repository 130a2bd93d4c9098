"""train.py sweeps and experiments/evaluate.py grids on an existing Ray cluster
(conf/hydra/launcher/ray_cluster.yaml; issue 18, item 6).

The end-to-end test starts a Ray head with `ray start` inside a new network namespace whose
only interface is loopback (root, `unshare --net`), joins it through RAY_ADDRESS as a user
joins a real cluster, and stops it; nothing listens outside that namespace. The tests that
need Ray skip, saying so, where hydra-ray-launcher is not installed (`pip install -e
'.[ray]'`); the install hint itself is tested everywhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from servegym.agents import hydra_support

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "hydra_plugins.hydra_ray_launcher"


def _need_plugin() -> None:
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    pytest.importorskip(PLUGIN, reason="hydra-ray-launcher is not installed: "
                                       "pip install -e '.[ray]'")


def test_a_missing_ray_plugin_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(hydra_support, "_installed", lambda module: module != PLUGIN)
    message = hydra_support.missing_plugin_message(["-m", "hydra/launcher=ray_cluster"])
    assert message is not None and "pip install -e '.[ray]'" in message
    assert "hydra/launcher=ray_cluster" in message


def _launcher_config(script: str, args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, str(ROOT / script), "hydra/launcher=ray_cluster",
                             *args, "--cfg", "hydra", "--package", "hydra.launcher",
                             "--resolve"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("script", ["train.py", "experiments/evaluate.py"])
def test_the_cluster_address_comes_from_ray_address_or_the_override(script: str) -> None:
    _need_plugin()
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    text = _launcher_config(script, [], {**base, "RAY_ADDRESS": "10.1.2.3:6379"})
    assert "RayLauncher" in text and "address: 10.1.2.3:6379" in text
    assert "object_store_memory: null" in text  # Ray refuses a size when joining a cluster
    assert "address: auto" in _launcher_config(script, [], base)
    override = ["hydra.launcher.ray.init.address=10.9.9.9:6379"]
    assert "address: 10.9.9.9:6379" in _launcher_config(script, override,
                                                        {**base, "RAY_ADDRESS": "x:1"})


def test_sweeps_run_on_an_existing_cluster_in_a_loopback_namespace(tmp_path: Path) -> None:
    _need_plugin()
    ray = Path(sys.executable).parent / "ray"
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip for a loopback-only network namespace")
    if not ray.is_file():
        pytest.skip(f"no ray command beside {sys.executable}")
    py = sys.executable
    script = f"""
ip link set lo up
{ray} start --head --node-ip-address=127.0.0.1 --port=6399 --num-cpus=2 \\
    --include-dashboard=false --disable-usage-stats > ray_start.log 2>&1 || exit 3
export RAY_ADDRESS=127.0.0.1:6399
{py} {ROOT}/train.py -m hydra/launcher=ray_cluster agent=heuristic 'agent.policy=fcfs,spf' \\
    env.episode_requests=32 eval.episodes=2 'eval.baselines=[fcfs,spf]' eval.freq=0 \\
    checkpoint.freq=0 progress=false logger=none hydra.sweep.dir={tmp_path}/train \\
    > train.log 2>&1; t=$?
{py} {ROOT}/experiments/evaluate.py -m hydra/launcher=ray_cluster 'policies=[fcfs,spf]' \\
    'seeds=[0],[1]' num_requests=100 goodput.iterations=0 'rates=[5]' progress=false \\
    hydra.sweep.dir={tmp_path}/eval > eval.log 2>&1; e=$?
{ray} stop --force > /dev/null 2>&1
echo "train=$t eval=$e"
"""
    env = {**os.environ, "WANDB_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(["unshare", "--net", "sh", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    logs = "".join((tmp_path / n).read_text() for n in ("ray_start.log", "train.log",
                                                         "eval.log")
                   if (tmp_path / n).is_file())
    assert "train=0 eval=0" in result.stdout, result.stdout + result.stderr + logs[-4000:]
    joined = (tmp_path / "train.log").read_text() + (tmp_path / "eval.log").read_text()
    assert joined.count("Connecting to existing Ray cluster at address: 127.0.0.1:6399") == 2
    policies = {json.loads((tmp_path / "train" / job / "metrics.json").read_text())
                ["config"]["agent"]["policy"] for job in ("0", "1")}
    assert policies == {"fcfs", "spf"}
    for job in ("0", "1"):
        assert (tmp_path / "eval" / job / "summary.md").is_file()
