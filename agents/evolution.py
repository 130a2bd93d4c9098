"""Evolution strategies on the actor's weights: optimise the headline metric itself.

Why beside PPO: in the serving envs an action's effect on goodput arrives seconds and
hundreds of decisions later, mixed with the effect of every other action and with the
window's own burstiness, so PPO's per-decision advantages are mostly noise; from a clone of
the best heuristic its updates drift (the last model often scores below the clone,
results/leaderboard.md). Evolution strategies need no credit assignment at all: each
candidate policy plays whole windows and is scored by `eval.metric` (goodput rate), and all
candidates of an iteration play the *same* windows, so the window's burstiness cancels out
of their comparison (common random numbers; the input-dependent baseline of Mao et al.,
ICLR 2019, in its simplest form).

The method (T. Salimans, J. Ho, X. Chen, S. Sidor, I. Sutskever, "Evolution Strategies as a
Scalable Alternative to Reinforcement Learning", 2017), on the vector theta of the policy's
actor weights (every parameter but the value head's; the greedy policy is what is
evaluated, so the value head plays no part):

    per iteration: windows  = `windows` windows drawn from a pool of `pool` training-split
                              windows (a stream of their own, never the held-out ones nor
                              the periodic evaluation's)
                   eps_1..n ~ N(0, I), n = population / 2 (antithetic pairs)
                   F+_i, F-_i = mean `eval.metric` of theta +/- sigma * eps_i on the windows
                   ranks    = centred ranks of all 2n fitnesses, in [-0.5, 0.5]
                   g        = sum_i (rank+_i - rank-_i) eps_i / (population * sigma)
                   theta   += Adam(learning_rate) ascent step along g

The candidates play through `servegym.agents.evaluation.compare`, the path every evaluation
uses (a stalled window scores the worst fitness of its iteration). `workers` processes
(fork) share the evaluations; the results do not depend on their number. Everything random
comes from `default_rng(SeedSequence([seed, EVOLUTION]))`. Workers are forked processes that
inherit the fitness function (nothing is pickled but the candidates' vectors and their
scores, over pipes).

`evolve` returns the history (per iteration: the mean fitness of theta's neighbourhood and
its best) and leaves the model's actor at the final theta; train.py then lets that policy
compete with the periodic checkpoints for the best model on the periodic windows (which the
search never saw), so the search is kept only when it generalises beyond its own windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

EVOLUTION = 4  # evaluation stream of the search's windows (agents/evaluation.py: 1-3)
Fitness = Callable[[np.ndarray, Sequence[int]], float]


@dataclass(frozen=True)
class SearchSpace:
    """The actor's parameters of a torch module, as one float64 vector."""

    module: Any
    names: tuple[str, ...]

    @classmethod
    def actor_of(cls, policy: Any) -> SearchSpace:
        names = tuple(name for name, _ in policy.named_parameters()
                      if "value" not in name and "critic" not in name)
        if not names:
            raise ValueError("the policy has no actor parameters to search over")
        return cls(policy, names)

    def get(self) -> np.ndarray:
        params = dict(self.module.named_parameters())
        return np.concatenate([params[n].detach().cpu().numpy().ravel().astype(np.float64)
                               for n in self.names])

    def put(self, vector: np.ndarray) -> None:
        import torch

        params = dict(self.module.named_parameters())
        total = sum(params[name].numel() for name in self.names)
        if total != vector.size:
            raise ValueError(f"vector of {vector.size} values for {total} parameters")
        start = 0
        with torch.no_grad():
            for name in self.names:
                param = params[name]
                size = param.numel()
                values = vector[start:start + size].reshape(tuple(param.shape))
                param.copy_(torch.as_tensor(values, dtype=param.dtype))
                start += size


