"""Heterogeneous GPU pools as in Mélange (Griggs et al., 2024): prices, the allocation ILP
against brute force, size- and GPU-aware routing, servegym/Heterogeneous-v0 and bad input."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from sim_fixtures import make_workload

from servegym.agents.heuristics import make_policy
from servegym.agents.heuristics.melange import (
    Buckets,
    InfeasibleAllocationError,
    balanced_shares,
    bucket_profile,
    estimated_rate,
    solve_allocation,
)
from servegym.envs.build import build_pools, build_simulator, pool_settings
from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.costs import RooflineFallbackWarning, build_cost_model
from servegym.envs.costs.prices import (
    PRICES,
    UnknownPriceError,
    cluster_cost_per_hour,
    gpu_price,
    pool_price,
    price_table,
)
from servegym.envs.protocol import DecisionKind

HETERO = "servegym/Heterogeneous-v0"
MODEL = "Llama-2-7B"


@pytest.fixture(autouse=True)
def _quiet_roofline() -> None:
    warnings.simplefilter("ignore", RooflineFallbackWarning)


# ============================================================================ prices
def test_every_priced_gpu_has_a_positive_price_a_source_and_a_date() -> None:
    assert {"A100-80GB", "H100-80GB", "L40S"} <= set(PRICES)
    for name, entry in PRICES.items():
        assert entry.gpu == name and 0 < entry.price_per_hour < 100
        assert entry.source.startswith("Modal") and "https://" in entry.source
        assert len(entry.date) == 10 and entry.date.startswith("20")
    # The ratios an allocation depends on: the faster the GPU, the dearer.
    assert PRICES["L40S"].price_per_hour < PRICES["A100-80GB"].price_per_hour \
        < PRICES["H100-80GB"].price_per_hour
    assert gpu_price("a100") is PRICES["A100-80GB"]


def test_unknown_or_unpriced_gpus_and_bad_overrides_are_named() -> None:
    with pytest.raises(UnknownPriceError, match="unknown GPU 'B200'.*priced GPUs: H100-80GB"):
        gpu_price("B200")
    with pytest.raises(UnknownPriceError, match="no price for H200.*price_per_hour"):
        gpu_price("H200")
    with pytest.raises(UnknownPriceError, match="override for unknown GPU 'B200'.*known GPUs"):
        price_table({"B200": 3.0})
    for bad in (-1.0, 0.0, math.nan, math.inf, "3", True):
        with pytest.raises(ValueError, match="price"):
            price_table({"H100-80GB": bad})
    table = price_table({"h100": 2.5}, ["H100-80GB", "L40S"])
    assert table["H100-80GB"].price_per_hour == 2.5 and table["H100-80GB"].source == "override"
    assert table["L40S"] is PRICES["L40S"]


def _pools(*specs: dict) -> list[Pool]:
    return build_pools(specs, build_cost_model(MODEL, "H100-80GB"))


def test_pool_prices_come_from_the_override_or_the_table_per_gpu_hour() -> None:
    pools = _pools({"name": "h", "count": 2, "cost": {"gpu": "H100-80GB"}},
                   {"name": "l", "count": 3, "cost": {"gpu": "L40S"}, "price_per_hour": 1.25},
                   {"name": "x", "count": 1, "cost": {"gpu": "A100-80GB",
                                                      "tensor_parallel": 2}},
                   {"name": "u", "count": 1, "cost": {"gpu": "H200"}})
    assert pool_price(pools[0]) == (PRICES["H100-80GB"].price_per_hour, "Modal 2026-05-07")
    assert pool_price(pools[1]) == (1.25, "override")
    assert pool_price(pools[2])[0] == pytest.approx(2 * PRICES["A100-80GB"].price_per_hour)
    assert math.isnan(pool_price(pools[3])[0]) and pool_price(pools[3])[1] == "none"
    assert math.isnan(cluster_cost_per_hour(pools))
    assert cluster_cost_per_hour(pools[:3]) == pytest.approx(
        2 * PRICES["H100-80GB"].price_per_hour + 3 * 1.25
        + 2 * PRICES["A100-80GB"].price_per_hour)


@pytest.mark.parametrize("price", [-2.0, 0, math.nan, math.inf, "cheap"])
def test_bad_pool_prices_are_refused_naming_the_pool(price: object) -> None:
    with pytest.raises(ValueError, match=r"cluster.pools\[1\] \(l\).price_per_hour"):
        pool_settings(1, {"name": "l", "cost": {"gpu": "L40S"}, "price_per_hour": price})
    with pytest.raises(ValueError, match="pool 'l': price_per_hour"):
        Pool("l", InstanceConfig(), build_cost_model(MODEL, "L40S"), price_per_hour=price)


def test_reports_show_each_pool_and_the_cost_per_hour_and_per_dollar() -> None:
    sim = build_simulator(build_cost_model(MODEL, "H100-80GB"), pools=[
        {"name": "h100", "count": 1, "cost": {"gpu": "H100-80GB"}},
        {"name": "l40s", "count": 2, "cost": {"gpu": "L40S"}, "price_per_hour": 1.5}])
    n = 40
    report = sim.run(make_workload(np.arange(n) * 0.05, [300] * n, [50] * n,
                                   ttft_slo=2.0, tpot_slo=0.1))
    summary = report.summary
    cost = PRICES["H100-80GB"].price_per_hour + 2 * 1.5
    assert summary["serving/cost_per_hour"] == pytest.approx(cost)
    met = summary["serving/slo_attainment"] * n
    assert summary["serving/goodput_per_dollar"] == pytest.approx(
        met / (cost * summary["serving/makespan_s"] / 3600))
    assert [(p["name"], p["gpu"], p["count"], p["price_source"], p["cost_source"])
            for p in report.pools] == [("h100", "H100-80GB", 1, "Modal 2026-05-07", "measured"),
                                       ("l40s", "L40S", 2, "override", "roofline")]
    table = report.format_table()
    assert "cluster cost ($/h)" in table and "pool l40s" in table
    assert "2 x L40S, $1.50/h (override), roofline" in table


# ============================================================================ the ILP
def brute_force(rates: np.ndarray, capacity: np.ndarray, prices: np.ndarray,
                slices: int) -> float:
    """The cheapest cost over every assignment of every bucket's slices to GPU types."""
    G, B = capacity.shape
    per_bucket = [[y for y in itertools.product(range(slices + 1), repeat=G)
                   if sum(y) == slices and all(capacity[g, b] > 0 or y[g] == 0
                                               for g in range(G))]
                  for b in range(B)]
    best = math.inf
    for choice in itertools.product(*per_bucket):
        load = np.zeros(G)
        for b, y in enumerate(choice):
            for g in range(G):
                if y[g]:
                    load[g] += y[g] * rates[b] / (slices * capacity[g, b])
        counts = np.ceil(load - 1e-7)
        best = min(best, float(prices @ counts))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_the_ilp_finds_the_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    G, B, S = int(rng.integers(2, 4)), int(rng.integers(2, 4)), int(rng.integers(1, 4))
    rates = rng.uniform(0.5, 12.0, B)
    capacity = rng.uniform(0.5, 6.0, (G, B))
    capacity[rng.random((G, B)) < 0.15] = 0.0
    capacity[0] = np.maximum(capacity[0], 0.3)  # every bucket servable by some type
    prices = rng.uniform(1.0, 5.0, G)
    names = [f"g{g}" for g in range(G)]
    # Type names must be GPUs only for the router; the solver takes any labels.
    allocation = solve_allocation(rates, capacity, dict(zip(names, prices, strict=True)),
                                  slice_factor=S)
    assert allocation.cost_per_hour == pytest.approx(brute_force(rates, capacity, prices, S),
                                                     abs=1e-6)
    # The answer is feasible: shares sum to 1 in slices of 1/S, loads fit the counts.
    np.testing.assert_allclose(allocation.fractions.sum(axis=1), 1.0)
    np.testing.assert_allclose(allocation.fractions * S, np.rint(allocation.fractions * S),
                               atol=1e-9)
    for g in range(G):
        with np.errstate(divide="ignore", invalid="ignore"):
            load = np.nansum(np.where(capacity[g] > 0,
                                      allocation.fractions[:, g] * rates / capacity[g], 0.0))
        assert load <= allocation.counts[g] + 1e-6
        assert np.all(allocation.fractions[capacity[g] == 0, g] == 0)


