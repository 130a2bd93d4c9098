"""Per-request records and the summary of a simulated (or live) serving run.

Definitions (all times in seconds):
* TTFT = first token - arrival. E2E = finish - arrival. Queueing = first scheduled - arrival.
* TPOT = (finish - first token) / (output tokens - 1), per request (undefined for 1 token).
* TBT  = every gap between consecutive tokens of a request, pooled over all requests
  (vLLM's "inter-token latency"); percentiles are weighted, inverted-CDF (the smallest gap
  with at least q of the mass at or below it).
* SLO attained: finished with TTFT <= its TTFT target and TPOT <= its TPOT target; a rejected
  request misses. Targets come from the workload, or from `summarize(ttft_slo=, tpot_slo=)`.
* Goodput: requests per second that attained their SLO, over the makespan (first arrival to
  last finish). The highest *rate* sustaining 90% attainment is the evaluation harness's job.
* KV utilisation: used / total blocks, time-weighted between samples taken at every batch or
  decode-run start, averaged over instances.
* KV-bound concurrency (`serving/kv_bound_seqs_max_len`, `_mean_len`): how many requests of
  the longest allowed length (`max_model_len`) or of this run's mean prompt + output length
  the KV cache holds at once, `num_kv_blocks // ceil(tokens / block_size)`, the smallest
  over instances; beside `serving/max_num_seqs`, the scheduler's cap. Whichever is lower
  bounds the running batch (envs/costs/specs.py `kv_bound_sequences`).
* Jain's fairness index over tenants of their SLO attainment (the share of each tenant's
  requests meeting that tenant's targets): (sum a)^2 / (n sum a^2), 1.0 = every tenant as
  well served relative to its own SLOs, 1/n = one tenant gets all the goodput; NaN when no
  tenant attains anything. (An index of the tokens served per tenant over the whole run
  would measure nothing: once every request finishes it equals the demand's, whatever the
  policy.)
* Cost (`serving/cost_per_hour`): what the cluster costs per hour, sum over pools of
  instances x GPUs per instance x USD per GPU-hour (each pool's `price_per_hour`, else the
  dated on-demand price table of envs/costs/prices.py); NaN when a pool's GPU has no price.
  The whole cluster is charged for the whole makespan, busy or idle, as a rented one is.
* Goodput per dollar (`serving/goodput_per_dollar`): requests that attained their SLO per
  USD of cluster time, met / (cost_per_hour x makespan / 3600) (Mélange's cost efficiency,
  Griggs et al. 2024, for a fixed cluster). `ServingReport.pools` lists each pool's name,
  GPU, count, price, price source and cost-model source (measured tables or roofline);
  `format_summary` prints them.
* Programs (closed-loop sessions and agentic programs; only when the workload has
  `session_id`): a program's job completion time is its last call's finish minus its first
  call's arrival, over programs whose every call finished (`serving/jct_p50`, `_p90`,
  `_p99`, `_mean`; inverted-CDF percentiles); a program attains its SLOs when every one of
  its calls did (`serving/program_attainment`, over all programs, a rejected call misses);
  `serving/programs` counts them. Requests without a program (`-1`) are left out.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from servegym.envs.core.request import FINISHED, REJECTED, STATUS_NAMES
from servegym.envs.costs.prices import format_pool_rows, pool_rows
from servegym.envs.costs.specs import kv_bound_sequences

if TYPE_CHECKING:
    from servegym.envs.core.simulator import Simulator

PERCENTILES = (50, 90, 99)

RECORD_FIELDS = (
    "rid", "tenant", "priority", "instance", "status", "arrival", "first_scheduled",
    "first_token", "finish", "prompt_tokens", "output_tokens", "generated_tokens",
    "preemptions", "swaps", "recomputed_tokens", "prefix_hit_tokens", "ttft_slo", "tpot_slo",
)


@dataclass
class ServingReport:
    """Per-request records (columnar), pooled token gaps, KV samples and the summary."""

    records: dict[str, np.ndarray]
    reject_reasons: list[str]
    tbt_values: np.ndarray
    tbt_weights: np.ndarray
    kv_utilisation_mean: float
    kv_utilisation_peak: float
    counters: dict[str, float]
    cost_source: str
    tenant_names: tuple[str, ...]
    # Per instance: (sample times, fraction of KV blocks in use from that time on).
    kv_series: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    # Per pool: name, gpu, tensor_parallel, count, price_per_hour (per instance), price_source,
    # cost_source (envs/costs/prices.py `pool_rows`); empty: no prices known.
    pools: list[dict[str, Any]] = field(default_factory=list)

    def summarize(self, ttft_slo: float | None = None, tpot_slo: float | None = None) -> dict:
        return summarize(self, ttft_slo, tpot_slo)

    def write_records_csv(self, path: str | Path) -> Path:
        """Write per-request records atomically; refuses to overwrite an existing file."""
        path = Path(path)
        columns = [self.records[name].tolist() for name in RECORD_FIELDS]
        header = RECORD_FIELDS + ("reject_reason",)
        rows = [header, *zip(*columns, self.reject_reasons, strict=True)]

        def write(handle: Any) -> None:
            csv.writer(handle).writerows(rows)

        return atomic_write(path, write)

    def format_table(self) -> str:
        return format_summary(self.summary, self.cost_source, self.pools)


def result_paths(out: Path | str, name: str) -> tuple[list[Path], list[str]]:
    """A benchmark's results `<out>/<name>.md` and `.json`, and those that already exist
    (it refuses to start when any does: results are never overwritten)."""
    paths = [Path(out) / f"{name}.md", Path(out) / f"{name}.json"]
    return paths, [str(p) for p in paths if p.exists()]


def atomic_write(path: Path, write: Any, *, overwrite: bool = False) -> Path:
    """Write through a temporary file in the same folder, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; results are never overwritten, choose a new name")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, payload: Any, *, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda h: json.dump(payload, h, indent=2, default=float),
                        overwrite=overwrite)


