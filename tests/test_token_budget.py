"""spf-tpot-budget (agents/heuristics/token_budget.py) by hand, on a fake instance view."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from sim_fixtures import AffineCost

from servegym.agents.heuristics import make_policy
from servegym.agents.heuristics.token_budget import TPOTBudgetAdmission
from servegym.envs.core.request import Request
from servegym.envs.protocol import STOP, Decision, DecisionKind


def decoding_request(rid: int, prompt: int, tpot_slo: float) -> Request:
    r = Request(rid, 0.0, prompt, 100, tpot_slo=tpot_slo)
    r.num_generated, r.num_computed = 5, prompt + 4
    return r


def admit(waiting: list[Request], running: list[Request], budget: int,
          can_stop: bool = True) -> Decision:
    cost = AffineCost(overhead=0.01, per_token=0.001, per_context=0.0)
    instance = SimpleNamespace(
        running=running, budget=budget, cost=cost,
        config=SimpleNamespace(max_num_batched_tokens=1000),
        can_admit=lambda r: True, can_stop_admitting=lambda: can_stop)
    return Decision(DecisionKind.ADMIT, 0.0, waiting, instance=instance)


def test_stops_when_the_chunk_would_break_half_the_tpot_target() -> None:
    running = [decoding_request(0, 50, tpot_slo=0.1), decoding_request(1, 50, math.inf)]
    waiting = [Request(2, 0.0, 30, 10), Request(3, 0.0, 10, 10)]
    policy = make_policy("spf-tpot-budget")
    # 2 decodes + 18 prefill tokens used (budget 1000 - 980 = 20); SPF picks rid 3 (10
    # tokens): 0.01 + 0.001 * (28 + 2) = 0.040 <= 0.5 * 0.1: admitted
    assert policy.decide(admit(waiting, running, budget=980)) == 1
    # 2 decodes + 48 prefill tokens: 0.01 + 0.001 * (58 + 2) = 0.070 > 0.05: STOP
    assert policy.decide(admit(waiting, running, budget=950)) == STOP
    # ... unless STOP is refused (the instance would idle)
    assert policy.decide(admit(waiting, running, budget=950, can_stop=False)) == 1
    # with slack 1 the same iteration (0.070 s) is within the 0.1 s target
    assert TPOTBudgetAdmission(slack=1.0).decide(admit(waiting, running, budget=950)) == 1


def test_no_cap_without_a_decoding_target_or_a_prefill_in_the_batch() -> None:
    waiting = [Request(2, 0.0, 900, 10)]
    untargeted = [decoding_request(0, 50, math.inf)]
    assert make_policy("spf-tpot-budget").decide(admit(waiting, untargeted, 950)) == 0
    targeted = [decoding_request(0, 50, 0.001)]
    # only the decode is in the batch (budget 1000 - 1): the first chunk always joins
    assert make_policy("spf-tpot-budget").decide(admit(waiting, targeted, 999)) == 0


@pytest.mark.parametrize("slack", [0.0, -1.0, math.nan, math.inf])
def test_bad_slack_is_refused(slack: float) -> None:
    with pytest.raises(ValueError, match="slack must be a finite number > 0"):
        TPOTBudgetAdmission(slack=slack)


def test_late_last_ranks_a_request_past_its_ttft_deadline_after_the_on_time_ones() -> None:
    # at t=2: rid 2 (10 tokens) arrived at 0 with a 1 s TTFT target: lost; rid 3 (30
    # tokens) arrived at 1.5 with the same target: can still make it
    waiting = [Request(2, 0.0, 10, 10, ttft_slo=1.0), Request(3, 1.5, 30, 10, ttft_slo=1.0)]
    def at_two(name: str) -> int:
        decision = admit(waiting, [], budget=1000)
        decision.time = 2.0
        return make_policy(name).decide(decision)
    assert at_two("spf") == 0 and at_two("spf-tpot-budget") == 0  # the shortest
    assert at_two("spf-late-last") == 1 and at_two("spf-tpot-budget-late-last") == 1
    # once both are late, shortest first again; and with the ageing guard in front
    waiting[1].arrival_time = 0.5
    assert at_two("spf-late-last") == 0
    guard = TPOTBudgetAdmission(max_wait_s=1.8, late_last=True)  # rid 2 waited 2 s
    waiting[1].arrival_time = 1.5
    decision = admit(waiting, [], budget=1000)
    decision.time = 2.0
    assert guard.decide(decision) == 0
