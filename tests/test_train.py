"""train.py in-process: config schemas, the shared evaluation path, agents, results, W&B."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import servegym  # noqa: F401  (registers the ids)
from servegym.agents import build_scheduler, load_agent
from servegym.agents.config import register_configs
from servegym.agents.evaluation import evaluation_episodes
from servegym.agents.learned import LearnedPolicy, scheduler_for
from servegym.agents.learners import agent_metadata, save_agent
from servegym.agents.run_logger import run_group
from servegym.agents.training import typed_config
from servegym.envs.build import build_simulator
from servegym.envs.core.decisions import DecisionKind
from servegym.envs.workloads import load_azure_2023
from servegym.envs.workloads.transforms import split_by_time

ROOT = Path(__file__).resolve().parents[1]
TINY = ["env.episode_requests=32", "eval.episodes=2", "eval.baselines=[fcfs,spf]",
        "eval.freq=0", "checkpoint.freq=0", "progress=false", "logger=none",
        "agent.warm_start.steps=64", "agent.warm_start.epochs=1"]  # a quick imitation start
PPO_TINY = ["agent.total_timesteps=128", "agent.n_envs=1", "agent.n_steps=64",
            "agent.batch_size=32", "agent.n_epochs=1"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.set_num_threads(1)


def compose_config(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def train_module():
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_train(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[float, Path]:
    cfg = compose_config(overrides)
    run_dir = tmp_path / name
    run_dir.mkdir()
    value = train_module().run(cfg, run_dir, overrides, "python train.py " + " ".join(overrides))
    return value, run_dir


# ============================================================================ config
@pytest.mark.parametrize(("overrides", "message"), [
    (["env.admit_keys=[oldest,shortest_promt]"], "unknown sort key"),
    (["env.num_slots=2"], "num_slots=2 is smaller than the 5 sort keys"),
    (["env=admission_interval"], "needs a discrete action space; use agent=ppo"),
    (["eval.metric=serving/goodput"], "not a serving metric; known: .*goodput_rps"),
    (["env=admission_interval", "agent=ppo", "env.interval_s=0"], "interval_s must be positive"),
])
def test_bad_learning_settings_fail_before_training(tmp_path: Path, overrides: list[str],
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_train(tmp_path, [*TINY, *PPO_TINY, *overrides])
    assert not (tmp_path / "run" / "model").exists()
    assert not (tmp_path / "run" / "sb3").exists()


def test_interval_agent_trains_and_is_evaluated_as_a_policy(tmp_path: Path) -> None:
    _, run_dir = run_train(tmp_path, [*TINY, "env=admission_interval", "agent=ppo",
                                      "agent.total_timesteps=32", "agent.n_steps=16",
                                      "agent.batch_size=16", "agent.n_epochs=1"])
    metadata = json.loads((run_dir / "model" / "agent.json").read_text())
    assert metadata["mode"] == "interval" and metadata["algo"] == "ppo"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"agent", "agent-last-sampled", "spf"} <= set(metrics["eval"]["policies"])


@pytest.mark.parametrize("overrides", [
    [], ["agent=ppo"], ["agent=a2c"], ["agent=dqn"], ["agent=heuristic", "agent.policy=spf"],
    ["env=preemption"], ["env=routing"], ["env=serving"], ["logger=none"],
    ["experiment=smoke"], ["cluster=sarathi", "cost=llama2_7b_a100_tp1"],
])
def test_every_group_option_composes_to_a_typed_config(overrides: list[str]) -> None:
    config = typed_config(OmegaConf.to_container(compose_config(overrides), resolve=True))
    assert config.agent.algo in ("maskable_ppo", "ppo", "a2c", "dqn", "heuristic")
    assert config.workload.seed == config.seed


def test_env_presets_set_their_cluster() -> None:
    routing = compose_config(["env=routing"])
    assert routing.cluster.num_instances == 4 and routing.env.id == "servegym/Routing-v0"
    preemption = compose_config(["env=preemption"])
    assert preemption.cluster.instance.num_kv_blocks == 2048
    assert compose_config(["env=routing", "cluster=vllm_v1"]).cluster.num_instances == 1


@pytest.mark.parametrize(("override", "message"), [
    ("agent.learning_rat=0.1", "learning_rat"),
    ("+agent.learning_rat=0.1", "Key 'learning_rat' not in 'PPOConfig'"),
    ("+cluster.instance.max_num_seq=3", "max_num_seq"),
    ("env.rate=fast", "could not be converted to Float"),
    ("+cost.network=dgx", "Key 'network' not in 'CostConfig'"),
    ("agent=sac", "Could not find 'agent/sac'"),
])
def test_bad_overrides_fail_with_a_clear_message(override: str, message: str) -> None:
    with pytest.raises(Exception) as caught:  # at composition or when typed
        typed_config(OmegaConf.to_container(compose_config([override]), resolve=True))
    error, text = caught.value, ""
    while error is not None:  # Hydra chains the cause, and prints it on the command line
        text, error = text + str(error), error.__cause__
    assert message in text


@pytest.mark.parametrize(("overrides", "message"), [
    (["agent=ppo", "env.invalid_action=raise"], "needs env.invalid_action=fallback"),
    (["logger.kind=tensorboard"], "logger.kind"),
    (["eval.metric=ttft"], "serving/ metric"),
    (["agent.algo=sac"], "agent.algo='sac'"),
    (["env.episode_requests=0"], "env.episode_requests must be >= 1"),
    (["env.rate=-3"], "env.rate must be a finite req/s > 0"),
    (["env.over_context=truncate"], r"env.over_context=.truncate.: choose one of"),
    (["agent.batch_size=0"], r"agent.batch_size=0: must be >= 1"),
    (["agent.batch_size=1"], "advantage normalisation needs minibatches of 2"),
    (["agent.gamma=1.5"], r"agent.gamma=1.5: must be in \(0, 1\]"),
    (["agent.learning_rate=0"], "agent.learning_rate=0.0: must be > 0"),
    (["agent.net_arch=[]"], "agent.net_arch"),
    (["agent=dqn", "env.invalid_action=fallback", "agent.exploration_final_eps=2"],
     "exploration_final_eps=2.0: must be in"),
    (["cluster.instance.max_model_len=0"], "max_model_len must be >= 1"),
    (["cluster.instance.max_model_len=-5"], "max_model_len must be >= 1"),
    (["cluster.instance.gpu_memory_utilization=1.5"], "gpu_memory_utilization"),
    (["cluster.num_instances=0"], "cluster.num_instances must be >= 1"),
    (["env.reward=goodptu"], "env.reward='goodptu'.*unknown reward"),
    (["+env.reward_options.ttft_credti=0.5"], "ttft_credti"),
    (["eval.baselines=[spf,sfp]"], r"eval.baselines\[1\]='sfp': unknown policy 'sfp'"),
    (["eval.extra_baselines=['spf(sigma=2)']"],
     r"eval.extra_baselines\[0\]='spf\(sigma=2\)': policy 'spf' does not accept"),
    (["+env.policies.preempt=preempt-nope"], "env.policies.preempt='preempt-nope'"),
    (["agent=heuristic", "agent.policy=spff"], "agent.policy='spff'"),
    (["agent.warm_start.teacher=fcsf"], "agent.warm_start.teacher='fcsf'"),
    (["agent.reward_baseline=sfp"], "agent.reward_baseline='sfp': unknown policy"),
    (["env=disaggregated", "cluster.network={bandwidth_gbps: 0}"],
     "bandwidth_gbps must be a positive"),
    (["cluster.network={bandwidth_gbps: 100}"], "this cluster has none"),
    (["cluster.retain_ttls=[5,1]"], "retain_ttls = \\[5, 1\\]: give at least one TTL, strictly"),
    (["cluster.retain_ttls=[0,5]"], "every TTL must be > 0"),
    (["cluster.migration={interval_s: 1, bogus: 2}"],
     r"cluster.migration: unknown key\(s\) \['bogus'\]"),
    (["agent.reward_baseline=teacher", "agent.warm_start.teacher=null"],
     "agent.reward_baseline='teacher' needs agent.warm_start.teacher"),
    (["env=admission_interval", "agent=ppo_interval", "agent.reward_baseline=spf"],
     "no per-decision episode"),
])
def test_invalid_values_are_refused_before_any_work(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        typed_config(OmegaConf.to_container(compose_config(overrides), resolve=True))


def test_run_group_drops_the_seed_and_run_plumbing() -> None:
    assert run_group(["seed=3", "agent=ppo", "env.rate=20", "logger=none"]) == \
        "agent=ppo,env.rate=20"
    assert run_group(["seed=1", "resume=x"]) == "default"


def test_resume_errors_name_the_problem(tmp_path: Path) -> None:
    from servegym.agents.training import RESOLVED_CONFIG, resume_config

    container = OmegaConf.to_container(compose_config([]), resolve=True)
    with pytest.raises(FileNotFoundError, match="no resolved_config.yaml there"):
        resume_config({**container, "resume": str(tmp_path)}, [f"resume={tmp_path}"])
    (tmp_path / RESOLVED_CONFIG).write_text(OmegaConf.to_yaml(container))
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        resume_config({**container, "resume": str(tmp_path)}, [f"resume={tmp_path}"])
    assert resume_config(container, []) == (container, None)


# ============================================================================ one path
def test_learned_policy_in_the_simulator_replays_the_env_episode() -> None:
    """The agent as a simulator policy decides exactly as it does stepping the env."""
    from sb3_contrib import MaskablePPO

    env = gym.make("servegym/Admission-v0", episode_requests=48, rate=24.0, split="test")
    model = MaskablePPO("MlpPolicy", env, seed=0, n_steps=64, batch_size=32)
    metadata = agent_metadata("maskable_ppo", env, "servegym/Admission-v0", {})
    observation, info = env.reset(seed=5)
    env_actions = []
    while True:
        action = int(model.predict(observation, action_masks=info["action_mask"],
                                   deterministic=True)[0])
        env_actions.append(action)
        observation, _, terminated, _, info = env.step(action)
        if terminated:
            break
    base = env.unwrapped
    policy = LearnedPolicy(model, metadata)
    acted: list[int] = []
    act = policy.act
    policy.act = lambda obs, mask: acted.append(act(obs, mask)) or acted[-1]
    sim = build_simulator(base.sim.cost, 1, None,
                          policies=scheduler_for(policy, ["admit"], {}))
    report = sim.run(base.sim.workload, seed=0)
    assert acted == env_actions
    # The env judges target-less traces by the reward's default SLOs.
    defaults = env.unwrapped.rewards.config
    assert report.summarize(defaults.default_ttft_slo, defaults.default_tpot_slo) == \
        info["serving"]


def test_greedy_act_equals_sb3_predict_and_a_stalling_agent_is_cut_short() -> None:
    from sb3_contrib import MaskablePPO

    from servegym.agents.evaluation import run_episode

    env = gym.make("servegym/Admission-v0", episode_requests=32)
    model = MaskablePPO("MlpPolicy", env, seed=1)
    policy = LearnedPolicy(model, agent_metadata("maskable_ppo", env, "id", {}),
                           max_decisions_per_request=0.5)  # < 1 admission each
    rng = np.random.default_rng(0)
    for _ in range(50):
        observation = rng.uniform(-1, 1, env.observation_space.shape).astype(np.float32)
        mask = rng.random(env.action_space.n) < 0.5
        mask[rng.integers(mask.size)] = True
        expected = model.predict(observation, action_masks=mask, deterministic=True)[0]
        assert policy.act(observation, mask) == int(expected)
    episode = evaluation_episodes(split_by_time(load_azure_2023("conv"), "test"), 1, 200,
                                  40.0, seed=0)[0]
    row = run_episode(scheduler_for(policy, ["admit"], {}), episode,
                      env.unwrapped.sim.cost, {"num_instances": 1})
    assert row["stalled"] == 1 and np.isnan(row["serving/slo_attainment"])


def test_evaluation_windows_are_the_same_for_every_policy_and_follow_the_seed() -> None:
    source = split_by_time(load_azure_2023("conv"), "test")
    first = evaluation_episodes(source, 3, 100, 24.0, seed=0)
    again = evaluation_episodes(source, 3, 100, 24.0, seed=0)
    other = evaluation_episodes(source, 3, 100, 24.0, seed=1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.workload.arrival_time, b.workload.arrival_time)
        assert a.seed == b.seed
    assert not np.array_equal(first[0].workload.prompt_len, other[0].workload.prompt_len)
    assert all(np.all(e.workload.ttft_slo == 2.0) for e in first)
    assert first[0].workload.arrival_time[0] == 0.0


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
def test_unmasked_agents_pick_only_valid_actions_at_evaluation(tmp_path: Path,
                                                               algo: str) -> None:
    from servegym.agents.learners import algorithm_class

    env = gym.make("servegym/Admission-v0", episode_requests=32, invalid_action="fallback")
    model = algorithm_class(algo)("MlpPolicy", env, seed=0)
    metadata = agent_metadata(algo, env, "servegym/Admission-v0", {}, deterministic=False)
    folder = save_agent(model, tmp_path / "model", metadata)
    policies = load_agent(folder)
    assert isinstance(policies[DecisionKind.ADMIT], LearnedPolicy)
    # An untrained agent may STOP whenever allowed; this test is about validity only.
    policies[DecisionKind.ADMIT].max_decisions_per_request = 1e9
    workload = env.unwrapped.source.head(64)
    sim = build_simulator(env.unwrapped.sim.cost, 1, None, policies=policies)
    report = sim.run(workload, seed=0)  # inline answers are validated by the simulator
    assert report.summary["serving/finished"] == 64


# ============================================================================ train.py
def test_maskable_ppo_run_writes_every_result_and_never_overwrites(tmp_path: Path) -> None:
    overrides = [*TINY, *PPO_TINY, "checkpoint.freq=64", "eval.freq=64",
                 "eval.freq_episodes=1"]
    value, run_dir = run_train(tmp_path, overrides)
    for name in ("metrics.json", "eval.csv", "comparison.md", "comparison.png",
                 "training.png", "resolved_config.yaml", "model/model.zip",
                 "model/agent.json", "sb3/progress.csv"):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "checkpoints").glob("step_*/model.zip"))) == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["objective"] == {"metric": "serving/goodput_rps", "policy": "agent",
                                    "value": value}
    assert set(metrics["eval"]["policies"]) == {"agent", "agent-best-sampled",
                                                "agent-last-greedy", "agent-last-sampled",
                                                "fcfs", "spf"}
    # the default task's pair is measured (Llama-2-7B on H100); the note says how each part
    # is timed
    assert metrics["cost_model"]["source"] == "measured"
    assert "token_ops measured" in metrics["cost_model"]["note"]
    assert "attention fitted (transferred)" in metrics["cost_model"]["note"]
    # the warm-started clone is evaluated before the first update, then every 64 steps
    assert metrics["train"]["timesteps"] == 128 and len(metrics["train"]["periodic_eval"]) == 3
    assert "agent" in (run_dir / "comparison.md").read_text()
    # the saved agent is a policy spec for the evaluation harness too
    policies = build_scheduler(f"agent:{run_dir / 'model'}")
    assert isinstance(policies[DecisionKind.ADMIT], LearnedPolicy)
    with pytest.raises(FileExistsError):
        train_module().run(compose_config(overrides), run_dir, overrides, "again")


def test_same_seed_same_results(tmp_path: Path) -> None:
    overrides = [*TINY, *PPO_TINY]
    first, a = run_train(tmp_path, overrides, "a")
    second, b = run_train(tmp_path, overrides, "b")
    assert first == second or (np.isnan(first) and np.isnan(second))  # a stalled greedy agent
    assert (a / "eval.csv").read_text().split("\n")[1:] != []
    rows = [line.split(",")[:4] + line.split(",")[5:] for line in
            (a / "eval.csv").read_text().splitlines()]
    rows_b = [line.split(",")[:4] + line.split(",")[5:] for line in
              (b / "eval.csv").read_text().splitlines()]
    assert rows == rows_b  # all but the wall time


def test_heuristic_agent_matches_its_baseline_row(tmp_path: Path) -> None:
    _, run_dir = run_train(tmp_path, [*TINY, "agent=heuristic", "agent.policy=spf"])
    policies = json.loads((run_dir / "metrics.json").read_text())["eval"]["policies"]
    assert policies["agent"] == policies["spf"]
    assert not (run_dir / "model").exists()


@pytest.mark.parametrize("overrides", [
    ["agent=ppo", *PPO_TINY, "agent.vec_normalize=true", "agent.norm_obs=false",
     "agent.n_envs=2"],
    ["agent=a2c", "agent.total_timesteps=64", "agent.n_envs=2"],
    ["agent=dqn", "agent.total_timesteps=128", "agent.learning_starts=32",
     "agent.buffer_size=1000", "checkpoint.freq=64"],
])
def test_other_algorithms_train_and_evaluate(tmp_path: Path, overrides: list[str]) -> None:
    _, run_dir = run_train(tmp_path, [*TINY, *overrides])
    metadata = json.loads((run_dir / "model" / "agent.json").read_text())
    assert metadata["algo"] == overrides[0].split("=")[1]
    if "agent.vec_normalize=true" in overrides:
        assert (run_dir / "model" / "vecnormalize.pkl").is_file()
    if "agent=dqn" in overrides:
        assert list((run_dir / "checkpoints").glob("step_*/replay_buffer.npz"))  # no pickle


def test_heuristic_outside_the_controlled_kinds_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not control"):
        run_train(tmp_path, [*TINY, "agent=heuristic", "agent.policy=lor"])


def test_wandb_offline_run_holds_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [o for o in TINY if o != "logger=none"] + [*PPO_TINY, "logger=wandb",
                                                           "eval.freq=64",
                                                           "agent.total_timesteps=256"]
    _, run_dir = run_train(tmp_path, overrides)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")  # the run's records: config, metrics, summary
    data = log.read_bytes()
    for expected in (b"maskable_ppo", b"Admission-v0", b"serving/slo_attainment",
                     b"train/value_loss", b"rollout/ep_rew_mean"):
        assert expected in data, expected
    assert list(runs[0].glob("files/media/images/eval/comparison_*.png"))
    assert b"agent-" in data and b"model" in data  # the saved agents, as a model artifact


def test_periodic_callbacks_fire_between_rollouts_not_mid_rollout() -> None:
    from types import SimpleNamespace

    from servegym.agents.callbacks import _Every

    class Recorder(_Every):
        def __init__(self, freq: int) -> None:
            super().__init__(freq)
            self.fired: list[int] = []

        def fire(self) -> None:
            self.fired.append(self.model.num_timesteps)

    recorder = Recorder(100)
    recorder.model = SimpleNamespace(num_timesteps=0)
    recorder._on_training_start()
    for _ in range(5):  # five rollouts of 64 steps, each followed by an update
        recorder._on_rollout_start()
        for _ in range(64):
            recorder.model.num_timesteps += 1
            recorder._on_step()
    recorder._on_training_end()
    # crossings at 100, 200 and 300 fire when the next rollout starts (128, 256) or at the end
    assert recorder.fired == [128, 256, 320]


def test_a_resumed_run_keeps_its_name_wandb_run_and_group(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from servegym.agents.config import LoggerConfig, run_name
    from servegym.agents.run_logger import WANDB_RUN_FILE, WandbLogger, resumed_group

    first = tmp_path / "first"
    first.mkdir()
    (first / "resolved_config.yaml").write_text("name: my_sweep\nseed: 3\n")
    assert run_name("default", str(first)) == "my_sweep"
    assert run_name("default", None) == "default"
    assert "${servegym.run_name:${name},${resume}}" in (ROOT / "conf" / "config.yaml").read_text()

    (first / ".hydra").mkdir()
    (first / ".hydra" / "overrides.yaml").write_text("- seed=3\n- agent=ppo\n- env.rate=20\n")
    assert resumed_group(first) == "agent=ppo,env.rate=20"  # a killed run without W&B

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    original = WandbLogger(LoggerConfig(), first, {"seed": 3}, "agent=ppo", "my_sweep-ppo")
    original.finish()
    recorded = json.loads((first / WANDB_RUN_FILE).read_text())
    assert resumed_group(first) == "agent=ppo"
    second = tmp_path / "second"
    resumed = WandbLogger(LoggerConfig(), second, {"seed": 3}, "default", "default-ppo",
                          resume_from=first)
    resumed.finish()
    again = json.loads((second / WANDB_RUN_FILE).read_text())
    assert again["id"] == recorded["id"]
    assert (again["group"], again["name"]) == ("agent=ppo", "my_sweep-ppo")
    assert again["resumed_from"] == str(first)


def test_a_missing_hydra_plugin_gives_the_install_command(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from servegym.agents import hydra_support

    assert ("sweeper", "optuna_tpe") in hydra_support.requested_plugins(
        ["experiment=optuna_maskable_ppo"])  # read from the experiment file
    monkeypatch.setattr(hydra_support, "_installed", lambda module: "joblib" not in module)
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[joblib\]'"):
        hydra_support.check_plugins(["-m", "hydra/launcher=joblib_local", "seed=0,1"])
    hydra_support.check_plugins(["-m", "hydra/sweeper=optuna_tpe"])  # "installed" here
    assert hydra_support.missing_plugin_message(["agent=ppo", "seed=1"]) is None


def test_every_config_key_is_read_by_some_code() -> None:
    """A key no code reads would be silently ignored: each schema field is either passed
    to the SB3 constructor (an algorithm hyperparameter, by `sb3_kwargs`) or read by name
    somewhere outside the schema module."""
    import dataclasses
    import inspect
    import re
    import typing

    from servegym.agents import config as schemas
    from servegym.agents.learners import algorithm_class

    sources = [p for top in ("agents", "envs", "experiments") for p in (ROOT / top).rglob("*.py")
               if p != ROOT / "agents" / "config.py"] + [ROOT / "train.py"]
    text = "\n".join(p.read_text() for p in sources)
    unread: list[str] = []

    def walk(schema: type, prefix: str, passed: set[str]) -> None:
        hints = typing.get_type_hints(schema)
        for item in dataclasses.fields(schema):
            if item.name in passed:
                continue
            if not re.search(r"[.\"']" + re.escape(item.name) + r"\b", text):
                unread.append(prefix + item.name)
            if dataclasses.is_dataclass(hints.get(item.name)):
                walk(hints[item.name], f"{prefix}{item.name}.", set())

    walk(schemas.TrainConfig, "", set())
    for algo, schema in (("maskable_ppo", schemas.PPOConfig), ("a2c", schemas.A2CConfig),
                         ("dqn", schemas.DQNConfig), ("heuristic", schemas.HeuristicConfig)):
        passed = set(schema(algo=algo).sb3_kwargs()) if algo != "heuristic" else set()
        if passed:
            accepted = set(inspect.signature(algorithm_class(algo).__init__).parameters)
            assert passed <= accepted, (algo, passed - accepted)
        walk(schema, "agent.", passed)
    assert unread == []


def test_a_disaggregated_clusters_network_reaches_the_env_and_the_evaluation() -> None:
    from servegym.agents import learners

    config = typed_config(OmegaConf.to_container(compose_config(
        ["env=disaggregated", "cluster.network={bandwidth_gbps: 25, latency_s: 0.001}"]),
        resolve=True))
    cluster = learners.cluster_kwargs(config)
    assert cluster["network"] == {"bandwidth_gbps": 25, "latency_s": 0.001}
    env = learners.make_env(config.env.id, learners.env_kwargs(config), config.env.policies,
                            monitor=False, quiet_cost_notice=True)()
    assert env.unwrapped.sim.network.bandwidth_gbps == 25