def centred_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5] (ties broken by position, so the result is exact)."""
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
    return ranks / max(values.size - 1, 1) - 0.5


class Adam:
    """Adam ascent on a vector (Kingma and Ba, 2015), state kept here."""

    def __init__(self, size: int, learning_rate: float, beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self.m = np.zeros(size)
        self.v = np.zeros(size)
        self.t = 0

    def step(self, gradient: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * gradient
        self.v = self.beta2 * self.v + (1 - self.beta2) * gradient * gradient
        m_hat = self.m / (1 - self.beta1 ** self.t)
        v_hat = self.v / (1 - self.beta2 ** self.t)
        return self.learning_rate * m_hat / (np.sqrt(v_hat) + self.eps)


def _serve(fitness: Fitness, connection: Connection) -> None:
    """A worker: score the jobs it receives until it receives None."""
    while (job := connection.recv()) is not None:
        connection.send(fitness(*job))


class Workers:
    """`count` forked processes scoring jobs with `fitness` (in-process when count is 1);
    `map` returns the scores in job order whatever the order they finish in."""

    def __init__(self, fitness: Fitness, count: int) -> None:
        self.fitness = fitness
        self.connections: list[Connection] = []
        self.processes: list[Any] = []
        context = get_context("fork")
        for _ in range(count if count > 1 else 0):
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(fitness, child), daemon=True)
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)

    def map(self, jobs: Sequence[tuple[np.ndarray, Sequence[int]]]) -> list[float]:
        if not self.connections:
            return [self.fitness(*job) for job in jobs]
        results: list[float] = [np.nan] * len(jobs)
        pending = iter(enumerate(jobs))
        busy: dict[Connection, int] = {}
        for connection in self.connections:
            self._send(connection, pending, busy)
        while busy:
            for connection in wait(list(busy)):
                results[busy.pop(connection)] = float(connection.recv())
                self._send(connection, pending, busy)
        return results

    @staticmethod
    def _send(connection: Connection, pending: Any, busy: dict[Connection, int]) -> None:
        item = next(pending, None)
        if item is not None:
            busy[connection] = item[0]
            connection.send(item[1])

    def close(self) -> None:
        for connection in self.connections:
            connection.send(None)
            connection.close()
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()


def evolve(space: SearchSpace, fitness: Fitness,
           pool_size: int, iterations: int, population: int, windows: int, sigma: float,
           learning_rate: float, seed: int, workers: int = 1,
           log: Callable[[dict[str, float], int], None] | None = None
           ) -> list[dict[str, float]]:
    """Run the search (module docstring) from the space's current values; leaves the final
    theta in the module and returns the history. `fitness(theta, window_indices)` scores
    one candidate on windows of the pool (NaN: a stalled window)."""
    if population < 2 or population % 2:
        raise ValueError(f"population must be an even number >= 2, got {population}")
    if not 1 <= windows <= pool_size:
        raise ValueError(f"windows must be in [1, pool size {pool_size}], got {windows}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, EVOLUTION]))
    theta = space.get()
    adam = Adam(theta.size, learning_rate)
    history: list[dict[str, float]] = []
    pool = Workers(fitness, workers)
    started = time.perf_counter()
    try:
        for iteration in range(iterations):
            chosen = sorted(rng.choice(pool_size, size=windows, replace=False).tolist())
            noise = rng.standard_normal((population // 2, theta.size))
            candidates = [theta + sigma * e for e in noise] + [theta - sigma * e for e in noise]
            jobs = [(c, chosen) for c in candidates]
            scores = np.array(pool.map(jobs))
            if np.isnan(scores).all():
                raise RuntimeError("every candidate of an evolution iteration stalled; "
                                   "lower agent.evolution.sigma")
            scores = np.where(np.isnan(scores), np.nanmin(scores), scores)
            ranks = centred_ranks(scores)
            half = population // 2
            gradient = (ranks[:half] - ranks[half:]) @ noise / (population * sigma)
            theta = theta + adam.step(gradient)
            row = {"iteration": float(iteration + 1), "fitness_mean": float(scores.mean()),
                   "fitness_max": float(scores.max()),
                   "wall_s": time.perf_counter() - started}
            history.append(row)
            if log is not None:
                log({f"evolution/{k}": v for k, v in row.items() if k != "iteration"},
                    iteration + 1)
    finally:
        pool.close()
    space.put(theta)
    return history


__all__ = ["EVOLUTION", "Adam", "SearchSpace", "Workers", "centred_ranks", "evolve"]
