"""Build a cost model from config (Hydra's `cost` group calls `build_cost_model`).

Fallback rule: ``source="auto"`` uses measured tables (``TableCostModel``) where a table of
token-level ops exists for the (model, GPU, TP) combination, and otherwise the roofline,
warning once per process that it did so (`RooflineFallbackWarning`); the model's
``source`` label ("measured" / "roofline") goes into every report either way. A model with
``ModelSpec.tables_from`` (Llama-3.1 -> Llama-3) counts as measured where the model it names
is; its ``describe()["tables_model"]`` and ``["measured_up_to"]`` say which tables it scales
from and how far they were measured.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servegym.envs.costs.base import CostModel
from servegym.envs.costs.catalog import available_text, measured_combinations, tables_model
from servegym.envs.costs.roofline import RooflineCostModel
from servegym.envs.costs.specs import get_gpu, get_model
from servegym.envs.costs.table_model import TableCostModel

COST_SOURCES = ("auto", "measured", "roofline")


class RooflineFallbackWarning(UserWarning):
    """`source="auto"` found no measured table and fell back to the roofline model."""


# Once per message and process, even when libraries reset the warning filters later (the
# "default" action's per-module registry is cleared then; "once" keeps its own).
warnings.filterwarnings("once", category=RooflineFallbackWarning)


def _options_for(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {key: value for key, value in options.items() if key in accepted}


def _check_options(options: dict[str, Any]) -> None:
    known = (set(inspect.signature(RooflineCostModel.__init__).parameters)
             | set(inspect.signature(TableCostModel.__init__).parameters))
    unknown = set(options) - known - {"self", "model", "gpu", "tensor_parallel"}
    if unknown:
        raise TypeError(f"unknown cost model option(s) {sorted(unknown)}; known: "
                        f"{sorted(known - {'self', 'model', 'gpu', 'tensor_parallel'})}")


def build_cost_model(
    model: str,
    gpu: str,
    tensor_parallel: int = 1,
    source: str = "auto",
    block_size: int = 16,
    table_dirs: Sequence[str | Path] = (),
    **options: Any,
) -> CostModel:
    """A cost model for (model, GPU, TP).

    source: ``"auto"`` (measured tables if they exist for the combination, else the
    roofline, with a warning), ``"measured"`` (tables or ``MissingTableError`` listing the
    available combinations), ``"roofline"`` (always the roofline).
    table_dirs: extra folders of op tables (e.g. fresh profiler output), searched before
    the shipped ``envs/data/calibration/``.
    options: constructor options of the chosen model (``iteration_overhead_s``,
    ``max_num_tokens``; tables: ``network``, ``vidur_compatible``,
    ``allreduce_launch_overhead_s``, ``gqa_attention_overhead`` (Vidur's terms, off by
    default: ``TableCostModel``); roofline: ``compute_efficiency``, ``memory_efficiency``).
    Options of the other kind are ignored.
    """
    if source not in COST_SOURCES:
        raise ValueError(f"unknown cost source {source!r}; choose one of {COST_SOURCES}")
    _check_options(options)
    model, gpu = get_model(model).name, get_gpu(gpu).name
    table_dirs = tuple(table_dirs or ())
    if source != "roofline":
        available = ((tables_model(model, table_dirs), gpu, tensor_parallel)
                     in measured_combinations(table_dirs))
        if available or source == "measured":
            # source="measured" without a table: MissingTableError lists what exists.
            return TableCostModel(model, gpu, tensor_parallel, block_size=block_size,
                                  table_dirs=table_dirs, **_options_for(TableCostModel, options))
        # A Python warning, not a log record: the warnings registry shows each distinct
        # message once per process, so a run that builds one cost model per env says it once.
        warnings.warn(
            f"no measured cost table for {model} on {gpu} at TP{tensor_parallel}: using the "
            f"roofline model (reports say source=roofline). Measured: "
            f"{available_text(table_dirs)}", RooflineFallbackWarning, stacklevel=2)
    return RooflineCostModel(model, gpu, tensor_parallel=tensor_parallel, block_size=block_size,
                             **_options_for(RooflineCostModel, options))
