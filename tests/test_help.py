"""`train.py --help` (issue 18, item 3): the config groups a user can choose with their
options and the common overrides; the agent schemas (ConfigStore group schema/agent) and
Hydra's own groups are not offered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from servegym.agents.hydra_support import config_groups

ROOT = Path(__file__).resolve().parents[1]
GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir()  # Hydra groups: folders of .yaml
                 if p.is_dir() and p.name != "hydra" and list(p.glob("*.yaml")))


def _groups_section(text: str) -> dict[str, list[str]]:
    section = text.split("== Configuration groups (group=option) ==", 1)[1]
    section = section.split("== Common overrides ==", 1)[0]
    groups = {}
    for line in section.strip().splitlines():
        group, _, options = line.partition(": ")
        groups[group] = options.split(", ")
    return groups


def test_help_lists_the_groups_and_overrides_not_the_schemas() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("train.py: train an agent")
    groups = _groups_section(text)
    assert sorted(groups) == GROUPS, groups.keys()
    for group in GROUPS:
        expected = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
        assert groups[group] == expected, group
    assert "maskable_ppo" in groups["agent"]
    assert "schema" not in text.lower().replace("schemas (a misspelt", "")
    for override in ("seed=0", "agent.total_timesteps=", "env.rate=", "logger=none",
                     "resume=", "hydra/launcher=slurm", "hydra/launcher=ray_cluster",
                     "experiment=optuna_maskable_ppo", "experiments/aggregate.py",
                     "--hydra-help", "--cfg job"):
        assert override in text, override


def test_config_groups_from_disk_hides_schemas_and_hydra() -> None:
    lines = dict(line.split(": ", 1) for line in config_groups().strip().splitlines())
    assert sorted(lines) == GROUPS
    assert "schema/agent" not in lines and not any(g.startswith("hydra") for g in lines)
    shown = dict(line.split(": ", 1)
                 for line in config_groups(hidden=("schema",)).strip().splitlines())
    assert "hydra/help" in shown and "servegym" in shown["hydra/help"]
