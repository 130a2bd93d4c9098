"""Cross-check servegym against Vidur in Vidur's own setting, and write the table.

Vidur: Agrawal et al., "Vidur: A Large-Scale Simulation Framework for LLM Inference",
MLSys 2024 (microsoft/vidur @7d47513). Vidur is not a dependency of this project: run it
yourself (in a separate venv) on the trace this project ships, then point this script at
its output folders. The command used for ``results/vidur_crosscheck.md``, from a checkout
of microsoft/vidur @7d47513 (plus ``data/profiling/compute/a100/meta-llama/Llama-2-70b-hf/
attention.csv`` from the same repository, blob ee3dec76, as ``envs/data/calibration/vidur/
SOURCE.md`` describes) with ``pip install numpy pandas scikit-learn wandb kaleido ddsketch
plotly_express matplotlib seaborn fasteners``::

    # the trace in Vidur's columns (identical rows to Vidur's splitwise_conv.csv)
    zcat envs/data/traces/azure_llm_2023/AzureLLMInferenceTrace_conv.csv.gz | awk -F, \
      'NR==1{print "num_prefill_tokens,num_decode_tokens"; next} {print $2","$3}' > conv.csv
    python -m vidur.main --replica_config_device a100 \
      --replica_config_model_name meta-llama/Llama-2-70b-hf \
      --replica_config_tensor_parallel_size 2 --replica_config_num_pipeline_stages 1 \
      --cluster_config_num_replicas 1 --replica_scheduler_config_type vllm \
      --vllm_scheduler_config_batch_size_cap 128 \
      --vllm_scheduler_config_max_tokens_in_batch 4096 \
      --request_generator_config_type synthetic \
      --synthetic_request_generator_config_num_requests 10000 \
      --length_generator_config_type trace \
      --trace_request_length_generator_config_trace_file conv.csv \
      --trace_request_length_generator_config_max_tokens 4096 \
      --interval_generator_config_type poisson \
      --poisson_request_interval_generator_config_qps 1.0 \
      --execution_time_predictor_config_type random_forrest \
      --random_forrest_execution_time_predictor_config_num_estimators 250 \
      --random_forrest_execution_time_predictor_config_max_depth 32 \
      --random_forrest_execution_time_predictor_config_min_samples_split 2 \
      --random_forrest_execution_time_predictor_config_k_fold_cv_splits 2 \
      --metrics_config_output_dir vidur_forward --no-metrics_config_store_plots \
      --no-metrics_config_enable_chrome_trace --no-metrics_config_save_table_to_wandb
    # the reverse check: the same with --vllm_scheduler_config_num_blocks 2487
    python experiments/vidur_crosscheck.py --vidur-forward vidur_forward/<stamp> \
        --vidur-reverse vidur_reverse/<stamp>

The random forest's hyper-parameter grid is cut to one point (250 trees, depth 32, split 2)
to train in minutes on two cores; Vidur's default searches 27 points.

Metrics: TTFT = Vidur's ``prefill_e2e_time`` (arrival to the end of the prefill), E2E =
``request_e2e_time``, preemptions = the sum of ``request_num_restarts``; servegym's the
``serving/ttft_*``, ``serving/e2e_*`` and ``serving/preemptions`` of its summary. Both
percentiles are numpy's (linear interpolation). Writes ``<out>/<name>.md`` and ``.json``,
never overwriting an earlier run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from servegym.envs.build import build_simulator
from servegym.envs.core.metrics import atomic_write, result_paths

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ttft_p50", "ttft_p90", "e2e_p50", "e2e_p90", "e2e_p99")
SETTINGS = (("forward", "vidur_crosscheck"), ("reverse", "vidur_crosscheck_reverse"))


def servegym_run(experiment: str) -> tuple[dict, list[tuple[int, int]]]:
    """The summary of ``experiment=<experiment>`` and its requests' (prompt, output)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("simulate", overrides=[f"experiment={experiment}"])
    workload, cost = instantiate(cfg.workload), instantiate(cfg.cost)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    sim = build_simulator(cost, cluster["num_instances"], cluster.get("instance"))
    summary = sim.run(workload, seed=cfg.seed).summarize()
    row = {m: float(summary[f"serving/{m}"]) for m in METRICS}
    row["preemptions"] = int(summary["serving/preemptions"])
    row["kv_blocks"] = int(sim.num_kv_blocks)
    return row, list(zip(workload.prompt_len.tolist(), workload.output_len.tolist(), strict=True))


