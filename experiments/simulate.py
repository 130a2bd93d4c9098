"""Simulate a workload with the default heuristic policies and print the summary table.

Config: `conf/simulate.yaml` with the groups `workload/`, `cost/`, `cluster/` and
`experiment/`. The default: the Azure 2023 conversation trace (its own arrival times,
~5.5 req/s for an hour) on one Llama-3-8B instance on an H100 with vLLM v1 batching, FCFS
admission, vLLM's preemption and round-robin routing.

    python experiments/simulate.py
    python experiments/simulate.py cost=llama2_70b_a100_tp2 cluster=vllm_v0 seed=1
    python experiments/simulate.py cluster.num_instances=4 cluster.instance.max_num_seqs=128

Each run writes `summary.json`, `summary.md` and `requests.csv` into its own Hydra run
folder under `outputs/simulate/` (never overwriting an earlier run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from servegym.envs.build import build_simulator
from servegym.envs.core.metrics import atomic_write, format_summary
from servegym.envs.tasks import register_resolver

ROOT = Path(__file__).resolve().parents[1]

@hydra.main(config_path="../conf", config_name="simulate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    workload = instantiate(cfg.workload)
    cost = instantiate(cfg.cost)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    sim = build_simulator(cost, cluster["num_instances"], cluster.get("instance"),
                          pools=cluster.get("pools"))
    started = time.perf_counter()
    report = sim.run(workload, seed=cfg.seed)
    elapsed = time.perf_counter() - started
    summary = report.summarize(ttft_slo=cfg.slo.ttft_s, tpot_slo=cfg.slo.tpot_s)

    title = (f"{workload.name}: {len(workload)} requests on {sim.num_instances} x "
             f"{cfg.cost.model} on {cfg.cost.gpu} (tp={cfg.cost.tensor_parallel}, "
             f"{sim.config.mode}, {sim.num_kv_blocks} KV blocks per instance)")
    table = format_summary(summary, source=report.cost_source, pools=report.pools)
    print(title)
    print(table)
    print(f"simulated in {elapsed:.2f} s")

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    payload = {"config": OmegaConf.to_container(cfg, resolve=True),
               "cost_model": cost.describe(), "summary": summary, "simulation_wall_s": elapsed}
    atomic_write(run_dir / "summary.json", lambda h: json.dump(payload, h, indent=2))
    atomic_write(run_dir / "summary.md", lambda h: h.write(f"{title}\n\n```\n{table}\n```\n"))
    report.write_records_csv(run_dir / "requests.csv")
    print(f"results in {run_dir}")
    return summary


if __name__ == "__main__":
    register_resolver()  # before Hydra composes conf/ (the task presets read it)
    main()
