"""Which measured tables exist, and the set of them a (model, GPU, TP) predictor needs.

Tables are found by scanning folders for ``*.csv`` / ``*.csv.gz`` files in the format of
``envs/costs/tables.py`` (only their headers are read to build the index). The shipped
folder is ``envs/data/calibration/``; callers may add folders (e.g. fresh profiler output).
When several tables give the same op at the same TP, our own profiler's table wins over
Vidur's, and an earlier folder wins over a later one.

A registered model whose ``ModelSpec.tables_from`` names another (Llama-3.1-8B ->
Llama-3-8B) is served by that model's tables when it has none of its own
(:func:`tables_model`); the two must have the same cost shape. The tables were measured only
over some range of batched tokens and attention context (:func:`measured_range`); the cost
model says so in ``describe()`` and warns once when a run goes beyond it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servegym.envs.costs.specs import get_gpu, get_model
from servegym.envs.costs.tables import (
    ATTENTION_OPS,
    OpTable,
    TableFormatError,
    read_meta,
    read_table,
)

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "calibration"
# Token-level ops a layer cannot do without; ``emb`` and ``attn_kv_cache_save`` are
# optional (Vidur's tables have no KV-cache save; it is then fitted).
REQUIRED_OPS = (
    "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)
SOURCE_PRIORITY = ("servegym-profiler", "vidur")
NETWORKS = ("dgx", "pairwise_nvlink")


class MissingTableError(LookupError):
    """No measured table for what was asked; the message lists what exists."""


@dataclass(frozen=True)
class TableEntry:
    """One table file, known by its header."""

    path: Path
    kind: str
    source: str
    gpu: str
    model: str
    tensor_parallel: tuple[int, ...]
    ops: tuple[str, ...]
    network: str

    @property
    def has_token_ops(self) -> bool:
        return set(REQUIRED_OPS) <= set(self.ops)

    @property
    def has_attention(self) -> bool:
        return set(ATTENTION_OPS) <= set(self.ops)


@dataclass(frozen=True)
class Calibration:
    """The tables one predictor is built from (``attention`` may be another shape's)."""

    ops: tuple[OpTable, ...]
    attention: OpTable | None
    attention_tp: int
    network: OpTable | None


def canonical_name(kind: str, name: str) -> str:
    """Registry spelling of a GPU/model name; names outside the registry stay as written."""
    lookup = get_gpu if kind == "gpu" else get_model
    try:
        return lookup(name).name
    except (KeyError, ValueError):
        return name


def tables_model(model: str, table_dirs: Sequence[str | Path] = (),
                 entries: Sequence[TableEntry] | None = None) -> str:
    """Registry name of the model whose tables serve ``model``: its own name if any table
    has token ops for it, else its ``tables_from`` (checked to have the same cost shape),
    else its own name (and the lookup then finds nothing)."""
    spec = get_model(model)
    entries = scan(table_dirs) if entries is None else entries
    if any(e.kind == "ops" and e.has_token_ops and e.model == spec.name for e in entries):
        return spec.name
    if not spec.tables_from:
        return spec.name
    source = get_model(spec.tables_from)
    if source.cost_shape != spec.cost_shape:
        raise ValueError(
            f"{spec.name}.tables_from={spec.tables_from!r}, but the two differ in shape "
            f"({spec.cost_shape} vs {source.cost_shape}); tables of one cannot time the other")
    return source.name


def measured_range(calibration: Calibration, tensor_parallel: int) -> dict[str, int]:
    """How far the tables of one predictor were measured: the most batched tokens of the
    token-level ops at this TP, and the longest attention context (prefill chunk plus its
    cached context; decode context) in the attention table."""
    tokens = 0
    for table in calibration.ops:
        rows = table.columns
        mask = (rows["tensor_parallel"] == tensor_parallel) & ~np.isin(rows["op"], ATTENTION_OPS)
        if mask.any():
            tokens = max(tokens, int(rows["num_tokens"][mask].max()))
    prefill = decode = 0
    if calibration.attention is not None:
        rows = calibration.attention.columns
        mask = rows["op"] == "attn_prefill"
        if mask.any():
            prefill = int((rows["num_tokens"][mask] + rows["context_tokens"][mask]).max())
        mask = rows["op"] == "attn_decode"
        if mask.any():
            decode = int(rows["context_tokens"][mask].max())
    return {"batched_tokens": tokens, "prefill_context_tokens": prefill,
            "decode_context_tokens": decode}


def _entry(path: Path) -> TableEntry:
    meta = read_meta(path)
    tps = tuple(int(v) for v in meta.get("tensor_parallel", "").split(",") if v.strip())
    ops = tuple(v.strip() for v in meta.get("ops", "").split(",") if v.strip())
    if not tps or not ops:
        raise TableFormatError(f"{path}: metadata needs '# tensor_parallel: ...' and '# ops: ...'")
    return TableEntry(path, meta["kind"], meta["source"], canonical_name("gpu", meta["gpu"]),
                      canonical_name("model", meta.get("model", "")) if meta.get("model") else "",
                      tps, ops, meta.get("network", ""))


def scan(table_dirs: Sequence[str | Path] = ()) -> tuple[TableEntry, ...]:
    """Every table under ``table_dirs`` then the shipped folder, in priority order."""
    entries = []
    for folder in (*map(Path, table_dirs), SHIPPED_DIR):
        if not folder.is_dir():
            raise FileNotFoundError(f"cost table folder {folder} does not exist")
        files = sorted([*folder.rglob("*.csv"), *folder.rglob("*.csv.gz")])
        entries += [_entry(path) for path in files]
    rank = {source: i for i, source in enumerate(SOURCE_PRIORITY)}
    # Stable: within a source, folder order (then path order) is kept.
    return tuple(sorted(entries, key=lambda e: rank.get(e.source, len(rank))))


def measured_combinations(table_dirs: Sequence[str | Path] = ()) -> list[tuple[str, str, int]]:
    """Sorted ``(model, gpu, tp)`` with measured token-level ops."""
    found = {(e.model, e.gpu, tp) for e in scan(table_dirs) if e.kind == "ops" and e.has_token_ops
             for tp in e.tensor_parallel}
    return sorted(found)


def available_text(table_dirs: Sequence[str | Path]) -> str:
    combos = measured_combinations(table_dirs)
    grouped: dict[tuple[str, str], list[int]] = {}
    for model, gpu, tp in combos:
        grouped.setdefault((model, gpu), []).append(tp)
    return "; ".join(f"{m} on {g} at TP {','.join(map(str, tps))}"
                     for (m, g), tps in grouped.items()) or "none"


def load_calibration(
    model: str,
    gpu: str,
    tensor_parallel: int,
    table_dirs: Sequence[str | Path] = (),
    network: str = "dgx",
) -> Calibration:
    """Read the tables for (model, GPU, TP) (those of ``tables_model(model)``);
    ``MissingTableError`` lists what exists."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose one of {NETWORKS}")
    entries = scan(table_dirs)
    requested = get_model(model).name
    model, gpu = tables_model(requested, entries=entries), get_gpu(gpu).name
    ops = [e for e in entries if e.kind == "ops" and e.model == model and e.gpu == gpu
           and e.has_token_ops and tensor_parallel in e.tensor_parallel]
    if not ops:
        raise MissingTableError(
            f"no measured op table for {requested}"
            + (f" (served by {model}'s tables)" if model != requested else "")
            + f" on {gpu} at TP{tensor_parallel}. Available: "
            f"{available_text(table_dirs)}. Measure one with experiments/profile_ops.py on "
            f"that GPU (see docs/costs.md), or use source='roofline' / source='auto'"
        )
    attention, attention_tp = _attention_table(entries, model, gpu, tensor_parallel)
    nets = [e for e in entries if e.kind == "network" and e.gpu == gpu and e.network == network]
    return Calibration(
        ops=tuple(read_table(e.path) for e in ops),
        attention=read_table(attention.path) if attention else None,
        attention_tp=attention_tp,
        network=read_table(nets[0].path) if nets else None,
    )


def _attention_table(
    entries: Sequence[TableEntry], model: str, gpu: str, tensor_parallel: int
) -> tuple[TableEntry | None, int]:
    """The attention table to fit: this exact shape if measured, else the same GPU's, else
    any (its fit is then transferred by FLOPs and bytes)."""
    candidates = [e for e in entries if e.kind == "ops" and e.has_attention]
    for e in candidates:
        if e.model == model and e.gpu == gpu and tensor_parallel in e.tensor_parallel:
            return e, tensor_parallel
    same_gpu = [e for e in candidates if e.gpu == gpu]
    for e in same_gpu or candidates:
        return e, e.tensor_parallel[0]
    return None, 0