def test_a_mix_beats_every_single_type_when_sizes_favour_different_gpus() -> None:
    # Small requests: the cheap GPU is twice as cost-efficient; large ones: the dear one.
    rates = np.array([4.0, 2.0])
    capacity = np.array([[4.0, 2.0],    # "big": 4 small or 2 large req/s, $4/h
                         [4.0, 0.5]])   # "small": as fast on small, slow on large, $2/h
    prices = {"big": 4.0, "small": 2.0}
    best = solve_allocation(rates, capacity, prices, slice_factor=4)
    assert best.counts == (1, 1) and best.cost_per_hour == pytest.approx(6.0)
    np.testing.assert_allclose(best.fractions, [[0.0, 1.0], [1.0, 0.0]])
    alone = [solve_allocation(rates, capacity[g:g + 1], {k: prices[k]}).cost_per_hour
             for g, k in enumerate(prices)]
    assert alone == [pytest.approx(8.0), pytest.approx(10.0)]


def test_infeasible_allocations_say_which_bucket_and_what_to_change() -> None:
    prices = {"A100-80GB": 2.5, "L40S": 1.95}
    with pytest.raises(InfeasibleAllocationError,
                       match="prompt >= 2048 arrives at 3 req/s but no GPU type sustains.*"
                             "relax the SLO"):
        solve_allocation([1.0, 3.0], [[5.0, 0.0], [2.0, 0.0]], prices,
                         labels=["prompt [0, 2048)", "prompt >= 2048"])
    with pytest.raises(InfeasibleAllocationError, match="above what the allowed GPUs can serve"
                                                        ".*raise max_counts"):
        solve_allocation([100.0], [[5.0], [2.0]], prices,
                         max_counts={"A100-80GB": 3, "L40S": 2})
    with pytest.raises(ValueError, match="max_counts names 'H100'"):
        solve_allocation([1.0], [[5.0], [2.0]], prices, max_counts={"H100": 1})