def vidur_run(folder: Path) -> tuple[dict, list[tuple[int, int]]]:
    """Vidur's metrics from ``<folder>/request_metrics.csv``, and its requests' lengths."""
    path = Path(folder) / "request_metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the folder Vidur wrote (its "
                                "metrics_config_output_dir/<timestamp>)")
    with path.open() as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: int(r["Request Id"]))
    ttft = np.array([float(r["prefill_e2e_time"]) for r in rows])
    e2e = np.array([float(r["request_e2e_time"]) for r in rows])
    out = {"ttft_p50": float(np.percentile(ttft, 50)), "ttft_p90": float(np.percentile(ttft, 90)),
           "e2e_p50": float(np.percentile(e2e, 50)), "e2e_p90": float(np.percentile(e2e, 90)),
           "e2e_p99": float(np.percentile(e2e, 99)),
           "preemptions": int(sum(int(r["request_num_restarts"]) for r in rows))}
    lengths = [(int(r["request_num_prefill_tokens"]), int(r["request_num_decode_tokens"]))
               for r in rows]
    return out, lengths


def table(results: dict) -> str:
    lines = ["| setting | KV blocks | metric | Vidur | servegym (profile on) | servegym / Vidur |",
             "|---|---|---|---|---|---|"]
    for setting, r in results.items():
        ours, theirs = r["servegym"], r["vidur"]
        for m in METRICS:
            lines.append(f"| {setting} | {ours['kv_blocks']} | {m} (s) | {theirs[m]:.3f} | "
                         f"{ours[m]:.3f} | {ours[m] / theirs[m]:.3f} |")
        lines.append(f"| {setting} | {ours['kv_blocks']} | preemptions | "
                     f"{theirs['preemptions']} | {ours['preemptions']} | "
                     f"{ours['preemptions'] - theirs['preemptions']:+d} |")
        lines.append(f"| {setting} | {ours['kv_blocks']} | same requests (lengths, in order) "
                     f"| | {r['same_requests']} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vidur-forward", required=True, type=Path,
                        help="Vidur's output folder, default (planned) KV capacity")
    parser.add_argument("--vidur-reverse", required=True, type=Path,
                        help="Vidur's output folder, --vllm_scheduler_config_num_blocks 2487")
    parser.add_argument("--out", default=str(ROOT / "results"), help="results folder")
    parser.add_argument("--name", default="vidur_crosscheck", help="result file name")
    args = parser.parse_args()
    paths, taken = result_paths(args.out, args.name)
    if taken:
        sys.exit(f"{', '.join(taken)} exist; results are never overwritten: pass --name")
    results = {}
    for (setting, experiment), folder in zip(SETTINGS, (args.vidur_forward, args.vidur_reverse),
                                             strict=True):
        ours, our_lengths = servegym_run(experiment)
        theirs, their_lengths = vidur_run(folder)
        results[setting] = {"experiment": experiment, "vidur_folder": str(folder),
                            "servegym": ours, "vidur": theirs,
                            "same_requests": our_lengths == their_lengths}
    text = table(results)
    print(text)
    command = "python experiments/vidur_crosscheck.py " + " ".join(sys.argv[1:])
    md = (f"# servegym vs Vidur in Vidur's setting\n\nMade by `{command}` (Vidur's command: "
          "the script's docstring). Vidur: microsoft/vidur@7d47513, random-forest predictor "
          "(one grid point). servegym: `experiment=vidur_crosscheck` (forward: Vidur's "
          "planned KV capacity) and `experiment=vidur_crosscheck_reverse` (2,487 blocks on "
          "both sides), Vidur compatibility profile on (docs/costs.md).\n\n" + text + "\n")
    atomic_write(paths[0], lambda h: h.write(md))
    atomic_write(paths[1], lambda h: json.dump({"command": command, "results": results}, h,
                                               indent=2))
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
