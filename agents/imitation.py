"""Warm start by imitation: clone a heuristic teacher, then improve on it with RL.

From scratch, PPO on the joint and routing tasks ends far below the best heuristic within
its budget (results/leaderboard.md), although the scorer network can represent that
heuristic exactly. A warm start removes the cold start and keeps the RL problem where it
belongs, on top of the best hand-written rule:

1. `collect`: the teacher (a registry spec such as ``spf`` or ``spf+swap-cost-aware+p2c``,
   with the env's heuristics for decisions the agent does not control) plays whole
   training episodes of the run's env; every decision gives (observation, mask, the
   teacher's action in the agent's terms, via `ServingEnv.action_index`) and the rewards
   give discounted returns with the agent's ``gamma``. Picks that are in no candidate slot
   cannot be imitated; the env then plays the lowest valid action, the sample is dropped
   and counted (`Demonstrations.visible`).
2. `clone`: epochs of minibatch cross-entropy of the policy on the teacher's actions
   (masked distributions for MaskablePPO) plus ``vf_coef`` times the squared error of the
   value head on those returns, so the critic starts consistent with the actor and the first
   PPO updates do not undo the copy.
3. RL from there; train.py's periodic evaluation also runs at the start of training, so the
   cloned policy competes for the best checkpoint and fine-tuning can only be kept when
   it scores higher on the training windows.

``teacher: auto`` picks the baseline (of `training.baseline_specs`) with the best
``eval.metric`` on the periodic windows of the *training* split, never the held-out ones,
so a new trace gets its own teacher.

References: S. Ross, G. Gordon, D. Bagnell, "A Reduction of Imitation Learning and
Structured Prediction to No-Regret Online Learning" (DAgger), AISTATS 2011 (behaviour
cloning as the first iterate); S. Schmitt et al., "Kickstarting Deep Reinforcement
Learning", 2018 (a teacher's policy as the start of RL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from servegym.envs.core.decisions import reset_policies
from servegym.envs.protocol import DecisionKind, Policy

MAX_EPISODES = 10_000  # collection stops after this many episodes even if short of steps


@dataclass
class Demonstrations:
    """Teacher decisions: observations (N, D), masks (N, A), actions and returns (N,)."""

    observations: np.ndarray
    masks: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    episodes: int
    visible: float  # fraction of the teacher's picks that were in a candidate slot

    def __len__(self) -> int:
        return int(self.actions.size)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """sum_k gamma^k r_{t+k} of one episode, for every t."""
    out = np.empty(rewards.size, dtype=np.float64)
    running = 0.0
    for t in range(rewards.size - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def collect(env: gym.Env, teacher: Callable[[], dict[DecisionKind, Policy]], steps: int,
            gamma: float, seed: int) -> Demonstrations:
    """Whole episodes of `teacher` on `env` until at least `steps` decisions are recorded
    (or `MAX_EPISODES` episodes); see the module docstring."""
    if steps < 1:
        raise ValueError(f"agent.warm_start.steps must be >= 1, got {steps}")
    base = env.unwrapped
    if not hasattr(base, "action_index"):
        raise ValueError(f"{env.spec.id if env.spec else type(base).__name__} has no "
                         "per-decision actions to imitate (interval envs set weights); "
                         "drop agent.warm_start.teacher")
    rng = np.random.default_rng(seed)
    observations, masks, actions, returns = [], [], [], []
    picks = visible = episodes = 0
    while len(actions) < steps and episodes < MAX_EPISODES:
        policies = teacher()
        observation, info = env.reset(seed=int(rng.integers(2**31)))
        reset_policies(policies, rng.spawn(1)[0])
        rewards: list[float] = []
        recorded: list[int] = []  # step numbers of this episode that were recorded
        done = False
        while not done:
            decision = base.decision
            index = base.action_index(policies[decision.kind].decide(decision))
            picks += 1
            mask = info["action_mask"]
            if index is None:  # the teacher's pick is in no slot: play and drop
                index = int(np.flatnonzero(mask)[0])
            else:
                visible += 1
                recorded.append(len(rewards))
                observations.append(observation)
                masks.append(mask)
                actions.append(index)
            observation, reward, terminated, truncated, info = env.step(index)
            rewards.append(float(reward))
            done = terminated or truncated
        episodes += 1
        returns.extend(discounted_returns(np.asarray(rewards), gamma)[recorded])
    return Demonstrations(np.asarray(observations, dtype=np.float32),
                          np.asarray(masks, dtype=bool), np.asarray(actions, dtype=np.int64),
                          np.asarray(returns, dtype=np.float32), episodes,
                          visible / max(picks, 1))


def clone(model: Any, demos: Demonstrations, epochs: int, batch_size: int,
          learning_rate: float, vf_coef: float, seed: int) -> dict[str, float]:
    """Fit `model.policy` (an SB3 actor-critic, masked or not) to `demos`: cross-entropy on
    the teacher's actions plus `vf_coef` x value MSE on its returns; returns the last
    epoch's mean loss terms and the greedy agreement with the teacher on all samples."""
    import torch as th

    if len(demos) == 0:
        raise ValueError("the teacher's picks were never in a candidate slot: nothing to "
                         "imitate; choose another agent.warm_start.teacher")
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"agent.warm_start.{key} must be >= 1, got {value}")
    policy = model.policy
    masked = _is_masked(policy)
    device = policy.device
    obs = th.as_tensor(demos.observations, device=device)
    masks = th.as_tensor(demos.masks, device=device)
    actions = th.as_tensor(demos.actions, device=device)
    returns = th.as_tensor(demos.returns, device=device)
    optimizer = th.optim.Adam(policy.parameters(), lr=learning_rate)
    generator = th.Generator().manual_seed(seed)
    policy.set_training_mode(True)
    stats: dict[str, float] = {}
    for _ in range(epochs):
        order = th.randperm(len(demos), generator=generator).to(device)
        totals = {"imitation_loss": 0.0, "value_loss": 0.0}
        for start in range(0, len(demos), batch_size):
            batch = order[start:start + batch_size]
            extra = {"action_masks": masks[batch]} if masked else {}
            values, log_prob, _ = policy.evaluate_actions(obs[batch], actions[batch], **extra)
            imitation = -log_prob.mean()
            value = th.nn.functional.mse_loss(values.flatten(), returns[batch])
            optimizer.zero_grad()
            (imitation + vf_coef * value).backward()
            th.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
            optimizer.step()
            totals["imitation_loss"] += imitation.item() * batch.numel()
            totals["value_loss"] += value.item() * batch.numel()
        stats = {key: total / len(demos) for key, total in totals.items()}
    policy.set_training_mode(False)
    stats["agreement"] = agreement(policy, demos)
    return stats


