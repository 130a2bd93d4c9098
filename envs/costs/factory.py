"""Build a cost model from config (Hydra's `cost` group calls `build_cost_model`)."""

from __future__ import annotations

from typing import Any

from envs.costs.base import CostModel
from envs.costs.roofline import RooflineCostModel

COST_SOURCES = ("auto", "roofline")


def build_cost_model(
    model: str,
    gpu: str,
    tensor_parallel: int = 1,
    source: str = "auto",
    block_size: int = 16,
    **roofline_options: Any,
) -> CostModel:
    """A cost model for (model, GPU, TP).

    `source="auto"` picks the best available model for the combination; today that is the
    roofline (labelled `roofline` in every report). `roofline_options` go to
    `RooflineCostModel` (efficiencies, per-iteration overhead).
    """
    if source not in COST_SOURCES:
        raise ValueError(f"unknown cost source {source!r}; choose one of {COST_SOURCES}")
    return RooflineCostModel(model, gpu, tensor_parallel=tensor_parallel, block_size=block_size,
                             **roofline_options)
