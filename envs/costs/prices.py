"""GPU rental prices: one table, one source per entry, overridable per pool.

`PRICES` maps a GPU name of `envs/costs/specs.py` (`GPUS`) to what one GPU of that type
costs per hour on demand, with where the number comes from. The numbers are a **snapshot**
of a public price list on the date given with each entry; cloud prices change often, so
treat them as a dated reference point and override them for your own provider:

* per pool, in a cluster config: ``cluster.pools[i].price_per_hour`` (USD per GPU-hour;
  envs/build.py `POOL_KEYS`; checked at config composition: a positive, finite number);
* per GPU, in Python or on the command line of experiments/melange_allocation.py:
  `price_table({"H100-80GB": 2.99})` (``--price H100-80GB=2.99``); a GPU name that is not
  in `GPUS` is refused with the known names.

Every entry is one provider's list (Modal's per-second GPU rates x 3600): one provider for
all three types keeps their *ratios*, which is what a cost-minimising allocation (Mélange,
agents/heuristics/melange.py) depends on, consistent. A GPU without an entry (H200) has no
price unless a pool states one; reports then show its cost as NaN with the source "none".

`pool_price(pool)` resolves a `Pool`'s price and its source (the override, the table, or
none); `cluster_cost_per_hour(pools)` is sum(count x price) (NaN if any pool has no price);
`pool_rows(pools)` is what every report prints per pool: name, GPU, count, price, price
source and the cost model's source (measured tables or the roofline fallback).

Reference: T. Griggs et al., "Mélange: Cost Efficient Large Language Model Serving by
Exploiting GPU Heterogeneity", 2024 (on-demand prices as the allocation's objective).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from servegym.envs.costs.specs import GPUS, UnknownSpecError, get_gpu


def check_price(value: Any, where: str) -> float:
    """`value` as a float if it is a positive, finite price per hour, else a ValueError
    naming `where` and what to write instead."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where}: a price per hour must be a number (USD per GPU-hour), "
                         f"got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: price per hour must be a positive, finite number of USD "
                         f"per GPU-hour, got {value!r}; drop it to use the table's "
                         "(envs/costs/prices.py) or state your provider's price")
    return float(value)


@dataclass(frozen=True)
class GPUPrice:
    """What one GPU costs per hour on demand (USD), from `source` as listed on `date`."""

    gpu: str
    price_per_hour: float
    source: str
    date: str

    def __post_init__(self) -> None:
        check_price(self.price_per_hour, f"PRICES[{self.gpu!r}]")

    @property
    def label(self) -> str:
        """Short provenance, as reports print it."""
        return f"{self.source.split()[0]} {self.date}"


MODAL = "Modal on-demand GPU pricing, https://modal.com/pricing (per-second rate x 3600)"
SNAPSHOT_DATE = "2026-05-07"  # the list as captured on that day (a snapshot, not live)

PRICES: Mapping[str, GPUPrice] = MappingProxyType({entry.gpu: entry for entry in (
    # Modal: H100 $0.001097/s (SXM, 80 GB).
    GPUPrice("H100-80GB", 0.001097 * 3600, MODAL, SNAPSHOT_DATE),
    # Modal: A100 80 GB $0.000694/s.
    GPUPrice("A100-80GB", 0.000694 * 3600, MODAL, SNAPSHOT_DATE),
    # Modal: L40S 48 GB $0.000542/s.
    GPUPrice("L40S", 0.000542 * 3600, MODAL, SNAPSHOT_DATE),
)})
if set(PRICES) - set(GPUS):  # every priced name must be a GPUSpec of specs.py
    raise RuntimeError(f"prices.py prices unknown GPUs {sorted(set(PRICES) - set(GPUS))}")

NO_PRICE = "none"  # price source of a pool whose GPU has no entry and no override
OVERRIDE = "override"


class UnknownPriceError(UnknownSpecError):
    """A GPU name with no price (unknown to specs.py, or known but not in `PRICES`)."""


def _priced_names() -> str:
    return ", ".join(f"{name} (${entry.price_per_hour:.2f}/h)" for name, entry in PRICES.items())


