"""Hydra around train.py: the install hint for a missing plugin, and what a sweep prints.

`check_plugins(argv)` runs before Hydra composes anything: a sweeper or launcher named on
the command line (``hydra/sweeper=...``, ``hydra/launcher=...``) or by an experiment file
(``- override /hydra/sweeper: ...`` in conf/experiment/<name>.yaml) whose plugin is not
installed stops the run with the exact command that installs it, instead of Hydra's
generic "Could not load 'hydra/sweeper/optuna'".

`config_groups()` is the group list of ``train.py --help`` (conf/hydra/help/servegym.yaml
reads it through the resolver ``${servegym.config_groups:}``, registered on import): every
config group a user can choose, with its options, but not the agent schemas (ConfigStore
group ``schema/agent``) nor Hydra's own groups, which Hydra's ``$APP_CONFIG_GROUPS`` lists.

`SweepSummary` is a Hydra callback (conf/config.yaml `hydra.callbacks`): at the end of a
multirun it prints the sweep folder, the command that aggregates it and, for W&B offline
runs, the command that uploads them.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

ROOT = Path(__file__).resolve().parents[1]
# (config group, option prefix) -> (plugin module, the project's extra that installs it)
PLUGINS: dict[tuple[str, str], tuple[str, str]] = {
    ("sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "ray"),
    ("launcher", "submitit"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}
_ARG = re.compile(r"^hydra/(sweeper|launcher)=(\S+)$")
_OVERRIDE = re.compile(r"^\s*-\s*override\s+/hydra/(sweeper|launcher)\s*:\s*(\S+)", re.M)


def requested_plugins(argv: Sequence[str], conf: Path = ROOT / "conf") -> list[tuple[str, str]]:
    """(group, option) of every sweeper / launcher the command line asks for."""
    found: list[tuple[str, str]] = []
    for arg in argv:
        if match := _ARG.match(arg):
            found.append((match.group(1), match.group(2)))
        elif arg.startswith("experiment="):
            for name in arg.split("=", 1)[1].split(","):
                path = conf / "experiment" / f"{name}.yaml"
                if path.is_file():
                    found += _OVERRIDE.findall(path.read_text())
    return found


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def missing_plugin_message(argv: Sequence[str]) -> str | None:
    """The install hint for the first requested plugin that is not installed, else None."""
    for group, option in requested_plugins(argv):
        for (plugin_group, prefix), (module, extra) in PLUGINS.items():
            if group == plugin_group and option.startswith(prefix) and not _installed(module):
                return (f"hydra/{group}={option} needs the Hydra plugin {module}, which is not "
                        f"installed; install it with: pip install -e '.[{extra}]'")
    return None


def check_plugins(argv: Sequence[str]) -> None:
    """Exit with the install command when a requested plugin is missing (see above)."""
    message = missing_plugin_message(argv)
    if message is not None:
        raise SystemExit(f"error: {message}")


HIDDEN_GROUPS = ("hydra", "schema")  # top-level groups --help does not offer as choices
GROUPS_RESOLVER = "servegym.config_groups"


def config_groups(hidden: Sequence[str] = HIDDEN_GROUPS) -> str:
    """`group: option, option` lines of the config groups Hydra knows now (train.py's
    search path and ConfigStore), minus those under `hidden`; during ``--help`` that is
    the composed app, else ``conf/`` read from disk."""
    from hydra.core.global_hydra import GlobalHydra

    def shown(group: str) -> bool:
        return group.split("/", 1)[0] not in hidden

    if GlobalHydra.instance().is_initialized():
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        return hydra.format_config_groups(shown)
    folders = sorted(p.parent for p in (ROOT / "conf").glob("*/**/*.yaml"))
    lines = {}
    for folder in folders:
        group = folder.relative_to(ROOT / "conf").as_posix()
        if shown(group):
            lines[group] = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    return "".join(f"{group}: {options}\n" for group, options in lines.items())


def register_help_resolver() -> None:
    """Register ``${servegym.config_groups:}`` (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(GROUPS_RESOLVER):
        OmegaConf.register_new_resolver(GROUPS_RESOLVER, lambda: config_groups())


register_help_resolver()


class SweepSummary(Callback):
    """Prints where a multirun's jobs are and how to aggregate and upload them."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        lines = [f"sweep folder: {folder}",
                 f"aggregate it: python experiments/aggregate.py {folder}"]
        if list(folder.glob("*/wandb/offline-run-*")):
            lines.append(f"upload the W&B runs: wandb sync {folder}/*/wandb/offline-run-*")
        print("\n".join(lines), flush=True)


__all__ = ["HIDDEN_GROUPS", "PLUGINS", "SweepSummary", "check_plugins", "config_groups",
           "missing_plugin_message", "register_help_resolver", "requested_plugins"]
