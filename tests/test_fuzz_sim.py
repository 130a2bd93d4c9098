"""experiments/fuzz_sim.py: a short fuzz run is clean, covers every axis, is deterministic,
and detects an injected invariant violation and a hang."""

from __future__ import annotations

import time
from typing import Any

import fuzz_sim
import pytest

from servegym.envs.core.kv_cache import BlockManager
from servegym.envs.costs import RooflineCostModel

# One configuration per cluster; together they take both values of every other axis.
CONFIGS = ["v0.swap.prefix.x1", "v1.noswap.noprefix.x2", "v1nc.swap.noprefix.hetero",
           "v1.swap.prefix.x4", "v1nc.noswap.prefix.x3"]
DECISIONS = 6_000
SEED = 7


def counts(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every count of a result, wall times left out."""
    return {name: {k: v for k, v in stats.items() if k != "wall_s"}
            for name, stats in result["configs"].items()}


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    return fuzz_sim.fuzz(DECISIONS, SEED, fuzz_sim.select(CONFIGS))


def test_a_short_run_is_clean_and_exercises_every_axis(run) -> None:
    totals = run["totals"]
    assert totals["violations"] == 0 and totals["hangs"] == 0, run["failures"][:3]
    assert run["failures"] == []
    assert totals["decisions"] >= DECISIONS
    assert totals["events"] > totals["decisions"]
    assert set(run["configs"]) == set(CONFIGS)
    for stats in run["configs"].values():
        assert stats["decisions"] >= run["share_per_config"]
    # Every value of every configuration axis was run.
    seen = {axis: {s["axes"][axis] for s in run["configs"].values()} for axis in fuzz_sim.AXES}
    assert seen == {"batching": set(fuzz_sim.BATCHING), "swap": {"swap", "noswap"},
                    "prefix": {"prefix", "noprefix"}, "cluster": set(fuzz_sim.CLUSTERS)}
    # ... and took effect: every decision kind, STOP, swaps only with swap space, prefix hits
    # only with caching, routing only with 2+ instances, rejections, interrupts, both paths.
    for name, s in run["configs"].items():
        axes = s["axes"]
        assert (s["route_decisions"] > 0) == (axes["cluster"] != "x1"), name
        assert (s["prefix_hit_tokens"] > 0) == (axes["prefix"] == "prefix"), name
        if axes["swap"] == "noswap":
            assert s["swap_answers"] == 0 and s["swaps"] == 0, name
    for key in ("admit_decisions", "preempt_decisions", "stops", "swap_answers", "swaps",
                "preemptions", "rejected", "interrupts", "reference_path_episodes"):
        assert totals[key] > 0, key
    assert totals["finished"] + totals["rejected"] == totals["requests"]


def test_same_seed_same_counts(run) -> None:
    again = fuzz_sim.fuzz(DECISIONS, SEED, fuzz_sim.select(CONFIGS))
    assert counts(again) == counts(run)
    other = fuzz_sim.fuzz(2_000, SEED + 1, fuzz_sim.select(CONFIGS[:1]))
    assert counts(other)[CONFIGS[0]] != counts(run)[CONFIGS[0]]


def test_an_injected_kv_leak_is_counted_as_a_violation(monkeypatch) -> None:
    """A copy of `BlockManager.free` that loses one block: the per-event check must see it,
    and the fuzzer must record it (configuration, seed, message) and go on."""
    free = BlockManager.free

    def leaky_free(self: BlockManager, request: Any) -> None:
        free(self, request)
        if self.free_uncached > 0:
            self.free_uncached -= 1

    monkeypatch.setattr(BlockManager, "free", leaky_free)
    configs = fuzz_sim.select(CONFIGS[:2])
    result = fuzz_sim.fuzz(1_000, SEED, configs)
    totals = result["totals"]
    assert totals["violations"] > 0 and totals["hangs"] == 0
    assert totals["violations"] == len(result["failures"])
    assert totals["episodes"] > 1  # the run went on after the first violation
    first = result["failures"][0]
    assert first["kind"] == "violation" and first["error"] == "KVCacheError"
    assert "blocks do not add up" in first["message"]
    assert first["config"] in CONFIGS[:2] and first["settings"]["pools"]
    # The recorded (configuration, episode seed) replays the failure, and passes unpatched.
    config = fuzz_sim.select([first["config"]])[0]
    costs = fuzz_sim.Costs()
    replayed = fuzz_sim.run_episode(config, first["episode_seed"], costs)
    assert replayed.failure is not None and replayed.failure["message"] == first["message"]
    monkeypatch.undo()
    assert fuzz_sim.run_episode(config, first["episode_seed"], costs).failure is None


def test_caps_turn_a_runaway_episode_into_a_hang(monkeypatch) -> None:
    configs = fuzz_sim.select(CONFIGS[:1])
    capped = fuzz_sim.fuzz(20, SEED, configs, event_factor=0)  # no event allowed
    assert capped["totals"]["hangs"] == capped["totals"]["episodes"] > 0
    assert capped["totals"]["violations"] == 0
    assert "events" in capped["failures"][0]["message"]

    iteration_time = RooflineCostModel.iteration_time

    def slow(self: Any, *args: Any) -> float:
        time.sleep(0.05)
        return iteration_time(self, *args)

    monkeypatch.setattr(RooflineCostModel, "iteration_time", slow)
    started = time.perf_counter()
    slowed = fuzz_sim.fuzz(1, SEED, configs, wall_s=0.2)
    assert time.perf_counter() - started < 10
    assert slowed["totals"]["hangs"] >= 1
    assert "wall-clock" in slowed["failures"][0]["message"]


def test_the_drain_check_sees_what_is_left_behind() -> None:
    config = fuzz_sim.select(["v1.swap.prefix.x2"])[0]
    sim, workload, rng, settings = fuzz_sim.build_episode(config, 11, fuzz_sim.Costs())
    sim.reset(workload, seed=settings["sim_seed"])
    while (decision := sim.next_decision()) is not None:
        sim.apply(fuzz_sim.answer(decision, rng))
    summary = sim.report().summary
    assert fuzz_sim.check_drained(sim, workload, summary) == []
    bm = sim.instances[1].bm
    bm.free_uncached -= 2
    bm.swap_used = 1
    sim.requests[0].num_generated -= 1
    problems = fuzz_sim.check_drained(sim, workload, summary)
    assert any("2 KV blocks still used" in p for p in problems)
    assert any("1 swap blocks still used" in p for p in problems)
    assert any(f"request {sim.requests[0].rid}" in p for p in problems)


def test_quick_cli_writes_only_with_out(tmp_path, capsys) -> None:
    args = ["--quick", "--decisions", "300", "--configs", "v1.noswap.noprefix.x2"]
    assert fuzz_sim.main(args) == 0
    assert "| **total** |" in capsys.readouterr().out
    assert fuzz_sim.main([*args, "--out", str(tmp_path)]) == 0
    text = (tmp_path / "fuzz_sim.md").read_text()
    assert "Command: `python experiments/fuzz_sim.py --quick" in text
    assert (tmp_path / "fuzz_sim.json").exists()
    assert len(list((tmp_path / "history").glob("fuzz_sim_*.md"))) == 1
