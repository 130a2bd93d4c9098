"""The encoder's fast candidate ranking equals the plain one it replaced (issue 13 speed).

`_KeyColumns` ranks with inlined key expressions and a stable sort of positions, and
`round_robin_slots` walks iterators; the references below are the earlier code: a heap or
sort of (lambda value, index) pairs per key, cursors over the rankings, and the rank
features from position dicts. Random queues with many ties, late and on-time requests,
unset TTFT targets, NaN estimates (the fallback) and both index orders (ADMIT's ascending,
PREEMPT's newest-first), then the live Admission-v0 and Preemption-v0 decisions.
"""

from __future__ import annotations

import heapq
import math
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

import servegym  # noqa: F401  (registers the ids)
from servegym.envs.observations import (
    ADMIT_KEYS,
    COLUMN_KEYS,
    PREEMPT_KEYS,
    QUEUE_ORDER_KEYS,
    ObservationEncoder,
    _KeyColumns,
    round_robin_slots,
)


def reference_round_robin(rankings, num_slots):
    slots, roles, taken = [], [], set()
    cursors = [0] * len(rankings)
    live = len(rankings)
    while len(slots) < num_slots and live:
        live = 0
        for role, ranking in enumerate(rankings):
            if len(slots) == num_slots:
                break
            cursor = cursors[role]
            while cursor < len(ranking) and ranking[cursor] in taken:
                cursor += 1
            if cursor < len(ranking):
                taken.add(ranking[cursor])
                slots.append(ranking[cursor])
                roles.append(role)
                cursor += 1
                live += 1
            cursors[role] = cursor
    return slots, roles


def reference_ranking(encoder, decision, indices, sort, k):
    keyed = [(sort(encoder, decision.candidates[i], decision), i) for i in indices]
    best = heapq.nsmallest(k, keyed) if len(keyed) > k else sorted(keyed)
    return [i for _, i in best]


def reference_ranked_slots(encoder, decision, indices, sorts):
    """(slots, roles, ranks) as the encoder computed them before the fast path."""
    k = encoder.num_slots
    if len(sorts) == 1 and sorts[0] in QUEUE_ORDER_KEYS:
        slots = indices[:k]
        return slots, [0] * len(slots), [[1.0 / (1 + p)] for p in range(len(slots))]
    rankings = [indices if sort in QUEUE_ORDER_KEYS
                else reference_ranking(encoder, decision, indices, sort, k) for sort in sorts]
    slots, roles = reference_round_robin(rankings, k)
    positions = [{index: p for p, index in enumerate(ranking[:k])} for ranking in rankings]
    ranks = [[1.0 / (1 + at[i]) if i in at else 0.0 for at in positions] for i in slots]
    return slots, roles, ranks


def random_queue(rng, n, now):
    """Requests with few distinct values (ties), some late, some without a TTFT target."""
    requests = []
    for _ in range(n):
        prompt = int(rng.integers(1, 6)) * 100
        generated = int(rng.integers(0, 3)) * int(rng.random() < 0.3)
        requests.append(SimpleNamespace(
            prompt_len=prompt, num_generated=generated,
            num_computed=int(rng.integers(0, 2)) * 50 * int(generated > 0),
            arrival_time=float(rng.integers(0, 8)) * 0.5,
            ttft_slo=math.inf if rng.random() < 0.3 else float(rng.choice([0.5, 1.0, 2.0])),
            est=float(rng.choice([64.0, 128.0, 256.0])), priority=int(rng.integers(0, 3)),
            num_blocks=int(rng.integers(1, 5)), prefix_hashes=()))
    return SimpleNamespace(time=now, candidates=requests, instance=None)


@pytest.mark.parametrize("seed", range(40))
def test_column_rankings_equal_the_pairs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 20))
    encoder = ObservationEncoder(max(k, 6), 1.5, 10.0, lambda r: r.est)
    decision = random_queue(rng, int(rng.integers(1, 60)), now=float(rng.integers(0, 10)) * 0.5)
    n = len(decision.candidates)
    fitting = sorted(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False).tolist())
    for indices in (fitting, list(range(n - 1, -1, -1))):  # ADMIT's and PREEMPT's orders
        columns = _KeyColumns(encoder, decision.candidates, indices, decision.time)
        for sort, name in COLUMN_KEYS.items():
            assert columns.ranking(sort, k) == reference_ranking(
                encoder, decision, indices, sort, k), name