# ==================================================================== building
def build_report(sim: Simulator) -> ServingReport:
    requests = sim.requests
    records = {
        "rid": np.array([r.rid for r in requests], dtype=np.int64),
        "tenant": np.array([r.tenant for r in requests], dtype=np.int32),
        "priority": np.array([r.priority for r in requests], dtype=np.int32),
        "instance": np.array([r.instance for r in requests], dtype=np.int32),
        "status": np.array([STATUS_NAMES[r.status] for r in requests], dtype=object),
        "arrival": np.array([r.arrival_time for r in requests]),
        "first_scheduled": np.array([r.first_scheduled for r in requests]),
        "first_token": np.array([r.first_token_time for r in requests]),
        "finish": np.array([r.finish_time for r in requests]),
        "prompt_tokens": np.array([r.prompt_len for r in requests], dtype=np.int64),
        "output_tokens": np.array([r.output_len for r in requests], dtype=np.int64),
        "generated_tokens": np.array([r.num_generated for r in requests], dtype=np.int64),
        "preemptions": np.array([r.num_preemptions for r in requests], dtype=np.int64),
        "swaps": np.array([r.num_swaps for r in requests], dtype=np.int64),
        "recomputed_tokens": np.array([r.recomputed_tokens for r in requests], dtype=np.int64),
        "prefix_hit_tokens": np.array([r.prefix_hit_tokens for r in requests], dtype=np.int64),
        "ttft_slo": np.array([r.ttft_slo for r in requests]),
        "tpot_slo": np.array([r.tpot_slo for r in requests]),
    }
    if sim.workload.session_id is not None:  # programs: per record, its program
        records["session"] = sim.workload.session_id[records["rid"]]
    values, weights = _pool_gaps([instance.gaps for instance in sim.instances])
    kv_mean, kv_peak = _kv_utilisation(sim)
    instances = sim.instances
    bm = [instance.bm for instance in instances]
    counters = {
        "iterations": float(sum(i.num_iterations for i in instances)),
        "decode_runs": float(sum(i.num_decode_runs for i in instances)),
        "busy_time": float(sum(i.busy_time for i in instances)),
        "num_kv_blocks": float(sim.num_kv_blocks),
        "prefix_cache_hit_rate": (
            sum(b.prefix_hits for b in bm) / max(1, sum(b.prefix_queries for b in bm))
        ),
        **_kv_bound(instances, records),
        **_kv_tiers(bm),
        **(sim.retention.stats() if getattr(sim, "retention", None) is not None else {}),
    }
    report = ServingReport(
        records=records,
        reject_reasons=[r.reject_reason for r in requests],
        tbt_values=values,
        tbt_weights=weights,
        kv_utilisation_mean=kv_mean,
        kv_utilisation_peak=kv_peak,
        counters=counters,
        cost_source="+".join(dict.fromkeys(pool.cost.source for pool in sim.pools)),
        tenant_names=tuple(sim.workload.tenant_names),
        kv_series=[
            (np.array(i.kv_times, dtype=np.float64),
             np.array(i.kv_used, dtype=np.float64) / i.bm.num_blocks)
            for i in instances
        ],
        pools=pool_rows(sim.pools),
    )
    report.summary = summarize(report)
    return report


