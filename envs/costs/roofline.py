"""Analytical (roofline) cost model of a tensor-parallel transformer forward pass.

Every operation takes ``max(flops / (peak * compute_efficiency), bytes / (hbm_bw *
memory_efficiency))`` on one GPU of the tensor-parallel group; collectives add
``latency + volume / interconnect_bandwidth``. See ``envs/costs/base.py`` for the batch
and context conventions.

Speed: ``iteration_time`` runs once per simulated iteration, so everything that depends
only on the number of batched tokens (all linear layers, elementwise ops, all-reduces) or
on the number of sequences (LM head) is tabulated at construction; only attention is
computed per call, in plain float arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from servegym.envs.costs.base import CostModel, bad_chunk, check_decodes, time_table
from servegym.envs.costs.specs import (
    GPUSpec,
    ModelSpec,
    get_gpu,
    get_model,
    kv_bytes_per_token_per_gpu,
    kv_heads_per_gpu,
    validate_tensor_parallel,
)

# Fixed cost of one host<->GPU copy batch (launch, pinned-buffer setup, stream sync),
# on top of the bandwidth term.
_HOST_COPY_LATENCY_S = 1e-5


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


class RooflineCostModel(CostModel):
    """Roofline estimate of vLLM-style iterations on one tensor-parallel group."""

    source = "roofline"

    def __init__(
        self,
        model: ModelSpec | str,
        gpu: GPUSpec | str,
        tensor_parallel: int = 1,
        block_size: int = 16,
        compute_efficiency: float = 0.6,
        memory_efficiency: float = 0.8,
        iteration_overhead_s: float = 1e-3,
        max_num_tokens: int = 16384,
    ) -> None:
        self.model = get_model(model) if isinstance(model, str) else model
        self.gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
        if not isinstance(self.model, ModelSpec):
            raise TypeError(f"model must be a ModelSpec or a registered name, got {model!r}")
        if not isinstance(self.gpu, GPUSpec):
            raise TypeError(f"gpu must be a GPUSpec or a registered name, got {gpu!r}")
        validate_tensor_parallel(self.model, tensor_parallel)
        self.tensor_parallel = tensor_parallel
        self.block_size = _check_count("block_size", block_size, 1)
        self.compute_efficiency = _check_fraction("compute_efficiency", compute_efficiency)
        self.memory_efficiency = _check_fraction("memory_efficiency", memory_efficiency)
        overhead_ok = isinstance(iteration_overhead_s, int | float) and not isinstance(
            iteration_overhead_s, bool
        )
        if not overhead_ok or not 0 <= iteration_overhead_s < math.inf:
            raise ValueError(
                f"iteration_overhead_s must be a finite number >= 0 (seconds), "
                f"got {iteration_overhead_s!r}"
            )
        self.iteration_overhead_s = float(iteration_overhead_s)
        self.max_num_tokens = _check_count("max_num_tokens", max_num_tokens, 1)

        self._flop_rate = self.gpu.peak_flops * self.compute_efficiency
        self._byte_rate = self.gpu.hbm_bandwidth * self.memory_efficiency
        self._init_attention_constants()
        sizes = np.arange(self.max_num_tokens + 1)
        self._token_table = time_table(self._token_time(sizes))
        self._lm_head_table = time_table(self._lm_head_time(sizes))
        self._kv_bytes_per_token_gpu = kv_bytes_per_token_per_gpu(self.model, tensor_parallel)

    # ---- construction-time pieces -------------------------------------------------

    def _init_attention_constants(self) -> None:
        m, tp = self.model, self.tensor_parallel
        heads = m.num_heads // tp
        kv_dim = kv_heads_per_gpu(m, tp) * m.head_dim
        layers = m.num_layers
        # Seconds, all layers, per (query, key) pair: QK^T and PV are 2 FLOPs per MAC each.
        self._attn_pair_s = layers * 4 * m.head_dim * heads / self._flop_rate
        # Seconds, all layers, per KV entry read (K and V of every local KV head).
        self._attn_kv_s = layers * 2 * kv_dim * m.dtype_bytes / self._byte_rate
        # Seconds, all layers, per query token: read Q, write the attention output.
        self._attn_q_s = layers * 2 * heads * m.head_dim * m.dtype_bytes / self._byte_rate
        # A decode step is a chunk (1, context - 1): its pairs equal its context, so
        # linearising per request gives slope * context + per-query bytes.
        self._decode_slope = max(self._attn_pair_s, self._attn_kv_s)

    def _matmul_time(self, tokens: np.ndarray, k: float, n: float) -> np.ndarray:
        """[tokens, k] x [k, n]: weights read once, activations in and out."""
        d = self.model.dtype_bytes
        flops = 2.0 * tokens * k * n
        moved = (k * n + tokens * (k + n)) * d
        return np.maximum(flops / self._flop_rate, moved / self._byte_rate)

    def _collective_time(self, volume_bytes: np.ndarray, traffic_factor: float) -> np.ndarray:
        if self.tensor_parallel == 1:
            return np.zeros_like(volume_bytes)
        gpu = self.gpu
        return gpu.interconnect_latency_s + traffic_factor * volume_bytes / (
            gpu.interconnect_bandwidth
        )

    def _token_time(self, tokens: np.ndarray) -> np.ndarray:
        """Seconds of everything that scales with batched tokens, all layers.

        The single formula behind both the table and sizes beyond it.
        """
        m, tp = self.model, self.tensor_parallel
        t = np.asarray(tokens, dtype=np.float64)
        d, h = m.dtype_bytes, m.hidden_size
        q_dim = m.q_dim / tp
        kv_dim = kv_heads_per_gpu(m, tp) * m.head_dim
        ffn = m.ffn_size / tp
        gates = 2 if m.gated_mlp else 1
        layer = (
            self._matmul_time(t, h, q_dim + 2 * kv_dim)
            + self._matmul_time(t, q_dim, h)
            + self._matmul_time(t, h, gates * ffn)
            + self._matmul_time(t, ffn, h)
        )
        elementwise_bytes = (
            4 * h  # two RMSNorms, read + write
            + 2 * (q_dim + kv_dim)  # rotary on Q and K, read + write
            + 2 * kv_dim  # K and V written into the paged cache
            + (gates + 1) * ffn  # activation (times up-projection if gated), read + write
            + 6 * h  # two residual adds: read two, write one
        ) * d
        layer = layer + t * elementwise_bytes / self._byte_rate
        ring_all_reduce = 2 * (tp - 1) / tp
        layer = layer + 2 * self._collective_time(t * h * d, ring_all_reduce)
        # Outside the layers: embedding lookup (vocab-parallel, hence one more all-reduce)
        # and the final norm, both read + write of the residual stream.
        outside = 4 * t * h * d / self._byte_rate + self._collective_time(
            t * h * d, ring_all_reduce
        )
        return np.where(t > 0, m.num_layers * layer + outside, 0.0)

    def _lm_head_time(self, num_seqs: np.ndarray) -> np.ndarray:
        """Seconds of the LM head for one sampled token per sequence, plus gathering the
        vocab-parallel logits."""
        m, tp = self.model, self.tensor_parallel
        n = np.asarray(num_seqs, dtype=np.float64)
        vocab = math.ceil(m.vocab_size / tp)  # vLLM pads the vocab shard
        logits_bytes = n * m.vocab_size * m.dtype_bytes
        total = self._matmul_time(n, m.hidden_size, vocab) + self._collective_time(
            logits_bytes, (tp - 1) / tp
        )
        return np.where(n > 0, total, 0.0)

    # ---- lookups --------------------------------------------------------------------

    def _tokens_s(self, tokens: int) -> float:
        table = self._token_table
        if tokens < len(table):
            return table[tokens]
        return float(self._token_time(np.array([tokens]))[0])

    def _lm_head_s(self, num_seqs: int) -> float:
        table = self._lm_head_table
        if num_seqs < len(table):
            return table[num_seqs]
        return float(self._lm_head_time(np.array([num_seqs]))[0])

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
        pair_s, kv_s, q_s = self._attn_pair_s, self._attn_kv_s, self._attn_q_s
        for new, cached in prefill_chunks:
            if new < 1 or cached < 0:
                raise bad_chunk(new, cached)
            tokens += new
            compute = pair_s * (new * cached + new * (new + 1) * 0.5)  # causal
            memory = kv_s * (cached + new) + q_s * new
            attention += compute if compute > memory else memory
        if not tokens:
            return 0.0
        seqs = len(prefill_chunks) + decode_count
        try:
            linear = self._tokens_s(tokens) + self._lm_head_s(seqs)
        except TypeError:
            raise TypeError(
                f"token counts must be ints; got prefill_chunks={list(prefill_chunks)!r}, "
                f"decode_count={decode_count!r}"
            ) from None
        decode = self._decode_slope * decode_context_sum + q_s * decode_count
        return linear + attention + decode + self.iteration_overhead_s

    def decode_coeffs(self, batch_size: int) -> tuple[float, float]:
        batch_size = _check_count("batch_size", batch_size, 0)
        if batch_size == 0:
            return 0.0, 0.0
        base = (
            self._tokens_s(batch_size)
            + self._lm_head_s(batch_size)
            + self._attn_q_s * batch_size
            + self.iteration_overhead_s
        )
        return base, self._decode_slope

    def swap_time(self, num_blocks: int) -> float:
        num_blocks = _check_count("num_blocks", num_blocks, 0)
        if num_blocks == 0:
            return 0.0
        shard_bytes = num_blocks * self.block_size * self._kv_bytes_per_token_gpu
        return _HOST_COPY_LATENCY_S + shard_bytes / self.gpu.host_link_bandwidth

    def kv_transfer_time(self, num_tokens: int) -> float:
        # Each GPU of the group sends its own KV shard to its peer over its own link.
        num_tokens = _check_count("num_tokens", num_tokens, 0)
        if num_tokens == 0:
            return 0.0
        shard_bytes = num_tokens * self._kv_bytes_per_token_gpu
        return self.gpu.interconnect_latency_s + shard_bytes / self.gpu.interconnect_bandwidth

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "model": self.model.name,
            "gpu": self.gpu.name,
            "tensor_parallel": self.tensor_parallel,
            "compute_efficiency": self.compute_efficiency,
            "memory_efficiency": self.memory_efficiency,
            "iteration_overhead_s": self.iteration_overhead_s,
            "max_num_tokens": self.max_num_tokens,
            # As TableCostModel.describe: no table is read, so nothing was measured.
            "tables_model": None,
            "measured_up_to": None,
            "model_context": self.model.max_context,
            "model_spec": asdict(self.model),
            "gpu_spec": asdict(self.gpu),
        }
