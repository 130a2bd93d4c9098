"""Held-out error of the measured-table cost model, per operation and per iteration.

For every shipped table (or those under --table-dir): every 4th measured token count is
held out and predicted from the rest (token-level ops: interpolation; all-reduce: same
rule over message sizes); attention's FLOP/byte fit is refitted without every 4th chunk
length / batch size and scored on them; per-iteration errors compare the predictor built
without the held-out points with the sum of measured op times there (see
envs/costs/validation.py for exactly what that does and does not cover).

    python experiments/fit_costs.py              # prints the table, writes results/cost_fit_error.*
    python experiments/fit_costs.py --every 5    # another hold-out stride

Target: median absolute error <= 5% per operation on held-out points.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import numpy as np

from servegym.envs.core.metrics import atomic_write
from servegym.envs.costs.attention_fit import AttentionShape, fit_attention
from servegym.envs.costs.catalog import load_calibration, measured_combinations, scan
from servegym.envs.costs.specs import get_gpu, get_model
from servegym.envs.costs.tables import TOKEN_OPS, read_table
from servegym.envs.costs.validation import (
    Errors,
    attention_errors,
    curve_errors,
    iteration_errors,
    token_op_errors,
)

ROOT = Path(__file__).resolve().parents[1]

TARGET = 0.05
# Why an operation can miss the target (filled in the report only when it misses).
WHY = MappingProxyType({
    "attn_decode": "decode kernel times are not affine in context: a ~15 us launch floor "
                   "at small batches, L2-resident KV in the profile at batch <= 4, and the "
                   "split-KV heuristic's kink near 1.3k tokens; the simulator needs an affine "
                   "decode time (closed-form decode runs), so these are not modelled",
    "attn_prefill": "one FLOP/byte formula for all chunk lengths: tile quantisation at short "
                    "chunks is not modelled",
    "all_reduce": "NCCL switches algorithm/protocol with message size (steps in the curve)",
})


def _pool(bucket: dict[str, list[Errors]]) -> dict[str, dict]:
    pooled = {}
    for op, errors in bucket.items():
        values = np.concatenate([e.values for e in errors])
        weighted = float(np.mean([e.weighted for e in errors]))
        pooled[op] = Errors(values, weighted).summary()
    return pooled


def evaluate(every: int, table_dirs: tuple[str, ...]) -> dict:
    entries = scan(table_dirs)
    per_table, by_op = [], defaultdict(list)
    for entry in entries:
        table = read_table(entry.path)
        if entry.kind == "ops" and entry.has_token_ops:
            for tp in table.tensor_parallel:
                for op in (o for o in TOKEN_OPS if o in table.ops):
                    errors = token_op_errors(table, op, tp, every)
                    by_op[op].append(errors)
                    per_table.append({"gpu": entry.gpu, "model": entry.model, "tp": tp,
                                      "op": op, "source": entry.source, **errors.summary()})
        if entry.kind == "network":
            for tp in table.tensor_parallel:
                if len(table.rows("all_reduce", tp)["op"]):
                    grid, ms = table.curve("all_reduce", tp, "size_bytes")
                    errors = curve_errors(grid, ms, every)
                    by_op["all_reduce"].append(errors)
                    per_table.append({"gpu": entry.gpu, "model": f"network {entry.network}",
                                      "tp": tp, "op": "all_reduce", "source": entry.source,
                                      **errors.summary()})
        if entry.kind == "ops" and entry.has_attention:
            for tp in table.tensor_parallel:
                shape = AttentionShape.of(get_model(entry.model), get_gpu(entry.gpu), tp)
                fit = fit_attention(table, tp, shape)
                for op, errors in attention_errors(table, tp, shape, every).items():
                    by_op[op].append(errors)
                    per_table.append({"gpu": entry.gpu, "model": entry.model, "tp": tp,
                                      "op": op, "source": entry.source, **errors.summary(),
                                      "efficiencies": fit.efficiencies()})
    iterations = []
    for model, gpu, tp in measured_combinations(table_dirs):
        cal = load_calibration(model, gpu, tp, table_dirs)
        for kind, errors in iteration_errors(get_model(model), get_gpu(gpu), tp, cal,
                                             every).items():
            iterations.append({"gpu": gpu, "model": model, "tp": tp, "kind": kind,
                               **errors.summary()})
    return {"per_op": _pool(by_op), "per_table": per_table, "per_iteration": iterations}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_report(result: dict, every: int) -> str:
    lines = [f"Held-out error (every {every}th point left out of the fit), median absolute "
             f"relative error per operation pooled over all tables; target <= "
             f"{_pct(TARGET)}.", "",
             "| operation | held-out points | median | p90 | max | time-weighted | meets target |",
             "|---|---|---|---|---|---|---|"]
    misses = []
    for op, s in sorted(result["per_op"].items()):
        ok = s["median"] <= TARGET
        if not ok:
            misses.append(op)
        lines.append(f"| {op} | {s['points']} | {_pct(s['median'])} | {_pct(s['p90'])} | "
                     f"{_pct(s['max'])} | {_pct(s['time_weighted'])} | {'yes' if ok else 'NO'} |")
    for op in misses:
        lines.append(f"\n{op} misses the target: {WHY.get(op, 'see the per-table rows')}.")
    lines += ["", "Per iteration (predictor without the held-out points vs the sum of measured "
              "per-op times there):", "",
              "| model | GPU | TP | iteration | points | median | p90 | max |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["per_iteration"]:
        lines.append(f"| {r['model']} | {r['gpu']} | {r['tp']} | {r['kind']} | {r['points']} | "
                     f"{_pct(r['median'])} | {_pct(r['p90'])} | {_pct(r['max'])} |")
    worst = sorted(result["per_table"], key=lambda r: -r["median"])[:10]
    lines += ["", "Worst per-table medians:", "",
              "| GPU | table | TP | operation | median | p90 |", "|---|---|---|---|---|---|"]
    for r in worst:
        lines.append(f"| {r['gpu']} | {r['model']} | {r['tp']} | {r['op']} | "
                     f"{_pct(r['median'])} | {_pct(r['p90'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=int, default=4, help="hold out every k-th point")
    parser.add_argument("--table-dir", action="append", default=[],
                        help="extra folder of op tables (searched before the shipped ones)")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    args = parser.parse_args()
    if args.every < 2:
        parser.error("--every must be >= 2 (every point held out leaves nothing to fit)")
    result = evaluate(args.every, tuple(args.table_dir))
    report = format_report(result, args.every)
    print(report)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = {"created": stamp, "every": args.every, "target_median": TARGET, **result}
    out = Path(args.out)
    # Keep every run; the plain name points at the latest.
    write = lambda h: json.dump(payload, h, indent=2)
    atomic_write(out / "history" / f"cost_fit_error_{stamp}.json", write)
    atomic_write(out / "cost_fit_error.json", write, overwrite=True)
    atomic_write(out / "cost_fit_error.md", lambda h: h.write(
        f"# Cost model held-out error ({stamp})\n\n`python experiments/fit_costs.py "
        f"--every {args.every}`\n\n{report}\n"), overwrite=True)


if __name__ == "__main__":
    main()
