"""Hardware and model specifications used by the cost models.

Numbers come from public sources (Hugging Face ``config.json`` files for models, vendor
datasheets for GPUs); each registry entry names its source. Registries are read-only
(``MappingProxyType``) so no caller can change them for everybody else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

GiB = 1 << 30


class UnknownSpecError(KeyError, ValueError):
    """Unknown model or GPU name. Catchable both as ``KeyError`` and as ``ValueError``."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and show it quoted, escapes included.
        return str(self.args[0]) if self.args else ""


def _require_positive(owner: str, **values: float) -> None:
    for field, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}: {field} must be > 0, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer (Llama-style: RMSNorm, rotary, GQA)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_size: int
    vocab_size: int
    max_context: int
    dtype_bytes: int = 2
    gated_mlp: bool = True
    # Registry name of a model with the same cost shape (every field above but the name and
    # the context length) whose measured tables serve this one; "" = its own tables only.
    # Llama-3.1 differs from Llama-3 only in context length and rope scaling, neither of
    # which changes a layer's work at a given number of tokens.
    tables_from: str = ""

    def __post_init__(self) -> None:
        owner = f"ModelSpec {self.name!r}"
        _require_positive(
            owner,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            ffn_size=self.ffn_size,
            vocab_size=self.vocab_size,
            max_context=self.max_context,
            dtype_bytes=self.dtype_bytes,
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"{owner}: hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}; head_dim must be an integer"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{owner}: num_heads {self.num_heads} is not a multiple of num_kv_heads "
                f"{self.num_kv_heads}; grouped-query attention needs equal-sized groups"
            )

    @property
    def cost_shape(self) -> tuple[int, ...]:
        """Everything that sets the work of a forward pass at a given token count."""
        return (self.num_layers, self.hidden_size, self.num_heads, self.num_kv_heads,
                self.ffn_size, self.vocab_size, self.dtype_bytes, int(self.gated_mlp))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        """Input embedding table; also the LM head size (untied in every registered model)."""
        return self.vocab_size * self.hidden_size

    @property
    def layer_params(self) -> int:
        h = self.hidden_size
        attention = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        mlp = (3 if self.gated_mlp else 2) * h * self.ffn_size
        return attention + mlp + 2 * h  # two RMSNorm weight vectors

    @property
    def num_params(self) -> int:
        """Approximate parameter count: embeddings + LM head + layers + final norm.

        Biases (e.g. Qwen2's q/k/v bias) are left out; they are < 0.01 % of the total.
        """
        return 2 * self.embedding_params + self.num_layers * self.layer_params + self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token, all layers, whole model (all KV heads)."""
        return 2 * self.num_layers * self.kv_dim * self.dtype_bytes


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator. Bandwidths are bytes/s, one direction."""

    name: str
    peak_flops: float  # dense bf16 tensor-core FLOP/s (no sparsity)
    hbm_bandwidth: float
    memory_bytes: int
    host_link_bandwidth: float  # GPU <-> host, effective, one direction
    interconnect_bandwidth: float  # per GPU, to its peers (NVLink, or PCIe without it)
    interconnect_latency_s: float

    def __post_init__(self) -> None:
        _require_positive(
            f"GPUSpec {self.name!r}",
            peak_flops=self.peak_flops,
            hbm_bandwidth=self.hbm_bandwidth,
            memory_bytes=self.memory_bytes,
            host_link_bandwidth=self.host_link_bandwidth,
            interconnect_bandwidth=self.interconnect_bandwidth,
            interconnect_latency_s=self.interconnect_latency_s,
        )


def _registry(*specs: ModelSpec | GPUSpec) -> MappingProxyType:
    return MappingProxyType({spec.name: spec for spec in specs})


