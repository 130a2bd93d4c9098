"""A Decima-style candidate scorer for SB3: one shared network scores every slot.

Observation (the servegym layout, a flat float32 ``Box`` in [-1, 1]) with ``G`` global
features and ``K`` candidate slots of ``S`` features each::

    [ g_0 .. g_{G-1} | slot 0: s_0 .. s_{S-1} | slot 1 | ... | slot K-1 ]

slot ``i`` occupies ``[G + i*S, G + (i+1)*S)``; slot feature 0 is 1.0 for a valid (occupied)
slot and 0.0 for padding (read as valid when > 0.5). Action space ``Discrete(2K + 1)``:
``a < K`` picks slot ``a``, ``K <= a < 2K`` picks slot ``a - K`` with "swap", ``a == 2K``
is STOP. ``K`` is read from the action space; ``G`` and ``S`` are the required policy kwargs
``global_features`` and ``slot_features`` (``G + K*S`` must equal the observation size).

Network (``SlotScorer``; ``hidden`` = 64 and ``embed`` = 32 by default)::

    e_i    = encoder([slot_i, global])                   per slot, shared weights -> embed
    pooled = [mean_i e_i, max_i e_i] over VALID slots    zeros when no slot is valid
    slot_i = slot_head([e_i, pooled, global])            2 logits: pick, pick with swap
    stop   = stop_head([pooled, global])                 1 logit
    value  = value_net(critic([pooled, global]))

Logits are ordered ``[pick_0..pick_{K-1}, swap_0..swap_{K-1}, stop]``; padding slots get
``-1e8`` added to both their logits (finite, so masked distributions stay finite, and their
probability is zero even without an action mask). The last layer of every logit head starts
with orthogonal gain 0.01, so the initial policy is near uniform over valid actions.

Why the parameter count does not depend on K: every weight acts on one slot (encoder, slot
head) or on a pooled summary of fixed size (stop head, critic), never on the concatenation
of all slots. The same trained policy therefore runs with any number of slots, and it is
permutation equivariant: permuting slots permutes their logits and leaves STOP and the value
unchanged.

Use ``ScorerPolicy`` with ``PPO`` and ``MaskableScorerPolicy`` with sb3-contrib's
``MaskablePPO`` (``policy_class(algo)`` picks one), passing the class itself::

    MaskablePPO(MaskableScorerPolicy, env,
                policy_kwargs={"global_features": 16, "slot_features": 9})

``model.save`` / ``PPO.load`` / ``MaskablePPO.load`` work unchanged: SB3 pickles the policy
class by import path (``servegym.agents.scorer_policy``) and its ``policy_kwargs`` (plain ints).

Reference: H. Mao, M. Schwarzkopf, S. B. Venkatakrishnan, Z. Meng, M. Alizadeh, "Learning
Scheduling Algorithms for Data Processing Clusters" (Decima), SIGCOMM 2019.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

PAD_LOGIT = -1e8
HEAD_GAIN = 0.01
ALGOS = ("maskable_ppo", "ppo")


def _mlp(n_in: int, hidden: int, n_out: int, activation_fn: type[nn.Module],
         last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(n_in, hidden), activation_fn(), nn.Linear(hidden, n_out)]
    if last_activation:
        layers.append(activation_fn())
    return nn.Sequential(*layers)


class SlotScorer(nn.Module):
    """The shared network, in SB3's ``mlp_extractor`` role.

    ``forward_actor`` returns the ``(batch, 2K + 1)`` action logits (``latent_dim_pi``);
    ``forward_critic`` the ``(batch, hidden)`` critic latent (``latent_dim_vf``) that the
    policy's ``value_net`` maps to the value.
    """

    def __init__(self, num_slots: int, global_features: int, slot_features: int,
                 hidden: int = 64, embed: int = 32,
                 activation_fn: type[nn.Module] = nn.Tanh) -> None:
        super().__init__()
        self.num_slots, self.global_features, self.slot_features = (
            num_slots, global_features, slot_features)
        self.latent_dim_pi = 2 * num_slots + 1
        self.latent_dim_vf = hidden
        g, pooled = global_features, 2 * embed
        self.encoder = _mlp(slot_features + g, hidden, embed, activation_fn, last_activation=True)
        self.slot_head = _mlp(embed + pooled + g, hidden, 2, activation_fn)
        self.stop_head = _mlp(pooled + g, hidden, 1, activation_fn)
        self.critic = _mlp(pooled + g, hidden, hidden, activation_fn, last_activation=True)

    def init_heads(self, gain: float = HEAD_GAIN) -> None:
        """Small orthogonal weights and zero bias for the last layer of both logit heads."""
        for head in (self.slot_head, self.stop_head):
            nn.init.orthogonal_(head[-1].weight, gain=gain)
            nn.init.zeros_(head[-1].bias)

    def _context(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """(slot embeddings (B, K, E), validity (B, K), pooled (B, 2E), globals (B, G))."""
        g = self.global_features
        glob = features[:, :g]
        slots = features[:, g:].reshape(-1, self.num_slots, self.slot_features)
        valid = slots[..., 0] > 0.5
        glob_k = glob.unsqueeze(1).expand(-1, self.num_slots, -1)
        emb = self.encoder(th.cat([slots, glob_k], dim=-1))
        return emb, valid, masked_pool(emb, valid), glob

    def _logits(self, emb: th.Tensor, valid: th.Tensor, pooled: th.Tensor,
                glob: th.Tensor) -> th.Tensor:
        context = th.cat([pooled, glob], dim=-1)
        context_k = context.unsqueeze(1).expand(-1, self.num_slots, -1)
        slot = self.slot_head(th.cat([emb, context_k], dim=-1))  # (B, K, 2)
        slot = slot + (~valid).unsqueeze(-1).to(slot.dtype) * PAD_LOGIT
        stop = self.stop_head(context)  # (B, 1)
        return th.cat([slot[..., 0], slot[..., 1], stop], dim=-1)

    def _critic(self, pooled: th.Tensor, glob: th.Tensor) -> th.Tensor:
        return self.critic(th.cat([pooled, glob], dim=-1))

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        emb, valid, pooled, glob = self._context(features)
        return self._logits(emb, valid, pooled, glob), self._critic(pooled, glob)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        return self._logits(*self._context(features))

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        _, _, pooled, glob = self._context(features)
        return self._critic(pooled, glob)


def masked_pool(emb: th.Tensor, valid: th.Tensor) -> th.Tensor:
    """``[mean, max]`` of ``emb`` (B, K, E) over the valid slots (B, K): (B, 2E); zeros for
    a row with no valid slot."""
    mask = valid.unsqueeze(-1)
    count = mask.sum(dim=1).clamp(min=1).to(emb.dtype)
    mean = (emb * mask).sum(dim=1) / count
    lowest = th.finfo(emb.dtype).min
    top = emb.masked_fill(~mask, lowest).amax(dim=1)
    top = th.where(valid.any(dim=1, keepdim=True), top, th.zeros_like(top))
    return th.cat([mean, top], dim=-1)


def num_slots_of(observation_space: spaces.Space, action_space: spaces.Space,
                 global_features: int, slot_features: int) -> int:
    """K from ``Discrete(2K + 1)``, checked against the observation layout."""
    n = getattr(action_space, "n", 0)
    if not isinstance(action_space, spaces.Discrete) or n < 3 or n % 2 == 0:
        raise ValueError(f"scorer policy needs a Discrete(2K + 1) action space, got {action_space}")
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
        raise ValueError(
            f"scorer policy needs a flat Box observation space, got {observation_space}")
    k = (int(action_space.n) - 1) // 2
    expected = global_features + k * slot_features
    if expected != observation_space.shape[0]:
        raise ValueError(
            f"observation size {observation_space.shape[0]} does not match the layout: expected "
            f"global_features + K * slot_features = {global_features} + {k} * {slot_features} "
            f"= {expected} (K = {k} from the action space {action_space})")
    return k


class _ScorerMixin:
    """Network code shared by `ScorerPolicy` and `MaskableScorerPolicy` (put it first in the
    bases): builds `SlotScorer` as the ``mlp_extractor``, an identity ``action_net`` (the
    extractor already returns logits) and a linear ``value_net`` on the critic latent."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 lr_schedule: Schedule, *, global_features: int, slot_features: int,
                 hidden: int = 64, embed: int = 32, **kwargs: Any) -> None:
        extractor = kwargs.get("features_extractor_class", FlattenExtractor)
        if not issubclass(extractor, FlattenExtractor):
            raise ValueError(f"scorer policy reads the raw observation layout; "
                             f"features_extractor_class must be FlattenExtractor, got {extractor}")
        self.num_slots = num_slots_of(observation_space, action_space, global_features,
                                      slot_features)
        self.global_features, self.slot_features = int(global_features), int(slot_features)
        self.hidden, self.embed = int(hidden), int(embed)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = SlotScorer(self.num_slots, self.global_features, self.slot_features,
                                        self.hidden, self.embed, self.activation_fn).to(self.device)

    def _build(self, lr_schedule: Schedule) -> None:
        self._build_mlp_extractor()
        self.action_net = nn.Identity()
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            self.mlp_extractor.apply(partial(self.init_weights, gain=np.sqrt(2)))
            self.value_net.apply(partial(self.init_weights, gain=1.0))
        self.mlp_extractor.init_heads(HEAD_GAIN)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1),
                                              **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(global_features=self.global_features, slot_features=self.slot_features,
                    hidden=self.hidden, embed=self.embed)
        return data


