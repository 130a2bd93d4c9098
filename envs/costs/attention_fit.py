"""Attention kernel times from FLOPs and bytes, with coefficients fitted to measured tables.

Per layer, on one GPU of the tensor-parallel group, in seconds:

* prefill chunk of ``q`` new tokens over ``c`` cached ones (causal):
  ``p0 + p1 q + p2 c + p3 q c + p4 q (q + 1) / 2``. ``p1`` (per query: Q in, output out)
  and ``p2`` (per cached KV entry read) are byte terms; ``p3`` (query x cached pairs) and
  ``p4`` (causal pairs inside the chunk, which tile less efficiently) are FLOP terms; ``p0``
  is the launch floor.
* decode of ``n`` requests with total context ``S`` (KV entries read):
  ``d0 + d1 n + d2 S``: affine in ``S`` by construction, because decode attention is
  memory-bound and each request reads its own KV once (the simulator's closed-form decode
  runs rely on this).

Fitting is least squares on relative error (rows weighted by 1/time); a coefficient that
comes out negative is dropped (set to 0) and the rest refitted, so every term stays
physical. To use a fit for another model, GPU or TP degree (``transfer``), each term is
scaled by the ratio of the quantity it stands for: bytes / HBM bandwidth for byte terms,
FLOPs / peak for FLOP terms; the launch floor is kept. That is the "efficiency factor"
reading of the fit: the fitted coefficient divided by the ideal roofline time is an
efficiency that is assumed to carry over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servegym.envs.costs.specs import GPUSpec, ModelSpec, kv_heads_per_gpu
from servegym.envs.costs.tables import OpTable, median_by_key


@dataclass(frozen=True)
class AttentionShape:
    """What attention cost scales with, per GPU of the tensor-parallel group."""

    q_heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    peak_flops: float
    hbm_bandwidth: float

    @classmethod
    def of(cls, model: ModelSpec, gpu: GPUSpec, tensor_parallel: int) -> AttentionShape:
        return cls(model.num_heads // tensor_parallel, kv_heads_per_gpu(model, tensor_parallel),
                   model.head_dim, model.dtype_bytes, gpu.peak_flops, gpu.hbm_bandwidth)

    @property
    def query_seconds(self) -> float:
        """Ideal seconds to read Q and write the output of one query token."""
        return 2 * self.q_heads * self.head_dim * self.dtype_bytes / self.hbm_bandwidth

    @property
    def kv_seconds(self) -> float:
        """Ideal seconds to read one KV entry (K and V of every local KV head)."""
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes / self.hbm_bandwidth

    @property
    def pair_seconds(self) -> float:
        """Ideal seconds of one (query, key) pair: QK^T and PV, 2 FLOPs per MAC each."""
        return 4 * self.q_heads * self.head_dim / self.peak_flops


@dataclass(frozen=True)
class AttentionFit:
    """Fitted coefficients (seconds per layer) and where they came from."""

    prefill: tuple[float, float, float, float, float]
    decode: tuple[float, float, float]
    shape: AttentionShape
    origin: str

    def prefill_time(self, q: np.ndarray, c: np.ndarray) -> np.ndarray:
        return _prefill_features(q, c) @ np.asarray(self.prefill)

    def decode_time(self, n: np.ndarray, context_sum: np.ndarray) -> np.ndarray:
        return _decode_features(n, context_sum) @ np.asarray(self.decode)

    def transfer(self, shape: AttentionShape, why: str) -> AttentionFit:
        """The same efficiencies applied to another shape (see the module docstring)."""
        ref = self.shape
        q = shape.query_seconds / ref.query_seconds
        kv = shape.kv_seconds / ref.kv_seconds
        pair = shape.pair_seconds / ref.pair_seconds
        p0, p1, p2, p3, p4 = self.prefill
        d0, d1, d2 = self.decode
        return AttentionFit((p0, p1 * q, p2 * kv, p3 * pair, p4 * pair), (d0, d1 * q, d2 * kv),
                            shape, f"{self.origin}; {why}")

    def efficiencies(self) -> dict[str, float]:
        """Ideal time / fitted time per term: the efficiency factors the fit amounts to."""
        s = self.shape

        def eff(ideal: float, fitted: float) -> float:
            return ideal / fitted if fitted > 0 else float("inf")

        return {"prefill_query_bytes": eff(s.query_seconds, self.prefill[1]),
                "prefill_kv_bytes": eff(s.kv_seconds, self.prefill[2]),
                "prefill_cross_flops": eff(s.pair_seconds, self.prefill[3]),
                "prefill_causal_flops": eff(s.pair_seconds, self.prefill[4]),
                "decode_kv_bytes": eff(s.kv_seconds, self.decode[2])}


def _prefill_features(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    q, c = np.asarray(q, dtype=np.float64), np.asarray(c, dtype=np.float64)
    return np.stack([np.ones_like(q), q, c, q * c, q * (q + 1) / 2], axis=-1)


def _decode_features(n: np.ndarray, context_sum: np.ndarray) -> np.ndarray:
    n, s = np.asarray(n, dtype=np.float64), np.asarray(context_sum, dtype=np.float64)
    return np.stack([np.ones_like(n), n, s], axis=-1)


def relative_least_squares(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising squared relative error (drop-negative refits)."""
    if len(target) < features.shape[1]:
        raise ValueError(
            f"need at least {features.shape[1]} measured points to fit {features.shape[1]} "
            f"coefficients, got {len(target)}"
        )
    if np.any(target <= 0):
        raise ValueError("measured times must be > 0 to fit on relative error")
    weight = 1.0 / target
    active = np.ones(features.shape[1], dtype=bool)
    coef = np.zeros(features.shape[1])
    while active.any():
        solution, *_ = np.linalg.lstsq(features[:, active] * weight[:, None], target * weight,
                                       rcond=None)
        coef[:] = 0.0
        coef[active] = solution
        if (solution >= 0).all():
            return coef
        active[np.flatnonzero(active)[np.argmin(solution)]] = False
    return coef