@pytest.mark.parametrize("kwargs, message", [
    ({"rates": [-1.0]}, "rates must be one finite, non-negative"),
    ({"rates": [math.nan]}, "rates must be one finite"),
    ({"max_rates": [[math.nan], [1.0]]}, "max_rates must be finite"),
    ({"max_rates": [[1.0, 2.0]]}, "one row per GPU type"),
    ({"prices": {"A100-80GB": -2.5, "L40S": 1.0}}, "price of A100-80GB"),
    ({"slice_factor": 0}, "slice_factor must be a positive integer"),
])
def test_bad_allocation_inputs_are_refused(kwargs: dict, message: str) -> None:
    args = {"rates": [1.0], "max_rates": [[5.0], [2.0]],
            "prices": {"A100-80GB": 2.5, "L40S": 1.95}, **kwargs}
    with pytest.raises(ValueError, match=message):
        solve_allocation(args.pop("rates"), args.pop("max_rates"), args.pop("prices"), **args)


def test_balanced_shares_fill_a_given_cluster_evenly_and_cheaply() -> None:
    capacity = np.array([[4.0, 2.0], [4.0, 0.5]])
    shares = balanced_shares(np.array([0.5, 0.5]), capacity, np.array([1.0, 1.0]),
                             np.array([4.0, 2.0]))
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    load = [(shares[:, g] * np.array([0.5, 0.5]) / capacity[g]).sum() for g in range(2)]
    assert max(load) == pytest.approx(min(load), rel=1e-6)  # both types equally busy


