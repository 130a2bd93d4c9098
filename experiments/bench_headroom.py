"""Headroom of every registered env: does its default setting separate the heuristics?

For every `servegym/` id registered by `envs/__init__.py`, take the id's train.py default
setting (the `conf/env/*.yaml` whose `env.id` is the id, composed as `python train.py
env=<name>` composes it; an id without one: the default env group with `env.id=<id>`) and
evaluate every heuristic of the controlled decision kinds exactly as train.py's final
evaluation evaluates its baselines (`servegym.agents.training`: the held-out `eval.split`,
`eval.episodes` windows of `env.episode_requests` requests, the same windows and seeds for
every heuristic, the env's heuristics or the defaults for the other decisions).

    spread = (best - worst) / best

of the heuristics' mean `serving/goodput_rps` (requests meeting both their TTFT and TPOT
SLOs per second of makespan). An id whose spread is below `MIN_SPREAD` (0.25) gives a
learned agent little to beat: every rule scores about the same.

    python experiments/bench_headroom.py              # writes results/headroom.{md,json}
    python experiments/bench_headroom.py --ids servegym/Routing-v0 --episodes 2 --name x
    python experiments/bench_headroom.py --override env.rate=60   # to every id

Results are written atomically and never overwritten (`--name` picks another file stem).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch  # (SB3's; one thread, as train.py sets it)
from omegaconf import OmegaConf

from servegym.envs.bounds import drained_goodput_ceiling, goodput_ceiling
from servegym.envs.core.metrics import atomic_write, result_paths

ROOT = Path(__file__).resolve().parents[1]

MIN_SPREAD = 0.25
METRIC = "serving/goodput_rps"
BASE_OVERRIDES = ("agent=heuristic", "logger=none", "progress=false")


# ============================================================================ settings
def registered_ids() -> list[str]:
    """Every `servegym/` id that importing `servegym` registers, in registration order."""
    from gymnasium.envs.registration import registry

    import servegym  # noqa: F401  (registers the ids)

    return [name for name in registry if name.startswith("servegym/")]


def compose(overrides: Sequence[str]) -> Any:
    """train.py's config for `overrides` (Hydra composition of conf/config.yaml)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from servegym.agents.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[*BASE_OVERRIDES, *overrides])


def env_groups() -> dict[str, str]:
    """id -> the conf/env option whose `env.id` it is (the first, by file name)."""
    out: dict[str, str] = {}
    for path in sorted((ROOT / "conf" / "env").glob("*.yaml")):
        out.setdefault(str(compose([f"env={path.stem}"]).env.id), path.stem)
    return out


def default_overrides(env_id: str, groups: Mapping[str, str] | None = None) -> list[str]:
    """The train.py overrides that select `env_id`'s default setting."""
    groups = env_groups() if groups is None else groups
    if env_id in groups:
        return [f"env={groups[env_id]}"]
    return [f"env.id={env_id}"]


def typed_config(overrides: Sequence[str]) -> Any:
    from servegym.agents.training import typed_config as typed

    return typed(OmegaConf.to_container(compose(overrides), resolve=True))


# ============================================================================ evaluation
def spread(values: Mapping[str, float]) -> float:
    """(best - worst) / best of `values` (policy -> mean goodput rate)."""
    best, worst = max(values.values()), min(values.values())
    return (best - worst) / best if best > 0 else 0.0


def must_finish(workload: Any, instances: Sequence[Any]) -> np.ndarray:
    """Per request of `workload`, True when no instance would reject it on arrival
    (`Instance.rejection_reason`, which reads only its lengths): such a request is served to
    its end whatever the policy, so it bounds the makespan (envs/bounds.py)."""
    probe = SimpleNamespace(prompt_len=0, output_len=0)
    out = np.ones(len(workload), dtype=bool)
    for index, (prompt, output) in enumerate(zip(workload.prompt_len.tolist(),
                                                 workload.output_len.tolist(), strict=True)):
        probe.prompt_len, probe.output_len = prompt, output
        out[index] = not any(instance.rejection_reason(probe) for instance in instances)
    return out


