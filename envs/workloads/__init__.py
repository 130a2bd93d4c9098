"""Request workloads for the serving simulator: real traces, generators and transforms.

Start with :func:`build_workload` (what every ``conf/workload/*.yaml`` calls); the
loaders, generators and transforms below are its parts. ``docs/workloads.md`` lists every
workload with its licence and citation.
"""

import importlib
from typing import Any

from servegym.envs.workloads.arrivals import (
    diurnal_arrivals,
    gamma_arrivals,
    onoff_arrivals,
    poisson_arrivals,
    scale_to_rate,
    with_poisson_arrivals,
)
from servegym.envs.workloads.azure import (
    AZURE_2023_KINDS,
    LoadReport,
    TraceFileNotFoundError,
    load_azure_2023,
    load_azure_2023_with_report,
)
from servegym.envs.workloads.build import BuildReport, build_workload, build_workload_with_report
from servegym.envs.workloads.length_tables import (
    LENGTH_TABLES,
    LengthTable,
    load_length_table,
    load_length_table_with_report,
)
from servegym.envs.workloads.prefix import BlockChains
from servegym.envs.workloads.sources import SOURCE_KINDS, make_source
from servegym.envs.workloads.synthetic import synthetic_workload
from servegym.envs.workloads.transforms import (
    TRAIN_FRACTION,
    clip_to_context,
    merge,
    split_by_time,
    time_window,
)
from servegym.envs.workloads.workload import Workload, WorkloadError, WorkloadWarning

# Loaded on first use (PEP 562), so importing the package does not load every loader.
_LAZY = {
    "SERVEGEN_POOLS": "servegen",
    "generate_servegen": "servegen",
    "generate_servegen_with_report": "servegen",
    "load_mooncake": "mooncake",
    "load_mooncake_with_report": "mooncake",
    "agentic_program_workload": "programs",
    "multi_turn_workload": "sessions",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AZURE_2023_KINDS",
    "LENGTH_TABLES",
    "SERVEGEN_POOLS",
    "SOURCE_KINDS",
    "TRAIN_FRACTION",
    "BlockChains",
    "BuildReport",
    "LengthTable",
    "LoadReport",
    "TraceFileNotFoundError",
    "Workload",
    "WorkloadError",
    "WorkloadWarning",
    "agentic_program_workload",
    "build_workload",
    "build_workload_with_report",
    "clip_to_context",
    "diurnal_arrivals",
    "gamma_arrivals",
    "generate_servegen",
    "generate_servegen_with_report",
    "load_azure_2023",
    "load_azure_2023_with_report",
    "load_length_table",
    "load_length_table_with_report",
    "load_mooncake",
    "load_mooncake_with_report",
    "make_source",
    "merge",
    "multi_turn_workload",
    "onoff_arrivals",
    "poisson_arrivals",
    "scale_to_rate",
    "split_by_time",
    "synthetic_workload",
    "time_window",
    "with_poisson_arrivals",
]
