"""Input-dependent reward baseline: the agent is paid for beating a heuristic on the same
arrivals.

In a serving env most of the variance of an episode's return comes from its input (how
bursty the window is, how long its requests are), not from the agent's choices, and a
state-value baseline that cannot see future arrivals does not remove it. Mao et al.,
"Variance Reduction for Reinforcement Learning in Input-Driven Environments" (ICLR 2019),
and Decima (Mao et al., SIGCOMM 2019) subtract instead the return of a rollout of the same
input sequence. Here that rollout is a heuristic's: `InputDependentBaseline` keeps a twin
of the env that plays every episode's window, with the same simulator seed, under
`policies` (`ServingEnv.play`), and records the twin's cumulative reward `B(t)` after each
of its decisions. The agent's step that moves simulated time from `t0` to `t1` is paid

    r - (B(t1) - B(t0))

(the twin's reward earned in the same stretch of simulated time), and the final step also
pays back what the twin earned after the agent's last decision, so an episode's return is
the agent's return minus the heuristic's on the same window: positive exactly when the
agent beats it. A policy that plays the heuristic's own answers earns 0 at every step
(tests/test_reward_baseline.py). Reports (`info["serving"]`) and evaluations are the
agent's, untouched; only the training reward changes.

Cost: one heuristic episode per agent episode, without observations (about the simulator's
speed, `results/bench_sim.md`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from servegym.envs.core.decisions import reset_policies
from servegym.envs.protocol import DecisionKind, Policy


def copy_generator(source: np.random.Generator) -> np.random.Generator:
    """A generator in the same state as `source` (drawing the same numbers next)."""
    twin = np.random.Generator(type(source.bit_generator)())
    twin.bit_generator.state = source.bit_generator.state
    return twin


class InputDependentBaseline(gym.Wrapper):
    """Pays the agent its reward minus `policies`' reward on the same episode (module
    docstring). `twin` is a second env built exactly as `env` (same arguments); `policies`
    answer the twin's controlled decisions and are reset per episode from a generator
    seeded by the episode's own draws."""

    def __init__(self, env: gym.Env, twin: gym.Env,
                 policies: Callable[[], Mapping[DecisionKind, Policy]]) -> None:
        super().__init__(env)
        if not hasattr(twin.unwrapped, "play"):
            raise TypeError(f"the twin env {twin.unwrapped!r} cannot play an episode "
                            f"(needs ServingEnv.play)")
        self.twin = twin
        self.policies = dict(policies())
        self._times = np.empty(0)
        self._totals = np.empty(0)
        self._paid = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        base, twin = self.env.unwrapped, self.twin.unwrapped
        if seed is None:  # the twin draws the same window and simulator seed next
            twin.np_random = copy_generator(base.np_random)
        self.twin.reset(seed=seed, options=options)
        observation, info = self.env.reset(seed=seed, options=options)
        policy_rng = np.random.default_rng(int(twin.np_random.integers(2**31)))
        reset_policies(self.policies, policy_rng)
        self._times, self._totals = twin.play(self.policies)
        self._paid = 0.0
        return observation, info

    def baseline_reward(self, now: float, done: bool) -> float:
        """The twin's reward up to simulated time `now` (all of it when `done`)."""
        if not self._totals.size:
            return 0.0
        if done:
            return float(self._totals[-1])
        index = int(np.searchsorted(self._times, now, side="right")) - 1
        return float(self._totals[index]) if index >= 0 else 0.0

    def step(self, action: Any):
        observation, reward, terminated, truncated, info = self.env.step(action)
        earned = self.baseline_reward(self.env.unwrapped.sim.now, terminated or truncated)
        info = dict(info, baseline_reward=earned - self._paid)
        reward = float(reward) - (earned - self._paid)
        self._paid = earned
        return observation, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        return self.env.unwrapped.action_masks()
