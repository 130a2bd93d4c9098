"""Train a scheduling agent on a servegym env; evaluate it against the heuristic baselines.

    python train.py                                 # MaskablePPO, servegym/Admission-v0
    python train.py agent=ppo seed=1                # PPO (unmasked, env fallback)
    python train.py agent=heuristic agent.policy=spf   # a baseline through the same path
    python train.py -m agent=maskable_ppo,heuristic seed=0,1,2
    python train.py resume=<run dir>                # continue a killed run
    python experiments/aggregate.py <multirun dir>  # mean and 95% CI over seeds

Config: conf/config.yaml (groups env/ workload/ cost/ cluster/ agent/ logger/ experiment/;
schemas in agents/config.py). Every run writes, into its own folder under outputs/train/
(multirun: multirun/train/): resolved_config.yaml, metrics.json, eval.csv, comparison.md,
comparison.png, training.png, model/ (policy.pt, policy.json, agent.json; model.zip for resume),
checkpoints/, sb3/progress.csv and wandb/. Nothing is overwritten. Returns the sweep
metric: the agent's mean `eval.metric` over the evaluation windows. docs/training.md.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from servegym.agents import learners, training
from servegym.agents.agent_files import has_training_state
from servegym.agents.callbacks import Checkpoints, EpisodeServing, ProgressBar, ServingEvaluation
from servegym.agents.config import TrainConfig, register_configs
from servegym.agents.evaluation import compare, comparison_table
from servegym.agents.hydra_support import check_plugins
from servegym.agents.run_logger import (
    NullLogger,
    build_logger,
    resumed_group,
    run_group,
    sb3_logger,
)

log = logging.getLogger("train")
register_configs()


def train_agent(config: TrainConfig, setting: training.Setting, run_dir: Path,
                logger: NullLogger, checkpoint: Path | None
                ) -> tuple[dict[str, Path], dict[str, Any]]:
    """Train (or resume) the SB3 agent, save it to `<run dir>/model/` (the last model) and
    `<run dir>/best/` (the best by the periodic evaluation on training windows; the last
    model when there was none), and return those folders and training facts."""
    # A pickle-free checkpoint restores VecNormalize's statistics from its own files.
    legacy = checkpoint is not None and not has_training_state(checkpoint)
    vecnorm = checkpoint / learners.VECNORM_FILE if legacy else None
    teacher = (training.choose_teacher(config, setting)
               if checkpoint is None or config.agent.reward_baseline == "teacher" else None)
    baseline, policies = training.reward_baseline(config, setting,
                                                  teacher[0] if teacher else None)
    venv = learners.build_vec_env(config, setting.kwargs,
                                  vecnorm if vecnorm and vecnorm.exists() else None,
                                  reward_baseline=policies)
    if baseline:
        log.info("reward baseline: %s on the same windows (agents/reward_baseline.py)",
                 baseline)
    warm: dict[str, Any] = {}
    if checkpoint is None:
        model = learners.build_model(config.agent, venv, config.seed)
        warm = training.warm_start(config, setting, model, teacher)
    else:
        model = learners.load_model(config.agent, checkpoint, venv, config.seed)
        log.info("resumed from %s at %d timesteps", checkpoint, model.num_timesteps)
    model.set_logger(sb3_logger(run_dir / "sb3", logger))

    evaluator = ServingEvaluation(config.eval.freq, training.periodic_episodes(config, setting),
                                  setting.metadata, setting.cost, setting.kwargs["cluster"],
                                  logger.log, run_dir=run_dir, metric=config.eval.metric,
                                  at_start=bool(warm))
    callbacks = [EpisodeServing(), evaluator,
                 Checkpoints(config.checkpoint.freq, run_dir, setting.metadata,
                             config.checkpoint.keep)]
    if config.progress:
        callbacks.append(ProgressBar(config.agent.total_timesteps))

    start_steps, started = model.num_timesteps, time.perf_counter()
    remaining = max(config.agent.total_timesteps - model.num_timesteps, 0)
    if remaining:
        model.learn(remaining, callback=callbacks, reset_num_timesteps=checkpoint is None)
    wall = time.perf_counter() - started
    evolution = None
    if config.agent.evolution.iterations:  # after RL, from its best model (agents/evolution.py)
        if evaluator.model is None:  # a resumed run with no RL steps left
            evaluator.init_callback(model)
        evolution = training.evolve_actor(config, setting, model, evaluator, logger.log)
    learners.save_agent(model, run_dir / "model", setting.metadata)
    venv.close()
    best = training.keep_best(run_dir, evaluator.best_path)
    info = {"timesteps": int(model.num_timesteps), "wall_s": wall,
            "steps_per_s": (model.num_timesteps - start_steps) / max(wall, 1e-9),
            "resumed_from": str(checkpoint) if checkpoint else None,
            "progress_csv": str(run_dir / "sb3" / "progress.csv"),
            "periodic_eval": evaluator.history, "warm_start": warm or None,
            "evolution": evolution,
            "reward_baseline": baseline,
            "best": {"timesteps": evaluator.best_timesteps, "metric": config.eval.metric,
                     "train_value": evaluator.best_value if best else None,
                     "folder": str(best or run_dir / "model")}}
    return {"best": best or run_dir / "model", "last": run_dir / "model"}, info


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], command: str) -> float:
    # 1. Config: typed and validated; `resume=<run dir>` takes that run's own config.
    container, checkpoint = training.resume_config(OmegaConf.to_container(cfg, resolve=True),
                                                   overrides)
    config = training.typed_config(container)
    training.save_resolved_config(run_dir, container)

    # 2. Env: one probe env states the setting (controlled decisions, cost model source).
    kwargs = learners.env_kwargs(config)
    probe = learners.make_env(config.env.id, kwargs, config.env.policies, monitor=False)()
    setting = training.build_setting(config, probe)
    training.check_objective(config, setting)  # a misspelt metric fails before training
    print("\n".join(setting.describe(config)), flush=True)

    # 3. Logger, 4. agent, 5. evaluation of the agent and the baselines on the same windows.
    resumed = Path(config.resume) if config.resume else None
    logger = build_logger(config.logger, run_dir, container,
                          group=resumed_group(resumed) if resumed else run_group(overrides),
                          name=f"{config.name}-{config.agent.algo}-seed{config.seed}",
                          resume_from=resumed)
    ok = False
    try:
        if config.agent.algo == "heuristic":
            agent = training.heuristic_factory(config.agent.policy, setting.controlled,
                                               config.env.policies)
            train_info: dict[str, Any] = {}
        else:
            folders, train_info = train_agent(config, setting, run_dir, logger, checkpoint)
            logger.log_agent({label: folder for label, folder in folders.items()
                              if label == "last" or folder != folders["last"]})
            agent = training.agent_factories(folders, config.eval.deterministic)
        episodes = training.final_episodes(config, setting)
        rows = compare(training.candidates(config, setting, agent), episodes, setting.cost,
                       setting.kwargs["cluster"], progress=config.progress)

        # 6. Results into the run folder, and to the logger.
        metrics = training.write_results(run_dir, config, container, setting, rows, episodes,
                                         train_info, command, overrides)
        logger.summary({f"eval/{policy}/{key}": value
                        for policy, means in metrics["eval"]["policies"].items()
                        for key, value in means.items()})
        logger.log_table("eval/episodes", rows)
        logger.log_images({f"eval/{p.stem}": p for p in sorted(run_dir.glob("*.png"))})
        ok = True
    finally:
        logger.finish(ok)
    print(comparison_table(rows))
    print(f"{config.eval.metric} of the agent: {metrics['objective']['value']:.4f}; "
          f"results in {run_dir}")
    return float(metrics["objective"]["value"])


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    torch.set_num_threads(1)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    command = " ".join(["python train.py", *overrides])
    try:
        return run(cfg, run_dir, overrides, command)
    except BaseException as error:  # Ctrl-C (KeyboardInterrupt) and SystemExit too
        training.write_failure(run_dir, error, command)
        raise


if __name__ == "__main__":
    check_plugins(sys.argv[1:])  # a missing sweeper/launcher plugin: the install command
    main()
