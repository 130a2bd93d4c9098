"""rl-zoo3's trainer with MaskablePPO: ``python -m servegym.zoo`` takes the arguments of
``python -m rl_zoo3.train`` and adds the algorithm ``ppo_mask`` (sb3-contrib's MaskablePPO,
which rl-zoo3 2.9 does not list), so the masked agent trains from the zoo too:

    python -m servegym.zoo --algo ppo_mask --env servegym/Admission-v0 \\
        --conf-file conf/zoo/ppo_mask.yml -n 50000

Every other algorithm runs exactly as with ``python -m rl_zoo3.train`` (``--gym-packages
servegym`` is implied: this module imports servegym, which registers the ids).
MaskablePPO reads the env's ``action_masks()`` through the zoo's vec env; the zoo's own
evaluation callback predicts without masks (an invalid pick there goes through the env's
default ``invalid_action=auto``). Import a trained run for servegym's evaluation harness
with ``python experiments/import_zoo.py <log folder>`` (agent.json, no pickle).
rl-zoo3: https://github.com/DLR-RM/rl-baselines3-zoo (installed by the ``zoo`` extra).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

ZOO_ALGOS = {"ppo_mask": ("sb3_contrib", "MaskablePPO")}


def add_algorithms() -> dict[str, type]:
    """rl-zoo3's algorithm table with `ZOO_ALGOS` added (idempotent); returns it."""
    import importlib

    try:
        from rl_zoo3.utils import ALGOS
    except ModuleNotFoundError as error:
        raise SystemExit("error: rl-zoo3 is not installed; install it with: "
                         "pip install -e '.[zoo]'") from error
    for name, (module, attribute) in ZOO_ALGOS.items():
        ALGOS.setdefault(name, getattr(importlib.import_module(module), attribute))
    return ALGOS


def main(argv: Sequence[str] | None = None) -> None:
    """Run rl-zoo3's `train` with `argv` (default: the command line)."""
    import servegym  # noqa: F401  (registers the servegym/* ids)

    add_algorithms()
    from rl_zoo3.train import train

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    train()


if __name__ == "__main__":
    main()