MODELS: MappingProxyType[str, ModelSpec] = _registry(
    # meta-llama/Llama-2-7b-hf config.json
    ModelSpec("Llama-2-7B", 32, 4096, 32, 32, 11008, 32000, 4096),
    # meta-llama/Llama-2-70b-hf config.json
    ModelSpec("Llama-2-70B", 80, 8192, 64, 8, 28672, 32000, 4096),
    # meta-llama/Meta-Llama-3-8B config.json
    ModelSpec("Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192),
    # meta-llama/Meta-Llama-3-70B config.json
    ModelSpec("Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, 8192),
    # mistralai/Mistral-7B-v0.1 config.json
    ModelSpec("Mistral-7B", 32, 4096, 32, 8, 14336, 32000, 32768),
    # Qwen/Qwen2.5-7B config.json
    ModelSpec("Qwen2.5-7B", 28, 3584, 28, 4, 18944, 152064, 32768),
    # Qwen/Qwen2.5-72B config.json
    ModelSpec("Qwen2.5-72B", 80, 8192, 64, 8, 29568, 152064, 32768),
    # meta-llama/Llama-3.1-8B config.json (max_position_embeddings 131072; rope_scaling
    # "llama3" changes the rotary frequencies, not the work): Llama-3-8B's shape.
    ModelSpec("Llama-3.1-8B", 32, 4096, 32, 8, 14336, 128256, 131072, tables_from="Llama-3-8B"),
    # meta-llama/Llama-3.1-70B config.json: Llama-3-70B's shape at 131072 tokens.
    ModelSpec("Llama-3.1-70B", 80, 8192, 64, 8, 28672, 128256, 131072,
              tables_from="Llama-3-70B"),
    # 01-ai/Yi-34B-200K config.json (LlamaForCausalLM layout; max_position_embeddings
    # 200000): the 34B model of Fu, "Challenges in Deploying Long-Context Transformers: A
    # Theoretical Peak Performance Analysis" (arXiv 2405.08944, 2024).
    ModelSpec("Yi-34B-200K", 60, 7168, 56, 8, 20480, 64000, 200000),
)

GPUS: MappingProxyType[str, GPUSpec] = _registry(
    # NVIDIA A100 datasheet (SXM 80GB): 312 TFLOP/s dense BF16, 2,039 GB/s HBM2e,
    # NVLink3 600 GB/s bidirectional = 300 GB/s per direction; host link PCIe4 x16
    # (32 GB/s nominal, ~25 GB/s measured with pinned memory).
    GPUSpec("A100-80GB", 312e12, 2.039e12, 80 * GiB, 25e9, 300e9, 5e-6),
    # NVIDIA H100 datasheet (SXM5): 989 TFLOP/s dense BF16, 3.35 TB/s HBM3,
    # NVLink4 900 GB/s bidirectional; host link PCIe5 x16 (64 GB/s nominal, ~50 effective).
    GPUSpec("H100-80GB", 989e12, 3.35e12, 80 * GiB, 50e9, 450e9, 5e-6),
    # NVIDIA H200 datasheet (SXM): same compute as H100, 4.8 TB/s HBM3e, 141 GB
    # (decimal GB as printed; the device reports ~140 GiB, so this is conservative).
    GPUSpec("H200", 989e12, 4.8e12, 141 * 10**9, 50e9, 450e9, 5e-6),
    # NVIDIA L40S datasheet: 362 TFLOP/s dense BF16 (733 with sparsity), 864 GB/s GDDR6,
    # 48 GB; no NVLink, so peers talk over PCIe4 x16 (~25 GB/s) with higher latency.
    GPUSpec("L40S", 362e12, 864e9, 48 * GiB, 25e9, 25e9, 1e-5),
)

# Short names people type; everything else must match a registry key (case-insensitively).
_GPU_ALIASES: MappingProxyType[str, str] = MappingProxyType(
    {"a100": "A100-80GB", "h100": "H100-80GB", "h200": "H200", "l40s": "L40S"}
)
_NO_ALIASES: MappingProxyType[str, str] = MappingProxyType({})


def _lookup(kind: str, registry: MappingProxyType, name: str, aliases: MappingProxyType):
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    key = aliases.get(key, key).lower()
    for known, spec in registry.items():
        if known.lower() == key:
            return spec
    known_names = ", ".join(registry)
    raise UnknownSpecError(
        f"unknown {kind} {name!r}; known {kind}s: {known_names} "
        f"(or pass a {'ModelSpec' if kind == 'model' else 'GPUSpec'} directly)"
    )


def get_model(name: str) -> ModelSpec:
    """Registered model by name, case-insensitive. Raises ``UnknownSpecError``."""
    return _lookup("model", MODELS, name, _NO_ALIASES)


def get_gpu(name: str) -> GPUSpec:
    """Registered GPU by name or alias (``"a100"``, ``"h100"``), case-insensitive."""
    return _lookup("GPU", GPUS, name, _GPU_ALIASES)


def kv_heads_per_gpu(model: ModelSpec, tensor_parallel: int) -> int:
    """KV heads each GPU stores.

    Heads are split evenly; when tp exceeds the KV head count, each KV head is replicated
    across tp / num_kv_heads GPUs (as vLLM does), so each GPU still holds one.
    """
    validate_tensor_parallel(model, tensor_parallel)
    return max(model.num_kv_heads // tensor_parallel, 1)


def validate_tensor_parallel(model: ModelSpec, tensor_parallel: int) -> None:
    if isinstance(tensor_parallel, bool) or not isinstance(tensor_parallel, int):
        raise TypeError(f"tensor_parallel must be an int, got {tensor_parallel!r}")
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be >= 1, got {tensor_parallel}")
    if model.num_heads % tensor_parallel:
        raise ValueError(
            f"{model.name} has {model.num_heads} attention heads, not divisible by "
            f"tensor_parallel={tensor_parallel}; use a divisor of {model.num_heads}"
        )
    kv = model.num_kv_heads
    if kv % tensor_parallel and tensor_parallel % kv:
        raise ValueError(
            f"{model.name} has {kv} KV heads: tensor_parallel={tensor_parallel} must divide "
            f"it or be a multiple of it (KV heads are split or replicated, not cut)"
        )


def kv_bytes_per_token_per_gpu(model: ModelSpec, tensor_parallel: int) -> int:
    """K and V of one token, all layers, on one GPU of the tensor-parallel group."""
    heads = kv_heads_per_gpu(model, tensor_parallel)
    return 2 * model.num_layers * heads * model.head_dim * model.dtype_bytes


# vLLM sizes activation memory by a profiling forward pass at max_num_batched_tokens;
# 8192 tokens is a typical setting, and the peak lives in the MLP intermediate.
_PROFILE_TOKENS = 8192
# CUDA context, cuBLAS/NCCL workspaces and CUDA graphs take roughly this much outside
# the activations.
_FIXED_RESERVE_BYTES = 1 * GiB


def default_activation_reserve_bytes(model: ModelSpec, tensor_parallel: int) -> int:
    """Heuristic memory kept free of KV cache on each GPU.

    1 GiB fixed + activations of an 8192-token profiling pass: the residual stream in and
    out plus the (gate and up) MLP intermediate, per GPU. Llama-2-7B at tp=1: ~1.6 GiB,
    close to what vLLM's profiler reports.
    """
    validate_tensor_parallel(model, tensor_parallel)
    intermediate = (2 if model.gated_mlp else 1) * model.ffn_size // tensor_parallel
    per_token = (2 * model.hidden_size + intermediate) * model.dtype_bytes
    return _FIXED_RESERVE_BYTES + _PROFILE_TOKENS * per_token


def kv_capacity_blocks(
    model: ModelSpec | str,
    gpu: GPUSpec | str,
    tensor_parallel: int,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes: int | None = None,
) -> int:
    """Number of KV blocks (of ``block_size`` tokens) the tensor-parallel group can hold.

    Every GPU holds its KV-head shard of every block, so the count is the same per GPU
    and for the group.
    """
    model = get_model(model) if isinstance(model, str) else model
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    validate_tensor_parallel(model, tensor_parallel)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(
            f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}"
        )
    if activation_reserve_bytes is None:
        activation_reserve_bytes = default_activation_reserve_bytes(model, tensor_parallel)
    elif activation_reserve_bytes < 0:
        raise ValueError(
            f"activation_reserve_bytes must be >= 0 (or None for the default), "
            f"got {activation_reserve_bytes!r}"
        )
    weights_per_gpu = model.weight_bytes / tensor_parallel
    usable = gpu.memory_bytes * gpu_memory_utilization - weights_per_gpu - activation_reserve_bytes
    block_bytes = block_size * kv_bytes_per_token_per_gpu(model, tensor_parallel)
    blocks = math.floor(usable / block_bytes) if usable > 0 else 0
    if blocks < 1:
        budget = gpu.memory_bytes * gpu_memory_utilization
        raise ValueError(
            f"{model.name} weights ({weights_per_gpu / GiB:.1f} GiB per GPU at "
            f"tp={tensor_parallel}) plus {activation_reserve_bytes / GiB:.1f} GiB activation "
            f"reserve leave no room for a KV block in {gpu.name} ({budget / GiB:.1f} GiB at "
            f"gpu_memory_utilization={gpu_memory_utilization}); use a larger "
            f"tensor_parallel, a larger GPU or a higher gpu_memory_utilization"
        )
    return blocks


def kv_bound_sequences(num_kv_blocks: int, tokens_per_sequence: int, block_size: int = 16) -> int:
    """How many sequences of ``tokens_per_sequence`` tokens (prompt + output) a KV cache of
    ``num_kv_blocks`` blocks holds at once: ``num_kv_blocks // ceil(tokens / block_size)``
    (paged blocks are not shared between sequences; prefix sharing is left out). 0 when not
    even one fits. This bounds the running batch beside the scheduler's ``max_num_seqs``."""
    for label, value in (("num_kv_blocks", num_kv_blocks),
                         ("tokens_per_sequence", tokens_per_sequence),
                         ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an int >= 1, got {value!r}")
    return num_kv_blocks // -(-tokens_per_sequence // block_size)


def kv_concurrency(
    model: ModelSpec | str,
    gpu: GPUSpec | str,
    tensor_parallel: int,
    tokens_per_sequence: int | None = None,
    block_size: int = 16,
    gpu_memory_utilization: float = 0.9,
    activation_reserve_bytes: int | None = None,
) -> int:
    """Sequences of ``tokens_per_sequence`` tokens (default: the model's ``max_context``)
    whose KV fits on the tensor-parallel group beside the weights: :func:`kv_capacity_blocks`
    then :func:`kv_bound_sequences`. Yi-34B-200K on 4 x A100-80GB at 50,000 tokens: 19."""
    model = get_model(model) if isinstance(model, str) else model
    tokens = model.max_context if tokens_per_sequence is None else tokens_per_sequence
    blocks = kv_capacity_blocks(model, gpu, tensor_parallel, block_size,
                                gpu_memory_utilization, activation_reserve_bytes)
    return kv_bound_sequences(blocks, tokens, block_size)


def vidur_layer_params_per_gpu(model: ModelSpec | str, tensor_parallel: int) -> int:
    """Weights of one transformer layer on one GPU, as Vidur's ``ParamCounter`` counts them.

    Vidur (Agrawal et al., MLSys 2024; ``vidur/utils/param_counter.py`` at microsoft/vidur
    @7d47513) counts the QKV and output projections (query heads split over the group, KV
    heads rounded up per GPU) and the MLP (three matrices if gated, else two), and nothing
    else: no norm weights here, and no embedding, LM head or final norm outside the layers.
    """
    model = get_model(model) if isinstance(model, str) else model
    validate_tensor_parallel(model, tensor_parallel)
    h, head = model.hidden_size, model.head_dim
    q_heads = model.num_heads // tensor_parallel
    kv_heads = math.ceil(model.num_kv_heads / tensor_parallel)
    attention = h * head * (q_heads + 2 * kv_heads) + h * head * q_heads
    mlp = (3 if model.gated_mlp else 2) * h * model.ffn_size // tensor_parallel
    return attention + mlp


def vidur_kv_capacity_blocks(
    model: ModelSpec | str,
    gpu: GPUSpec | str,
    tensor_parallel: int,
    block_size: int = 16,
    max_request_tokens: int = 4096,
    memory_margin_fraction: float = 0.1,
) -> int:
    """KV blocks as Vidur's memory planner plans them (one pipeline stage).

    Vidur's ``MemoryPlanner`` (``vidur/scheduler/utils/memory_planner.py``) and
    ``BaseReplicaScheduler`` (``base_replica_scheduler.py``), microsoft/vidur @7d47513:

    * usable = GPU memory x (1 - ``memory_margin_fraction``), no activation reserve;
    * minus the layer weights only (:func:`vidur_layer_params_per_gpu`, 2 bytes each);
    * divided by the KV of one whole ``max_request_tokens``-token request, floored: that
      many requests fit;
    * times ``max_request_tokens // block_size`` blocks per request.

    Llama-2-70B on A100-80GB at TP2, block 16, 4096 tokens: 13 requests x 256 = 3,328
    blocks. :func:`kv_capacity_blocks` (servegym's default) counts every weight and keeps an
    activation reserve: 2,487 blocks there.
    """
    model = get_model(model) if isinstance(model, str) else model
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    validate_tensor_parallel(model, tensor_parallel)
    for label, value in (("block_size", block_size), ("max_request_tokens", max_request_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an int >= 1, got {value!r}")
    if max_request_tokens < block_size:
        raise ValueError(f"max_request_tokens ({max_request_tokens}) is below one block "
                         f"({block_size} tokens): Vidur would plan 0 blocks per request")
    if not 0 <= memory_margin_fraction < 1:
        raise ValueError(f"memory_margin_fraction must be in [0, 1), got "
                         f"{memory_margin_fraction!r}")
    available = gpu.memory_bytes * (1 - memory_margin_fraction)
    weights = 2 * vidur_layer_params_per_gpu(model, tensor_parallel) * model.num_layers
    per_request = (2 * 2 * model.head_dim * math.ceil(model.num_kv_heads / tensor_parallel)
                   * max_request_tokens * model.num_layers)
    requests = int((available - weights) // per_request)
    if requests < 1:
        raise ValueError(
            f"Vidur's memory planner fits no whole {max_request_tokens}-token request of "
            f"{model.name} on {gpu.name} at tp={tensor_parallel} ({weights / GiB:.1f} GiB "
            f"of layer weights per GPU); use a larger tensor_parallel or shorter requests")
    return requests * (max_request_tokens // block_size)
