"""Live migration (Llumnix, envs/core/migration.py): staged copies by hand, aborts, KV
conservation under random decisions, bad input, and the live backend's refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_fixtures import AffineCost, make_workload

from servegym.envs.core.cluster import Pool
from servegym.envs.core.decisions import default_policies
from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.migration import MigrationConfig, migration_from_config
from servegym.envs.core.request import FINISHED, REJECTED
from servegym.envs.core.simulator import Simulator
from servegym.envs.protocol import STOP, Action, DecisionKind, InvalidActionError

TOKEN_COPY_S = 1e-3  # the test link: seconds per token of KV copied


class CopyCost(AffineCost):
    """AffineCost whose KV copy takes `per_token_copy` seconds per token."""

    def __init__(self, per_token_copy: float = TOKEN_COPY_S, **kwargs) -> None:
        super().__init__(**kwargs)
        self.per_token_copy = per_token_copy

    def kv_transfer_time(self, num_tokens: int) -> float:
        return self.per_token_copy * num_tokens


def one_request_sim(decode_runs: bool, pools=None, migration=None, output=40,
                    copy=TOKEN_COPY_S) -> Simulator:
    """Two instances, one request (prompt 64, routed to instance 0 by round robin), every
    MIGRATE decision surfaced to the test."""
    policies = {k: p for k, p in default_policies().items() if k != DecisionKind.MIGRATE}
    kwargs = {"pools": pools} if pools is not None else {
        "cost_model": CopyCost(copy), "instance_config": InstanceConfig(num_kv_blocks=100),
        "num_instances": 2}
    sim = Simulator(policies=policies, decode_runs=decode_runs, debug_checks=True,
                    record_token_times=True,
                    migration=migration or {"interval_s": 0.1}, **kwargs)
    sim.reset(make_workload([0.0], [64], [output]), seed=0)
    return sim


def drain_with_stop(sim: Simulator) -> None:
    while sim.next_decision() is not None:
        sim.apply(STOP)


@pytest.mark.parametrize("decode_runs", [True, False])
def test_staged_copy_by_hand(decode_runs: bool) -> None:
    # AffineCost: prefill of 64 tokens 0.010 + 0.064 = 0.074 s (first token); a decode
    # iteration with c computed tokens 0.011 + 1e-5 (c + 1) s: ends 0.08565 (c=65),
    # 0.09731 (66), 0.10898 (67), 0.12066, 0.13235, 0.14405, 0.15576 (71), 0.16748 (72).
    sim = one_request_sim(decode_runs)
    decision = sim.next_decision()
    assert decision.kind == DecisionKind.MIGRATE and decision.time == pytest.approx(0.1)
    (request,) = decision.candidates
    assert request.num_computed == 66 and request.instance == 0
    assert list(decision.target_mask(0)) == [False, True]
    sim.apply(Action(0, target=1))
    drain_with_stop(sim)
    (migration,) = sim.migration.ended
    # Stage 1 at 0.1: the 4 full blocks (64 tokens), 0.064 s, to 0.164; the source kept
    # decoding (c=71 then: 5 blocks, 1 new <= last_stage_blocks): the request stops at the
    # boundary 0.16748 (c=72), the last stage copies 1 block (16 tokens, 0.016 s) to
    # 0.18348, and instance 1 (idle) decodes it next: 0.011 + 1e-5 * 73 = 0.01173 s.
    assert migration.outcome == "completed" and migration.end == pytest.approx(0.18348)
    assert migration.stage_times == pytest.approx([0.064, 0.016])
    assert migration.stop_start == pytest.approx(0.16748)
    assert sim.migration.num_completed == 1 and sum(sim.migration.aborts.values()) == 0
    assert sim.migration.stop_time_total == pytest.approx(0.016)
    assert request.instance == 1 and request.status == FINISHED
    times = request.token_times
    stop = times.index(next(t for t in times if t > 0.18))
    assert times[stop - 1] == pytest.approx(0.16748)
    assert times[stop] == pytest.approx(0.18348 + 0.01173)
    assert sim.instances[0].bm.num_used == sim.instances[1].bm.num_used == 0


def test_request_finishing_mid_copy_aborts() -> None:
    # Output 5: the last token at ~0.121 s, before stage 1 ends at 0.164.
    sim = one_request_sim(True, output=5)
    sim.apply(Action(0, target=1))
    drain_with_stop(sim)
    assert sim.migration.aborts["finished"] == 1 and sim.migration.num_completed == 0
    assert sim.requests[0].instance == 0 and sim.requests[0].status == FINISHED
    assert sim.instances[1].bm.incoming == {} and sim.instances[1].bm.num_used == 0


def small_target_pools(copy: float) -> list[Pool]:
    cost = CopyCost(copy)
    return [Pool("big", InstanceConfig(num_kv_blocks=100), cost),
            Pool("small", InstanceConfig(num_kv_blocks=5), cost)]


def test_destination_running_out_of_room_aborts() -> None:
    # Copying at 1e-2 s per token, stage 1 (4 blocks) lasts 0.64 s: ~54 tokens are decoded
    # meanwhile, so stage 2 needs 3 more blocks and the 5-block target has 1 left.
    sim = one_request_sim(True, pools=small_target_pools(1e-2), output=200)
    sim.apply(Action(0, target=1))
    drain_with_stop(sim)
    assert sim.migration.aborts["destination_full"] == 1
    assert sim.requests[0].instance == 0 and sim.requests[0].status == FINISHED
    assert sim.instances[1].bm.num_used == 0


def test_too_many_stages_abort() -> None:
    sim = one_request_sim(True, pools=[Pool("a", InstanceConfig(num_kv_blocks=100),
                                            CopyCost(1e-2), count=2)],
                          output=200, migration={"interval_s": 0.1, "max_stages": 1})
    sim.apply(Action(0, target=1))
    drain_with_stop(sim)
    assert sim.migration.aborts["max_stages"] == 1
    assert sim.requests[0].instance == 0


def test_bad_answers_are_refused_with_a_reason() -> None:
    sim = one_request_sim(True)
    decision = sim.next_decision()
    with pytest.raises(InvalidActionError, match="source"):
        sim.apply(Action(0, target=0))
    with pytest.raises(InvalidActionError, match="target instance"):
        sim.apply(Action(0))
    with pytest.raises(InvalidActionError, match="not an instance index"):
        sim.apply(Action(0, target=2))
    with pytest.raises(InvalidActionError, match="out of range"):
        sim.apply(Action(1, target=1))
    assert sim.next_decision() is decision  # still pending

    # A request already migrating is no candidate: with a slow copy (stage 1 lasts 0.64 s)
    # the ticks at 0.2 .. 0.7 s ask nothing (their only request is migrating).
    slow = one_request_sim(True, copy=1e-2, output=200)
    slow.apply(Action(0, target=1))
    later = slow.next_decision()
    (migration,) = slow.migration.ended
    assert later.time > migration.end > 0.74
    request = slow.requests[0]
    assert request in later.candidates and request.instance in (0, 1)


def test_a_target_without_room_is_masked_and_refused() -> None:
    sim = one_request_sim(True, pools=small_target_pools(1e-3), output=200)
    for _ in range(20):  # let the request grow beyond the small instance's 5 blocks
        decision = sim.next_decision()
        if decision.candidates[0].num_computed > 80:
            break
        sim.apply(STOP)
    assert not decision.target_mask(0).any() and not decision.mask().any()
    with pytest.raises(InvalidActionError, match="no room"):
        sim.apply(Action(0, target=1))


@pytest.mark.parametrize("spec, message", [
    ({"interval_s": 0}, "interval_s"),
    ({"interval_s": math.inf}, "interval_s"),
    ({"trigger_free_kv": 1.5}, "trigger_free_kv"),
    ({"last_stage_blocks": -1}, "last_stage_blocks"),
    ({"max_stages": 0}, "max_stages"),
    ({"interval": 0.1}, "unknown key"),
    ("often", "mapping"),
])
def test_bad_migration_config(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        migration_from_config(spec)


def test_migration_needs_two_mixed_instances() -> None:
    with pytest.raises(ValueError, match="at least 2 instances"):
        Simulator(CopyCost(), InstanceConfig(num_kv_blocks=10), migration={})
    cost = CopyCost()
    pools = [Pool("p", InstanceConfig(num_kv_blocks=10), cost, role="prefill"),
             Pool("d", InstanceConfig(num_kv_blocks=10), cost, role="decode")]
    with pytest.raises(ValueError, match="prefill/decode cluster is not modelled"):
        Simulator(pools=pools, migration={})
    assert migration_from_config(None) is None
    assert migration_from_config({}) == MigrationConfig()


def test_live_backend_refuses_migration() -> None:
    from servegym.envs.backends import build_backend

    with pytest.raises(ValueError, match="live migration"):
        build_backend("live", None, 2, None, migration={"interval_s": 0.1})


class RandomValid:
    """Any decision answered uniformly among its valid actions (MIGRATE: a candidate with a
    valid target and one of its targets, or STOP)."""

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def decide(self, decision):
        if decision.kind == DecisionKind.MIGRATE:
            valid = np.flatnonzero(decision.mask())
            if not len(valid) or self.rng.random() < 0.3:
                return STOP
            choice = int(self.rng.choice(valid))
            target = int(self.rng.choice(np.flatnonzero(decision.target_mask(choice))))
            return Action(choice, target=target)
        choices = list(np.flatnonzero(decision.mask()))
        if decision.can_stop():
            choices.append(STOP)
        return Action(int(choices[self.rng.integers(len(choices))]),
                      swap=decision.can_swap() and bool(self.rng.integers(2)))


@st.composite
def scenarios(draw):
    n = draw(st.integers(2, 40))
    gaps = draw(st.lists(st.floats(0, 0.05), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 300), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 120), min_size=n, max_size=n))
    caching = draw(st.booleans())
    hashes = [tuple(range(p // 16)) for p in prompts] if caching else None
    config = InstanceConfig(num_kv_blocks=draw(st.integers(30, 200)),
                            max_num_seqs=draw(st.sampled_from([2, 8, 64])),
                            max_num_batched_tokens=512, enable_prefix_caching=caching,
                            swap_space_blocks=draw(st.sampled_from([0, 50])))
    workload = make_workload(np.cumsum(gaps), prompts, outputs, prefix_hashes=hashes,
                             prefix_block_size=16)
    migration = {"interval_s": draw(st.sampled_from([0.01, 0.03, 0.1])),
                 "last_stage_blocks": draw(st.integers(0, 3)),
                 "max_stages": draw(st.integers(1, 6)),
                 "max_per_tick": draw(st.integers(1, 3)),
                 "trigger_free_kv": draw(st.sampled_from([None, 0.5]))}
    copy = draw(st.sampled_from([0.0, 1e-5, 1e-3]))
    return (workload, config, draw(st.integers(2, 4)), migration, copy,
            draw(st.booleans()), draw(st.integers(0, 2**16)))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_kv_conserved_under_random_migrations(scenario) -> None:
    """No block lost or double-counted: `debug_checks` runs every instance's block
    accounting (reservations included) and the migrations' invariants after every event;
    every request ends finished or rejected, each in one place."""
    workload, config, instances, migration, copy, decode_runs, seed = scenario
    policy = RandomValid()
    sim = Simulator(CopyCost(copy), config, num_instances=instances,
                    policies={kind: policy for kind in DecisionKind}, debug_checks=True,
                    decode_runs=decode_runs, migration=migration)
    report = sim.run(workload, seed=seed)
    for request in sim.requests:
        assert request.status in (FINISHED, REJECTED)
        if request.status == FINISHED:
            assert request.num_generated == request.output_len
    stats = sim.migration
    assert stats.num_started == stats.num_completed + sum(stats.aborts.values())
    for instance in sim.instances:
        assert instance.bm.num_used == len(instance.bm.refcount) - len(instance.bm.evictable)
        assert instance.bm.incoming == {}
    assert report.summary["serving/finished"] + report.summary["serving/rejected"] == \
        len(workload)


def test_random_migrations_do_happen_and_complete() -> None:
    """The property above is not vacuous: a loaded run migrates, completes and aborts."""
    rng = np.random.default_rng(1)
    n = 200
    workload = make_workload(np.cumsum(rng.exponential(0.02, n)), rng.integers(10, 500, n),
                             rng.integers(1, 200, n))
    policy = RandomValid()
    sim = Simulator(CopyCost(1e-4), InstanceConfig(num_kv_blocks=400), num_instances=3,
                    policies={kind: policy for kind in DecisionKind}, debug_checks=True,
                    migration={"interval_s": 0.05, "max_per_tick": 2})
    sim.run(workload, seed=0)
    assert sim.migration.num_completed > 50
    assert sum(sim.migration.aborts.values()) > 0
    moved = [r for r in sim.requests if r.num_generated and r.instance != r.rid % 3]
    assert moved  # round robin put request r on instance r % 3; some ended elsewhere


def test_same_seed_same_migrations() -> None:
    rng = np.random.default_rng(2)
    n = 120
    workload = make_workload(np.cumsum(rng.exponential(0.02, n)), rng.integers(10, 400, n),
                             rng.integers(1, 150, n))

    def run():
        policy = RandomValid()
        sim = Simulator(CopyCost(1e-4), InstanceConfig(num_kv_blocks=300), num_instances=3,
                        policies={kind: policy for kind in DecisionKind},
                        migration={"interval_s": 0.05})
        report = sim.run(workload, seed=5)
        return report, sim.migration.stats()

    (first, stats_a), (second, stats_b) = run(), run()
    assert stats_a == stats_b
    for column in first.records:
        np.testing.assert_array_equal(first.records[column], second.records[column])


def test_migration_env_steps_and_moves_requests() -> None:
    """servegym/Migration-v0: each MIGRATE observation is one source's requests paired with
    targets; choosing a slot migrates that request there (the env's Action has a target)."""
    import gymnasium as gym

    import servegym  # noqa: F401  (registers the ids)

    env = gym.make("servegym/Migration-v0", episode_requests=120).unwrapped
    obs, info = env.reset(seed=0)
    moved = steps = 0
    done = False
    while not done and steps < 400:
        mask = info["action_mask"]
        slots = np.flatnonzero(mask[: env.encoder.num_slots])
        decision = env.sim.next_decision()
        assert decision.kind == DecisionKind.MIGRATE and mask[env.encoder.stop_action]
        if len(slots):
            action = env.encoder.to_action(int(slots[0]), decision)
            request = decision.candidates[action.choice]
            assert action.target != request.instance
            assert decision.target_mask(action.choice)[action.target]
            moved += 1
        obs, _, terminated, truncated, info = env.step(int(slots[0]) if len(slots)
                                                       else env.encoder.stop_action)
        assert np.all(np.abs(obs) <= 1.0)
        steps += 1
        done = terminated or truncated
    assert moved > 0 and env.sim.migration.num_started >= moved


class ToFirst:
    def decide(self, decision):
        return 0


def loaded_first_instance(prompts, outputs, blocks=100) -> Simulator:
    """Every request routed to instance 0 of 2; MIGRATE decisions surfaced."""
    policies = {**default_policies(), DecisionKind.ROUTE: ToFirst()}
    del policies[DecisionKind.MIGRATE]
    sim = Simulator(CopyCost(), InstanceConfig(num_kv_blocks=blocks), num_instances=2,
                    policies=policies, migration={"interval_s": 0.1})
    sim.reset(make_workload([0.0] * len(prompts), prompts, outputs), seed=0)
    return sim


def test_balance_moves_the_shortest_request_to_the_freest_instance() -> None:
    from servegym.agents.heuristics import make_policy

    sim = loaded_first_instance([300, 40, 200], [400, 400, 400])
    decision = sim.next_decision()
    assert [r.instance for r in decision.candidates] == [0, 0, 0]
    action = make_policy("migrate-balance").decide(decision)
    shortest = min(range(3), key=lambda i: decision.candidates[i].num_blocks)
    assert action == Action(shortest, target=1)
    assert decision.candidates[shortest].prompt_len == 40
    assert make_policy("migrate-never").decide(decision) == STOP
    # Balanced already (nothing on instance 0 but one request): balance stops.
    single = loaded_first_instance([40], [400])
    assert make_policy("migrate-balance").decide(single.next_decision()) == STOP


def test_defrag_makes_room_for_a_queued_request_that_does_not_fit() -> None:
    from servegym.agents.heuristics import make_policy

    # 60 blocks: the 300- and 280-token prompts (19 and 18 blocks) run; the 600-token
    # third (38 blocks) waits. Defrag moves the running request whose blocks cover the
    # shortfall alone, the smallest such (the 280-token one).
    sim = loaded_first_instance([300, 280, 600], [400, 400, 50], blocks=60)
    decision = sim.next_decision()
    waiting = sim.instances[0].waiting
    assert waiting and waiting[0].prompt_len == 600
    action = make_policy("migrate-defrag").decide(decision)
    assert action != STOP and action.target == 1
    need = 38 - sim.instances[0].bm.num_free
    chosen = decision.candidates[action.choice]
    assert chosen.num_blocks >= need
    assert all(r.num_blocks >= chosen.num_blocks for r in decision.candidates
               if r.num_blocks >= need)
    assert chosen.prompt_len == 280
    assert make_policy("migrate-defrag").decide(
        loaded_first_instance([40], [400]).next_decision()) == STOP


def test_migrate_slots_show_what_migrate_balance_checks() -> None:
    """Layout 4: every MIGRATE slot pairs its request with Llumnix's destination (the freest
    instance that can take it) and features 21-22 carry migrate-balance's check (move when
    0 < gap after < gap before). Over a loaded episode: whenever the teacher moves a
    request that is in a slot, that slot has the teacher's target and passes the check;
    whenever it stops while its source is busy, the encoder's source is the same and no
    slot passes; and the teacher's moves can be imitated (`action_index` finds them)."""
    import gymnasium as gym

    import servegym  # noqa: F401  (registers the ids)
    from servegym.agents.heuristics import make_policy
    from servegym.agents.heuristics.llumnix import virtual_freeness
    from servegym.envs.observations import (
        BASE_SLOT_FEATURES,
        GLOBAL_FEATURES,
        MAX_ROLES,
        SLOT_FEATURES,
    )

    env = gym.make("servegym/Migration-v0", episode_requests=300).unwrapped
    teacher = make_policy("migrate-balance")
    obs, info = env.reset(seed=1)
    pair = BASE_SLOT_FEATURES + 2 * MAX_ROLES
    moves = busy_stops = 0
    done = False
    while not done:
        decision = env.sim.next_decision()
        slots = obs[GLOBAL_FEATURES:].reshape(env.encoder.num_slots, SLOT_FEATURES)
        used = len(env.encoder.slot_choice)
        passes = [0 < slots[i, pair] < slots[i, pair + 1] for i in range(used)]
        answer = teacher.decide(decision)
        action = env.action_index(answer)
        if answer != STOP:
            assert action is not None or answer.choice not in env.encoder.slot_choice
            if action is not None:
                moves += 1
                assert env.encoder.slot_target[action] == answer.target
                assert passes[action]
        elif used and obs[13] < 0.5:  # the encoder's source is busy (freeness < 64)
            instances = env.sim.instances
            owners = {r.instance for r in decision.candidates}
            source = min(owners, key=lambda s: (virtual_freeness(instances[s]), s))
            if source == decision.candidates[env.encoder.slot_choice[0]].instance:
                busy_stops += 1  # the teacher looked at the same source and found no move
                assert not any(passes)
        obs, _, terminated, truncated, info = env.step(
            action if action is not None else env.encoder.stop_action)
        done = terminated or truncated
    assert moves > 10 and busy_stops > 10  # the test saw both kinds of answer
