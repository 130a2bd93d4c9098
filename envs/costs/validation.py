"""Held-out error of the table predictor: per operation and per iteration.

Hold-out rule: every ``every``-th measured token count (offset ``every // 2``; never the
first or last, so errors are interpolation errors) is removed before building; for
attention, every ``every``-th distinct chunk length (prefill) and batch size (decode) is
removed with all its context lengths (for the per-iteration check, also every attention
point at a held-out token count). Errors are ``|predicted / measured - 1|`` at the held-out
points. Per-iteration errors compare the predictor built without the held-out points with
the sum of the *measured* per-operation times at those points (token ops, and attention
where this shape's attention is measured); parts that are fitted or assumed in both (LM
head, KV-cache save, CPU overhead) cancel. Nothing here measures how well a sum of
per-op kernel times predicts a real engine iteration (no end-to-end measurements exist).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servegym.envs.costs.attention_fit import AttentionShape, attention_points, fit_attention
from servegym.envs.costs.catalog import Calibration
from servegym.envs.costs.specs import GPUSpec, ModelSpec
from servegym.envs.costs.table_model import TableCostModel, interpolate
from servegym.envs.costs.tables import OpTable


def holdout_mask(n: int, every: int = 4) -> np.ndarray:
    """True at held-out positions of a sorted grid of ``n`` points."""
    index = np.arange(n)
    return (index % every == every // 2) & (index > 0) & (index < n - 1)


@dataclass(frozen=True)
class Errors:
    """Absolute relative errors at held-out points, plus the time-weighted error."""

    values: np.ndarray
    weighted: float  # sum |pred - true| / sum true

    @classmethod
    def of(cls, predicted: np.ndarray, measured: np.ndarray) -> Errors:
        predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
        return cls(np.abs(predicted / measured - 1),
                   float(np.abs(predicted - measured).sum() / measured.sum()))

    def summary(self) -> dict[str, float]:
        v = self.values
        return {"points": int(len(v)), "median": float(np.median(v)),
                "p90": float(np.percentile(v, 90)), "max": float(v.max()),
                "time_weighted": self.weighted}


def curve_errors(grid: np.ndarray, values: np.ndarray, every: int = 4) -> Errors:
    """Interpolation error of a one-key curve at its held-out points."""
    held = holdout_mask(len(grid), every)
    predicted = interpolate(grid[~held], values[~held], grid[held])
    return Errors.of(predicted, values[held])


def token_op_errors(table: OpTable, op: str, tp: int, every: int = 4) -> Errors:
    grid, ms = table.curve(op, tp, "num_tokens")
    return curve_errors(grid, ms, every)


def heldout_tokens(table: OpTable, tp: int, every: int = 4) -> np.ndarray:
    grid, _ = table.curve("mlp_up_proj", tp, "num_tokens")
    return grid[holdout_mask(len(grid), every)].astype(np.int64)


def attention_held(table: OpTable, tp: int, every: int = 4) -> dict[str, np.ndarray]:
    """Held-out chunk lengths (``attn_prefill``) and batch sizes (``attn_decode``)."""
    held = {}
    for op, key in (("attn_prefill", "num_tokens"), ("attn_decode", "batch_size")):
        values = np.unique(attention_points(table, op, tp)[key])
        held[op] = values[holdout_mask(len(values), every)]
    return held


def attention_errors(table: OpTable, tp: int, shape: AttentionShape,
                     every: int = 4) -> dict[str, Errors]:
    held = attention_held(table, tp, every)
    p = attention_points(table, "attn_prefill", tp)
    d = attention_points(table, "attn_decode", tp)
    hp = np.isin(p["num_tokens"], held["attn_prefill"])
    hd = np.isin(d["batch_size"], held["attn_decode"])
    fit = fit_attention(table, tp, shape, ~hp, ~hd)
    return {
        "attn_prefill": Errors.of(fit.prefill_time(p["num_tokens"][hp], p["context_tokens"][hp]),
                                  p["seconds"][hp]),
        "attn_decode": Errors.of(
            fit.decode_time(d["batch_size"][hd], d["batch_size"][hd] * d["context_tokens"][hd]),
            d["seconds"][hd]),
    }


def training_calibration(cal: Calibration, tp: int, held: np.ndarray,
                         every: int = 4) -> Calibration:
    """``cal`` without the held-out token counts, and (when this TP's attention is in the
    tables) without the held-out attention chunk lengths and batch sizes."""
    ops = tuple(t.select(~((t.columns["tensor_parallel"] == tp)
                           & ~np.isin(t.columns["op"], ("attn_prefill", "attn_decode"))
                           & np.isin(t.columns["num_tokens"], held))) for t in cal.ops)
    attention = cal.attention
    if attention is not None and cal.attention_tp == tp:
        attention = attention.select(~_attention_drop(attention, tp, every, held))
    return Calibration(ops, attention, cal.attention_tp, cal.network)


def _attention_drop(table: OpTable, tp: int, every: int, tokens: np.ndarray) -> np.ndarray:
    """Rows of held-out chunk lengths / batch sizes, and of held-out token counts (so an
    iteration at a held-out token count never sees its own attention point)."""
    held = attention_held(table, tp, every)
    cols = table.columns
    at_tp = cols["tensor_parallel"] == tp
    chunks = np.concatenate([held["attn_prefill"], tokens])
    batches = np.concatenate([held["attn_decode"], tokens])
    prefill = (cols["op"] == "attn_prefill") & np.isin(cols["num_tokens"], chunks)
    decode = (cols["op"] == "attn_decode") & np.isin(cols["batch_size"], batches)
    return at_tp & (prefill | decode)


def iteration_errors(model: ModelSpec, gpu: GPUSpec, tp: int, cal: Calibration,
                     every: int = 4, decode_context: int = 1024) -> dict[str, Errors]:
    """Prefill-only (one chunk of T tokens) and decode-only (T requests) iterations at
    held-out token counts T; truth = measured op sums (see the module docstring)."""
    held = heldout_tokens(cal.ops[0], tp, every)
    full = TableCostModel(model, gpu, tp, calibration=cal)
    train = TableCostModel(model, gpu, tp,
                           calibration=training_calibration(cal, tp, held, every))
    layers = model.num_layers
    measured = _measured_attention(full, cal, tp)
    out = {}
    for kind in ("prefill", "decode"):
        pred, true = [], []
        for t in held.tolist():
            if kind == "prefill":
                batch, fit = ([(t, 0)], 0, 0), float(full.attention.prefill_time(t, 0))
                key = ("attn_prefill", t, 1, 0)
            else:
                if t > 256:
                    continue
                batch = ([], t, t * decode_context)
                fit = float(full.attention.decode_time(t, t * decode_context))
                key = ("attn_decode", t, t, decode_context)
            truth = full.iteration_time(*batch)
            if measured is not None:
                if key not in measured:
                    continue  # this shape's attention was not measured at this point
                truth += layers * (measured[key] - fit)
            pred.append(train.iteration_time(*batch))
            true.append(truth)
        if pred:
            out[f"iteration_{kind}"] = Errors.of(np.array(pred), np.array(true))
    return out


def _measured_attention(model: TableCostModel, cal: Calibration,
                        tp: int) -> dict[tuple, float] | None:
    """Measured attention seconds by (op, tokens, batch, context) if this shape's attention
    is in the tables, else None."""
    if not model.attention_shape_measured:
        return None
    points = {}
    for op in ("attn_prefill", "attn_decode"):
        p = attention_points(cal.attention, op, tp)
        keys = zip(p["num_tokens"].tolist(), p["batch_size"].tolist(),
                   p["context_tokens"].tolist(), p["seconds"].tolist(), strict=True)
        points.update({(op, t, b, c): seconds for t, b, c, seconds in keys})
    return points
