"""rl-zoo3 as a client (issue 18, item 2): the shipped hyperparameter files, the import of a
zoo run into an agent folder the evaluation harness accepts (nothing unpickled), and, where
rl-zoo3 is installed (the `zoo` extra), a real zoo training run of each kind.

The import tests build zoo-style run folders with SB3 itself (the zip format and the
OrderedDict-tagged YAML the zoo writes), so they run without rl-zoo3."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import gymnasium as gym
import import_zoo
import numpy as np
import pytest
import torch
import yaml
from eval_core import EvalSettings, evaluate
from sim_fixtures import AffineCost, make_workload

import servegym  # noqa: F401
from servegym.agents import load_agent
from servegym.agents.learned import load_policy

ROOT = Path(__file__).resolve().parents[1]
ENV_ID = "servegym/Admission-v0"
PER_DECISION = ["servegym/Admission-v0", "servegym/Preemption-v0", "servegym/Routing-v0",
                "servegym/Serving-v0", "servegym/Heterogeneous-v0"]
ZOO_ONLY_KEYS = {"policy", "n_timesteps", "n_envs", "normalize", "policy_kwargs"}


def _algorithm(zoo_algo: str) -> type:
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import A2C, DQN, PPO

    return {"ppo": PPO, "a2c": A2C, "dqn": DQN, "ppo_mask": MaskablePPO}[zoo_algo]


@pytest.mark.parametrize("zoo_algo", ["ppo", "ppo_mask", "a2c", "dqn"])
def test_hyperparameter_files_fit_the_algorithms(zoo_algo: str) -> None:
    config = yaml.safe_load((ROOT / "conf" / "zoo" / f"{zoo_algo}.yml").read_text())
    assert set(PER_DECISION) <= set(config), "every per-decision env has its entry"
    assert set(config) <= set(gym.registry), "no entry for an id servegym does not register"
    accepted = set(inspect.signature(_algorithm(zoo_algo).__init__).parameters)
    for env_id, params in config.items():
        assert params["policy"] == "MlpPolicy" and params["normalize"] is False, env_id
        unknown = set(params) - ZOO_ONLY_KEYS - accepted
        assert not unknown, (env_id, unknown)
        assert params["policy_kwargs"] == "dict(net_arch=[64, 64])"


def _zoo_run(folder: Path, zoo_algo: str, env_kwargs: dict | None = None,
             normalize: bool = False) -> Path:
    """A folder laid out as rl-zoo3 writes one, with an SB3 model of `zoo_algo`."""
    env = gym.make(ENV_ID, **(env_kwargs or {}))
    kwargs = {"n_steps": 16, "batch_size": 16} if zoo_algo in ("ppo", "ppo_mask") else {}
    model = _algorithm(zoo_algo)("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [64, 64]},
                                 **kwargs)
    name = ENV_ID.replace("/", "-")
    (folder / name).mkdir(parents=True)
    model.save(folder / f"{name}.zip")
    args = OrderedDict([("algo", zoo_algo), ("env", ENV_ID), ("env_kwargs", env_kwargs),
                        ("seed", 0)])
    (folder / name / "args.yml").write_text(yaml.dump(args))  # the zoo's !!python tags
    (folder / name / "config.yml").write_text(yaml.dump(OrderedDict(
        [("normalize", normalize), ("policy", "MlpPolicy")])))
    (folder / name / "command.txt").write_text(f"python -m rl_zoo3.train --algo {zoo_algo}")
    env.close()
    return folder


@pytest.mark.parametrize("zoo_algo", ["ppo", "ppo_mask", "a2c", "dqn"])
def test_import_gives_an_agent_folder_with_the_same_weights(tmp_path: Path,
                                                            zoo_algo: str) -> None:
    run = _zoo_run(tmp_path / "run", zoo_algo)
    out = import_zoo.import_run(run)
    assert out == run / "servegym_agent_final"
    metadata = json.loads((out / "agent.json").read_text())
    expected = {"ppo_mask": "maskable_ppo"}.get(zoo_algo, zoo_algo)
    assert metadata["algo"] == expected and metadata["source"] == "rl-zoo3"
    assert metadata["env_id"] == ENV_ID and metadata["controlled"] == ["admit"]
    assert not list(out.glob("*.zip")) and not list(out.glob("*.pkl"))  # nothing pickled
    model = _algorithm(zoo_algo).load(run / "servegym-Admission-v0.zip", device="cpu")
    saved = torch.load(out / "policy.pt", weights_only=True)
    reference = model.policy.state_dict()
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
    policy, _ = load_policy(out)
    obs = np.zeros(model.observation_space.shape, dtype=np.float32)
    batch = torch.as_tensor(obs)[None]
    loaded = policy.model.policy  # rebuilt from policy.json + policy.pt
    with torch.no_grad():
        if zoo_algo == "dqn":
            a, b = loaded.q_net(batch), model.policy.q_net(batch)
        else:
            a = loaded.get_distribution(batch).distribution.logits
            b = model.policy.get_distribution(batch).distribution.logits
    assert torch.allclose(a, b)
    assert load_agent(out)  # the harness's loader accepts it


def test_an_imported_agent_runs_in_the_evaluation_harness(tmp_path: Path) -> None:
    out = import_zoo.import_run(_zoo_run(tmp_path / "run", "ppo_mask"), tmp_path / "agent")
    rng = np.random.default_rng(0)
    n = 200
    workload = make_workload(np.cumsum(rng.exponential(0.2, n)), rng.integers(10, 100, n),
                             rng.integers(5, 60, n), name="tiny")
    cluster = {"num_instances": 1, "instance": {"num_kv_blocks": 300, "max_num_seqs": 8,
                                                "max_num_batched_tokens": 256}}
    settings = EvalSettings(policies=(f"agent:{out}", "fcfs"), seeds=(0,), num_requests=100,
                            rates=(5.0,), goodput_iterations=0, ttft_slo=1.0, tpot_slo=0.05,
                            progress=False)
    result = evaluate(workload, AffineCost(), cluster, settings)
    rows = [r for r in result.rows if r["policy"] == f"agent:{out}"]
    assert rows and all(r["serving/finished"] + r["serving/rejected"] == 100 for r in rows)


def test_import_refuses_what_would_run_code_or_does_not_fit(tmp_path: Path) -> None:
    run = _zoo_run(tmp_path / "run", "ppo")
    args = run / "servegym-Admission-v0" / "args.yml"
    good = args.read_text()
    args.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(import_zoo.ZooImportError, match="only the zoo's OrderedDict tag"):
        import_zoo.import_run(run)
    args.write_text(good)
    with open(run / "servegym-Admission-v0" / "vecnormalize.pkl", "wb") as handle:
        pickle.dump({"not": "read"}, handle)
    with pytest.raises(import_zoo.ZooImportError, match="--allow-pickle"):
        import_zoo.import_run(run)
    os.remove(run / "servegym-Admission-v0" / "vecnormalize.pkl")
    # trained on 8 slots, imported against the default 16: the shapes differ
    other = _zoo_run(tmp_path / "other", "ppo", env_kwargs={"num_slots": 8})
    (other / "servegym-Admission-v0" / "args.yml").write_text(yaml.dump(OrderedDict(
        [("algo", "ppo"), ("env", ENV_ID), ("env_kwargs", None)])))
    with pytest.raises(import_zoo.ZooImportError, match="shape"):
        import_zoo.import_run(other)
    import_zoo.import_run(run)
    with pytest.raises(import_zoo.ZooImportError, match="never overwritten"):
        import_zoo.import_run(run)
    with pytest.raises(import_zoo.ZooImportError, match="best_model.zip not found"):
        import_zoo.import_run(run, model="best")
    with pytest.raises(SystemExit):
        import_zoo.main([str(tmp_path / "missing")])


def _zoo(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.parametrize("zoo_algo", ["ppo", "ppo_mask"])
def test_zoo_trains_with_the_shipped_file_and_imports(tmp_path: Path, zoo_algo: str) -> None:
    """The documented commands: rl-zoo3's trainer (ppo_mask through servegym.zoo, which
    adds MaskablePPO), a short run with conf/zoo/<algo>.yml, then the import."""
    pytest.importorskip("rl_zoo3", reason="rl-zoo3 is not installed: pip install -e '.[zoo]'")
    entry = ["-m", "rl_zoo3.train", "--gym-packages", "servegym"] if zoo_algo == "ppo" \
        else ["-m", "servegym.zoo"]
    _zoo([*entry, "--algo", zoo_algo, "--env", ENV_ID, "--conf-file",
          str(ROOT / "conf" / "zoo" / f"{zoo_algo}.yml"), "-n", "512", "--eval-freq", "-1",
          "--hyperparams", "n_envs:2", "n_steps:128", "batch_size:128", "-f", "logs",
          "--seed", "0", "--device", "cpu"], tmp_path)
    (run,) = (tmp_path / "logs" / zoo_algo).iterdir()
    assert (run / "servegym-Admission-v0.zip").is_file()
    printed = _zoo([str(ROOT / "experiments" / "import_zoo.py"), str(run)], tmp_path).stdout
    assert "evaluate it: python experiments/evaluate.py" in printed
    metadata = json.loads((run / "servegym_agent_final" / "agent.json").read_text())
    assert metadata["timesteps"] >= 512 and metadata["zoo_algo"] == zoo_algo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_agent(run / "servegym_agent_final")