def evaluate(env_id: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Every heuristic of `env_id`'s controlled kinds on train.py's final evaluation
    windows for `overrides`; per heuristic the mean, min and max over windows."""
    from servegym.agents import learners, training
    from servegym.agents.evaluation import compare

    config = typed_config(overrides)
    if config.env.id != env_id:
        raise ValueError(f"{list(overrides)} compose env.id={config.env.id}, not {env_id}")
    kwargs = learners.env_kwargs(config)
    probe = learners.make_env(config.env.id, kwargs, config.env.policies, monitor=False)()
    setting = training.build_setting(config, probe)
    costs = [pool.cost for pool in probe.unwrapped.sim.pools]
    probe.reset(seed=0)  # builds the instances (their arrival rejection rules)
    instances = list(probe.unwrapped.sim.instances)
    episodes = training.final_episodes(config, setting)
    ceilings = [goodput_ceiling(e.workload, costs).goodput_rps for e in episodes]
    drained = [drained_goodput_ceiling(e.workload, costs, must_finish(e.workload, instances)
                                       ).goodput_rps for e in episodes]
    probe.close()
    specs = training.baseline_specs(config, setting.controlled)
    started = time.perf_counter()
    rows = compare({spec: training.heuristic_factory(spec, setting.controlled,
                                                     config.env.policies)
                    for spec in specs}, episodes, setting.cost, setting.kwargs["cluster"])
    policies = {}
    for spec in specs:
        mine = [row for row in rows if row["policy"] == spec]
        policies[spec] = {
            key: {"mean": float(np.mean([r[key] for r in mine])),
                  "min": float(np.min([r[key] for r in mine])),
                  "max": float(np.max([r[key] for r in mine]))}
            for key in (METRIC, "serving/slo_attainment", "serving/throughput_rps",
                        "serving/preemptions", "serving/prefix_cache_hit_rate")}
    goodput = {spec: p[METRIC]["mean"] for spec, p in policies.items()}
    source = kwargs["workload"]["source"]
    return {
        "id": env_id, "overrides": list(overrides), "controlled": setting.controlled,
        "setting": setting.describe(config), "split": config.eval.split,
        "workload": source.get("name") or "_".join(
            str(source[k]) for k in ("kind", "trace") if source.get(k)),
        "cluster": kwargs["cluster"],
        "episodes": len(episodes), "requests": len(episodes[0].workload),
        "seeds": [e.seed for e in episodes], "policies": policies,
        "best": max(goodput, key=goodput.get), "worst": min(goodput, key=goodput.get),
        "spread": spread(goodput), "ceiling": float(np.mean(ceilings)),
        "headroom": float(np.mean(ceilings)) / max(goodput.values()) - 1
        if max(goodput.values()) > 0 else float("inf"),
        "drained_ceiling": float(np.mean(drained)),
        "drained_headroom": float(np.mean(drained)) / max(goodput.values()) - 1
        if max(goodput.values()) > 0 else float("inf"),
        "wall_s": time.perf_counter() - started,
    }


# ============================================================================ report
def table(results: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| id | heuristic | goodput (req/s) [min, max] | SLO attainment |",
             "|---|---|---|---|"]
    for result in results:
        for spec, p in result["policies"].items():
            g, a = p[METRIC], p["serving/slo_attainment"]
            lines.append(f"| {result['id']} | {spec} | {g['mean']:.2f} [{g['min']:.2f}, "
                         f"{g['max']:.2f}] | {a['mean']:.3f} |")
    return "\n".join(lines)


def spread_line(result: Mapping[str, Any]) -> str:
    p = result["policies"]
    best, worst = (p[result[k]][METRIC]["mean"] for k in ("best", "worst"))
    verdict = "ok" if result["spread"] >= MIN_SPREAD else f"BELOW {MIN_SPREAD}"
    return (f"- {result['id']} (`{' '.join(result['overrides'])}`): spread = (best - worst) "
            f"/ best = ({best:.2f} {result['best']} - {worst:.2f} {result['worst']}) / "
            f"{best:.2f} = **{result['spread']:.3f}** ({verdict}; {result['episodes']} "
            f"windows of {result['requests']} requests, {result['split']} split); "
            f"ceiling {result['ceiling']:.2f} req/s, at most "
            f"**{result['headroom']:+.1%}** above the best heuristic for any policy"
            + (f"; drained ceiling {result['drained_ceiling']:.2f} req/s, at most "
               f"**{result['drained_headroom']:+.1%}** for any policy that serves every "
               "request, as the evaluation does" if "drained_ceiling" in result else ""))


def setting_line(result: Mapping[str, Any]) -> str:
    """The id's setting in one line: env, workload, cluster (with its non-default KV)."""
    instance = result["cluster"].get("instance", {})
    kv = instance.get("num_kv_blocks")
    memory = (f"{kv} KV blocks, {instance.get('swap_space_blocks', 0)} swap blocks"
              if kv is not None else f"gpu_memory_utilization "
              f"{instance.get('gpu_memory_utilization')}")
    caching = ", prefix caching" if instance.get("enable_prefix_caching") else ""
    env, cluster = result["setting"][0], result["setting"][2]
    return f"- {env}; workload {result['workload']}; {cluster}, {memory}{caching}"


def markdown(command: str, stamp: str, results: Sequence[Mapping[str, Any]]) -> str:
    settings = [setting_line(r) for r in results]
    return "\n".join([
        f"# Heuristic headroom per env ({stamp})",
        "",
        f"Command: `{command}`",
        "",
        "Every heuristic of each id's controlled decision kinds on the id's train.py default "
        "setting, evaluated as train.py evaluates its baselines (servegym.agents.training: "
        "the same windows and seeds for every heuristic). Goodput = requests meeting both TTFT and "
        "TPOT SLOs per second of makespan (`serving/goodput_rps`), mean [min, max] over "
        f"windows. Spread = (best - worst) / best of the mean goodput; target >= {MIN_SPREAD}. "
        "Ceiling: servegym.envs.bounds.goodput_ceiling, an upper bound on any policy's "
        "goodput rate (each request alone on the fastest pool, the makespan no shorter "
        "than the met requests' earliest finishes; capacity ignored, so loose under "
        "overload), mean over windows. Drained ceiling: "
        "servegym.envs.bounds.drained_goodput_ceiling, the same for runs that serve every "
        "request to its end (the evaluation drains each window): the makespan lasts at "
        "least until the latest earliest finish of a request no instance rejects.",
        "",
        *settings,
        "",
        table(results),
        "",
        *[spread_line(r) for r in results],
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ids", nargs="*", help="ids to evaluate (default: all registered)")
    parser.add_argument("--episodes", type=int, help="windows (default: train.py's eval)")
    parser.add_argument("--requests", type=int, help="requests per window (default: env's)")
    parser.add_argument("--override", action="append", default=[],
                        help="extra train.py override for every id (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument("--name", default="headroom", help="file stem of the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    out = Path(args.out)
    paths, taken = result_paths(out, args.name)
    if taken:  # before minutes of work, not after
        parser.error(f"{', '.join(taken)} exist; results are never overwritten, "
                     "choose another --name")
    command = shlex.join(["python", "experiments/bench_headroom.py",
                          *(sys.argv[1:] if argv is None else argv)])
    extra = list(args.override)
    if args.episodes is not None:
        extra.append(f"eval.episodes={args.episodes}")
    if args.requests is not None:
        extra.append(f"eval.num_requests={args.requests}")

    groups = env_groups()
    results = []
    for env_id in args.ids or registered_ids():
        result = evaluate(env_id, default_overrides(env_id, groups) + extra)
        results.append(result)
        print(spread_line(result), flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = markdown(command, stamp, results)
    print(text)
    payload = {"created": stamp, "command": command, "metric": METRIC,
               "spread": "(best - worst) / best of the mean goodput", "min_spread": MIN_SPREAD,
               "python": platform.python_version(), "results": results}
    atomic_write(paths[1], lambda h: json.dump(payload, h, indent=2))
    atomic_write(paths[0], lambda h: h.write(text))
    return 0 if all(r["spread"] >= MIN_SPREAD for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
