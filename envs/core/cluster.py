"""Pools: the cluster as groups of identical instances, each with its own hardware.

A `Pool` is `count` instances sharing one `InstanceConfig` (batching, budgets, KV settings)
and one cost model (model, GPU, tensor parallelism), with a `role`. The simulator lays the
instances out pool by pool (instance indices are contiguous per pool, pools in the order
given) and every instance knows its pool (`Instance.pool`), which routing decisions see
(envs/observations.py, ROUTE slot feature 8). A homogeneous cluster is one pool; a
heterogeneous one, e.g. 2 x H100 + 4 x A100 as Mélange studies, is several
(conf/cluster/hetero_h100_a100.yaml).

Prices: each pool's instances cost `price_per_hour` (USD per GPU-hour, times the cost
model's tensor parallelism per instance), or the dated table price of its GPU
(envs/costs/prices.py); reports show per pool its GPU, count, price and cost source and
the cluster's `serving/cost_per_hour` (envs/core/metrics.py).

Roles: "mixed" (prefill and decode on the same instance, as vLLM serves today), or
"prefill" and "decode": the pools of a disaggregated cluster (DistServe, Splitwise;
envs/core/disagg.py), where arrivals are routed among prefill instances and each
prefilled request's KV moves to a decode instance. A disaggregated cluster needs at least
one pool of each of the two roles and no mixed pool (a mixed pool beside them is not
modelled).

Reference: T. Griggs et al., "Mélange: Cost Efficient Large Language Model Serving by
Exploiting GPU Heterogeneity", 2024 (heterogeneous pools behind one router).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from servegym.envs.core.instance import InstanceConfig

ROLES = ("mixed", "prefill", "decode")
PLANNED_ROLES: tuple[str, ...] = ()  # roles named but not simulated yet (none left)


@dataclass(frozen=True)
class Pool:
    """`count` identical instances: their `config`, `cost` model and `role`, and the
    `price_per_hour` (USD per GPU-hour) to charge for them; None: the price table's for the
    cost model's GPU (envs/costs/prices.py `pool_price`, which reports use)."""

    name: str
    config: InstanceConfig
    cost: Any  # a CostModel
    count: int = 1
    role: str = "mixed"
    price_per_hour: float | None = None

    def __post_init__(self) -> None:
        check_count_and_role(self.name, self.count, self.role)
        if self.price_per_hour is not None:
            from servegym.envs.costs.prices import check_price

            object.__setattr__(self, "price_per_hour", check_price(
                self.price_per_hour, f"pool {self.name!r}: price_per_hour"))


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
    roles = {pool.role for pool in pools}
    if roles & {"prefill", "decode"} and roles != {"prefill", "decode"}:
        missing = sorted({"prefill", "decode"} - roles)
        raise ValueError(
            f"a disaggregated cluster needs prefill and decode pools and no mixed one; got "
            f"roles {[pool.role for pool in pools]}"
            + (f" (add a pool with role {missing[0]!r})" if missing else
               " (a mixed pool beside a disaggregated cluster is not modelled)"))
    sizes = {pool.config.block_size for pool in pools}
    if len(sizes) > 1:
        raise ValueError(f"every pool must use the same KV block size, got {sorted(sizes)}")
    return pools


__all__ = ["PLANNED_ROLES", "ROLES", "Pool", "check_count_and_role", "check_pools"]
