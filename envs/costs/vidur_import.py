"""Convert Vidur's profiling CSVs into servegym op tables (a one-off, offline step).

Run once to (re)create ``envs/data/calibration/vidur/`` from a copy of Vidur's
``data/profiling/`` folder; nothing reads Vidur's files at run time::

    python -m servegym.envs.costs.vidur_import /path/to/vidur-profiling \
        [--out envs/data/calibration/vidur]

Kept: the median, min, max and std of every op (Vidur's ``mean`` is dropped); token-level
ops from ``mlp.csv``; single-node all-reduce and NVLink send/recv rows from the network
tables; the legacy A100 attention table (prefill and decode kernels, with the attention
input/output reshapes folded into the kernel time, as they run in the same layer step).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

from servegym.envs.core.metrics import atomic_write
from servegym.envs.costs.tables import format_table, table_writer

VIDUR_REPO = "microsoft/vidur"
VIDUR_COMMIT = "7d47513363ec447a741ac5e47241580b47724fbf"
LEGACY_COMMIT = "acb95f6cd118071401fa805a0b0bc11bd2018fc6"
LICENCE = "MIT (Copyright (c) Microsoft Corporation)"

GPUS = MappingProxyType({"a100": "A100-80GB", "h100": "H100-80GB"})
MODELS = MappingProxyType({
    "meta-llama/Llama-2-7b-hf": "Llama-2-7B",
    "meta-llama/Llama-2-70b-hf": "Llama-2-70B",
    "meta-llama/Meta-Llama-3-8B": "Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B": "Llama-3-70B",
})
MLP_OPS = (
    "emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)
NETWORKS = MappingProxyType({
    "dgx": "NVSwitch (DGX), all GPUs on one node",
    "pairwise_nvlink": "NVLink between GPU pairs (Azure NDv4-style), one node"})


def _stats(row: dict[str, str], name: str) -> dict[str, float]:
    return {f"{s}_ms": float(row[f"time_stats.{name}.{s}"])
            for s in ("median", "min", "max", "std")}


def _mlp_rows(path: Path) -> Iterator[dict]:
    with path.open() as handle:
        for row in csv.DictReader(handle):
            keys = {"tensor_parallel": int(row["num_tensor_parallel_workers"]),
                    "num_tokens": int(row["num_tokens"])}
            for op in MLP_OPS:
                yield {"op": op, **keys, **_stats(row, op)}


def _attention_rows(path: Path) -> Iterator[dict]:
    with path.open() as handle:
        for row in csv.DictReader(handle):
            prefill = row["is_prefill"] == "True"
            kernel = "attn_prefill" if prefill else "attn_decode"
            stats = _stats(row, kernel)
            extra = sum(float(row[f"time_stats.attn_{part}_reshape.median"] or 0)
                        for part in ("input", "output"))
            stats = {key: value if key == "std_ms" else value + extra
                     for key, value in stats.items()}
            batch = int(row["batch_size"])
            tokens = int(row["prefill_chunk_size"]) if prefill else batch
            yield {"op": kernel, "tensor_parallel": int(row["num_tensor_parallel_workers"]),
                   "num_tokens": tokens, "batch_size": batch,
                   "context_tokens": int(row["kv_cache_size"]), **stats}


def _network_rows(folder: Path) -> Iterator[dict]:
    for op in ("all_reduce", "send_recv"):
        with (folder / f"{op}.csv").open() as handle:
            for row in csv.DictReader(handle):
                workers, per_node = int(row["num_workers"]), int(row["devices_per_node"])
                if op == "all_reduce" and workers != per_node:
                    continue  # multi-node rows: TP stays within one node
                if op == "send_recv" and per_node != 2:
                    continue  # keep the NVLink pair, not the cross-node one
                yield {"op": op, "tensor_parallel": workers, "size_bytes": int(row["size"]),
                       **_stats(row, op)}


def _meta(kind: str, gpu: str, origin: str, rows: list[dict], **extra: str) -> dict[str, str]:
    tps = sorted({row["tensor_parallel"] for row in rows})
    ops = sorted({row["op"] for row in rows})
    return {"kind": kind, "source": "vidur", "gpu": gpu, **extra,
            "tensor_parallel": ",".join(map(str, tps)), "ops": ",".join(ops),
            "units": "ms (CUDA events / Kineto, median over repeats)",
            "origin": origin, "licence": LICENCE}


def _write(out: Path, meta: dict[str, str], rows: list[dict], overwrite: bool) -> Path:
    text = format_table(meta, rows)
    return atomic_write(out, table_writer(text, out), overwrite=overwrite)


def import_vidur(src: str | Path, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write every table this project ships from Vidur's ``data/profiling`` copy ``src``."""
    src, out = Path(src), Path(out)
    written = []
    for gpu_dir, gpu in GPUS.items():
        for repo_name, model in MODELS.items():
            path = src / "compute" / gpu_dir / repo_name / "mlp.csv"
            if not path.is_file():
                continue
            rows = list(_mlp_rows(path))
            origin = (f"{VIDUR_REPO}@{VIDUR_COMMIT} "
                      f"data/profiling/compute/{gpu_dir}/{repo_name}/mlp.csv")
            meta = _meta("ops", gpu, origin, rows, model=model, dtype="float16")
            written.append(_write(out / gpu_dir / f"{model}.csv.gz", meta, rows, overwrite))
        for network, text in NETWORKS.items():
            folder = src / "network" / f"{gpu_dir}_{network}"
            if not folder.is_dir():
                continue
            rows = list(_network_rows(folder))
            origin = f"{VIDUR_REPO}@{VIDUR_COMMIT} data/profiling/network/{folder.name}/"
            meta = _meta("network", gpu, origin, rows, network=network, interconnect=text)
            written.append(_write(out / gpu_dir / f"network_{network}.csv.gz", meta, rows,
                                  overwrite))
    legacy = src / "legacy-acb95f6c" / "a100" / "attention.csv"
    if legacy.is_file():
        rows = list(_attention_rows(legacy))
        origin = (f"{VIDUR_REPO}@{LEGACY_COMMIT} data/profiling/a100/attention.csv "
                  "(FlashAttention backend, block 16; input/output reshapes folded in)")
        meta = _meta("ops", "A100-80GB", origin, rows, model="Llama-2-70B", dtype="float16")
        written.append(_write(out / "a100" / "attention_Llama-2-70B.csv.gz", meta, rows, overwrite))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", help="a copy of Vidur's data/profiling folder")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1]
                                             / "data" / "calibration" / "vidur"))
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing shipped tables (they are data, not results)")
    args = parser.parse_args()
    for path in import_vidur(args.src, args.out, args.overwrite):
        print(path)


if __name__ == "__main__":
    main()