def _kv_tiers(managers: list[Any]) -> dict[str, float]:
    """Tiered KV cache counters summed over instances (`serving/kv_tier_*`; none without
    tiers, envs/core/kv_tiers.py)."""
    totals: dict[str, float] = {}
    for manager in managers:
        tiers = getattr(manager, "tiers", None)
        if tiers is not None:
            for key, value in tiers.stats().items():
                totals[key] = totals.get(key, 0.0) + value
    return totals


def _kv_bound(instances: list[Any], records: dict[str, np.ndarray]) -> dict[str, float]:
    """KV-bound concurrency counters (module docstring), the smallest over instances."""
    if not instances:
        return {}
    lengths = records["prompt_tokens"] + records["output_tokens"]
    mean_len = max(1, round(float(lengths.mean()))) if lengths.size else 1
    max_len, mean, seqs = [], [], []
    for instance in instances:
        blocks, size = instance.bm.num_blocks, instance.config.block_size
        max_len.append(kv_bound_sequences(blocks, int(instance.max_model_len), size))
        mean.append(kv_bound_sequences(blocks, mean_len, size))
        seqs.append(instance.config.max_num_seqs)
    return {"kv_bound_seqs_max_len": float(min(max_len)),
            "kv_bound_seqs_mean_len": float(min(mean)), "max_num_seqs": float(min(seqs))}


def _pool_gaps(all_gaps: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    values, weights = [], []
    for gaps in all_gaps:
        if gaps.run_count:
            counts = np.frombuffer(gaps.run_count, dtype=np.int64)
            first = np.frombuffer(gaps.run_first, dtype=np.float64)
            last = np.frombuffer(gaps.run_last, dtype=np.float64)
            weight = np.frombuffer(gaps.run_weight, dtype=np.int64)
            step = np.where(counts > 1, (last - first) / np.maximum(counts - 1, 1), 0.0)
            offsets = np.cumsum(counts) - counts
            position = np.arange(int(counts.sum())) - np.repeat(offsets, counts)
            values.append(np.repeat(first, counts) + position * np.repeat(step, counts))
            weights.append(np.repeat(weight, counts))
        singles = np.frombuffer(gaps.singles, dtype=np.float64) if gaps.singles else np.zeros(0)
        values.append(singles.copy())
        weights.append(np.ones(singles.size, dtype=np.int64))
    if not values:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(values), np.concatenate(weights)


def _kv_utilisation(sim: Simulator) -> tuple[float, float]:
    means, peak = [], 0.0
    end = sim.now
    for instance in sim.instances:
        times = np.frombuffer(instance.kv_times, dtype=np.float64) if instance.kv_times else None
        if times is None or times.size == 0:
            means.append(0.0)
            continue
        used = np.frombuffer(instance.kv_used, dtype=np.int64) / instance.bm.num_blocks
        spans = np.diff(np.append(times, max(end, times[-1])))
        total = spans.sum()
        means.append(float((used * spans).sum() / total) if total > 0 else float(used.mean()))
        peak = max(peak, float(used.max()))
    return float(np.mean(means)), peak


# ==================================================================== summary
def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    if values.size == 0:
        return math.nan
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, q / 100 * cumulative[-1], side="left"))
    return float(values[order][min(index, values.size - 1)])


