"""Evolution strategies (agents/evolution.py): ranks, the search on a known optimum,
determinism whatever the number of workers, and the train.py stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_train import PPO_TINY, TINY, compose_config, run_train

from servegym.agents.evolution import Adam, SearchSpace, Workers, centred_ranks, evolve
from servegym.agents.training import typed_config


class Actor(torch.nn.Module):
    """Two actor layers and a value head the search must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 2)
        self.value_net = torch.nn.Linear(2, 1)


def test_centred_ranks_and_adam() -> None:
    np.testing.assert_allclose(centred_ranks(np.array([3.0, -1.0, 7.0, 0.0])),
                               [1 / 6, -0.5, 0.5, -1 / 6], atol=1e-15)
    np.testing.assert_array_equal(centred_ranks(np.array([2.0, 2.0])), [-0.5, 0.5])
    adam = Adam(2, learning_rate=0.1)
    step = adam.step(np.array([4.0, -0.001]))
    np.testing.assert_allclose(step, [0.1, -0.1], rtol=1e-4)  # Adam's first step: lr * sign


def test_the_search_space_is_the_actor_only() -> None:
    torch.manual_seed(0)
    module = Actor()
    space = SearchSpace.actor_of(module)
    assert space.names == ("encoder.weight", "encoder.bias")
    value_before = module.value_net.weight.detach().clone()
    vector = space.get()
    assert vector.shape == (8,)
    space.put(vector + 1.0)
    np.testing.assert_allclose(space.get(), vector + 1.0, rtol=1e-6)
    assert torch.equal(module.value_net.weight, value_before)
    with pytest.raises(ValueError, match="vector of 3 values for 8 parameters"):
        space.put(np.zeros(3))


def distance_fitness(space: SearchSpace, target: np.ndarray):
    def fitness(theta: np.ndarray, windows) -> float:
        # the windows shift the optimum a little, as windows shift a policy's score
        shift = 0.01 * float(sum(windows))
        return -float(np.sum((theta - target - shift) ** 2))
    return fitness


def test_evolution_climbs_to_a_known_optimum_and_is_deterministic() -> None:
    results = []
    for workers in (1, 2):
        torch.manual_seed(0)
        module = Actor()
        space = SearchSpace.actor_of(module)
        start = space.get()
        target = start + 0.5
        fitness = distance_fitness(space, target)
        history = evolve(space, fitness, pool_size=5, iterations=60, population=8, windows=2,
                         sigma=0.05, learning_rate=0.02, seed=3, workers=workers)
        assert len(history) == 60
        assert fitness(space.get(), []) > 0.2 * fitness(start, [])  # most of the way there
        results.append((space.get(), [row["fitness_max"] for row in history]))
    np.testing.assert_array_equal(results[0][0], results[1][0])  # bit for bit
    assert results[0][1] == results[1][1]


def test_workers_keep_job_order_and_nan_scores_stay_nan() -> None:
    def fitness(theta: np.ndarray, windows) -> float:
        return float("nan") if theta[0] < 0 else float(theta[0] * 10 + len(windows))

    pool = Workers(fitness, 2)
    try:
        jobs = [(np.array([float(i)]), [0, 1]) for i in range(7)] + [(np.array([-1.0]), [0])]
        scores = pool.map(jobs)
    finally:
        pool.close()
    assert scores[:7] == [i * 10 + 2.0 for i in range(7)] and np.isnan(scores[7])


@pytest.mark.parametrize(("override", "message"), [
    ("agent.evolution.population=5", "even number >= 2"),
    ("agent.evolution.windows=50", r"windows must be in \[1, agent.evolution.pool=40\]"),
    ("agent.evolution.sigma=nan", "sigma must be a finite number > 0"),
    ("agent.evolution.workers=0", "workers must be >= 1"),
    ("agent.evolution.iterations=-1", "iterations must be >= 0"),
])
def test_bad_evolution_settings_fail_at_composition(override: str, message: str) -> None:
    overrides = [override] + ([] if "iterations" in override
                              else ["agent.evolution.iterations=2"])
    with pytest.raises(ValueError, match=message):
        typed_config(OmegaConf.to_container(compose_config(overrides), resolve=True))
    with pytest.raises(ValueError, match="per-decision actor-critic"):
        typed_config(OmegaConf.to_container(compose_config(
            ["agent=dqn", "agent.evolution.iterations=2"]), resolve=True))


def test_train_runs_the_evolution_after_rl_and_records_it(tmp_path: Path) -> None:
    overrides = [*TINY, *PPO_TINY, "eval.freq=64", "eval.freq_episodes=1",
                 "agent.evolution.iterations=2", "agent.evolution.population=2",
                 "agent.evolution.windows=1", "agent.evolution.pool=2",
                 "agent.evolution.workers=1"]
    _, run_dir = run_train(tmp_path, overrides)
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    evolution = train["evolution"]
    assert [row["iteration"] for row in evolution["history"]] == [1.0, 2.0]
    # the evolved policy was scored on the periodic windows, after the RL checkpoints
    assert len(train["periodic_eval"]) == 4
    assert evolution["periodic_value"] == train["periodic_eval"][-1]["serving/goodput_rps"]
    assert evolution["kept"] == train["best"]["folder"].endswith("_evolution") or \
        not evolution["kept"]
