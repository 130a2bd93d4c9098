"""Every registered env's default setting separates its heuristic baselines.

At each id's train.py default setting (experiments/bench_headroom.py: the conf/env/*.yaml of
the id, its env defaults untouched), every heuristic of the controlled decision kinds runs
on the first of train.py's held-out evaluation windows (full length: shorter windows do
not build the queues that separate the rules). The goodput spread (best - worst) / best
of `serving/goodput_rps` must be >= 0.25, or a learned agent has nothing to beat: this
fails if someone flattens a task (e.g. Routing-v0 back on a trace without prefix reuse,
where every router, random included, scores the same). The 5-window numbers are in
results/headroom.md. Also: what `gym.make` uses (envs/__init__.py `_IDS`) agrees with what
`python train.py env=<name>` uses (conf/env/*.yaml and the groups they select).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import pytest

from experiments import bench_headroom

IDS = bench_headroom.registered_ids()


@pytest.fixture(scope="module")
def groups() -> dict[str, str]:
    return bench_headroom.env_groups()


@pytest.mark.parametrize("env_id", IDS)
def test_default_setting_separates_the_heuristics(env_id: str, groups: dict[str, str]) -> None:
    overrides = bench_headroom.default_overrides(env_id, groups) + ["eval.episodes=1"]
    result = bench_headroom.evaluate(env_id, overrides)
    goodput = {spec: round(p[bench_headroom.METRIC]["mean"], 2)
               for spec, p in result["policies"].items()}
    assert len(goodput) >= 2, f"{env_id}: fewer than two heuristics to compare: {goodput}"
    assert result["spread"] >= bench_headroom.MIN_SPREAD, (
        f"{env_id} at {overrides}: goodput spread (best - worst) / best = "
        f"{result['spread']:.3f} < {bench_headroom.MIN_SPREAD}; goodput req/s: {goodput}")


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [without_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("env_id", IDS)
def test_registered_defaults_agree_with_the_train_config(env_id: str,
                                                         groups: dict[str, str]) -> None:
    from agents.learners import env_kwargs
    from envs.core.instance import InstanceConfig

    registered = dict(gym.spec(env_id).kwargs)
    trained = env_kwargs(bench_headroom.typed_config(
        bench_headroom.default_overrides(env_id, groups)))
    for key in ("rate", "episode_requests"):
        if key in registered:
            assert registered[key] == trained[key], (env_id, key)
    cluster = registered.get("cluster", {})
    assert cluster.get("num_instances", 1) == trained["cluster"]["num_instances"], env_id
    stated = InstanceConfig(**cluster.get("instance", {}))
    assert dataclasses.asdict(stated) == dataclasses.asdict(
        InstanceConfig(**trained["cluster"]["instance"])), env_id
    if isinstance(registered.get("workload"), dict):
        assert without_nulls(registered["workload"]) == without_nulls(trained["workload"])
