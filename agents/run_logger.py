"""Experiment loggers for train.py: Weights & Biases (offline by default) or none.

`build_logger(cfg, run_dir, config, group, name)` returns a `RunLogger`:

* `log(metrics, step)`: scalars at a timestep (keys prefixed: `train/`, `rollout/`,
  `time/` from SB3; `serving/` from evaluations during training; `eval/` at the end).
* `log_images({key: png path}, step)`, `log_table(key, rows)`, `summary(metrics)`.
* `finish(ok)`: closes the run (marked failed when `ok` is False).

`sb3_logger(folder, run_logger)` is SB3's logger writing `progress.csv` into the run folder
and forwarding every scalar it dumps to the run logger (`ForwardingFormat`).

W&B: `logger.mode` is W&B's mode; "offline" writes `<run dir>/wandb/offline-run-*/` and
needs no network (upload later with `wandb sync <that folder>`); the environment variable
WANDB_MODE, when set, wins over the config (the tests set it to "disabled"). The full
resolved config is the run's config; the group is the command-line overrides minus the seed
(`run_group`), so the seeds of one setting group together.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.config import LoggerConfig

IGNORED_OVERRIDE_KEYS = ("seed", "resume", "progress", "logger", "hydra")


def run_group(overrides: Sequence[str]) -> str:
    """The W&B group of a run: its overrides minus the seed (and resume / progress / logger /
    hydra settings), sorted and joined by commas; "default" when nothing is left."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0].split("/", 1)[0] in IGNORED_OVERRIDE_KEYS:
            continue
        kept.append(override)
    return ",".join(sorted(kept)) or "default"


class NullLogger:
    """`logger=none`: logs nothing."""

    run_dir: Path | None = None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def log_images(self, images: Mapping[str, Path], step: int | None = None) -> None:
        return None

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        return None

    def summary(self, metrics: Mapping[str, Any]) -> None:
        return None

    def finish(self, ok: bool = True) -> None:
        return None


class WandbLogger(NullLogger):
    """One W&B run (see the module docstring)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: Mapping[str, Any], group: str,
                 name: str) -> None:
        import wandb

        # W&B mistakes this project's `agents` package for the OpenAI Agents SDK and prints
        # a Weave advert at every init; nothing here uses Weave.
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE") or cfg.mode
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group or group, name=name,
            dir=str(run_dir), mode=mode, config=dict(config), tags=list(cfg.tags),
            job_type="train", reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True,
                                    disable_git=True, save_code=False),
        )
        self.log_plots = cfg.log_plots
        self.run_dir = Path(self.run.dir).parent if mode != "disabled" else None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=int(step))

    def log_images(self, images: Mapping[str, Path], step: int | None = None) -> None:
        if not self.log_plots:
            return
        payload = {key: self.wandb.Image(str(path)) for key, path in images.items()}
        if step is None:
            self.run.log(payload)
        else:
            self.run.log(payload, step=int(step))

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        table = self.wandb.Table(columns=columns,
                                 data=[[row.get(c) for c in columns] for row in rows])
        self.run.log({key: table})

    def summary(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            self.run.summary[key] = value

    def finish(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def build_logger(cfg: LoggerConfig, run_dir: Path, config: Mapping[str, Any], group: str,
                 name: str) -> NullLogger:
    """The logger `cfg.kind` names ("wandb" or "none")."""
    if cfg.kind == "none":
        return NullLogger()
    return WandbLogger(cfg, run_dir, config, group, name)


def sb3_logger(folder: Path, run_logger: NullLogger) -> Any:
    """SB3's logger: `progress.csv` in `folder`, every dumped scalar forwarded."""
    from stable_baselines3.common.logger import CSVOutputFormat, KVWriter, Logger

    class ForwardingFormat(KVWriter):
        """Forwards SB3's numeric key-values (`train/...`, `rollout/...`) at each dump."""

        def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any],
                  step: int = 0) -> None:
            scalars = {key: float(value) for key, value in key_values.items()
                       if isinstance(value, numbers.Real) and not isinstance(value, bool)}
            if scalars:
                run_logger.log(scalars, step)

        def close(self) -> None:
            return None

    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "progress.csv"
    return Logger(str(folder), [CSVOutputFormat(str(csv_path)), ForwardingFormat()])


__all__ = ["NullLogger", "WandbLogger", "build_logger", "run_group", "sb3_logger"]
