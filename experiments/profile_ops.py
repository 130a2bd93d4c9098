"""Profile one layer's operations of a model on this machine's device; write an op table.

    # On a GPU machine (CUDA events after warm-up, L2 flushed before each timed call):
    python experiments/profile_ops.py --model Llama-3-8B --tp 1 2 4 8 --grid full
    # Quick check on a CPU (one thread, per-thread CPU time):
    python experiments/profile_ops.py --model Llama-2-7B --tp 8 --grid small

The table (format: envs/costs/tables.py, docs/costs.md) goes to a new file, by default
outputs/profile_ops/<UTC stamp>/<gpu>_<model>.csv.gz; copy it to
envs/data/calibration/servegym/<gpu>/ to ship it, or pass its folder to
build_cost_model(..., table_dirs=[...]). An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# glibc returns large freed buffers to the OS (munmap) and faults them in again on the next
# allocation; on the CPU that page-fault time would land inside the timed ops. A fixed,
# high mmap threshold keeps them in the heap. It must be set before the process starts.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
               "MALLOC_TOP_PAD_": str(256 << 20), "OMP_NUM_THREADS": "1"}


def _reexec_with_malloc_settings() -> None:
    if all(os.environ.get(key) == value for key, value in _MALLOC_ENV.items()):
        return
    env = {**os.environ, **_MALLOC_ENV}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="registry model name, e.g. Llama-3-8B")
    parser.add_argument("--tp", type=int, nargs="+", default=[1], help="tensor-parallel degrees")
    parser.add_argument("--grid", choices=("small", "full"), default="small")
    parser.add_argument("--max-tokens", type=int, default=16384, help="full grid: token range")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per point")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per point")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--gpu", default=None,
                        help="registry GPU name to file the table under (default: from the "
                             "device name; 'cpu' on a CPU)")
    parser.add_argument("--clock", choices=("thread", "wall"), default="thread",
                        help="CPU only: per-thread CPU time or wall clock")
    parser.add_argument("--no-l2-flush", action="store_true", help="GPU: keep L2 warm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output file (.csv or .csv.gz)")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    import torch

    from servegym.envs.core.metrics import atomic_write
    from servegym.envs.costs.profiler import ProfileGrid, profile_ops, registry_gpu_name
    from servegym.envs.costs.specs import get_gpu, get_model
    from servegym.envs.costs.tables import format_table, table_writer

    model = get_model(args.model)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.gpu:
        gpu = get_gpu(args.gpu).name
    elif device.type == "cuda":
        found = torch.cuda.get_device_name(device)
        gpu = registry_gpu_name(found) or found
    else:
        gpu = "cpu"
    if args.grid == "small":
        grid = ProfileGrid.small(**_overrides(args, repeats=3, warmup=1))
    else:
        grid = ProfileGrid.full(max_tokens=args.max_tokens, **_overrides(args, repeats=20,
                                                                          warmup=5))
    meta, rows = {}, []
    for tp in args.tp:
        meta, new_rows = profile_ops(model, tp, grid, device, getattr(torch, args.dtype),
                                     args.seed, args.clock, not args.no_l2_flush,
                                     progress=None if args.quiet else print)
        rows += new_rows
    meta = {**meta, "gpu": gpu, "model": model.name,
            "tensor_parallel": ",".join(map(str, sorted(args.tp))), "grid": args.grid}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out or ROOT / "outputs" / "profile_ops" / stamp / f"{gpu}_{model.name}.csv.gz")
    atomic_write(out, table_writer(format_table(meta, rows), out))
    print(f"{len(rows)} points on {meta['device_name']} ({meta['clock']}) -> {out}")
    return out


def _overrides(args: argparse.Namespace, repeats: int, warmup: int) -> dict[str, int]:
    return {"repeats": args.repeats if args.repeats is not None else repeats,
            "warmup": args.warmup if args.warmup is not None else warmup}


if __name__ == "__main__":
    _reexec_with_malloc_settings()
    main()