def _percentiles(prefix: str, values: np.ndarray, out: dict) -> None:
    values = values[~np.isnan(values)]
    for q in PERCENTILES:
        out[f"serving/{prefix}_p{q}"] = (
            float(np.percentile(values, q, method="inverted_cdf")) if values.size else math.nan
        )
    out[f"serving/{prefix}_mean"] = float(values.mean()) if values.size else math.nan


def summarize(
    report: ServingReport, ttft_slo: float | None = None, tpot_slo: float | None = None
) -> dict[str, float]:
    r = report.records
    finished = r["status"] == STATUS_NAMES[FINISHED]
    rejected = r["status"] == STATUS_NAMES[REJECTED]
    out: dict[str, float] = {"serving/requests": float(r["rid"].size)}
    ttft = (r["first_token"] - r["arrival"])[finished]
    e2e = (r["finish"] - r["arrival"])[finished]
    queueing = (r["first_scheduled"] - r["arrival"])[finished]
    outputs = r["output_tokens"][finished]
    decode_span = (r["finish"] - r["first_token"])[finished]
    tpot = np.where(outputs > 1, decode_span / np.maximum(outputs - 1, 1), np.nan)
    _percentiles("ttft", ttft, out)
    _percentiles("tpot", tpot, out)
    _percentiles("e2e", e2e, out)
    _percentiles("queueing", queueing, out)
    for q in PERCENTILES:
        out[f"serving/tbt_p{q}"] = weighted_percentile(report.tbt_values, report.tbt_weights, q)
    if report.tbt_values.size:
        w = report.tbt_weights
        out["serving/tbt_mean"] = float((report.tbt_values * w).sum() / w.sum())
    else:
        out["serving/tbt_mean"] = math.nan

    start = float(r["arrival"].min()) if r["arrival"].size else 0.0
    end = float(np.nanmax(r["finish"])) if finished.any() else start
    makespan = max(end - start, 1e-12)
    out["serving/makespan_s"] = end - start
    out["serving/throughput_rps"] = float(finished.sum()) / makespan
    out["serving/output_tokens_per_s"] = float(outputs.sum()) / makespan
    out["serving/total_tokens_per_s"] = float(
        (r["prompt_tokens"][finished].sum() + outputs.sum()) / makespan
    )

    ttft_target = r["ttft_slo"] if ttft_slo is None else np.full(r["rid"].size, ttft_slo)
    tpot_target = r["tpot_slo"] if tpot_slo is None else np.full(r["rid"].size, tpot_slo)
    met = np.zeros(r["rid"].size, dtype=bool)
    all_tpot = np.full(r["rid"].size, np.nan)
    all_tpot[finished] = tpot
    met[finished] = (ttft <= ttft_target[finished]) & ~(all_tpot[finished] > tpot_target[finished])
    out["serving/slo_attainment"] = float(met.mean()) if met.size else math.nan
    out["serving/goodput_rps"] = float(met.sum()) / makespan
    out["serving/finished"] = float(finished.sum())
    out["serving/rejected"] = float(rejected.sum())
    out["serving/preemptions"] = float(r["preemptions"].sum())
    out["serving/swaps"] = float(r["swaps"].sum())
    out["serving/recomputed_tokens"] = float(r["recomputed_tokens"].sum())
    out["serving/kv_utilisation_mean"] = report.kv_utilisation_mean
    out["serving/kv_utilisation_peak"] = report.kv_utilisation_peak
    out["serving/prefix_cache_hit_rate"] = report.counters["prefix_cache_hit_rate"]
    out["serving/iterations"] = report.counters["iterations"]
    for key in ("kv_bound_seqs_max_len", "kv_bound_seqs_mean_len", "max_num_seqs"):
        out[f"serving/{key}"] = report.counters.get(key, math.nan)
    out["serving/fairness_jain"] = _jain(r["tenant"], met)
    if "session" in r:
        out.update(_program_metrics(r, met, finished))
    for key, value in report.counters.items():
        if key.startswith(("kv_tier_", "retain_")):  # only with tiers / retention
            out[f"serving/{key}"] = value
    cost = (float(sum(row["count"] * row["price_per_hour"] for row in report.pools))
            if report.pools else math.nan)
    out["serving/cost_per_hour"] = cost
    dollars = cost * (end - start) / 3600.0
    out["serving/goodput_per_dollar"] = float(met.sum()) / dollars if dollars > 0 else math.nan
    return out


