"""Evaluate scheduling policies over request rates and seeds; tables and plots to results/.

Config: `conf/evaluate.yaml` with the groups `workload/`, `cost/`, `cluster/` shared with
`experiments/simulate.py`. One command runs every policy at every rate and seed, searches
each policy's goodput, and writes a new folder `results/eval/<timestamp>_<name>/` (never
overwriting one): runs.csv, goodput.csv, summary.md, setting.json, four PNG plots and Hydra's
`.hydra/` record of the composed config. Definitions: `experiments/eval_core.py`.

    python experiments/evaluate.py                                   # the default comparison
    python experiments/evaluate.py 'policies=[fcfs,srpt-oracle]' seeds=[0] jobs=2
    python experiments/evaluate.py cluster=vllm_v1_x4 name=routing \\
        'policies=[rr,random,jsq,lor,llumnix,p2c,min-ttft]'
    python experiments/evaluate.py 'policies=["srpt-pred(sigma=1.0,max_wait_s=30)+lor"]'
    python experiments/evaluate.py name=batching 'policies=[fcfs@vllm_v0,fcfs@vllm_v1,fcfs@sarathi]'
    python experiments/evaluate.py 'rates=[5,10,15]' goodput.iterations=0

Run it from the repository root (the results folder is relative).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from eval_core import EvalResult, EvalSettings, evaluate, split_label
from eval_report import write_all
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from servegym.envs.tasks import register_resolver

ROOT = Path(__file__).resolve().parents[1]

def settings_from_config(cfg: DictConfig) -> EvalSettings:
    rates = cfg.rates
    return EvalSettings(
        policies=tuple(str(p) for p in cfg.policies),
        seeds=tuple(int(s) for s in cfg.seeds),
        num_requests=None if cfg.num_requests is None else int(cfg.num_requests),
        window=str(cfg.window),
        arrivals=str(cfg.arrivals),
        rates=None if rates is None else tuple(float(r) for r in rates),
        rate_fractions=tuple(float(f) for f in cfg.rate_fractions),
        ttft_slo=float(cfg.slo.ttft_s),
        tpot_slo=float(cfg.slo.tpot_s),
        goodput_target=float(cfg.goodput.target),
        goodput_iterations=int(cfg.goodput.iterations),
        cdf_fraction=float(cfg.cdf_fraction),
        jobs=int(cfg.jobs),
        progress=bool(cfg.progress),
    )


def describe_setting(cfg: DictConfig, workload: object, cost: object) -> dict[str, str]:
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    describe = getattr(cost, "describe", dict)()
    return {
        "title": f"{getattr(workload, 'name', 'workload')} on {cluster.get('num_instances', 1)}"
                 f" x {cfg.cost.model} / {cfg.cost.gpu} TP{cfg.cost.tensor_parallel}",
        "cost model": f"{getattr(cost, 'source', '?')} ({describe.get('model', cfg.cost.model)})",
        "cluster": str(cluster),
        "workload": f"{getattr(workload, 'name', '?')}, {len(workload)} requests in the trace",
    }


def cluster_presets(labels: tuple[str, ...]) -> dict[str, dict]:
    """The `conf/cluster/<preset>.yaml` settings named by `spec@preset` labels."""
    folder = ROOT / "conf" / "cluster"
    known = sorted(path.stem for path in folder.glob("*.yaml"))
    presets = {}
    for label in labels:
        preset = split_label(label)[1]
        if preset is None or preset in presets:
            continue
        if preset not in known:
            raise ValueError(f"policy {label!r}: unknown cluster preset {preset!r}; "
                             f"known presets: {known}")
        presets[preset] = OmegaConf.to_container(OmegaConf.load(folder / f"{preset}.yaml"),
                                                 resolve=True)
    return presets


def build_workloads(cfg: DictConfig, seeds: tuple[int, ...]) -> dict[int, object]:
    """One workload per evaluation seed: rebuilt with that seed when the workload config
    takes one (generated workloads), else the same one (a trace; seeds pick windows)."""
    if "seed" not in cfg.workload:
        workload = instantiate(cfg.workload)
        return dict.fromkeys(seeds, workload)
    spec = OmegaConf.to_container(cfg.workload, resolve=True)
    return {seed: instantiate({**spec, "seed": seed}) for seed in seeds}


def run(cfg: DictConfig, out_dir: Path) -> EvalResult:
    settings = settings_from_config(cfg)  # validates the policy specs first
    presets = cluster_presets(settings.policies)
    workloads = build_workloads(cfg, settings.seeds)
    cost = instantiate(cfg.cost)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    result = evaluate(workloads, cost, cluster, settings, presets)
    setting = describe_setting(cfg, workloads[settings.seeds[0]], cost)
    write_all(out_dir, result, setting)
    return result


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run(cfg, out_dir)
    print((out_dir / "summary.md").read_text())
    print(f"{len(result.rows)} simulations in {result.wall_s:.0f} s; results in {out_dir}")


if __name__ == "__main__":
    register_resolver()  # before Hydra composes conf/ (the task presets read it)
    main()
