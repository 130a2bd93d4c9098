"""SB3 callbacks of train.py: progress bar, checkpoints, serving evaluations, episode stats.

* `ProgressBar`: a tqdm bar over timesteps (starts at the resumed step).
* `Checkpoints`: every `freq` timesteps, `servegym.agents.learners.save_checkpoint` (model,
  VecNormalize statistics, replay buffer, agent metadata) into `<run dir>/checkpoints/`.
* `ServingEvaluation`: every `freq` timesteps, the current model as a `LearnedPolicy` on
  `servegym.agents.evaluation` episodes of the training split (stream `PERIODIC`); the means of
  `serving/slo_attainment`, `serving/ttft_p99`, `serving/tbt_p99`, `serving/e2e_mean`,
  `serving/throughput_rps` and `serving/goodput_rps` go to the logger under their own
  names, at that timestep. When `run_dir` is given, the model with the best mean
  `metric` so far (ties: the earlier) is saved to `<run dir>/checkpoints/best_step_<t>/`
  (the older best is removed), so training that later forgets keeps what it learned.
  These windows come from the training split only, never the held-out one. With
  `at_start` (warm-started models) it also evaluates once before the first update.
* `EpisodeServing`: the serving summary of each finished training episode
  (`info["serving"]`), averaged over the last 20 episodes at each rollout's end as
  `rollout/e2e_mean`, `rollout/ttft_p99`, `rollout/throughput_rps`. (Not SLO attainment:
  the env's summary judges requests by the workload's own targets, none for the Azure
  traces, so it reads 1.0; the evaluations apply the default targets.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from servegym.agents.evaluation import EvalEpisode, compare, policy_means
from servegym.agents.learned import policy_from_model, scheduler_for
from servegym.agents.learners import CHECKPOINTS, save_agent, save_checkpoint

PERIODIC_METRICS = ("serving/slo_attainment", "serving/ttft_p99", "serving/tbt_p99",
                    "serving/e2e_mean", "serving/throughput_rps", "serving/goodput_rps")
ROLLOUT_METRICS = {"serving/e2e_mean": "rollout/e2e_mean", "serving/ttft_p99": "rollout/ttft_p99",
                   "serving/throughput_rps": "rollout/throughput_rps"}


class ProgressBar(BaseCallback):
    """tqdm over timesteps, up to `total` (the run's target, resumed runs included)."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.bar: Any = None

    def _on_training_start(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, initial=self.model.num_timesteps, desc="training",
                        unit="step", dynamic_ncols=True, mininterval=1.0)

    def _on_step(self) -> bool:
        self.bar.update(self.model.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.update(self.model.num_timesteps - self.bar.n)
        self.bar.close()


class _Every(BaseCallback):
    """Fires `fire()` once the timestep count has crossed a multiple of `freq`, at the next
    point where the model is consistent: the start of the next rollout (after the update
    that learnt from the steps counted) or the end of training. A checkpoint taken
    mid-rollout would hold weights that have not learnt from steps its timestep count
    includes, so resuming from it would silently skip them."""

    def __init__(self, freq: int) -> None:
        super().__init__()
        self.freq = freq
        self.last = 0
        self.pending = False

    def _on_training_start(self) -> None:
        self.last = self.model.num_timesteps // self.freq if self.freq else 0
        self.pending = False

    def _on_step(self) -> bool:
        if self.freq and self.model.num_timesteps // self.freq > self.last:
            self.last = self.model.num_timesteps // self.freq
            self.pending = True
        return True

    def _on_rollout_start(self) -> None:
        self._fire_pending()

    def _on_training_end(self) -> None:
        self._fire_pending()

    def _fire_pending(self) -> None:
        if self.pending:
            self.pending = False
            self.fire()

    def fire(self) -> None:
        raise NotImplementedError


class Checkpoints(_Every):
    """Checkpoint every `freq` timesteps (see `servegym.agents.learners.save_checkpoint`)."""

    def __init__(self, freq: int, run_dir: Path, metadata: Mapping[str, Any], keep: int) -> None:
        super().__init__(freq)
        self.run_dir = run_dir
        self.metadata = metadata
        self.keep = keep
        self.saved: list[Path] = []

    def fire(self) -> None:
        self.saved.append(save_checkpoint(self.model, self.run_dir, self.metadata, self.keep))


class ServingEvaluation(_Every):
    """Serving metrics of the current model on fixed training-split episodes."""

    def __init__(self, freq: int, episodes: Sequence[EvalEpisode], metadata: Mapping[str, Any],
                 cost: Any, cluster: Mapping[str, Any], log: Callable[[dict, int], None],
                 run_dir: Path | None = None, metric: str = "serving/goodput_rps",
                 at_start: bool = False) -> None:
        super().__init__(freq)
        self.at_start = at_start
        self.run_dir = run_dir
        self.metric = metric
        self.best_value = -np.inf
        self.best_path: Path | None = None
        self.best_timesteps: int | None = None
        self.best_state: dict[str, Any] | None = None  # the best policy's weights, in memory
        self.episodes = list(episodes)
        self.metadata = metadata
        self.cost = cost
        self.cluster = cluster
        self.log = log
        self.history: list[dict[str, float]] = []

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if self.at_start:  # a warm-started model competes for the best checkpoint
            self.fire()

    def fire(self, stage: str = "") -> float:
        """Evaluate the current model; `stage` names a model made after RL (the
        evolution's, agents/evolution.py), saved as `best_step_<steps>_<stage>`."""
        policy = policy_from_model(self.model, self.metadata,
                                   self.model.get_vec_normalize_env(),
                                   bool(self.metadata["eval_deterministic"]))
        scheduler = scheduler_for(policy, self.metadata["controlled"], self.metadata["policies"])
        rows = compare({"agent": lambda: scheduler}, self.episodes, self.cost, self.cluster)
        means = policy_means(rows)["agent"]
        metrics = {key: means[key] for key in PERIODIC_METRICS}
        self.history.append({"timesteps": float(self.model.num_timesteps), **metrics})
        self.log(metrics, self.model.num_timesteps)
        value = float(means.get(self.metric, np.nan))
        if self.run_dir is not None and value > self.best_value:  # NaN never wins
            self._save_best(value, stage)
        return value

    def _save_best(self, value: float, stage: str = "") -> None:
        steps = int(self.model.num_timesteps)
        name = f"best_step_{steps:010d}" + (f"_{stage}" if stage else "")
        folder = Path(self.run_dir) / CHECKPOINTS / name
        save_agent(self.model, folder, self.metadata, extra={"best_metric": self.metric,
                                                             "best_value": value})
        if self.best_path is not None:
            import shutil

            shutil.rmtree(self.best_path, ignore_errors=True)
        self.best_value, self.best_path, self.best_timesteps = value, folder, steps
        self.best_state = {k: v.detach().clone()
                           for k, v in self.model.policy.state_dict().items()}


class EpisodeServing(BaseCallback):
    """Serving summaries of finished training episodes, recorded as `rollout/...` means."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer: dict[str, list[float]] = {key: [] for key in ROLLOUT_METRICS.values()}

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            serving = info.get("serving")
            if serving:
                for key, name in ROLLOUT_METRICS.items():
                    self.buffer[name].append(float(serving[key]))
        return True

    def _on_rollout_end(self) -> None:
        for name, values in self.buffer.items():
            if values:
                self.logger.record(name, float(np.mean(values[-20:])))


__all__ = ["Checkpoints", "EpisodeServing", "ProgressBar", "ServingEvaluation"]
