"""Backends behind the decision protocol: `sim` (the discrete-event simulator) and `live`
(real vLLM v1 engines, `envs/backends/live/`, needs the `live` extra).

`build_backend(kind, ...)` gives either; both implement the protocols of
`envs/protocol.py` (`Backend`, `ClusterView`, `InstanceView`, `KVView`), which is all that
`ServingEnv`, the observation encoder, the reward tracker and the heuristics read
(tests/test_contracts.py). `cluster.pools` (heterogeneous pools) is the simulator's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from servegym.envs.protocol import DecisionKind, Policy

BACKENDS = ("sim", "live")


def build_backend(
    kind: str,
    cost_model: Any = None,
    num_instances: int = 1,
    instance: Mapping[str, Any] | None = None,
    policies: Mapping[DecisionKind, Policy] | None = None,
    **options: Any,
) -> Any:
    """`sim`: `servegym.envs.build.build_simulator(cost_model, ...)`; `live`: `LiveBackend` with the
    same instance settings (`options` go to `LiveBackend`: model, clock, time_scale, ...)."""
    if kind == "sim":
        from servegym.envs.build import build_simulator

        return build_simulator(cost_model, num_instances, instance, policies=policies,
                               **options)
    if kind == "live":
        from servegym.envs.backends.live import refuse_unsupported_topology
        from servegym.envs.build import CLUSTER_OPTIONS

        refuse_unsupported_topology(options.get("pools"), options.pop("network", None),
                                    options.pop("migration", None))
        # Any other cluster option (a topology added later included) is refused by name,
        # never passed on or dropped: the live engines would silently run without it.
        unsupported = sorted(key for key in CLUSTER_OPTIONS if options.get(key) is not None)
        if unsupported:
            raise ValueError(
                f"the live backend does not run cluster option(s) {unsupported}: it drives "
                "one pool of identical, colocated vLLM v1 engines with vLLM's own KV cache, "
                "and servegym models these only in the simulator; use backend=sim or drop "
                "them")
        for key in CLUSTER_OPTIONS:
            options.pop(key, None)
        from servegym.envs.backends.live.backend import LiveBackend, live_instance_config

        if options.pop("pools", None):
            raise ValueError("the live backend runs one pool of identical engines; drop "
                             "cluster.pools (or use backend=sim)")
        options.pop("debug_checks", None)
        return LiveBackend(live_instance_config(instance), num_instances=num_instances,
                           policies=policies, predictor=options.pop("predictor", None),
                           **options)
    raise ValueError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