def test_buckets_and_profiles() -> None:
    buckets = Buckets((0, 100, 1000), (0, 50))
    assert len(buckets) == 6 and buckets.by_output
    assert buckets.index(99, 49) == 1 * 0 + 0 and buckets.index(100, 50) == 3
    assert buckets.index(5000, 10) == 4
    assert buckets.labels()[3] == "prompt [100, 1000) x output >= 50"
    profile = bucket_profile([10, 20, 500], [5, 60, 70], np.array([0.0, 1.0, 2.0]), buckets)
    np.testing.assert_allclose(profile.rates, [0.5, 0.5, 0, 0.5, 0, 0])
    assert profile.mean_prompt[3] == 500
    with pytest.raises(ValueError, match="strictly ascending token counts starting at 0"):
        Buckets((10, 100))


def test_the_capacity_estimate_falls_with_size_and_speed() -> None:
    config = InstanceConfig()
    rates = {gpu: [estimated_rate(build_cost_model(MODEL, gpu), config, 5000, p, 150, 0.1)
                   for p in (200, 1000, 3000)] for gpu in ("H100-80GB", "A100-80GB", "L40S")}
    for values in rates.values():
        assert values[0] > values[1] > values[2] > 0
    assert rates["H100-80GB"][1] > rates["A100-80GB"][1] > rates["L40S"][1]
    assert estimated_rate(build_cost_model(MODEL, "L40S"), config, 5000, 3000, 150,
                          1e-4) == 0.0


# ============================================================================ routing
def _two_type_sim(policy) -> tuple:
    sim = build_simulator(build_cost_model(MODEL, "H100-80GB"), pools=[
        {"name": "l40s", "count": 2, "cost": {"gpu": "L40S"}},
        {"name": "h100", "count": 1, "cost": {"gpu": "H100-80GB"}}],
        policies={**default_policies(), DecisionKind.ROUTE: policy})
    prompts = [200, 3000, 150, 2500, 400, 3500, 100, 2000] * 5
    workload = make_workload(np.arange(len(prompts)) * 0.05, prompts, [40] * len(prompts),
                             ttft_slo=5.0, tpot_slo=0.2)
    report = sim.run(workload, seed=0)
    return np.asarray(prompts), report.records["instance"]


def test_size_interval_sends_short_prompts_to_the_cheapest_type() -> None:
    prompts, instance = _two_type_sim(make_policy("size-interval", boundaries=[1000]))
    assert set(instance[prompts < 1000]) <= {0, 1}        # the L40S pool: instances 0, 1
    assert set(instance[prompts >= 1000]) == {2}          # the H100
    assert set(instance[prompts < 1000]) == {0, 1}        # balanced within the type


def test_size_interval_default_cuts_follow_capacity() -> None:
    from servegym.agents.heuristics.melange import SizeIntervalRouting

    prompt = np.array([100] * 50 + [3000] * 50)
    output = np.full(100, 100)
    cuts = SizeIntervalRouting.capacity_cuts((prompt, output, np.arange(100.0)),
                                             np.array([1.0, 1.0]))
    assert 100 < cuts[0] <= 3000  # half the capacity each: the short half below the cut
    with pytest.raises(ValueError, match="boundaries .* 2 intervals, but the cluster has 3"):
        env = gym.make(HETERO).unwrapped
        env.reset(seed=0)
        policy = make_policy("size-interval", boundaries=[1000])
        policy.decide(env.decision)


def test_melange_routes_each_bucket_by_its_allocation() -> None:
    prompts, instance = _two_type_sim(make_policy(
        "melange", allocation={"L40S": [1.0, 0.0], "H100-80GB": [0.0, 1.0]},
        prompt_edges=[0, 1000]))
    assert set(instance[prompts < 1000]) == {0, 1}
    assert set(instance[prompts >= 1000]) == {2}
    # A split bucket is dealt out in proportion (smooth weighted round-robin).
    prompts, instance = _two_type_sim(make_policy(
        "melange", allocation={"L40S": [0.75, 0.0], "H100-80GB": [0.25, 1.0]},
        prompt_edges=[0, 1000]))
    short = instance[prompts < 1000]
    assert abs(np.sum(short == 2) - 0.25 * short.size) <= 1
    assert set(instance[prompts >= 1000]) == {2}


