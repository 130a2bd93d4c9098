"""Cost models: how long engine iterations, KV swaps and KV transfers take."""

from envs.costs.base import CostModel
from envs.costs.catalog import MissingTableError, measured_combinations
from envs.costs.factory import COST_SOURCES, RooflineFallbackWarning, build_cost_model
from envs.costs.roofline import RooflineCostModel
from envs.costs.specs import (
    GPUS,
    MODELS,
    GPUSpec,
    ModelSpec,
    UnknownSpecError,
    get_gpu,
    get_model,
    kv_capacity_blocks,
)
from envs.costs.table_model import TableCostModel

__all__ = [
    "COST_SOURCES",
    "build_cost_model",
    "GPUS",
    "MODELS",
    "CostModel",
    "GPUSpec",
    "MissingTableError",
    "ModelSpec",
    "RooflineCostModel",
    "RooflineFallbackWarning",
    "TableCostModel",
    "UnknownSpecError",
    "get_gpu",
    "get_model",
    "kv_capacity_blocks",
    "measured_combinations",
]
