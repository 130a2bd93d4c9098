"""Objects from config: the one place Hydra configs turn into simulators and workloads."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from servegym.envs.core.cluster import Pool
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs.base import CostModel
from servegym.envs.protocol import DecisionKind, Policy

POOL_KEYS = ("name", "count", "role", "instance", "cost", "price_per_hour")
CLUSTER_LAYOUT_KEYS = ("num_instances", "instance", "pools")
COST_KEYS = ("model", "gpu", "tensor_parallel", "source")


@dataclass(frozen=True)
class ClusterOption:
    """A cluster-wide option: `cluster.<name>` in a config, the `Simulator` keyword argument
    of the same name. `check` ("module:function") validates a set value at config
    composition, called as `check(value, cluster)` with the whole cluster mapping; it
    raises ValueError saying what is wrong. `summary` documents the field in train.py's
    schema (`servegym.agents.config.ClusterConfig`, whose option fields are made from
    `CLUSTER_OPTION_SPECS`)."""

    name: str
    summary: str
    check: str


# A `cluster` config's keys: the layout (num_instances + instance, or pools), then the
# cluster-wide options. A new topology option is one row here and its `Simulator`
# argument; train.py's schema, its composition checks, the env and the evaluation harness
# read this tuple and pass the whole mapping through `simulator_kwargs`, untouched, and
# the live backend refuses each by name.
CLUSTER_OPTION_SPECS: tuple[ClusterOption, ...] = (
    ClusterOption("network", "a disaggregated cluster's prefill-to-decode link, "
                  "{bandwidth_gbps, latency_s} (servegym.envs.core.disagg.Network); null: "
                  "the cost model prices it", "servegym.envs.build:check_network"),
    ClusterOption("retain_ttls", "KV retention's TTL menu in seconds, e.g. [1, 5, 30] "
                  "(servegym.envs.core.retention); null: retention off",
                  "servegym.envs.build:check_retain_ttls"),
    ClusterOption("migration", "live migration between mixed instances (Llumnix), "
                  "{interval_s, trigger_free_kv, last_stage_blocks, max_stages, "
                  "max_per_tick} (servegym.envs.core.migration); null: none",
                  "servegym.envs.build:check_migration"),
)
CLUSTER_OPTIONS = tuple(option.name for option in CLUSTER_OPTION_SPECS)


def check_cluster_options(cluster: Mapping[str, Any]) -> None:
    """Every set cluster option checked by its `ClusterOption.check` (config composition)."""
    for option in CLUSTER_OPTION_SPECS:
        value = cluster.get(option.name)
        if value is not None:
            module, _, name = option.check.partition(":")
            getattr(importlib.import_module(module), name)(value, cluster)


def check_network(value: Any, cluster: Mapping[str, Any]) -> None:
    from servegym.envs.core.disagg import network_from_config

    network_from_config(value)  # its own message: zero bandwidth, bad keys
    roles = [pool.get("role") for pool in cluster.get("pools") or ()]
    if not any(role in ("prefill", "decode") for role in roles) and \
            cluster.get("migration") is None:
        raise ValueError("cluster.network prices KV transfers between prefill and decode "
                         "pools; this cluster has none (drop network or set pool roles)")


def check_retain_ttls(value: Any, cluster: Mapping[str, Any]) -> None:
    from servegym.envs.core.retention import retain_options

    retain_options(list(value) if isinstance(value, Sequence) and
                   not isinstance(value, str) else value)


def check_migration(value: Any, cluster: Mapping[str, Any]) -> None:
    from servegym.envs.core.migration import migration_from_config

    migration_from_config(dict(value) if isinstance(value, Mapping) else value)


def instance_config(fields: Mapping[str, Any] | None) -> InstanceConfig:
    """An `InstanceConfig` from plain settings, naming any unknown key."""
    fields = dict(fields or {})
    unknown = set(fields) - set(InstanceConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown instance setting(s) {sorted(unknown)}; "
            f"known: {sorted(InstanceConfig.__dataclass_fields__)}"
        )
    return InstanceConfig(**fields)


def pool_settings(number: int, spec: Mapping[str, Any],
                  instance: Mapping[str, Any] | None = None
                  ) -> tuple[str, InstanceConfig, dict[str, Any]]:
    """(name, instance config, cost overrides) of `cluster.pools[number]`, every key,
    instance setting, count, role and price checked (train.py calls it at config
    composition). `price_per_hour` (USD per GPU-hour; None or absent: the price table's,
    envs/costs/prices.py) must be a positive, finite number."""
    from servegym.envs.core.cluster import check_count_and_role
    from servegym.envs.costs.prices import check_price
    from servegym.envs.costs.specs import get_gpu, get_model

    spec = dict(spec)
    unknown = set(spec) - set(POOL_KEYS)
    if unknown:
        raise ValueError(f"cluster.pools[{number}]: unknown key(s) {sorted(unknown)}; "
                         f"known: {list(POOL_KEYS)}")
    name = str(spec.get("name", f"pool{number}"))
    check_count_and_role(name, spec.get("count", 1), str(spec.get("role", "mixed")))
    if spec.get("price_per_hour") is not None:
        check_price(spec["price_per_hour"], f"cluster.pools[{number}] ({name}).price_per_hour")
    config = instance_config({**dict(instance or {}), **dict(spec.get("instance") or {})})
    cost_spec = dict(spec.get("cost") or {})
    unknown = set(cost_spec) - set(COST_KEYS)
    if unknown:
        raise ValueError(f"cluster.pools[{number}] ({name}): unknown cost key(s) "
                         f"{sorted(unknown)}; known: {list(COST_KEYS)}")
    if "gpu" in cost_spec:
        get_gpu(str(cost_spec["gpu"]))  # an unknown GPU names the known ones
    if "model" in cost_spec:
        get_model(str(cost_spec["model"]))
    return name, config, cost_spec


def build_pools(specs: Sequence[Mapping[str, Any]], cost_model: CostModel,
                instance: Mapping[str, Any] | None = None) -> list[Pool]:
    """`Pool`s from a cluster config's `pools` list. Each entry: `name`, `count`, `role`
    ("mixed"), `instance` (settings over the cluster's `instance`) and `cost` (model, gpu,
    tensor_parallel, source over the run's `cost_model`; a pool without `cost` uses
    `cost_model` itself), `price_per_hour` (USD per GPU-hour over the price table's)."""
    from servegym.envs.costs import build_cost_model

    pools = []
    for number, spec in enumerate(specs):
        name, config, cost_spec = pool_settings(number, spec, instance)
        cost = cost_model
        if cost_spec:
            base = {"model": getattr(cost_model.model, "name", cost_model.model),
                    "gpu": getattr(cost_model.gpu, "name", cost_model.gpu),
                    "tensor_parallel": cost_model.tensor_parallel, "source": "auto"}
            cost = build_cost_model(**{**base, **cost_spec}, block_size=config.block_size)
        price = spec.get("price_per_hour")
        pools.append(Pool(name, config, cost, int(spec.get("count", 1)),
                          str(spec.get("role", "mixed")),
                          None if price is None else float(price)))
    return pools


def simulator_kwargs(cluster: Mapping[str, Any] | None) -> dict[str, Any]:
    """`build_simulator`'s keyword arguments from a `cluster` config mapping: its layout
    keys and every cluster option that is set (None: the simulator's default). An unknown
    key is an error naming the known ones."""
    cluster = dict(cluster or {})
    known = CLUSTER_LAYOUT_KEYS + CLUSTER_OPTIONS
    unknown = set(cluster) - set(known)
    if unknown:
        raise ValueError(f"unknown cluster setting(s) {sorted(unknown)}; known: {list(known)}")
    out: dict[str, Any] = {"num_instances": cluster.get("num_instances", 1),
                           "instance": cluster.get("instance"),
                           "pools": cluster.get("pools") or None}
    out.update({key: cluster[key] for key in CLUSTER_OPTIONS if cluster.get(key) is not None})
    return out


def build_simulator(
    cost_model: CostModel,
    num_instances: int = 1,
    instance: Mapping[str, Any] | None = None,
    policies: Mapping[DecisionKind, Policy] | None = None,
    pools: Sequence[Mapping[str, Any]] | None = None,
    **simulator_options: Any,
) -> Simulator:
    """A simulator from a `cluster` config: `num_instances` and the `instance` settings,
    or `pools` (see `build_pools`; then `num_instances` must be left at 1 or equal the
    pools' total)."""
    if pools:
        built = build_pools(pools, cost_model, instance)
        total = sum(pool.count for pool in built)
        if num_instances not in (1, total):
            raise ValueError(f"cluster.num_instances={num_instances} but the pools hold "
                             f"{total} instances; drop num_instances or make them agree")
        return Simulator(pools=built, policies=policies, **simulator_options)
    return Simulator(cost_model, instance_config(instance), num_instances=num_instances,
                     policies=policies, **simulator_options)
