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

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from servegym.agents.config import LoggerConfig
from servegym.envs.core.metrics import atomic_write

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

    def log_agent(self, folders: Mapping[str, Path]) -> None:
        return None

    def finish(self, ok: bool = True) -> None:
        return None


WANDB_RUN_FILE = "wandb_run.json"  # in the run folder: what a resumed run continues


def resumed_group(run: Path) -> str:
    """The W&B group of the run that `resume=<run>` continues: the one it recorded, else
    `run_group` of its own command-line overrides (Hydra's `.hydra/overrides.yaml`)."""
    import yaml

    recorded = Path(run) / WANDB_RUN_FILE
    if recorded.is_file():
        return str(json.loads(recorded.read_text())["group"])
    overrides = Path(run) / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        return run_group([str(o) for o in yaml.safe_load(overrides.read_text()) or []])
    return "default"


class WandbLogger(NullLogger):
    """One W&B run (see the module docstring). With `resume_from` (the run folder being
    resumed), the W&B run that folder recorded is continued (same id, group and name), so
    one training curve stays one run."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: Mapping[str, Any], group: str,
                 name: str, resume_from: Path | None = None) -> None:
        import wandb

        # W&B mistakes this project's `agents` package for the OpenAI Agents SDK and prints
        # a Weave advert at every init; nothing here uses Weave.
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        self.wandb = wandb
        mode = os.environ.get("WANDB_MODE") or cfg.mode
        run_dir.mkdir(parents=True, exist_ok=True)
        lineage: dict[str, Any] = {}
        if resume_from is not None and (Path(resume_from) / WANDB_RUN_FILE).is_file():
            lineage = json.loads((Path(resume_from) / WANDB_RUN_FILE).read_text())
        group = lineage.get("group") or cfg.group or group
        name = lineage.get("name") or name
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=group, name=name,
            dir=str(run_dir), mode=mode, config=dict(config), tags=list(cfg.tags),
            job_type="train", reinit="finish_previous",
            id=lineage.get("id"), resume="allow" if lineage.get("id") else None,
            settings=wandb.Settings(console=cfg.console,
                                    x_disable_stats=not cfg.system_metrics, silent=True,
                                    disable_git=True, save_code=False),
        )
        self.mode, self.log_model = mode, cfg.log_model
        if mode != "disabled":
            record = {"id": self.run.id, "project": cfg.project, "group": group, "name": name,
                      "resumed_from": str(resume_from) if resume_from else None}
            atomic_write(run_dir / WANDB_RUN_FILE, lambda h: json.dump(record, h, indent=2))
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

    def log_agent(self, folders: Mapping[str, Path]) -> None:
        """The saved agent folders (label -> folder) as one W&B model artifact."""
        if not self.log_model or not folders:
            return
        artifact = self.wandb.Artifact(f"agent-{self.run.id}", type="model")
        for label, folder in folders.items():
            artifact.add_dir(str(folder), name=label)
        self.run.log_artifact(artifact)

    def finish(self, ok: bool = True) -> None:
        folder = Path(self.run.dir).parent if self.mode == "offline" else None
        self.run.finish(exit_code=0 if ok else 1)
        if folder is not None:  # (`silent` hides W&B's own hint)
            print(f"W&B offline run: {folder}; upload it with `wandb sync {folder}`", flush=True)


def build_logger(cfg: LoggerConfig, run_dir: Path, config: Mapping[str, Any], group: str,
                 name: str, resume_from: Path | None = None) -> NullLogger:
    """The logger `cfg.kind` names ("wandb" or "none"); `resume_from`: see `WandbLogger`."""
    if cfg.kind == "none":
        return NullLogger()
    return WandbLogger(cfg, run_dir, config, group, name, resume_from)


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


__all__ = ["WANDB_RUN_FILE", "NullLogger", "WandbLogger", "build_logger", "resumed_group",
           "run_group", "sb3_logger"]
