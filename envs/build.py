"""Objects from config: the one place Hydra configs turn into simulators and workloads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.core.instance import InstanceConfig
from envs.core.simulator import Simulator
from envs.costs.base import CostModel
from envs.protocol import DecisionKind, Policy


def build_simulator(
    cost_model: CostModel,
    num_instances: int = 1,
    instance: Mapping[str, Any] | None = None,
    policies: Mapping[DecisionKind, Policy] | None = None,
    **simulator_options: Any,
) -> Simulator:
    """A simulator from a `cluster` config: `num_instances` and the `instance` settings."""
    fields = dict(instance or {})
    unknown = set(fields) - set(InstanceConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown instance setting(s) {sorted(unknown)}; "
            f"known: {sorted(InstanceConfig.__dataclass_fields__)}"
        )
    return Simulator(cost_model, InstanceConfig(**fields), num_instances=num_instances,
                     policies=policies, **simulator_options)
