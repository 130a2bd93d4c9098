"""Simulate a workload on a cluster with the default heuristic policies; print the summary.

The default: the Azure 2023 conversation trace (its own arrival times, ~5.5 req/s over one
hour) on one Llama-3-8B instance on an H100 with vLLM v1 batching (chunked prefill), FCFS
admission, vLLM's preemption, round-robin routing; iteration times from the roofline model.

    python experiments/simulate.py
    python experiments/simulate.py --model Llama-2-70B --gpu A100-80GB --tp 2 --mode vllm_v0 \
        --rate 1 --requests 5000

Writes `summary.json`, `requests.csv` and `summary.md` to a new folder under
`outputs/simulate/` (never overwriting an earlier run) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.core.instance import MODES, InstanceConfig  # noqa: E402
from envs.core.metrics import atomic_write, format_summary  # noqa: E402
from envs.core.simulator import Simulator  # noqa: E402
from envs.costs.roofline import RooflineCostModel  # noqa: E402
from envs.workloads import AZURE_2023_KINDS, load_azure_2023, scale_to_rate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default="conv", choices=AZURE_2023_KINDS)
    parser.add_argument("--requests", type=int, default=None, help="first N requests only")
    parser.add_argument("--rate", type=float, default=None,
                        help="rescale arrival times to this mean rate (req/s), burst shape kept")
    parser.add_argument("--model", default="Llama-3-8B")
    parser.add_argument("--gpu", default="H100-80GB")
    parser.add_argument("--tp", type=int, default=1, help="tensor parallel degree")
    parser.add_argument("--mode", default="vllm_v1", choices=MODES)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--ttft-slo", type=float, default=2.0, help="seconds")
    parser.add_argument("--tpot-slo", type=float, default=0.1, help="seconds per output token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "simulate"))
    return parser.parse_args(argv)


def new_run_dir(base: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d_%H-%M-%S")
    for attempt in range(1000):
        candidate = base / (stamp if attempt == 0 else f"{stamp}_{attempt}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run folder under {base}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    workload = load_azure_2023(args.trace, ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo)
    if args.requests is not None:
        workload = workload.head(args.requests)
    if args.rate is not None:
        workload = scale_to_rate(workload, args.rate)
    cost = RooflineCostModel(args.model, args.gpu, tensor_parallel=args.tp)
    config = InstanceConfig(mode=args.mode, max_num_seqs=args.max_num_seqs,
                            max_num_batched_tokens=args.max_num_batched_tokens)
    sim = Simulator(cost, config, num_instances=args.instances)
    started = time.perf_counter()
    report = sim.run(workload, seed=args.seed)
    elapsed = time.perf_counter() - started

    title = (f"{workload.name}: {len(workload)} requests on {args.instances} x {args.model} "
             f"on {args.gpu} (tp={args.tp}, {args.mode}, {sim.num_kv_blocks} KV blocks)")
    table = format_summary(report.summary, source=report.cost_source)
    print(title)
    print(table)
    print(f"simulated in {elapsed:.2f} s")

    run_dir = new_run_dir(Path(args.out))
    payload = {"args": vars(args), "cost_model": cost.describe(), "summary": report.summary,
               "simulation_wall_s": elapsed}
    atomic_write(run_dir / "summary.json", lambda h: json.dump(payload, h, indent=2))
    atomic_write(run_dir / "summary.md", lambda h: h.write(f"{title}\n\n```\n{table}\n```\n"))
    report.write_records_csv(run_dir / "requests.csv")
    print(f"results in {run_dir}")
    return report.summary


if __name__ == "__main__":
    main()
