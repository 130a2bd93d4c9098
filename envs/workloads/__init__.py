"""Request workloads for the serving simulator: real traces and synthetic arrivals."""

from envs.workloads.arrivals import poisson_arrivals, scale_to_rate, with_poisson_arrivals
from envs.workloads.azure import (
    AZURE_2023_KINDS,
    LoadReport,
    TraceFileNotFoundError,
    load_azure_2023,
    load_azure_2023_with_report,
)
from envs.workloads.workload import Workload, WorkloadError, WorkloadWarning

__all__ = [
    "AZURE_2023_KINDS",
    "LoadReport",
    "TraceFileNotFoundError",
    "Workload",
    "WorkloadError",
    "WorkloadWarning",
    "load_azure_2023",
    "load_azure_2023_with_report",
    "poisson_arrivals",
    "scale_to_rate",
    "with_poisson_arrivals",
]
