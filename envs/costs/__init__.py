"""Cost models: how long engine iterations, KV swaps and KV transfers take."""

from servegym.envs.costs.base import CostModel
from servegym.envs.costs.catalog import MissingTableError, measured_combinations
from servegym.envs.costs.factory import COST_SOURCES, RooflineFallbackWarning, build_cost_model
from servegym.envs.costs.roofline import RooflineCostModel
from servegym.envs.costs.specs import (
    GPUS,
    MODELS,
    GPUSpec,
    ModelSpec,
    UnknownSpecError,
    get_gpu,
    get_model,
    kv_capacity_blocks,
)
from servegym.envs.costs.table_model import TableCostModel

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
