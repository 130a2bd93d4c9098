"""`Instance.admissible` (the encoder's one-pass ADMIT mask) equals `can_admit`, the
reference, request by request, at every ADMIT decision of random runs, and
`Instance.any_admissible` (asked before every ADMIT decision and decode run) equals
`any(map(can_admit, waiting))` at every call: vllm_v1 and v0, chunked or not, prefix
caching on and off, tight and roomy KV, random valid answers."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from sim_fixtures import AffineCost, make_workload
from test_properties import RandomValid, scenarios

from servegym.envs.core.batching import BatchBuilding
from servegym.envs.core.decisions import DecisionKind, default_policies
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.request import Request
from servegym.envs.core.simulator import Simulator


class CheckingAdmission(RandomValid):
    """Random valid answers; at each ADMIT decision compares the two masks first."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = 0
        self.mixed = 0

    def decide(self, decision):
        instance, candidates = decision.instance, decision.candidates
        expected = [instance.can_admit(request) for request in candidates]
        assert instance.admissible(candidates) == expected
        assert instance.admissible(candidates[::-1]) == expected[::-1]
        self.checked += 1
        self.mixed += 0 < sum(expected) < len(expected)
        return super().decide(decision)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_admissible_equals_can_admit_at_every_admit_decision(scenario) -> None:
    workload, config, instances, seed = scenario
    admit = CheckingAdmission()
    policies = {DecisionKind.ADMIT: admit, DecisionKind.PREEMPT: RandomValid(),
                DecisionKind.ROUTE: RandomValid()}
    Simulator(AffineCost(), config, num_instances=instances,
              policies=policies).run(workload, seed=seed)


def test_some_decisions_mix_fitting_and_not_fitting_requests() -> None:
    """The comparison above is not vacuous: a KV-tight run asks ADMIT decisions where some
    waiting requests fit and others do not."""
    rng = np.random.default_rng(0)
    n = 60
    workload = make_workload(np.zeros(n), rng.integers(16, 400, n), rng.integers(1, 40, n))
    config = InstanceConfig(num_kv_blocks=40, max_num_batched_tokens=512)
    admit = CheckingAdmission()
    policies = {**default_policies(), DecisionKind.ADMIT: admit}
    Simulator(AffineCost(), config, policies=policies).run(workload)
    assert admit.checked > 10 and admit.mixed > 0


class CheckedAnyAdmissible:
    """While active, `BatchBuilding.any_admissible` is compared with the reference
    `any(map(can_admit, waiting))` at every call; counts the calls of either answer."""

    def __init__(self) -> None:
        self.answers = {True: 0, False: 0}

    def __enter__(self) -> CheckedAnyAdmissible:
        fast = self.fast = BatchBuilding.any_admissible
        answers = self.answers

        def checked(instance) -> bool:
            answer = fast(instance)
            assert answer == any(map(instance.can_admit, instance.waiting))
            answers[answer] += 1
            return answer

        BatchBuilding.any_admissible = checked
        return self

    def __exit__(self, *exc) -> None:
        BatchBuilding.any_admissible = self.fast


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_any_admissible_equals_any_can_admit_at_every_call(scenario) -> None:
    workload, config, instances, seed = scenario
    random_policy = RandomValid()
    policies = {kind: random_policy for kind in (DecisionKind.ADMIT, DecisionKind.PREEMPT,
                                                 DecisionKind.ROUTE)}
    with CheckedAnyAdmissible():
        Simulator(AffineCost(), config, num_instances=instances,
                  policies=policies).run(workload, seed=seed)


def test_any_admissible_check_sees_both_answers() -> None:
    """The comparison above is not vacuous: a KV-tight run with random answers (not
    head-only, so the whole queue is scanned) asks it with some request fitting and with
    none (a queue behind full KV)."""
    rng = np.random.default_rng(0)
    n = 60
    workload = make_workload(np.zeros(n), rng.integers(16, 400, n), rng.integers(1, 40, n))
    config = InstanceConfig(num_kv_blocks=40, max_num_batched_tokens=512)
    random_policy = RandomValid()
    policies = {kind: random_policy for kind in (DecisionKind.ADMIT, DecisionKind.PREEMPT,
                                                 DecisionKind.ROUTE)}
    with CheckedAnyAdmissible() as check:
        Simulator(AffineCost(), config, policies=policies).run(workload)
    assert check.answers[True] > 10 and check.answers[False] > 10



def test_any_admissible_at_the_block_boundary() -> None:
    """A queued request of exactly the free blocks' tokens fits, one token more does not
    (the fast path's `remaining <= room * block_size` at its edge), as `can_admit` says."""
    config = InstanceConfig(num_kv_blocks=40, block_size=16, max_num_batched_tokens=1024)
    sim = Simulator(AffineCost(), config)
    sim.run(make_workload(np.zeros(1), [16], [1]))  # an idle instance, every block free
    instance = sim.instances[0]
    instance.plan.reset(config.max_num_batched_tokens)
    for prompt, fits in ((40 * 16, True), (40 * 16 + 1, False)):
        instance.waiting = [Request(0, 0.0, prompt, 1)]
        assert instance.can_admit(instance.waiting[0]) == fits
        assert instance.any_admissible() == fits