def attention_points(table: OpTable, op: str, tensor_parallel: int) -> dict[str, np.ndarray]:
    """Measured points of ``attn_prefill`` or ``attn_decode``: keys and seconds (duplicate
    keys -> median)."""
    rows = table.rows(op, tensor_parallel)
    if not len(rows["op"]):
        raise KeyError(f"{table.describe()} has no {op} rows at tensor_parallel={tensor_parallel}")
    tokens, batch, context = rows["num_tokens"], rows["batch_size"], rows["context_tokens"]
    if max(tokens.max(), batch.max(), context.max()) >= 1 << 21:
        raise ValueError(f"{table.describe()}: {op} keys must be < 2**21")
    packed = (tokens << 42) | (batch << 21) | context  # one sortable key per point
    keys, ms = median_by_key(packed, rows["median_ms"])
    keys = keys.astype(np.int64)
    mask = (1 << 21) - 1
    return {"num_tokens": keys >> 42, "batch_size": (keys >> 21) & mask,
            "context_tokens": keys & mask, "seconds": ms * 1e-3}


def fit_attention(
    table: OpTable,
    tensor_parallel: int,
    shape: AttentionShape,
    keep_prefill: np.ndarray | None = None,
    keep_decode: np.ndarray | None = None,
) -> AttentionFit:
    """Fit both kernels on ``table``'s rows at ``tensor_parallel`` (``keep_*``: optional
    masks over ``attention_points`` order, for held-out evaluation)."""
    prefill = attention_points(table, "attn_prefill", tensor_parallel)
    decode = attention_points(table, "attn_decode", tensor_parallel)
    kp = np.ones(len(prefill["seconds"]), bool) if keep_prefill is None else keep_prefill
    kd = np.ones(len(decode["seconds"]), bool) if keep_decode is None else keep_decode
    p_features = _prefill_features(prefill["num_tokens"], prefill["context_tokens"])
    d_features = _decode_features(decode["batch_size"],
                                  decode["batch_size"] * decode["context_tokens"])
    p = relative_least_squares(p_features[kp], prefill["seconds"][kp])
    d = relative_least_squares(d_features[kd], decode["seconds"][kd])
    origin = f"fitted to {table.describe()} at TP{tensor_parallel}"
    return AttentionFit(tuple(p.tolist()), tuple(d.tolist()), shape, origin)
