"""A cluster of pools (envs/core/cluster.py): one pool is the old homogeneous cluster, bit
for bit; several pools give each instance its own hardware, which routing sees."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import servegym  # noqa: F401  (registers the ids)
from servegym.envs.build import build_simulator
from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import build_cost_model
from servegym.envs.workloads import load_azure_2023, scale_to_rate

MODEL = "Llama-3-8B"


def workload(requests: int = 400, rate: float = 40.0):
    trace = load_azure_2023("conv").head(requests)
    return scale_to_rate(trace, rate)


def roofline(gpu: str):
    return build_cost_model(MODEL, gpu, 1, source="roofline")


def summary(sim: Simulator, seed: int = 0) -> dict[str, float]:
    return sim.run(workload(), seed=seed).summary


def test_one_pool_is_the_homogeneous_cluster_bit_for_bit() -> None:
    cost, config = roofline("H100-80GB"), InstanceConfig(num_kv_blocks=2048)
    old = Simulator(cost, config, num_instances=3)
    pooled = Simulator(pools=[Pool("only", config, cost, 3)])
    assert summary(old) == summary(pooled)
    assert [i.pool for i in pooled.instances] == [0, 0, 0]


def test_each_pool_runs_on_its_own_hardware() -> None:
    config = InstanceConfig()
    h100, a100 = roofline("H100-80GB"), roofline("A100-80GB")
    sim = Simulator(pools=[Pool("h100", config, h100, 2), Pool("a100", config, a100, 2)])
    sim.reset(workload(8))
    assert [i.pool for i in sim.instances] == [0, 0, 1, 1]
    assert [i.cost for i in sim.instances] == [h100, h100, a100, a100]
    big = Simulator(pools=[Pool("h200", config, roofline("H200"), 1),
                           Pool("a100", config, a100, 1)])
    big.reset(workload(8))
    blocks = [i.bm.num_blocks for i in big.instances]
    assert blocks[0] > blocks[1]  # 141 GB against 80 GB of KV room

    def e2e(pools):
        return Simulator(pools=pools).run(workload(), seed=0).summary["serving/e2e_mean"]

    slow = e2e([Pool("a", config, a100, 4)])
    mixed = e2e([Pool("h", config, h100, 2), Pool("a", config, a100, 2)])
    fast = e2e([Pool("h", config, h100, 4)])
    assert fast < mixed < slow  # round-robin: half the requests on the faster GPU


def test_routing_sees_each_instances_pool() -> None:
    cluster = {"pools": [{"name": "h100", "count": 2, "cost": {"gpu": "H100-80GB"}},
                         {"name": "a100", "count": 2, "cost": {"gpu": "A100-80GB"}}]}
    env = gym.make("servegym/Routing-v0", cluster=cluster, rate=40.0,
                   episode_requests=200).unwrapped
    observation, _ = env.reset(seed=0)
    assert env.sim.num_instances == 4 and len(env.sim.pools) == 2
    from servegym.envs.observations import GLOBAL_FEATURES, SLOT_FEATURES

    slots = observation[GLOBAL_FEATURES:].reshape(env.encoder.num_slots, SLOT_FEATURES)
    np.testing.assert_array_equal(slots[:4, 8], [0.0, 0.0, 1.0, 1.0])


def test_pools_from_config_take_the_run_cost_model_where_they_say_nothing() -> None:
    base = roofline("H100-80GB")
    sim = build_simulator(base, pools=[
        {"name": "same", "count": 1},
        {"name": "other", "count": 2, "role": "mixed", "instance": {"max_num_seqs": 64},
         "cost": {"gpu": "A100-80GB", "source": "roofline"}}],
        instance={"max_num_seqs": 128}, policies=default_policies())
    sim.reset(workload(8))
    assert sim.instances[0].cost is base and sim.instances[1].cost.gpu.name == "A100-80GB"
    assert [i.config.max_num_seqs for i in sim.instances] == [128, 64, 64]


@pytest.mark.parametrize(("pools", "extra", "message"), [
    ([{"name": "p", "role": "prefill"}], {}, "needs prefill and decode pools"),
    ([{"name": "p", "role": "prefill"}, {"name": "d", "role": "decode"}, {"name": "m"}], {},
     "mixed pool beside"),
    ([{"name": "p", "role": "gpu"}], {}, "unknown role"),
    ([{"name": "p", "count": 0}], {}, "count must be a positive integer"),
    ([{"name": "p"}, {"name": "p"}], {}, "unique"),
    ([{"name": "p", "gpus": 2}], {}, "unknown key"),
    ([{"name": "p", "cost": {"gpu": "B300"}}], {}, "B300"),
    ([{"name": "p", "cost": {"vendor": "x"}}], {}, "unknown cost key"),
    ([{"name": "p", "instance": {"max_num_seq": 3}}], {}, "max_num_seq"),
    ([{"name": "p", "count": 2}], {"num_instances": 3}, "pools hold 2 instances"),
    ([{"name": "a", "instance": {"block_size": 16}}, {"name": "b", "instance":
                                                      {"block_size": 32}}], {}, "block size"),
])
def test_bad_pools_are_refused_with_a_message(pools, extra, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_simulator(roofline("H100-80GB"), pools=pools, **extra)


def test_a_simulator_needs_one_way_of_saying_its_cluster() -> None:
    cost, config = roofline("H100-80GB"), InstanceConfig()
    with pytest.raises(ValueError, match="either pools or"):
        Simulator(cost, pools=[Pool("a", config, cost)])
    with pytest.raises(ValueError, match="needs a cost_model"):
        Simulator()


def test_a_heterogeneous_cluster_preset_composes_and_bad_pools_fail_at_composition() -> None:
    from omegaconf import OmegaConf
    from test_train import compose_config

    from servegym.agents.learners import env_kwargs
    from servegym.agents.training import typed_config

    def typed(overrides):
        return typed_config(OmegaConf.to_container(compose_config(overrides), resolve=True))

    config = typed(["env=routing", "cluster=hetero_h100_a100"])
    cluster = env_kwargs(config)["cluster"]
    assert [(p["name"], p["count"], p["cost"]["gpu"]) for p in cluster["pools"]] == [
        ("h100", 2, "H100-80GB"), ("a100", 4, "A100-80GB")]
    env = gym.make("servegym/Routing-v0", cluster=cluster, episode_requests=50).unwrapped
    env.reset(seed=0)
    assert [i.pool for i in env.sim.instances] == [0, 0, 1, 1, 1, 1]
    assert {i.cost.gpu.name for i in env.sim.instances} == {"H100-80GB", "A100-80GB"}
    for override, message in (("cluster.pools.0.cost.gpu=B300", "B300"),
                              ("cluster.pools.1.role=gpu", "unknown role"),
                              ("cluster.num_instances=5", "hold 6 instances"),
                              ("+cluster.pools.0.instance.max_num_seq=2", "max_num_seq")):
        with pytest.raises(ValueError, match=message):
            typed(["env=routing", "cluster=hetero_h100_a100", override])
