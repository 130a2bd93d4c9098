"""The migrate-* policies (agents/heuristics/llumnix.py) answer every MIGRATE decision of
loaded runs exactly as the straightforward statement of their rules does (the reference
below: group the candidates by instance, compute each freeness from scratch); the fast
paths skip passes over the candidates, not cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sim_fixtures import make_workload

from servegym.agents.heuristics import make_policy
from servegym.agents.heuristics.llumnix import (
    Defragmentation,
    PriorityHeadroom,
    VirtualUsageBalance,
    virtual_freeness,
)
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import build_cost_model
from servegym.envs.protocol import STOP, Action, DecisionKind


def by_source(decision):
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(decision.candidates):
        groups.setdefault(request.instance, []).append(index)
    return groups


def fits(request, target) -> bool:
    return target.index != request.instance and target.can_receive(request)


def reference_balance(policy: VirtualUsageBalance, decision):
    instances = decision.cluster.instances
    urgent = policy.urgent_below(decision)
    free = [virtual_freeness(i, policy.extra_usage(i, urgent)) for i in instances]
    groups = by_source(decision)
    if not groups:
        return STOP
    source = min(groups, key=lambda s: (free[s], s))
    if free[source] >= policy.busy_freeness:
        return STOP
    targets = sorted((t for t in range(len(instances)) if t != source),
                     key=lambda t: (-free[t], t))
    candidates = decision.candidates
    if isinstance(policy, PriorityHeadroom) and urgent is not None:
        order = sorted(groups[source], key=lambda i: (candidates[i].priority < urgent,
                                                      candidates[i].num_blocks, i))
    else:
        sign = 1 if policy.prefer == "shortest" else -1
        order = sorted(groups[source], key=lambda i: (sign * candidates[i].num_blocks, i))
    for index in order:
        request = candidates[index]
        blocks = request.num_blocks
        for target in targets:
            gap = free[target] - free[source]
            if gap <= 0:
                break
            instance = instances[target]
            if not fits(request, instance):
                continue
            after_source = virtual_freeness(
                instances[source], policy.extra_usage(instances[source], urgent) - blocks)
            after_target = virtual_freeness(instance,
                                            policy.extra_usage(instance, urgent) + blocks)
            if 0 < after_target - after_source < gap:
                return Action(index, target=target)
            break
    return STOP


def reference_defrag(decision):
    instances = decision.cluster.instances
    groups = by_source(decision)
    short = []
    for source in groups:
        instance = instances[source]
        if not instance.waiting:
            continue
        head = instance.waiting[0]
        bm = instance.bm
        need = bm.blocks_for(head.prompt_len + head.num_generated) + \
            instance.watermark_blocks - bm.num_free
        if need > 0:
            short.append((need, source))
    if not short:
        return STOP
    short.sort(key=lambda item: (-item[0], item[1]))
    free = [virtual_freeness(i) for i in instances]
    candidates = decision.candidates
    for need, source in short:
        indices = groups[source]
        covering = sorted((i for i in indices if candidates[i].num_blocks >= need),
                          key=lambda i: (candidates[i].num_blocks, i))
        rest = sorted((i for i in indices if candidates[i].num_blocks < need),
                      key=lambda i: (-candidates[i].num_blocks, i))
        targets = sorted((t for t in range(len(instances)) if t != source),
                         key=lambda t: (-free[t], t))
        for index in covering + rest:
            for target in targets:
                if free[target] <= free[source]:
                    break
                if fits(candidates[index], instances[target]):
                    return Action(index, target=target)
    return STOP


class Checked:
    """The policy's answer, checked against the reference at every decision."""

    def __init__(self, policy, reference) -> None:
        self.policy, self.reference = policy, reference
        self.answers: list = []

    def decide(self, decision):
        answer = self.policy.decide(decision)
        assert answer == self.reference(decision), (decision.time, answer)
        self.answers.append(answer)
        return answer


def loaded_run(policy, seed: int, priorities: bool, blocks: int) -> Checked:
    rng = np.random.default_rng(seed)
    n = 300
    arrivals = np.cumsum(rng.gamma(1 / 9, 9 / 16, n))  # bursty (cv 3) at 16 req/s
    prompts = np.minimum(rng.lognormal(5.8, 1.0, n).astype(int) + 1, 6000)
    outputs = np.minimum(rng.lognormal(5.5, 1.0, n).astype(int) + 2, 3000)
    priority = rng.integers(0, 2, n) if priorities else None
    workload = make_workload(arrivals, prompts, outputs, priority=priority)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the roofline fallback
        cost = build_cost_model("Llama-3-8B", "H100-80GB", tensor_parallel=1)
    config = InstanceConfig(mode="vllm_v1", max_num_seqs=256, max_num_batched_tokens=8192,
                            num_kv_blocks=blocks)
    if isinstance(policy, Defragmentation):
        checked = Checked(policy, reference_defrag)
    else:
        checked = Checked(policy, lambda decision: reference_balance(policy, decision))
    policies = {**default_policies(), DecisionKind.MIGRATE: checked}
    Simulator(cost, config, num_instances=4, policies=policies,
              migration={"interval_s": 0.1, "max_per_tick": 2}).run(workload, seed=0)
    return checked


@pytest.mark.parametrize("name,kwargs,priorities", [
    ("migrate-balance", {}, False),
    ("migrate-balance", {"prefer": "longest"}, False),
    ("migrate-balance", {"busy_freeness": 8.0}, False),
    ("migrate-defrag", {}, False),
    ("migrate-priority-headroom", {}, True),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_policies_answer_as_their_reference(name, kwargs, priorities, seed) -> None:
    checked = loaded_run(make_policy(name, **kwargs), seed, priorities, blocks=600)
    moves = [a for a in checked.answers if a != STOP]
    assert moves and len(moves) < len(checked.answers)  # both answers were exercised


@pytest.mark.parametrize("seed", range(20))
def test_indices_on_equals_a_scan(seed) -> None:
    from servegym.agents.heuristics.llumnix import _indices_on

    rng = np.random.default_rng(seed)
    owners = list(rng.integers(0, 3, int(rng.integers(0, 12))))
    if seed % 2:
        owners.sort()  # contiguous, as the simulator lists them
    for source in range(4):
        assert _indices_on(owners, source) == [i for i, o in enumerate(owners) if o == source]
