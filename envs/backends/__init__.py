"""Backends behind the decision protocol: `sim` (the discrete-event simulator) and `live`
(real vLLM v1 engines, `envs/backends/live/`, needs the `live` extra).

`build_backend(kind, ...)` gives either; both expose what `ServingEnv`, the observation
encoder, the reward tracker and `build_report` read: `reset/next_decision/apply/report/run`,
`now`, `instances` (`waiting/running/swapped`, `bm.num_free/num_used/num_blocks`, `config`,
`budget`, `batch`, `bulk`), `config`, `arrived_count`, `_arrivals`, `departed`,
`requests_in_system()`, `latency_area(t)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envs.protocol import DecisionKind, Policy

BACKENDS = ("sim", "live")


def build_backend(
    kind: str,
    cost_model: Any = None,
    num_instances: int = 1,
    instance: Mapping[str, Any] | None = None,
    policies: Mapping[DecisionKind, Policy] | None = None,
    **options: Any,
) -> Any:
    """`sim`: `envs.build.build_simulator(cost_model, ...)`; `live`: `LiveBackend` with the
    same instance settings (`options` go to `LiveBackend`: model, clock, time_scale, ...)."""
    if kind == "sim":
        from envs.build import build_simulator

        return build_simulator(cost_model, num_instances, instance, policies=policies,
                               **options)
    if kind == "live":
        from envs.backends.live.backend import LiveBackend, live_instance_config

        options.pop("debug_checks", None)
        return LiveBackend(live_instance_config(instance), num_instances=num_instances,
                           policies=policies, predictor=options.pop("predictor", None),
                           **options)
    raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