def gpu_price(gpu: str | Any) -> GPUPrice:
    """The table entry of `gpu` (a name or alias as `get_gpu` takes it, or a `GPUSpec`);
    `UnknownPriceError` names the priced GPUs and how to state a price."""
    name = getattr(gpu, "name", gpu)
    try:
        canonical = get_gpu(str(name)).name
    except UnknownSpecError:
        raise UnknownPriceError(f"unknown GPU {name!r}; priced GPUs: {_priced_names()}") \
            from None
    if canonical not in PRICES:
        raise UnknownPriceError(f"no price for {canonical} in envs/costs/prices.py (priced: "
                                f"{_priced_names()}); set cluster.pools[i].price_per_hour "
                                "for its pool, or add a dated entry with its source")
    return PRICES[canonical]


def price_table(overrides: Mapping[str, Any] | None = None,
                gpus: Iterable[str] | None = None) -> dict[str, GPUPrice]:
    """{GPU name: price} for `gpus` (default: every priced GPU), each from `overrides`
    (GPU name -> USD per hour; names as `get_gpu` takes them) or the table. An unknown
    GPU name or a bad price in `overrides`, or a GPU with neither, raises naming it."""
    chosen: dict[str, GPUPrice] = {}
    for name, value in (overrides or {}).items():
        try:
            canonical = get_gpu(str(name)).name
        except UnknownSpecError:
            raise UnknownPriceError(f"price override for unknown GPU {name!r}; known GPUs: "
                                    f"{', '.join(GPUS)}") from None
        chosen[canonical] = GPUPrice(canonical, check_price(value, f"price of {name}"),
                                     OVERRIDE, "-")
    names = list(PRICES) if gpus is None else [get_gpu(str(g)).name for g in gpus]
    return {name: chosen[name] if name in chosen else gpu_price(name) for name in names}


def pool_gpu_name(pool: Any) -> str | None:
    """The canonical GPU name of a pool's cost model (None: a cost model without one,
    e.g. the live backend's)."""
    gpu = getattr(pool.cost, "gpu", None)
    if gpu is None:
        return None
    try:
        return get_gpu(str(getattr(gpu, "name", gpu))).name
    except UnknownSpecError:
        return None


def pool_price(pool: Any) -> tuple[float, str]:
    """(USD per hour of one instance of `pool`, source): the pool's `price_per_hour`
    override ("override"), else the table's price for its GPU (the entry's label), else
    (NaN, "none"). Prices are per GPU-hour; an instance is `tensor_parallel` GPUs."""
    gpus = int(getattr(pool.cost, "tensor_parallel", 1) or 1)
    override = getattr(pool, "price_per_hour", None)
    if override is not None:
        return float(override) * gpus, OVERRIDE
    name = pool_gpu_name(pool)
    if name is None or name not in PRICES:
        return math.nan, NO_PRICE
    entry = PRICES[name]
    return entry.price_per_hour * gpus, entry.label


def cluster_cost_per_hour(pools: Iterable[Any]) -> float:
    """sum over pools of count x price per instance (NaN if a pool has no price)."""
    return float(sum(pool.count * pool_price(pool)[0] for pool in pools))


def pool_rows(pools: Iterable[Any]) -> list[dict[str, Any]]:
    """Per pool what every report shows: name, GPU, count, price per instance-hour and
    its source, and the cost model's source ("measured" tables or "roofline")."""
    rows = []
    for pool in pools:
        price, source = pool_price(pool)
        rows.append({"name": pool.name, "gpu": pool_gpu_name(pool) or "?",
                     "tensor_parallel": int(getattr(pool.cost, "tensor_parallel", 1) or 1),
                     "count": int(pool.count), "price_per_hour": price,
                     "price_source": source,
                     "cost_source": str(getattr(pool.cost, "source", "?"))})
    return rows


def format_pool_rows(rows: Iterable[Mapping[str, Any]]) -> str:
    """One line per pool: "h100: 1 x H100-80GB, $3.95/h (Modal 2026-05-07), measured"."""
    return "; ".join(
        f"{row['name']}: {row['count']} x {row['gpu']}"
        + (f" TP{row['tensor_parallel']}" if row.get("tensor_parallel", 1) > 1 else "")
        + (f", ${row['price_per_hour']:.2f}/h ({row['price_source']})"
           if math.isfinite(row["price_per_hour"]) else ", no price")
        + f", {row['cost_source']}" for row in rows)


__all__ = [
    "MODAL", "NO_PRICE", "OVERRIDE", "PRICES", "SNAPSHOT_DATE", "GPUPrice", "UnknownPriceError",
    "check_price", "cluster_cost_per_hour", "format_pool_rows", "gpu_price", "pool_gpu_name",
    "pool_price", "pool_rows", "price_table",
]