@pytest.mark.parametrize("allocation, message", [
    ({"B200": [1.0]}, "unknown GPU 'B200'"),
    ({"L40S": [1.0, 0.0, 0.0]}, "one non-negative share per bucket"),
    ({"L40S": [-1.0]}, "one non-negative share per bucket"),
    ({"L40S": [0.0]}, "gives no GPU type to"),
])
def test_bad_melange_allocations_are_refused(allocation: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_policy("melange", allocation=allocation, prompt_edges=[0])


def test_an_allocation_naming_an_absent_gpu_fails_at_the_first_decision() -> None:
    with pytest.raises(ValueError, match="routes to \\['A100-80GB'\\], which this cluster"):
        _two_type_sim(make_policy("melange", allocation={"A100-80GB": [1.0]},
                                  prompt_edges=[0]))


@pytest.mark.parametrize("name", ["melange", "size-interval"])
def test_on_one_gpu_type_the_size_routers_are_least_outstanding(name: str) -> None:
    def run(policy):
        sim = build_simulator(build_cost_model(MODEL, "A100-80GB"), 3, {},
                              policies={**default_policies(), DecisionKind.ROUTE: policy})
        n = 60
        workload = make_workload(np.arange(n) * 0.02, (np.arange(n) * 97) % 3000 + 10,
                                 [30] * n)
        return sim.run(workload, seed=1).records["instance"]

    np.testing.assert_array_equal(run(make_policy(name)), run(make_policy("lor")))


def test_default_melange_shares_on_heterogeneous_v0_are_deterministic_and_size_aware() -> None:
    env = gym.make(HETERO).unwrapped
    env.reset(seed=0)
    first, second = make_policy("melange"), make_policy("melange")
    for policy in (first, second):
        policy.reset(None)
        policy.decide(env.decision)
    np.testing.assert_array_equal(first.fractions, second.fractions)
    assert first.types == ["H100-80GB", "A100-80GB", "L40S"]
    np.testing.assert_allclose(first.fractions.sum(axis=1), 1.0)
    assert first.fractions.min() >= 0
    # The longest prompts go mostly to the H100, never mostly to the L40S.
    assert first.fractions[-2, 0] > 0.5
    interval = make_policy("size-interval")
    interval.reset(None)
    interval.decide(env.decision)
    assert [interval.types[t] for t in interval.ranked] == ["L40S", "A100-80GB", "H100-80GB"]
    assert len(interval.cuts) == 2 and interval.cuts[0] < interval.cuts[1]


def test_the_size_routers_read_only_the_protocol() -> None:
    from test_contracts import FakeCluster

    env = gym.make(HETERO, rate=32.0, episode_requests=200).unwrapped
    env.reset(seed=4)
    policies = {name: (make_policy(name), make_policy(name))
                for name in ("melange", "size-interval")}
    for policy, twin in policies.values():
        policy.reset(None)
        twin.reset(None)
    rng = np.random.default_rng(0)
    for _ in range(60):
        decision = env.decision
        if decision is None:
            break
        restated = FakeCluster(env.sim).decision(decision)
        for name, (policy, twin) in policies.items():
            assert twin.decide(restated) == policy.decide(decision), name
        env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))


