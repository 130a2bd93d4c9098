"""Time one transformer layer's operations on whatever device torch sees.

Random weights (from a seeded ``torch.Generator``) at the model's real tensor-parallel
shard sizes; one GPU of the group is timed (collectives come from network tables). The
ops and their names are Vidur's (see ``envs/costs/tables.py``), so both sources feed the
same predictor:

* token-level ops over ``grid.token_counts``: embedding lookup (vocab shard), the two
  RMSNorms, QKV / O / gate+up / down projections (``torch.mm`` into preallocated outputs),
  rotary embedding on Q and K, SiLU-and-multiply, writing K and V into a paged cache
  (``index_copy_``), the residual add;
* ``attn_prefill`` over ``grid.prefill`` (chunk length, cached context): causal attention of
  the chunk over cache + chunk (``causal_lower_right``);
* ``attn_decode`` over ``grid.decode`` (batch size, context per request).

Attention uses ``torch.nn.functional.scaled_dot_product_attention`` with grouped-query
heads (``enable_gqa``); on CUDA the math fallback is disabled so a flash / memory-efficient
/ cuDNN kernel runs (if none accepts grouped heads, K and V are expanded to all heads
before timing and the table's metadata says so). Contiguous KV, not vLLM's paged layout.

Timing: on CUDA, CUDA events around each call after ``warmup`` calls, with the L2 cache
flushed before each timed call (a real forward pass streams other layers' weights
through it); on CPU, one thread (``torch.set_num_threads(1)``) and per-thread CPU time
(``time.thread_time_ns``; ``clock="wall"`` for ``perf_counter_ns``). Inputs and outputs
are allocated before timing so no timed call pays for page faults of fresh buffers.
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from servegym.envs.costs.specs import ModelSpec, kv_heads_per_gpu, validate_tensor_parallel
from servegym.envs.costs.tables import ATTENTION_OPS, TOKEN_OPS

_FAST_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
              SDPBackend.CUDNN_ATTENTION]
_L2_FLUSH_BYTES = 256 << 20  # larger than any current GPU's L2 cache


@dataclass(frozen=True)
class ProfileGrid:
    """Where to measure. ``small()`` runs in seconds on a CPU; ``full()`` is for a GPU."""

    token_counts: tuple[int, ...]
    prefill: tuple[tuple[int, int], ...]  # (chunk tokens, cached context tokens)
    decode: tuple[tuple[int, int], ...]  # (batch size, context per request)
    warmup: int = 5
    repeats: int = 20

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need repeats >= 1 and warmup >= 0, got {self.repeats}, "
                             f"{self.warmup}")
        bad = [t for t in self.token_counts if t < 1]
        bad += [p for p in self.prefill if p[0] < 1 or p[1] < 0]
        bad += [d for d in self.decode if d[0] < 1 or d[1] < 1]
        if bad:
            raise ValueError(f"grid points must be >= 1 (cached context >= 0); bad: {bad}")

    @classmethod
    def small(cls, repeats: int = 3, warmup: int = 1) -> ProfileGrid:
        # Enough attention points to fit the predictor's 5 prefill and 3 decode coefficients.
        return cls((1, 8, 32, 64), ((8, 16), (16, 0), (16, 32), (32, 0), (32, 32), (64, 0)),
                   ((1, 32), (2, 16), (4, 32), (4, 64), (8, 64)), warmup, repeats)

    @classmethod
    def full(cls, max_tokens: int = 16384, max_context: int = 8192, max_batch: int = 256,
             repeats: int = 20, warmup: int = 5) -> ProfileGrid:
        """Vidur-like: every 8 tokens to 128, then every 64 to 1024, then every 256; attention
        on powers of two and their midpoints."""
        tokens = sorted({1, 2, 4, *range(8, 129, 8), *range(192, 1025, 64),
                         *range(1280, max_tokens + 1, 256)})
        sizes = sorted({*(2 ** k for k in range(4, 16)), *(3 * 2 ** k for k in range(3, 14))})
        chunks = [s for s in sizes if s <= max_tokens]
        contexts = [0, *(s for s in sizes if s <= max_context)]
        prefill = tuple((q, c) for q in chunks for c in contexts if q + c <= max_context + q)
        batches = sorted({1, 2, 4, 8, 12, *range(16, max_batch + 1, 16)})
        decode = tuple((b, c) for b in batches for c in contexts if c)
        return cls(tuple(tokens), prefill, decode, warmup, repeats)


@dataclass
class _Shapes:
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gates: int
    vocab: int

    @classmethod
    def of(cls, model: ModelSpec, tp: int) -> _Shapes:
        return cls(model.hidden_size, model.num_heads // tp, kv_heads_per_gpu(model, tp),
                   model.head_dim, model.ffn_size // tp, 2 if model.gated_mlp else 1,
                   -(-model.vocab_size // tp))


class _Timer:
    """Times ``fn()`` repeatedly; returns milliseconds per call."""

    def __init__(self, device: torch.device, clock: str, flush_l2: bool) -> None:
        if clock not in ("thread", "wall"):
            raise ValueError(f"clock must be 'thread' or 'wall', got {clock!r}")
        self.device, self.clock = device, clock
        self.cuda = device.type == "cuda"
        self.flush = (torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
                      if self.cuda and flush_l2 else None)

    @property
    def name(self) -> str:
        if self.cuda:
            return "cuda-events" + (" (L2 flushed)" if self.flush is not None else "")
        return "thread-cpu-time" if self.clock == "thread" else "perf-counter"

    def __call__(self, fn: Callable[[], object], warmup: int, repeats: int) -> np.ndarray:
        for _ in range(warmup):
            fn()
        return self._cuda(fn, repeats) if self.cuda else self._cpu(fn, repeats)

    def _cuda(self, fn: Callable[[], object], repeats: int) -> np.ndarray:
        times = []
        for _ in range(repeats):
            if self.flush is not None:
                self.flush.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return np.asarray(times)

    def _cpu(self, fn: Callable[[], object], repeats: int) -> np.ndarray:
        now = time.thread_time_ns if self.clock == "thread" else time.perf_counter_ns
        times = []
        for _ in range(repeats):
            begin = now()
            fn()
            times.append((now() - begin) * 1e-6)
        return np.asarray(times)


@dataclass
class _Context:
    shapes: _Shapes
    device: torch.device
    dtype: torch.dtype
    generator: torch.Generator
    notes: dict[str, str] = field(default_factory=dict)

    def randn(self, *shape: int) -> torch.Tensor:
        # Generate on the CPU from the seeded generator (works for every device), then move.
        value = torch.randn(*shape, generator=self.generator, dtype=torch.float32)
        return (value * 0.02).to(device=self.device, dtype=self.dtype)


def _rope_tables(ctx: _Context, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    half = ctx.shapes.head_dim // 2
    inv = 1.0 / (10000 ** (torch.arange(half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(tokens, dtype=torch.float32), inv)
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(ctx.device, ctx.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(ctx.device, ctx.dtype)
    return cos[:, None, :], sin[:, None, :]


def _token_op_calls(ctx: _Context, t: int) -> dict[str, Callable[[], object]]:
    """Zero-argument callables, one per token-level op, on preallocated tensors."""
    s = ctx.shapes
    q_dim, kv_dim = s.q_heads * s.head_dim, s.kv_heads * s.head_dim
    x, residual, out = ctx.randn(t, s.hidden), ctx.randn(t, s.hidden), ctx.randn(t, s.hidden)
    norm_w = ctx.randn(s.hidden)
    w_qkv, qkv = ctx.randn(s.hidden, q_dim + 2 * kv_dim), ctx.randn(t, q_dim + 2 * kv_dim)
    w_o, attn = ctx.randn(q_dim, s.hidden), ctx.randn(t, q_dim)
    w_up, up = ctx.randn(s.hidden, s.gates * s.ffn), ctx.randn(t, s.gates * s.ffn)
    w_down, act = ctx.randn(s.ffn, s.hidden), ctx.randn(t, s.ffn)
    table = ctx.randn(s.vocab, s.hidden)
    ids = torch.randint(0, s.vocab, (t,), generator=ctx.generator).to(ctx.device)
    q = ctx.randn(t, s.q_heads, s.head_dim)
    k = ctx.randn(t, s.kv_heads, s.head_dim)
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    cos, sin = _rope_tables(ctx, t)
    cache = ctx.randn(t, 2, s.kv_heads, s.head_dim)
    slots = torch.randperm(t, generator=ctx.generator).to(ctx.device)
    new_kv = ctx.randn(t, 2, s.kv_heads, s.head_dim)
    gate, upper = up[:, : s.ffn], up[:, s.ffn:] if s.gates == 2 else None

    def rope() -> None:
        for src, dst in ((q, q_out), (k, k_out)):
            half = src.shape[-1] // 2
            rotated = torch.cat([-src[..., half:], src[..., :half]], dim=-1)
            torch.addcmul(src * cos, rotated, sin, out=dst)

    def silu_mul() -> None:
        if upper is None:
            F.silu(gate, inplace=False)
        else:
            torch.mul(F.silu(gate), upper, out=act)

    return {
        "emb": lambda: F.embedding(ids, table),
        "input_layernorm": lambda: F.rms_norm(x, (s.hidden,), norm_w, 1e-5),
        "attn_pre_proj": lambda: torch.mm(x, w_qkv, out=qkv),
        "attn_rope": rope,
        "attn_kv_cache_save": lambda: cache.index_copy_(0, slots, new_kv),
        "attn_post_proj": lambda: torch.mm(attn, w_o, out=out),
        "post_attention_layernorm": lambda: F.rms_norm(x, (s.hidden,), norm_w, 1e-5),
        "mlp_up_proj": lambda: torch.mm(x, w_up, out=up),
        "mlp_act": silu_mul,
        "mlp_down_proj": lambda: torch.mm(act, w_down, out=out),
        "add": lambda: torch.add(x, residual, out=out),
    }


def _sdpa(ctx: _Context) -> Callable[..., torch.Tensor]:
    if ctx.device.type != "cuda":
        return F.scaled_dot_product_attention

    def fast(*args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        with sdpa_kernel(_FAST_SDPA):
            return F.scaled_dot_product_attention(*args, **kwargs)

    return fast


def _attention_call(ctx: _Context, batch: int, q_len: int, context: int,
                    causal: bool) -> Callable[[], object]:
    s = ctx.shapes
    q = ctx.randn(batch, s.q_heads, q_len, s.head_dim)
    k = ctx.randn(batch, s.kv_heads, context, s.head_dim)
    v = ctx.randn(batch, s.kv_heads, context, s.head_dim)
    mask = causal_lower_right(q_len, context) if causal and context > q_len else None
    sdpa = _sdpa(ctx)
    kwargs = {"attn_mask": mask, "is_causal": causal and mask is None}
    try:
        sdpa(q, k, v, enable_gqa=True, **kwargs)
        return lambda: sdpa(q, k, v, enable_gqa=True, **kwargs)
    except RuntimeError:
        # No fast kernel takes grouped heads here: expand K and V (outside the timing).
        groups = s.q_heads // s.kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        ctx.notes["attention_kv_expanded"] = "true (no fast SDPA kernel accepted GQA)"
        return lambda: sdpa(q, k, v, **kwargs)


def _points(ctx: _Context, grid: ProfileGrid) -> Iterator[tuple[dict, Callable[[], object]]]:
    for t in grid.token_counts:
        for op, call in _token_op_calls(ctx, t).items():
            yield {"op": op, "num_tokens": t}, call
    for q_len, cached in grid.prefill:
        call = _attention_call(ctx, 1, q_len, cached + q_len, causal=True)
        yield {"op": "attn_prefill", "num_tokens": q_len, "batch_size": 1,
               "context_tokens": cached}, call
    for batch, context in grid.decode:
        call = _attention_call(ctx, batch, 1, context, causal=False)
        yield {"op": "attn_decode", "num_tokens": batch, "batch_size": batch,
               "context_tokens": context}, call


def profile_ops(
    model: ModelSpec,
    tensor_parallel: int,
    grid: ProfileGrid,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    clock: str = "thread",
    flush_l2: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, str], list[dict]]:
    """Measure ``grid`` for one TP shard of ``model``; returns ``(metadata, rows)`` in the
    table format of ``envs/costs/tables.py`` (``gpu`` and ``model`` are left to the caller
    to name; ``device_name`` says what was measured)."""
    validate_tensor_parallel(model, tensor_parallel)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: stable CPU timings; restored for the caller after
    try:
        return _profile(model, tensor_parallel, grid, device, dtype, seed, clock, flush_l2,
                        progress)
    finally:
        torch.set_num_threads(threads)


def _profile(model: ModelSpec, tensor_parallel: int, grid: ProfileGrid, device: torch.device,
             dtype: torch.dtype, seed: int, clock: str, flush_l2: bool,
             progress: Callable[[str], None] | None) -> tuple[dict[str, str], list[dict]]:
    generator = torch.Generator().manual_seed(seed)
    ctx = _Context(_Shapes.of(model, tensor_parallel), device, dtype, generator)
    timer = _Timer(device, clock, flush_l2)
    rows = []
    with torch.inference_mode():
        for keys, call in _points(ctx, grid):
            ms = timer(call, grid.warmup, grid.repeats)
            rows.append({**keys, "tensor_parallel": tensor_parallel,
                         "median_ms": float(np.median(ms)), "min_ms": float(ms.min()),
                         "max_ms": float(ms.max()), "std_ms": float(ms.std()),
                         "samples": len(ms)})
            if progress is not None:
                progress(f"{keys} {rows[-1]['median_ms']:.4f} ms")
    ops = sorted({row["op"] for row in rows} & set(TOKEN_OPS + ATTENTION_OPS))
    meta = {"kind": "ops", "source": "servegym-profiler",
            "tensor_parallel": str(tensor_parallel), "ops": ",".join(ops),
            **_device_meta(device), "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__, "clock": timer.name, "warmup": str(grid.warmup),
            "repeats": str(grid.repeats), "seed": str(seed),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "units": "ms per call, one GPU of the TP group", **ctx.notes}
    return meta, rows


def _device_meta(device: torch.device) -> dict[str, str]:
    if device.type != "cuda":
        return {"device_name": _cpu_name(), "threads": str(torch.get_num_threads())}
    props = torch.cuda.get_device_properties(device)
    return {"device_name": props.name, "cuda": str(torch.version.cuda),
            "driver": _nvidia_driver(), "memory_gib": f"{props.total_memory / 2**30:.1f}"}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


_GPU_NAME_HINTS = (("H200", "H200"), ("H100", "H100-80GB"), ("A100", "A100-80GB"),
                   ("L40S", "L40S"))


def registry_gpu_name(device_name: str) -> str | None:
    """The registry GPU a device name belongs to (``"NVIDIA H100 80GB HBM3"`` ->
    ``"H100-80GB"``), or None if none matches."""
    for hint, name in _GPU_NAME_HINTS:
        if hint in device_name.upper():
            return name
    return None


def _nvidia_driver() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"