def test_nan_values_are_left_to_the_pairs() -> None:
    rng = np.random.default_rng(0)
    encoder = ObservationEncoder(8, 1.5, 10.0, lambda r: r.est)
    decision = random_queue(rng, 12, now=2.0)
    decision.candidates[3].est = math.nan
    columns = _KeyColumns(encoder, decision.candidates, list(range(12)), 2.0)
    assert columns.ranking(ADMIT_KEYS["shortest_output"], 8) is None
    assert columns.ranking(PREEMPT_KEYS["longest_remaining"], 8) is None
    assert columns.ranking(ADMIT_KEYS["shortest_prefill"], 8) is not None
    # the encoder then ranks that key from the pairs, as before
    sorts = [ADMIT_KEYS[name] for name in ("oldest", "shortest_output", "shortest_prefill")]
    slots = encoder._ranked_slots(decision, list(range(12)), sorts)
    assert (slots, encoder.slot_roles, encoder.slot_ranks) == reference_ranked_slots(
        encoder, decision, list(range(12)), sorts)


def test_a_lone_candidate_ranks_as_before() -> None:
    """The one-candidate shortcut of `_ranked_slots` gives the plain path's slots, roles
    and ranks, for each key set (NaN estimates included) and either candidate position."""
    rng = np.random.default_rng(1)
    encoder = ObservationEncoder(8, 1.5, 10.0, lambda r: r.est)
    decision = random_queue(rng, 5, now=2.0)
    decision.candidates[4].est = math.nan
    key_sets = [encoder._admit_sorts, encoder._preempt_sorts, [ADMIT_KEYS["oldest"]],
                [ADMIT_KEYS["shortest_output"], ADMIT_KEYS["least_slack"]]]
    for sorts in key_sets:
        for index in (0, 4):
            slots = encoder._ranked_slots(decision, [index], sorts)
            assert (slots, encoder.slot_roles, encoder.slot_ranks) == reference_ranked_slots(
                encoder, decision, [index], sorts)


@pytest.mark.parametrize("seed", range(30))
def test_round_robin_equals_the_cursor_walk(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    rankings = [rng.permutation(n)[: int(rng.integers(0, n + 1))].tolist()
                for _ in range(int(rng.integers(1, 7)))]
    num_slots = int(rng.integers(1, 20))
    assert round_robin_slots(rankings, num_slots) == reference_round_robin(rankings, num_slots)


@pytest.mark.parametrize("env_id", ["servegym/Admission-v0", "servegym/Preemption-v0"])
def test_live_decisions_rank_as_before(env_id: str) -> None:
    env = gym.make(env_id, rate=40.0, episode_requests=300, num_slots=6).unwrapped
    encoder = env.encoder
    _, info = env.reset(seed=3)
    rng = np.random.default_rng(3)
    compared = 0
    for _ in range(600):
        decision = env._decision
        spec = decision.kind.spec
        if spec.candidates in ("waiting", "running") and spec.arity == 1:
            if spec.candidates == "waiting":
                indices = [i for i, r in enumerate(decision.candidates)
                           if decision.instance.can_admit(r)]
                sorts = encoder._admit_sorts
            else:
                indices = list(range(len(decision.candidates) - 1, -1, -1))
                sorts = encoder._preempt_sorts
            expected = reference_ranked_slots(encoder, decision, indices, sorts)
            slots = encoder._ranked_slots(decision, indices, sorts)
            assert (slots, encoder.slot_roles, encoder.slot_ranks) == expected
            compared += len(indices) > encoder.num_slots  # the heap path of the pairs
        valid = np.flatnonzero(info["action_mask"])
        _, _, terminated, truncated, info = env.step(int(valid[rng.integers(valid.size)]))
        if terminated or truncated:
            _, info = env.reset()
    assert compared > 0, f"{env_id}: no decision with more candidates than slots"