def _program_metrics(r: dict[str, np.ndarray], met: np.ndarray,
                     finished: np.ndarray) -> dict[str, float]:
    """Job completion time and program SLO attainment (module docstring)."""
    session = r["session"]
    inside = session >= 0
    programs, which = np.unique(session[inside], return_inverse=True)
    count = programs.size
    out: dict[str, float] = {"serving/programs": float(count)}
    if count == 0:
        out["serving/program_attainment"] = math.nan
        _percentiles("jct", np.zeros(0), out)
        return out
    first = np.full(count, np.inf)
    last = np.full(count, -np.inf)
    np.minimum.at(first, which, r["arrival"][inside])
    np.maximum.at(last, which, np.where(finished[inside], r["finish"][inside], np.inf))
    missed = np.zeros(count, dtype=bool)
    np.logical_or.at(missed, which, ~met[inside])
    out["serving/program_attainment"] = float((~missed).mean())
    _percentiles("jct", (last - first)[np.isfinite(last)], out)
    return out


def _jain(tenant: np.ndarray, met: np.ndarray) -> float:
    """Jain's index over tenants of their SLO attainment (see the module docstring)."""
    present = np.unique(tenant)
    attainment = np.array([met[tenant == t].mean() for t in present], dtype=float)
    if attainment.size == 0 or not np.any(attainment):
        return math.nan
    return float(attainment.sum() ** 2 / (attainment.size * (attainment**2).sum()))


def format_summary(summary: dict[str, float], source: str | None = None,
                   pools: list[dict[str, Any]] | None = None) -> str:
    """A fixed-width table of the headline metrics (and, given `ServingReport.pools`, the
    cluster's cost and each pool's GPU, count, price and cost source)."""
    rows = [
        ("requests (finished / rejected)",
         f"{summary['serving/finished']:.0f} / {summary['serving/rejected']:.0f}"),
    ]
    for name in ("ttft", "tbt", "tpot", "e2e", "queueing"):
        values = [summary[f"serving/{name}_p{q}"] for q in PERCENTILES]
        rows.append((f"{name.upper()} p50 / p90 / p99 (ms)",
                     " / ".join(f"{1000 * v:.1f}" for v in values)))
    rows += [
        ("throughput (req/s)", f"{summary['serving/throughput_rps']:.3f}"),
        ("output tokens/s", f"{summary['serving/output_tokens_per_s']:.1f}"),
        ("SLO attainment", f"{summary['serving/slo_attainment']:.3f}"),
        ("goodput (req/s)", f"{summary['serving/goodput_rps']:.3f}"),
        ("preemptions / swaps",
         f"{summary['serving/preemptions']:.0f} / {summary['serving/swaps']:.0f}"),
        ("KV utilisation mean / peak",
         f"{summary['serving/kv_utilisation_mean']:.3f} / "
         f"{summary['serving/kv_utilisation_peak']:.3f}"),
        ("Jain fairness (tenants)", f"{summary['serving/fairness_jain']:.3f}"),
    ]
    if math.isfinite(summary.get("serving/kv_bound_seqs_max_len", math.nan)):
        rows.append(("KV-bound seqs max-len / mean-len",
                     f"{summary['serving/kv_bound_seqs_max_len']:.0f} / "
                     f"{summary['serving/kv_bound_seqs_mean_len']:.0f} "
                     f"(max_num_seqs {summary['serving/max_num_seqs']:.0f})"))
    rows += [
        ("iterations", f"{summary['serving/iterations']:.0f}"),
    ]
    if source:
        rows.append(("cost source", source))
    cost = summary.get("serving/cost_per_hour", math.nan)
    if math.isfinite(cost):
        rows += [("cluster cost ($/h)", f"{cost:.2f}"),
                 ("goodput per $", f"{summary['serving/goodput_per_dollar']:.1f}")]
    for row in pools or ():
        rows.append((f"pool {row['name']}", format_pool_rows([row]).split(": ", 1)[1]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