# ============================================================================ the env id
def test_heterogeneous_v0_builds_and_runs_through_gym_make() -> None:
    env = gym.make(HETERO)
    sim = env.unwrapped.sim
    assert [(p.name, p.count, p.cost.gpu.name, p.cost.model.name, p.cost.source)
            for p in sim.pools] == [("h100", 1, "H100-80GB", MODEL, "measured"),
                                    ("a100", 2, "A100-80GB", MODEL, "measured"),
                                    ("l40s", 3, "L40S", MODEL, "roofline")]
    assert env.unwrapped.controlled == {DecisionKind.ROUTE}
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(
            int(np.flatnonzero(env.unwrapped.action_masks())[-1]))
    assert env.observation_space.contains(obs)


def test_heterogeneous_v0_composes_in_train_py_with_its_prices_checked() -> None:
    import bench_headroom

    config = bench_headroom.typed_config(["env=heterogeneous"])
    assert config.env.id == HETERO and [p.count for p in config.cluster.pools] == [1, 2, 3]
    assert all(p.price_per_hour is None for p in config.cluster.pools)
    config = bench_headroom.typed_config(["env=heterogeneous",
                                          "cluster.pools.2.price_per_hour=1.5"])
    assert config.cluster.pools[2].price_per_hour == 1.5
    for value in ("-1", "0", "nan", "inf"):
        with pytest.raises(ValueError, match=r"cluster.pools\[2\] \(l40s\).price_per_hour"):
            bench_headroom.typed_config(["env=heterogeneous",
                                         f"cluster.pools.2.price_per_hour={value}"])
    with pytest.raises(ValueError, match="unknown GPU 'B200'; known GPUs"):
        bench_headroom.typed_config(["env=heterogeneous", "cluster.pools.0.cost.gpu=B200"])


def test_the_run_setting_lists_every_pool_with_price_and_cost_source() -> None:
    import bench_headroom

    from servegym.agents import learners, training

    config = bench_headroom.typed_config(["env=heterogeneous"])
    probe = learners.make_env(config.env.id, learners.env_kwargs(config), config.env.policies,
                              monitor=False)()
    setting = training.build_setting(config, probe)
    probe.close()
    line = setting.describe(config)[2]
    assert "h100: 1 x H100-80GB, $3.95/h (Modal 2026-05-07), measured" in line
    assert "l40s: 3 x L40S, $1.95/h (Modal 2026-05-07), roofline" in line


# ============================================================================ the benchmark
def test_the_allocation_benchmark_writes_once_and_refuses_bad_prices(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import melange_allocation

    args = ["--gpus", "H100-80GB", "L40S", "--prompt-edges", "0", "1024", "--output-edges",
            "0", "--rates", "4", "20", "--duration", "10", "--steps", "1",
            "--out", str(tmp_path), "--name", "t"]
    assert melange_allocation.main(args) == 0
    payload = json.loads((tmp_path / "t.json").read_text())
    assert payload["command"].startswith("python experiments/melange_allocation.py --gpus")
    assert payload["cost_sources"] == {"H100-80GB": "measured", "L40S": "roofline"}
    rates = payload["profile"]["max_rates"]
    assert all(fast > 0 and fast > slow for fast, slow in zip(rates["H100-80GB"],
                                                              rates["L40S"], strict=True))
    for row in payload["allocations"]:
        counts, prices = row["melange"]["counts"], payload["prices"]
        assert row["melange"]["cost_per_hour"] == pytest.approx(
            sum(counts[g] * prices[g]["price_per_hour"] for g in counts))
        assert row["melange"]["cost_per_hour"] <= min(
            s["cost_per_hour"] for s in row["single_type"].values()) + 1e-9
        make_policy("melange", allocation=row["melange"]["shares"], prompt_edges=[0, 1024])
    assert "| 20 |" in (tmp_path / "t.md").read_text()
    with pytest.raises(SystemExit):
        melange_allocation.main(args)                     # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    for price, message in (("B200=3", "unknown GPU 'B200'"), ("L40S=-1", "positive, finite"),
                           ("L40S=nan", "positive, finite"), ("L40S", "write GPU=USD")):
        with pytest.raises(SystemExit):
            melange_allocation.main([*args[:-1], "other", "--price", price])
        assert message in capsys.readouterr().err
