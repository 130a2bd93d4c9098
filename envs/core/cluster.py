"""Pools: the cluster as groups of identical instances, each with its own hardware.

A `Pool` is `count` instances sharing one `InstanceConfig` (batching, budgets, KV settings)
and one cost model (model, GPU, tensor parallelism), with a `role`. The simulator lays the
instances out pool by pool (instance indices are contiguous per pool, pools in the order
given) and every instance knows its pool (`Instance.pool`), which routing decisions see
(envs/observations.py, ROUTE slot feature 8). A homogeneous cluster is one pool; a
heterogeneous one, e.g. 2 x H100 + 4 x A100 as Mélange studies, is several
(conf/cluster/hetero_h100_a100.yaml).

Roles: "mixed" (prefill and decode on the same instance, as vLLM serves today) is the only
role the simulator runs; "prefill" and "decode" name the pools of a disaggregated cluster
(DistServe, Splitwise), which need KV transfers between pools and are refused until those
exist.

Reference: T. Griggs et al., "Mélange: Cost Efficient Large Language Model Serving by
Exploiting GPU Heterogeneity", 2024 (heterogeneous pools behind one router).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.core.instance import InstanceConfig

ROLES = ("mixed",)
PLANNED_ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class Pool:
    """`count` identical instances: their `config`, `cost` model and `role`."""

    name: str
    config: InstanceConfig
    cost: Any  # a CostModel
    count: int = 1
    role: str = "mixed"

    def __post_init__(self) -> None:
        check_count_and_role(self.name, self.count, self.role)


def check_count_and_role(name: str, count: Any, role: str) -> None:
    """A pool's count and role, or a message naming the pool (also used at config time)."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"pool {name!r}: count must be a positive integer, got {count!r}")
    if role in PLANNED_ROLES:
        raise ValueError(f"pool {name!r}: role {role!r} needs KV transfers between pools "
                         "(prefill/decode disaggregation), which the simulator does not "
                         "model yet; use role 'mixed'")
    if role not in ROLES:
        raise ValueError(f"pool {name!r}: unknown role {role!r}; choose one of {ROLES}")


def check_pools(pools: Sequence[Pool]) -> tuple[Pool, ...]:
    """Pools as a tuple: at least one, unique names, one KV block size (prefix hashes of a
    workload are computed at one block size)."""
    pools = tuple(pools)
    if not pools:
        raise ValueError("a cluster needs at least one pool")
    names = [pool.name for pool in pools]
    if len(set(names)) != len(names):
        raise ValueError(f"pool names must be unique, got {names}")
    sizes = {pool.config.block_size for pool in pools}
    if len(sizes) > 1:
        raise ValueError(f"every pool must use the same KV block size, got {sorted(sizes)}")
    return pools


__all__ = ["PLANNED_ROLES", "ROLES", "Pool", "check_count_and_role", "check_pools"]
