"""`Instance.admissible` (the encoder's one-pass ADMIT mask) equals `can_admit`, the
reference, request by request, at every ADMIT decision of random runs: vllm_v1 and v0,
chunked or not, prefix caching on and off, tight and roomy KV, random valid answers."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from sim_fixtures import AffineCost, make_workload
from test_properties import RandomValid, scenarios

from servegym.envs.core.decisions import DecisionKind, default_policies
from servegym.envs.core.instance import InstanceConfig
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
