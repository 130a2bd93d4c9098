"""Iteration times from measured per-operation tables (Vidur's or our profiler's).

One iteration of a batch with ``T`` tokens in ``B`` sequences (prefill chunks + decodes)::

    time = overhead
         + L * ( sum of token-level ops at T tokens          (measured, interpolated)
                 + 2 all-reduces of T x hidden x dtype bytes  (measured, TP > 1)
                 + sum over prefill chunks of prefill attention(q, c)    (fitted)
                 + decode attention(n, S) if n requests decode            (fitted) )
         + outside the layers: embedding + final norm at T tokens (measured)
           + LM head at B sequences (fitted: measured gate/up GEMM scaled by output width)
           + embedding all-reduce and logits gather (measured all-reduce table)

``L`` = layers. Token-level ops are linear interpolation of the table's medians between
measured token counts (clamped below the first, linear extrapolation from the upper half's
slope above the last). Everything that depends only on ``T`` or ``B`` is tabulated into
Python lists at construction, so ``iteration_time`` is a few list lookups plus one
multiply-add per prefill chunk. Decode attention is affine in the total context ``S``
(``d0 + d1 n + d2 S``), so ``decode_coeffs(n)`` is exact.

Sources, as ``describe()["parts"]`` states per part: token ops ``measured``; attention
``fitted`` (to this shape's measured attention rows if the tables have them, else to another
shape's, transferred by FLOPs and bytes); KV-cache save ``measured`` if tabulated, else
``fitted`` (launch floor of the smallest elementwise op + 2 KV writes at the decode fit's
bandwidth); all-reduce ``measured`` (``roofline`` if no network table); CPU overhead a
constant (``assumed``). ``vidur_compatible=True`` counts what Vidur counts: the layers only
(no embedding, final norm, LM head) with one residual add per layer.

Measured range: the tables were measured only so far (``describe()["measured_up_to"]``: the
most batched tokens of the token ops at this TP, the longest prefill and decode attention
context of the attention rows; the shipped Vidur tables: 4,096 batched tokens for Llama-2,
32,768 for Llama-3, attention context 4,096). Beyond, token ops extend linearly and
attention is the fitted formula evaluated outside its rows. ``describe()["tables_model"]``
names the model whose tables are used (``ModelSpec.tables_from``: Llama-3.1-8B is timed by
Llama-3-8B's tables). The first iteration whose context goes beyond the measured attention
context (a prefill chunk reaching past the longest measured one, or a decode batch whose mean
context does) raises one
:class:`BeyondMeasuredRangeWarning` per cost model (and, by the ``once`` filter, one per
message and process). Decode-only runs advanced in closed form (``decode_coeffs``) are not
checked: their requests were prefilled through ``iteration_time`` first.

Two more terms of Vidur (Agrawal et al., MLSys 2024; microsoft/vidur @7d47513,
``sklearn_execution_time_predictor.py``) are options, off by default:

* ``allreduce_launch_overhead_s``: added to each of the two all-reduces per layer when
  TP > 1 (Vidur's ``nccl_cpu_launch_overhead_ms`` = 0.02 ms; Llama-2-70B's 80 layers: 3.2 ms
  per iteration). Vidur's ``skip_cpu_overhead_modeling`` does not remove it.
* ``gqa_attention_overhead``: for grouped-query models (more query than KV heads), decode
  attention is multiplied by ``1 + overhead`` when more than one request decodes, and prefill
  attention when more than one prefill chunk is in the batch (Vidur's
  ``attention_{decode,prefill}_batching_overhead_fraction`` = 0.1).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.costs.attention_fit import AttentionFit, AttentionShape, fit_attention
from servegym.envs.costs.base import CostModel, bad_chunk, check_decodes, time_table
from servegym.envs.costs.catalog import (
    Calibration,
    canonical_name,
    load_calibration,
    measured_range,
    tables_model,
)
from servegym.envs.costs.roofline import _check_count
from servegym.envs.costs.specs import (
    GPUSpec,
    ModelSpec,
    get_gpu,
    get_model,
    kv_bytes_per_token_per_gpu,
    validate_tensor_parallel,
)
from servegym.envs.costs.tables import OpTable

LAYER_OPS = (
    "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj",
)
_MS = 1e-3
_HOST_COPY_LATENCY_S = 1e-5
_NO_LIMIT = 1 << 40  # tokens of context: "no limit" as an int (no float compare per chunk)


class BeyondMeasuredRangeWarning(UserWarning):
    """A run went beyond the token counts or attention context the tables were measured at."""


# Once per message and process (see RooflineFallbackWarning in factory.py).
warnings.filterwarnings("once", category=BeyondMeasuredRangeWarning)


def interpolate(grid: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear through ``(grid, values)``; flat below the grid; above it, the last
    value plus the least-squares slope of the grid's upper half (work grows linearly there)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.interp(x, grid, values)
    above = x > grid[-1]
    if above.any():
        upper = grid >= grid[-1] / 2
        slope = np.polyfit(grid[upper], values[upper], 1)[0] if upper.sum() >= 2 else 0.0
        out[above] = values[-1] + max(slope, 0.0) * (x[above] - grid[-1])
    return out


class TableCostModel(CostModel):
    """Measured-table predictor of vLLM-style iterations on one tensor-parallel group."""

    source = "measured"

    def __init__(
        self,
        model: ModelSpec | str,
        gpu: GPUSpec | str,
        tensor_parallel: int = 1,
        block_size: int = 16,
        iteration_overhead_s: float = 1e-3,
        max_num_tokens: int = 16384,
        network: str = "dgx",
        vidur_compatible: bool = False,
        allreduce_launch_overhead_s: float = 0.0,
        gqa_attention_overhead: float = 0.0,
        table_dirs: Sequence[str | Path] = (),
        calibration: Calibration | None = None,
    ) -> None:
        self.model = get_model(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
        validate_tensor_parallel(self.model, tensor_parallel)
        self.tensor_parallel = tensor_parallel
        self.block_size = _check_count("block_size", block_size, 1)
        self.max_num_tokens = _check_count("max_num_tokens", max_num_tokens, 1)
        if not (isinstance(iteration_overhead_s, int | float) and not isinstance(
                iteration_overhead_s, bool) and 0 <= iteration_overhead_s < math.inf):
            raise ValueError(f"iteration_overhead_s must be a finite number >= 0 (seconds), "
                             f"got {iteration_overhead_s!r}")
        self.iteration_overhead_s = float(iteration_overhead_s)
        self.network = network
        self.vidur_compatible = bool(vidur_compatible)
        for label, value in (("allreduce_launch_overhead_s", allreduce_launch_overhead_s),
                             ("gqa_attention_overhead", gqa_attention_overhead)):
            if not (isinstance(value, int | float) and not isinstance(value, bool)
                    and 0 <= value < math.inf):
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r} "
                                 "(0 turns the term off)")
        self.allreduce_launch_overhead_s = float(allreduce_launch_overhead_s)
        grouped = self.model.num_heads > self.model.num_kv_heads
        self.gqa_attention_overhead = float(gqa_attention_overhead)
        # Only grouped-query models pay it, as in Vidur; 1.0 = off.
        self._gqa_factor = 1.0 + (self.gqa_attention_overhead if grouped else 0.0)
        if calibration is None:
            calibration = load_calibration(self.model.name, self.gpu.name, tensor_parallel,
                                           table_dirs, network)
            self.tables_model = tables_model(self.model.name, table_dirs)
        else:
            named = {canonical_name("model", t.model) for t in calibration.ops}
            self.tables_model = next(iter(named)) if len(named) == 1 else self.model.name
        self.calibration = calibration
        self.measured_up_to = measured_range(calibration, tensor_parallel)
        # Checked in iteration_time (ints: cheaper to compare); _NO_LIMIT once it has warned.
        self._context_limit = max(self.measured_up_to["prefill_context_tokens"],
                                  self.measured_up_to["decode_context_tokens"]) or _NO_LIMIT
        self.parts: dict[str, str] = {}
        self._build()

    # ---- construction ---------------------------------------------------------------

    def _curve(self, op: str) -> tuple[np.ndarray, np.ndarray, OpTable] | None:
        """(token counts, seconds, table) of ``op`` from the first table that has it."""
        for table in self.calibration.ops:
            if len(table.rows(op, self.tensor_parallel)["op"]):
                grid, ms = table.curve(op, self.tensor_parallel, "num_tokens")
                return grid, ms * _MS, table
        return None

    def _op_fn(self, op: str) -> Callable[[np.ndarray], np.ndarray]:
        curve = self._curve(op)
        if curve is None:
            raise KeyError(f"no measured {op!r} at TP{self.tensor_parallel} in the tables")
        grid, seconds, table = curve
        self.parts.setdefault("token_ops", f"measured ({table.describe()})")
        return lambda x: interpolate(grid, seconds, x)

    def _build(self) -> None:
        m, tp = self.model, self.tensor_parallel
        self.attention = self._fit_attention()
        p = self.attention.prefill
        layers = m.num_layers
        self._prefill = tuple(layers * c for c in p)
        self._decode = tuple(layers * c for c in self.attention.decode)
        self._allreduce = self._allreduce_fn()
        token_fn = self._token_fn()
        lm_fn = self._lm_head_fn()
        sizes = np.arange(self.max_num_tokens + 1)
        self._token_fn_array = token_fn
        self._lm_fn_array = lm_fn
        self._token_table = time_table(token_fn(sizes))
        self._lm_table = time_table(lm_fn(sizes))
        self._kv_bytes_per_token_gpu = kv_bytes_per_token_per_gpu(m, tp)
        self._send_recv = self._send_recv_fn()
        self.parts["cpu_overhead"] = f"assumed constant {self.iteration_overhead_s:g} s"
        if self.allreduce_launch_overhead_s and tp > 1:
            self.parts["allreduce_launch"] = (
                f"assumed {self.allreduce_launch_overhead_s:g} s per all-reduce, 2 per layer "
                "(Vidur's NCCL CPU launch overhead)")
        if self._gqa_factor != 1.0:
            self.parts["gqa_attention"] = (
                f"assumed x{self._gqa_factor:g} on attention of batches with more than one "
                "decode (or prefill chunk) (Vidur's GQA batching overhead)")

    def _fit_attention(self) -> AttentionFit:
        cal, tp = self.calibration, self.tensor_parallel
        shape = AttentionShape.of(self.model, self.gpu, tp)
        table = cal.attention
        if table is None:
            raise KeyError("no attention table: the tables must hold attn_prefill/attn_decode "
                           "rows for some shape (the shipped Vidur A100 table does)")
        own = (cal.attention_tp == tp
               and canonical_name("model", table.model) == self.tables_model
               and canonical_name("gpu", table.gpu) == self.gpu.name)
        self.attention_shape_measured = bool(own)
        if own:
            fit = fit_attention(table, tp, shape)
            self.parts["attention"] = f"fitted ({fit.origin}; this shape measured)"
            return fit
        ref = AttentionShape.of(get_model(table.model), get_gpu(table.gpu), cal.attention_tp)
        fit = fit_attention(table, cal.attention_tp, ref)
        fit = fit.transfer(shape, f"transferred to {self.model.name} on {self.gpu.name} "
                                  f"TP{tp} by FLOPs and bytes")
        self.parts["attention"] = f"fitted ({fit.origin})"
        return fit

    def _allreduce_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        """Seconds of one all-reduce of ``bytes`` over the TP group."""
        tp, table = self.tensor_parallel, self.calibration.network
        if tp == 1:
            return lambda size: np.zeros_like(np.asarray(size, dtype=np.float64))
        if table is not None and len(table.rows("all_reduce", tp)["op"]):
            grid, ms = table.curve("all_reduce", tp, "size_bytes")
            self.parts["all_reduce"] = f"measured ({table.describe()})"
            return lambda size: interpolate(grid, ms * _MS, size)
        g = self.gpu
        self.parts["all_reduce"] = "roofline (no network table for this GPU and TP)"
        ring = 2 * (tp - 1) / tp
        return lambda size: g.interconnect_latency_s + ring * np.asarray(size, float) / (
            g.interconnect_bandwidth)

    def _send_recv_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        """Seconds to send ``bytes`` to a peer GPU (KV transfer between instances)."""
        table = self.calibration.network
        if table is not None and len(table.rows("send_recv", 2)["op"]):
            grid, ms = table.curve("send_recv", 2, "size_bytes")
            self.parts["kv_transfer"] = f"measured send/recv ({table.describe()})"
            return lambda size: interpolate(grid, ms * _MS, size)
        g = self.gpu
        self.parts["kv_transfer"] = "roofline (no send/recv table for this GPU)"
        return lambda size: g.interconnect_latency_s + np.asarray(size, float) / (
            g.interconnect_bandwidth)

    def _kv_save_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        if self._curve("attn_kv_cache_save") is not None:
            self.parts["kv_cache_save"] = "measured"
            return self._op_fn("attn_kv_cache_save")
        floor = float(self._curve("add")[1].min())
        per_entry = self.attention.decode[2]  # seconds per KV entry read, this shape
        self.parts["kv_cache_save"] = (
            "fitted (launch floor of the measured 'add' + writing K and V at the decode "
            "attention fit's bandwidth)")
        return lambda t: np.where(np.asarray(t) > 0, floor + 2 * per_entry * np.asarray(t), 0.0)

    def _token_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        m = self.model
        ops = [self._op_fn(op) for op in LAYER_OPS]
        add = self._op_fn("add")
        adds = 1 if self.vidur_compatible else 2
        kv_save = self._kv_save_fn()
        emb = self._op_fn("emb") if self._curve("emb") is not None else None
        norm = self._op_fn("input_layernorm")
        row_bytes = m.hidden_size * m.dtype_bytes
        allreduce = self._allreduce
        outside_layers = not self.vidur_compatible
        launch = self.allreduce_launch_overhead_s if self.tensor_parallel > 1 else 0.0

        def token_time(tokens: np.ndarray) -> np.ndarray:
            t = np.asarray(tokens, dtype=np.float64)
            layer = sum(op(t) for op in ops) + adds * add(t) + kv_save(t)
            layer = layer + 2 * (allreduce(t * row_bytes) + launch)
            total = m.num_layers * layer
            if outside_layers:
                # Embedding lookup (vocab-parallel, hence an all-reduce) and final norm.
                total = total + norm(t) + allreduce(t * row_bytes)
                if emb is not None:
                    total = total + emb(t)
            return np.where(t > 0, total, 0.0)

        return token_time

    def _lm_head_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        m, tp = self.model, self.tensor_parallel
        if self.vidur_compatible:
            self.parts["lm_head"] = "left out (vidur_compatible: Vidur counts layers only)"
            return lambda n: np.zeros_like(np.asarray(n, dtype=np.float64))
        up = self._op_fn("mlp_up_proj")
        # Same [n, hidden] x [hidden, width] GEMM family: time scales with the output width.
        ratio = math.ceil(m.vocab_size / tp) / ((2 if m.gated_mlp else 1) * m.ffn_size / tp)
        allreduce = self._allreduce
        logits_bytes = m.vocab_size * m.dtype_bytes
        self.parts["lm_head"] = (f"fitted (measured mlp_up_proj x {ratio:.3f}, the ratio of "
                                 "output widths; logits gather = half an all-reduce)")

        def lm_head(num_seqs: np.ndarray) -> np.ndarray:
            n = np.asarray(num_seqs, dtype=np.float64)
            gather = 0.5 * allreduce(n * logits_bytes) if tp > 1 else 0.0
            return np.where(n > 0, ratio * up(n) + gather, 0.0)

        return lm_head

    def _beyond_measured(self) -> None:
        if self._context_limit == _NO_LIMIT:
            return
        self._context_limit = _NO_LIMIT
        r, table = self.measured_up_to, self.calibration.attention
        warnings.warn(
            f"{self.model.name} on {self.gpu.name} at TP{self.tensor_parallel}: a request's "
            f"context goes beyond the measured range of the attention table ({table.model} "
            f"on {table.gpu} at TP{self.calibration.attention_tp}: prefill to "
            f"{r['prefill_context_tokens']} tokens, decode to {r['decode_context_tokens']}; "
            f"token ops from {self.tables_model}'s table to {r['batched_tokens']} batched "
            f"tokens). Beyond it attention is the fitted formula extrapolated: treat "
            f"long-context times as estimates (describe()['measured_up_to'])",
            BeyondMeasuredRangeWarning, stacklevel=3)

    # ---- lookups --------------------------------------------------------------------

    def _tokens_s(self, tokens: int) -> float:
        if tokens < len(self._token_table):
            return self._token_table[tokens]
        return float(self._token_fn_array(np.array([tokens]))[0])

    def _lm_head_s(self, num_seqs: int) -> float:
        if num_seqs < len(self._lm_table):
            return self._lm_table[num_seqs]
        return float(self._lm_fn_array(np.array([num_seqs]))[0])

    # ---- CostModel ------------------------------------------------------------------

    def iteration_time(
        self,
        prefill_chunks: Sequence[tuple[int, int]],
        decode_count: int,
        decode_context_sum: int,
    ) -> float:
        check_decodes(decode_count, decode_context_sum)
        tokens = decode_count
        attention = 0.0
        p0, p1, p2, p3, p4 = self._prefill
        limit = self._context_limit
        for new, cached in prefill_chunks:
            if new < 1 or cached < 0:
                raise bad_chunk(new, cached)
            tokens += new
            attention += p0 + p2 * cached + new * (p1 + p3 * cached + p4 * (new + 1) * 0.5)
            if cached + new > limit:
                self._beyond_measured()
        if not tokens:
            return 0.0
        if len(prefill_chunks) > 1:
            attention *= self._gqa_factor
        try:
            linear = self._tokens_s(tokens) + self._lm_head_s(len(prefill_chunks) + decode_count)
        except TypeError:
            raise TypeError(
                f"token counts must be ints; got prefill_chunks={list(prefill_chunks)!r}, "
                f"decode_count={decode_count!r}"
            ) from None
        if decode_count:
            if decode_context_sum > limit * decode_count:
                self._beyond_measured()
            d0, d1, d2 = self._decode
            decode = d0 + d1 * decode_count + d2 * decode_context_sum
            attention += decode * self._gqa_factor if decode_count > 1 else decode
        return self.iteration_overhead_s + linear + attention

    def decode_coeffs(self, batch_size: int) -> tuple[float, float]:
        n = _check_count("batch_size", batch_size, 0)
        if n == 0:
            return 0.0, 0.0
        d0, d1, d2 = self._decode
        factor = self._gqa_factor if n > 1 else 1.0
        base = self.iteration_overhead_s + (self._tokens_s(n) + self._lm_head_s(n)) + (
            (d0 + d1 * n) * factor)
        return base, d2 * factor

    def swap_time(self, num_blocks: int) -> float:
        num_blocks = _check_count("num_blocks", num_blocks, 0)
        if num_blocks == 0:
            return 0.0
        shard_bytes = num_blocks * self.block_size * self._kv_bytes_per_token_gpu
        return _HOST_COPY_LATENCY_S + shard_bytes / self.gpu.host_link_bandwidth

    def kv_transfer_time(self, num_tokens: int) -> float:
        """Each GPU of the group sends its KV shard to its peer: measured NVLink send/recv
        where the network table has it, else the interconnect roofline."""
        num_tokens = _check_count("num_tokens", num_tokens, 0)
        if num_tokens == 0:
            return 0.0
        return float(self._send_recv(np.array([num_tokens * self._kv_bytes_per_token_gpu]))[0])

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": self.model.name,
            "gpu": self.gpu.name,
            "tensor_parallel": self.tensor_parallel,
            "parts": dict(self.parts),
            "attention_efficiencies": self.attention.efficiencies(),
            "iteration_overhead_s": self.iteration_overhead_s,
            "network": self.network,
            "vidur_compatible": self.vidur_compatible,
            "allreduce_launch_overhead_s": self.allreduce_launch_overhead_s,
            "gqa_attention_overhead": self.gqa_attention_overhead,
            "max_num_tokens": self.max_num_tokens,
            "tables": [t.path for t in self.calibration.ops],
            "tables_model": self.tables_model,
            "scaled_from": (None if self.tables_model == self.model.name else
                            f"{self.tables_model} (same shape; ModelSpec.tables_from)"),
            "measured_up_to": dict(self.measured_up_to),
            "model_context": self.model.max_context,
            "beyond_measured": ("token ops: last measured value + the upper half's "
                                "least-squares slope; attention: the fitted formula "
                                "evaluated past its rows"),
            "model_spec": asdict(self.model),
            "gpu_spec": asdict(self.gpu),
        }
