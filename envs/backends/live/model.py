"""A tiny Llama-architecture model with seeded random weights, written locally on first use.

No download: `config.json` and `model.safetensors` are written with torch + safetensors into
`<project>/.cache/servegym/models/<name>/` (gitignored). The weights are drawn from a seeded
`torch.Generator`, so the same spec always gives the same files (and the same timings' shape).
Scheduling does not care what the model says: requests ignore EOS and run to their output
length, and no tokenizer is needed (`skip_tokenizer_init=True`, prompts are token ids).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CACHE_DIR = PROJECT_ROOT / ".cache" / "servegym" / "models"


@dataclass(frozen=True)
class TinyLlamaSpec:
    name: str = "tiny-llama-h256-l4"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    vocab_size: int = 2048
    max_position_embeddings: int = 2048
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def hf_config(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
            "attention_bias": False,
            "mlp_bias": False,
        }


def _weights(spec: TinyLlamaSpec) -> dict:
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    h, i, d = spec.hidden_size, spec.intermediate_size, spec.head_dim

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).contiguous()

    tensors = {
        "model.embed_tokens.weight": normal(spec.vocab_size, h),
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": normal(spec.vocab_size, h),
    }
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        tensors |= {
            p + "self_attn.q_proj.weight": normal(spec.num_heads * d, h),
            p + "self_attn.k_proj.weight": normal(spec.num_kv_heads * d, h),
            p + "self_attn.v_proj.weight": normal(spec.num_kv_heads * d, h),
            p + "self_attn.o_proj.weight": normal(h, spec.num_heads * d),
            p + "mlp.gate_proj.weight": normal(i, h),
            p + "mlp.up_proj.weight": normal(i, h),
            p + "mlp.down_proj.weight": normal(h, i),
            p + "input_layernorm.weight": torch.ones(h),
            p + "post_attention_layernorm.weight": torch.ones(h),
        }
    return tensors


def ensure_tiny_llama(spec: TinyLlamaSpec | None = None, cache_dir: Path | None = None) -> Path:
    """Write the model folder if missing (atomically: a temp folder renamed into place)."""
    from safetensors.torch import save_file

    spec = spec or TinyLlamaSpec()
    root = Path(cache_dir or CACHE_DIR)
    folder = root / f"{spec.name}-seed{spec.seed}"
    stamp = folder / "servegym_spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(spec):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    ignore = PROJECT_ROOT / ".cache" / ".gitignore"
    if root.is_relative_to(PROJECT_ROOT / ".cache") and not ignore.exists():
        ignore.write_text("*\n")
    tmp = root / f".{folder.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(spec.hf_config(), indent=2))
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    save_file(_weights(spec), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "servegym_spec.json").write_text(json.dumps(asdict(spec)))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