def agreement(policy: Any, demos: Demonstrations) -> float:
    """Fraction of demonstrations where the policy's greedy (masked) action is the teacher's."""
    import torch as th

    with th.no_grad():
        obs = th.as_tensor(demos.observations, device=policy.device)
        extra = {"action_masks": demos.masks} if _is_masked(policy) else {}
        dist = policy.get_distribution(obs, **extra)
        greedy = dist.distribution.logits.argmax(dim=-1).cpu().numpy()
    return float(np.mean(greedy == demos.actions))


def _is_masked(policy: Any) -> bool:
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    return isinstance(policy, MaskableActorCriticPolicy)


def warm_start(model: Any, env: gym.Env, teacher: Callable[[], dict[DecisionKind, Policy]],
               options: Any, seed: int) -> dict[str, Any]:
    """`collect` then `clone` into `model` (in place); the facts train.py records."""
    started = time.perf_counter()
    gamma = float(getattr(model, "gamma", 0.99))
    demos = collect(env, teacher, options.steps, gamma, seed)
    collected = time.perf_counter()
    stats = clone(model, demos, options.epochs, options.batch_size, options.learning_rate,
                  float(getattr(model, "vf_coef", 0.5)), seed)
    return {"samples": len(demos), "episodes": demos.episodes, "visible": demos.visible,
            **stats, "collect_s": collected - started,
            "clone_s": time.perf_counter() - collected}


__all__ = ["Demonstrations", "agreement", "clone", "collect", "discounted_returns",
           "warm_start"]