class ScorerPolicy(_ScorerMixin, ActorCriticPolicy):
    """`SlotScorer` as an SB3 ``ActorCriticPolicy`` (PPO, A2C).

    Kwargs: ``global_features`` (G, required), ``slot_features`` (S, required), ``hidden``
    (64), ``embed`` (32), plus ActorCriticPolicy's (``activation_fn``, ``ortho_init``, ...;
    ``net_arch`` is ignored).
    """


class MaskableScorerPolicy(_ScorerMixin, MaskableActorCriticPolicy):
    """`SlotScorer` as an sb3-contrib ``MaskableActorCriticPolicy`` (MaskablePPO); same
    kwargs as `ScorerPolicy`."""


def policy_class(algo: str) -> type[ActorCriticPolicy] | type[MaskableActorCriticPolicy]:
    """The scorer policy class for ``algo``: "maskable_ppo" or "ppo"."""
    classes = {"maskable_ppo": MaskableScorerPolicy, "ppo": ScorerPolicy}
    if algo not in classes:
        raise ValueError(f"no scorer policy for algo {algo!r}; valid algos: {', '.join(ALGOS)}")
    return classes[algo]


def action_logits(policy: ActorCriticPolicy | MaskableActorCriticPolicy,
                  obs: th.Tensor) -> th.Tensor:
    """Unmasked action logits of an SB3 on-policy policy with a Discrete action space
    (MlpPolicy, MaskableActorCriticPolicy, `ScorerPolicy`, `MaskableScorerPolicy`).

    ``obs`` is a ``(batch, obs_dim)`` tensor (or one ``(obs_dim,)`` observation), already
    normalized if the model trained behind a ``VecNormalize``; it is moved to the policy's
    device. Returns ``(batch, n)`` (or ``(n,)``) log-probabilities, i.e. logits normalized by
    log-softmax, as ``policy.get_distribution(obs).distribution.logits``: no action mask is
    applied (apply one with ``th.where(mask, logits, -inf)`` before an argmax or sampling).
    Gradients flow unless the caller wraps the call in ``th.no_grad()``.
    """
    single = obs.dim() == 1
    batch = obs.unsqueeze(0) if single else obs
    logits = policy.get_distribution(batch.to(policy.device)).distribution.logits
    return logits.squeeze(0) if single else logits
