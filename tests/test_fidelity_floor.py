"""The live fidelity floor's arithmetic (experiments/fidelity.py), without a live engine."""

from __future__ import annotations

import math

import pytest
from fidelity import (
    FLOOR_KEYS,
    floor_summary,
    floor_table,
    format_floor_markdown,
    live_floor,
    median_of_repeats,
)


def sample(value: float, **overrides: float) -> dict[str, float]:
    out = {key: value for key in FLOOR_KEYS}
    out["preemptions"] = 0.0
    out.update(overrides)
    return out


def run(repeats: list[dict], sim: dict) -> dict:
    return {"trace": "azure_conv", "load": 0.3, "rate": 2.5, "policy": "fcfs",
            "live_repeats": repeats, "live": median_of_repeats(repeats),
            "live_floor": live_floor(repeats), "sim": sim, "sim_drift_corrected": sim,
            "speed_factors": [[1.0, 1.0]] * len(repeats)}


def test_median_of_repeats_is_the_mean_for_two_and_the_median_for_three():
    assert median_of_repeats([sample(1.0), sample(3.0)])["e2e_p50"] == 2.0
    assert median_of_repeats([sample(1.0), sample(10.0), sample(2.0)])["e2e_p50"] == 2.0


def test_live_floor_is_spread_over_median():
    floor = live_floor([sample(0.9), sample(1.1)])
    assert floor["ttft_p50"] == pytest.approx(0.2)  # |0.9 - 1.1| / 1.0
    floor = live_floor([sample(1.0), sample(1.5), sample(2.0)])
    assert floor["e2e_p99"] == pytest.approx(1.0 / 1.5)


def test_live_floor_edge_cases():
    floor = live_floor([sample(0.0), sample(0.0, ttft_p50=0.1)])
    assert floor["e2e_p50"] == 0.0
    assert floor["ttft_p50"] == pytest.approx(2.0)  # median 0.05, spread 0.1
    assert math.isinf(live_floor([sample(0.0, preemptions=0.0),
                                  sample(0.0, preemptions=2.0),
                                  sample(0.0, preemptions=0.0)])["preemptions"])
    with pytest.raises(ValueError, match="at least 2 repeats"):
        live_floor([sample(1.0)])
    with pytest.raises(ValueError, match="same metrics"):
        median_of_repeats([sample(1.0), {"ttft_p50": 1.0}])


def test_floor_summary_counts():
    runs = [
        # floor 2%, sim +1% of the median: within 5% and within the floor
        run([sample(0.99), sample(1.01)], sample(1.01)),
        # floor 20%, sim +10%: outside 5%, inside the floor
        run([sample(0.9), sample(1.1)], sample(1.1)),
        # floor 0 (repeats agree), sim +4%: within 5%, not within the floor
        run([sample(1.0), sample(1.0)], sample(1.04)),
    ]
    s = floor_summary(runs)["e2e_p50"]
    assert s["runs"] == 3
    assert s["floor_within_target"] == 2
    assert s["floor_median"] == pytest.approx(0.02)
    assert s["floor_max"] == pytest.approx(0.2)
    assert s["sim_within_target"] == 2
    assert s["sim_within_floor"] == 2
    assert s["sim_median"] == pytest.approx(0.04)
    assert s["sim_max"] == pytest.approx(0.1)
    # ratio over runs with a floor > 0: 0.01/0.02 and 0.1/0.2
    assert s["sim_over_floor_median"] == pytest.approx(0.5)
    # against each repeat: run 1: 1.01 vs 0.99 (+2%), vs 1.01 (0%); run 2: vs 0.9 (+22%),
    # vs 1.1 (0%); run 3: +4%, +4% -> 5 of 6 within 5%
    assert (s["sim_each_repeat_within_target"], s["sim_each_repeat_comparisons"]) == (5, 6)


def test_floor_tables_render_every_metric():
    runs = [run([sample(0.9), sample(1.1)], sample(1.05)),
            run([sample(1.0), sample(1.0)], sample(1.0))]
    lines = floor_table(floor_summary(runs))
    assert len(lines) == 2 + len(FLOOR_KEYS)
    assert lines[2].startswith("| ttft_p50 | 10.0% | 20.0% | 1/2 |")
    text = format_floor_markdown(runs, {"command": "`x`", "load average": "1.0"})
    assert "- load average: 1.0" in text
    assert "900.0 / 1100.0 / 1050.0 (20.0%, +5.0%)" in text
