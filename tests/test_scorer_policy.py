"""ScorerPolicy / MaskableScorerPolicy (servegym.agents.scorer_policy) on a tiny slot-picking
env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from servegym.agents.scorer_policy import (
    MaskableScorerPolicy,
    ScorerPolicy,
    action_logits,
    policy_class,
)

G, S = 3, 3  # globals; slot features: valid, value (pick the smallest), noise


class PickSmallestEnv(gym.Env):
    """G globals + K slots; a random number of random slots is valid. Picking (with or
    without swap) the valid slot whose feature 1 is smallest pays +1, anything else 0."""

    def __init__(self, num_slots: int = 8, horizon: int = 4) -> None:
        self.k, self.horizon = num_slots, horizon
        self.observation_space = spaces.Box(-1.0, 1.0, (G + num_slots * S,), np.float32)
        self.action_space = spaces.Discrete(2 * num_slots + 1)
        self._t = 0
        self._obs = np.zeros(self.observation_space.shape, np.float32)

    def _draw(self) -> np.ndarray:
        rng = self.np_random
        n_valid = int(rng.integers(1, self.k + 1))
        valid = np.zeros(self.k, bool)
        valid[rng.choice(self.k, n_valid, replace=False)] = True
        slots = np.zeros((self.k, S), np.float32)
        slots[valid, 0] = 1.0
        slots[valid, 1] = rng.uniform(-1, 1, n_valid)
        slots[valid, 2] = rng.uniform(-1, 1, n_valid)
        glob = np.array([n_valid / self.k, rng.uniform(-1, 1), 1.0], np.float32)
        self._obs = np.concatenate([glob, slots.ravel()]).astype(np.float32)
        return self._obs

    def best_slot(self) -> int:
        slots = self._obs[G:].reshape(self.k, S)
        return int(np.argmin(np.where(slots[:, 0] > 0.5, slots[:, 1], np.inf)))

    def action_masks(self) -> np.ndarray:
        valid = self._obs[G:].reshape(self.k, S)[:, 0] > 0.5
        return np.concatenate([valid, valid, [True]])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self._draw(), {}

    def step(self, action: int):
        hit = int(action) < 2 * self.k and int(action) % self.k == self.best_slot()
        self._t += 1
        return self._draw(), float(hit), False, self._t >= self.horizon, {}


KW = {"global_features": G, "slot_features": S}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks: one thread is faster, and far faster on a busy machine (thread spin)."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


def make_policy(cls: type, k: int, **kwargs) -> ScorerPolicy:
    env = PickSmallestEnv(k)
    return cls(env.observation_space, env.action_space, lambda _: 3e-4, **KW, **kwargs)


def sample_obs(k: int, n: int, seed: int = 0) -> th.Tensor:
    env = PickSmallestEnv(k)
    env.reset(seed=seed)
    return th.as_tensor(np.stack([env._draw() for _ in range(n)]))


def n_params(policy: th.nn.Module) -> int:
    return sum(p.numel() for p in policy.parameters())


@pytest.mark.parametrize("cls", [ScorerPolicy, MaskableScorerPolicy])
def test_shapes_and_padding_gets_zero_probability(cls: type) -> None:
    k = 8
    policy = make_policy(cls, k)
    obs = sample_obs(k, 32)
    with th.no_grad():
        logits = action_logits(policy, obs)
        values = policy.predict_values(obs)
    assert logits.shape == (32, 2 * k + 1) and values.shape == (32, 1)
    assert th.isfinite(logits).all()
    probs = logits.exp()
    invalid = obs[:, G:].reshape(32, k, S)[..., 0] < 0.5
    assert invalid.any()
    assert probs[:, :k][invalid].max() < 1e-6 and probs[:, k:2 * k][invalid].max() < 1e-6
    # near-uniform start: every valid action (and STOP) gets about 1 / (2 * n_valid + 1)
    n_valid = (~invalid).sum(dim=1, keepdim=True)
    uniform = 1.0 / (2 * n_valid + 1)
    assert th.allclose(probs[:, -1:], uniform.to(probs.dtype), rtol=0.2)
    assert th.allclose(action_logits(policy, obs[0]), logits[0])


def test_no_valid_slot_is_safe() -> None:
    policy = make_policy(MaskableScorerPolicy, 4)
    obs = th.zeros(2, G + 4 * S)
    with th.no_grad():
        logits = action_logits(policy, obs)
        values = policy.predict_values(obs)
    assert th.isfinite(logits).all() and th.isfinite(values).all()
    assert th.allclose(logits[:, -1].exp(), th.ones(2))  # only STOP is left


@pytest.mark.parametrize("cls", [ScorerPolicy, MaskableScorerPolicy])
def test_parameter_count_independent_of_k(cls: type) -> None:
    assert n_params(make_policy(cls, 8)) == n_params(make_policy(cls, 256))
    assert n_params(make_policy(cls, 8, hidden=16)) < n_params(make_policy(cls, 8))


def test_permutation_equivariance() -> None:
    k = 12
    policy = make_policy(MaskableScorerPolicy, k)
    obs = sample_obs(k, 16, seed=3)
    perm = th.randperm(k, generator=th.Generator().manual_seed(0))
    slots = obs[:, G:].reshape(16, k, S)[:, perm].reshape(16, k * S)
    permuted = th.cat([obs[:, :G], slots], dim=1)
    with th.no_grad():
        a, b = policy.mlp_extractor.forward_actor(obs), policy.mlp_extractor.forward_actor(permuted)
        va, vb = policy.predict_values(obs), policy.predict_values(permuted)
    assert th.allclose(b[:, :k], a[:, :k][:, perm], atol=1e-5)
    assert th.allclose(b[:, k:2 * k], a[:, k:2 * k][:, perm], atol=1e-5)
    assert th.allclose(b[:, -1], a[:, -1], atol=1e-5)
    assert th.allclose(vb, va, atol=1e-5)


@pytest.mark.parametrize("algo,cls", [("maskable_ppo", MaskablePPO), ("ppo", PPO)])
def test_train_save_load_round_trip(algo: str, cls: type, tmp_path) -> None:
    env = PickSmallestEnv(6)
    model = cls(policy_class(algo), env, n_steps=128, batch_size=64, n_epochs=2, seed=0,
                policy_kwargs=KW, device="cpu")
    model.learn(256)
    model.save(tmp_path / "model")
    loaded = cls.load(tmp_path / "model", device="cpu")
    assert type(loaded.policy) is policy_class(algo)
    obs = sample_obs(6, 20, seed=5)
    with th.no_grad():
        assert th.equal(action_logits(model.policy, obs), action_logits(loaded.policy, obs))
        assert th.equal(model.policy.predict_values(obs), loaded.policy.predict_values(obs))


def test_action_logits_of_mlp_policies() -> None:
    env = PickSmallestEnv(4)
    obs = sample_obs(4, 5)
    for cls in (PPO, MaskablePPO):
        policy = cls("MlpPolicy", env, n_steps=64, batch_size=32, device="cpu").policy
        with th.no_grad():
            logits = action_logits(policy, obs)
        assert logits.shape == (5, 9)
        assert th.allclose(logits.exp().sum(dim=1), th.ones(5))


def greedy_accuracy(model: MaskablePPO, k: int, n: int = 300) -> float:
    """Share of fresh decisions where the masked greedy action picks the smallest slot."""
    env = PickSmallestEnv(k)
    env.reset(seed=123)
    hits = 0
    for _ in range(n):
        obs = env._draw()
        action, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
        hits += int(action) < 2 * k and int(action) % k == env.best_slot()
    return hits / n


def test_maskable_scorer_learns_to_pick_the_smallest_slot() -> None:
    k = 16  # chance: about 2 / (2 * n_valid + 1), 0.2 on average over n_valid in 1..16
    venv = DummyVecEnv([lambda: PickSmallestEnv(k, horizon=8)] * 4)
    model = MaskablePPO(MaskableScorerPolicy, venv, n_steps=128, batch_size=128, n_epochs=10,
                        learning_rate=1e-3, gamma=0.0, ent_coef=0.0, seed=0, device="cpu",
                        policy_kwargs=KW)
    before = greedy_accuracy(model, k)
    model.learn(2048)
    after = greedy_accuracy(model, k)
    assert before < 0.5, f"untrained accuracy {before:.2f}"
    assert after > 0.8, f"accuracy {after:.2f} after 2048 steps (untrained {before:.2f})"


def test_layout_mismatch_is_a_clear_error() -> None:
    env = PickSmallestEnv(5)
    with pytest.raises(ValueError, match=r"expected .* = 4 \+ 5 \* 3 = 19"):
        MaskableScorerPolicy(env.observation_space, env.action_space, lambda _: 3e-4,
                             global_features=4, slot_features=3)
    with pytest.raises(ValueError, match="Discrete"):
        ScorerPolicy(env.observation_space, spaces.Discrete(10), lambda _: 3e-4, **KW)


def test_policy_class() -> None:
    assert policy_class("maskable_ppo") is MaskableScorerPolicy
    assert policy_class("ppo") is ScorerPolicy
    with pytest.raises(ValueError, match="maskable_ppo, ppo"):
        policy_class("dqn")
