"""Arrival processes, length distributions, synthetic workloads, sessions and tenant mixes."""

from __future__ import annotations

import numpy as np
import pytest

from servegym.envs.workloads import (
    WorkloadError,
    diurnal_arrivals,
    gamma_arrivals,
    make_source,
    multi_turn_workload,
    onoff_arrivals,
    synthetic_workload,
)
from servegym.envs.workloads.distributions import sample_durations, sample_lengths
from servegym.envs.workloads.sources import SourceContext

M = 1 << 24


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def cv(times: np.ndarray) -> float:
    gaps = np.diff(times)
    return float(gaps.std() / gaps.mean())


# ---------------------------------------------------------------------- arrivals


@pytest.mark.parametrize("target", [0.5, 1.0, 3.0])
def test_gamma_has_the_rate_and_cv(target: float) -> None:
    times = gamma_arrivals(100_000, 4.0, target, rng())
    assert len(times) / times[-1] == pytest.approx(4.0, rel=0.03 * target)
    assert cv(times) == pytest.approx(target, rel=0.05)


def test_onoff_is_bursty_with_the_mean_rate() -> None:
    times = onoff_arrivals(400_000, 5.0, on_s=5.0, off_s=15.0, rng=rng())
    assert np.all(np.diff(times) >= 0)
    # ~4,000 ON periods: the rate's standard error is ~1.7% (checked over 40 seeds).
    assert len(times) / times[-1] == pytest.approx(5.0, rel=0.06)
    gaps = np.diff(times)
    assert cv(times) > 2  # long silences between bursts
    # Inside a burst the rate is 5 * 20 / 5 = 20 req/s: the median gap is ln2 / 20.
    assert np.median(gaps) == pytest.approx(np.log(2) / 20, rel=0.05)
    assert onoff_arrivals(10, 5.0, 10.0, 30.0, rng(3)).tobytes() == onoff_arrivals(
        10, 5.0, 10.0, 30.0, rng(3)).tobytes()


def test_diurnal_follows_the_sine() -> None:
    times = diurnal_arrivals(200_000, 10.0, 0.8, 1000.0, rng())
    assert len(times) == 200_000 and np.all(np.diff(times) >= 0)
    assert len(times) / times[-1] == pytest.approx(10.0, rel=0.02)
    phase = (times % 1000.0) / 1000.0
    peak = np.count_nonzero((phase > 0.2) & (phase < 0.3))  # sin near +1
    trough = np.count_nonzero((phase > 0.7) & (phase < 0.8))  # sin near -1
    assert peak / trough == pytest.approx((1 + 0.8 * 0.98) / (1 - 0.8 * 0.98), rel=0.15)


@pytest.mark.parametrize(
    "call",
    [
        lambda: gamma_arrivals(5, 1.0, 0.0, rng()),
        lambda: onoff_arrivals(5, 1.0, -1.0, 1.0, rng()),
        lambda: diurnal_arrivals(5, 1.0, 1.0, 10.0, rng()),
        lambda: diurnal_arrivals(5, 1.0, 0.5, 0.0, rng()),
    ],
)
def test_arrival_validation(call) -> None:
    with pytest.raises(WorkloadError):
        call()


# ---------------------------------------------------------------------- distributions


def test_length_distributions() -> None:
    r = rng()
    assert sample_lengths({"dist": "fixed", "value": 7}, 3, r, "x").tolist() == [7, 7, 7]
    uniform = sample_lengths({"dist": "uniform", "low": 2, "high": 4}, 10_000, r, "x")
    assert set(uniform.tolist()) == {2, 3, 4}
    zipf = sample_lengths({"dist": "zipf", "a": 1.2, "low": 10, "high": 100}, 100_000, r, "x")
    counts = np.bincount(zipf)
    assert zipf.min() == 10 and zipf.max() <= 100
    assert counts[10] / counts[20] == pytest.approx(2**1.2, rel=0.1)
    logn = sample_lengths({"dist": "lognormal", "mean": 500, "cv": 1.0}, 200_000, r, "x")
    assert logn.mean() == pytest.approx(500, rel=0.02) and logn.min() >= 1
    capped = sample_lengths({"dist": "lognormal", "mean": 500, "cv": 2.0, "high": 800}, 1000, r,
                            "x")
    assert capped.max() == 800 and capped.dtype == np.int64
    empirical = sample_lengths({"dist": "empirical", "trace": "t", "column": "prompt"}, 1000, r,
                               "x", lambda trace, column: np.array([3, 9]))
    assert set(empirical.tolist()) == {3, 9}


def test_duration_distributions() -> None:
    r = rng()
    assert sample_durations({"dist": "fixed", "value": 2.5}, 2, r, "x").tolist() == [2.5, 2.5]
    assert sample_durations({"dist": "exponential", "mean": 4.0}, 100_000, r, "x").mean() == \
        pytest.approx(4.0, rel=0.02)
    uniform = sample_durations({"dist": "uniform", "low": 1.0, "high": 2.0}, 1000, r, "x")
    assert uniform.min() >= 1.0 and uniform.max() <= 2.0


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"dist": "normal"}, r"x\.dist = 'normal': choose one of fixed, uniform"),
        ({"dist": "uniform", "low": 5}, r"x: missing option\(s\) high"),
        ({"dist": "fixed", "value": 3, "vlaue": 4}, r"x: unknown option\(s\) vlaue"),
        ({"dist": "uniform", "low": 5, "high": 2}, "high = 2 is below low = 5"),
        ({"dist": "fixed", "value": 0}, r"x\.value = 0: must be an integer >= 1"),
        ({"dist": "lognormal", "mean": -1, "cv": 1}, r"x\.mean = -1"),
        ({"dist": "empirical", "trace": "t", "column": "both"}, "'prompt' or 'output'"),
        ("fixed", "must be a mapping with 'dist'"),
    ],
)
def test_distribution_errors_name_the_option(spec: object, pattern: str) -> None:
    with pytest.raises(WorkloadError, match=pattern):
        sample_lengths(spec, 3, rng(), "x")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- synthetic


SYNTH = {
    "num_requests": 2000,
    "arrivals": {"process": "gamma", "rate": 4.0, "cv": 2.0},
    "prompt": {"dist": "uniform", "low": 10, "high": 20},
    "output": {"dist": "fixed", "value": 5},
}


def test_synthetic_is_seeded_and_streams_are_independent() -> None:
    a = synthetic_workload(SYNTH, rng(1))
    b = synthetic_workload(SYNTH, rng(1))
    assert a.arrival_time.tobytes() == b.arrival_time.tobytes()
    assert a.prompt_len.tobytes() == b.prompt_len.tobytes()
    other = synthetic_workload({**SYNTH, "output": {"dist": "uniform", "low": 1, "high": 9}},
                               rng(1))
    assert other.arrival_time.tobytes() == a.arrival_time.tobytes()  # arrivals untouched
    assert other.prompt_len.tobytes() == a.prompt_len.tobytes()
    assert not np.array_equal(synthetic_workload(SYNTH, rng(2)).arrival_time, a.arrival_time)
    assert len(a) == 2000 and a.name == "synthetic_gamma"


def test_synthetic_by_duration() -> None:
    spec = {**SYNTH, "num_requests": None, "duration_s": 500.0}
    w = synthetic_workload(spec, rng())
    assert w.arrival_time.max() < 500.0
    assert len(w) == pytest.approx(2000, rel=0.15)
    assert synthetic_workload(spec, rng()).arrival_time.tobytes() == w.arrival_time.tobytes()
    with pytest.raises(WorkloadError, match="exactly one of num_requests and duration_s"):
        synthetic_workload({**SYNTH, "duration_s": 5.0}, rng())


def test_joint_empirical_lengths_and_trace_arrivals() -> None:
    spec = {"num_requests": 20_000, "arrivals": {"process": "trace", "trace": "azure_code"},
            "lengths": {"dist": "empirical", "trace": "azure_conv", "order": "file"}}
    w = synthetic_workload(spec, rng())
    conv = make_source({"kind": "azure", "trace": "conv"}, rng(), SourceContext())
    code = make_source({"kind": "azure", "trace": "code"}, rng(), SourceContext())
    assert np.array_equal(w.prompt_len[:19_366], conv.prompt_len)  # file order, cycled
    assert np.array_equal(w.prompt_len[19_366:], conv.prompt_len[:634])
    assert np.array_equal(w.arrival_time[: len(code)], code.arrival_time)  # the trace's times
    assert np.all(np.diff(w.arrival_time) >= 0) and w.arrival_time[len(code)] > \
        code.arrival_time[-1]
    scaled = synthetic_workload({**spec, "arrivals": {"process": "trace", "trace": "azure_code",
                                                      "rate": 10.0}, "num_requests": len(code)},
                                rng())
    assert scaled.summary()["mean_rate"] == pytest.approx(10.0, rel=1e-9)
    with pytest.raises(WorkloadError, match="arrival times exist only for"):
        synthetic_workload({**spec, "arrivals": {"process": "trace", "trace": "sharegpt"}}, rng())


# ---------------------------------------------------------------------- sessions


SESSIONS = {
    "num_sessions": 3,
    "arrivals": {"process": "poisson", "rate": 0.001},  # sessions far apart
    "turns": {"dist": "fixed", "value": 4},
    "think_time": {"dist": "fixed", "value": 5.0},
    "first_prompt": {"dist": "fixed", "value": 100},
    "user_prompt": {"dist": "fixed", "value": 20},
    "output": {"dist": "fixed", "value": 10},
    "system_prompt_len": 40,
}


def test_sessions_by_hand() -> None:
    w = multi_turn_workload(SESSIONS, rng(), block_size=16)
    assert len(w) == 12
    # P1 = 40 + 100, then + 10 (answer) + 20 (user message) per turn.
    assert w.prompt_len.tolist() == [140, 170, 200, 230] * 3
    starts = w.arrival_time[::4]
    assert np.allclose(w.arrival_time - np.repeat(starts, 4), [0, 5, 10, 15] * 3)
    h = w.prefix_hashes
    for s in range(3):
        turns = [h[4 * s + k] for k in range(4)]
        assert [len(t) for t in turns] == [140 // 16, 170 // 16, 200 // 16, 230 // 16]
        for earlier, later in zip(turns, turns[1:], strict=False):
            assert later[: len(earlier)] == earlier  # each prompt is a prefix of the next
    # Two whole system-prompt blocks (40 // 16) are shared by every session, nothing else.
    assert h[0][:2] == h[4][:2] == (0, 1)
    assert not set(h[0][2:]) & set(h[4])


def test_sessions_duration_and_errors() -> None:
    spec = {**SESSIONS, "num_sessions": None, "duration_s": 50_000.0}
    w = multi_turn_workload(spec, rng(1), block_size=16)
    assert len(w) % 4 == 0 and len(w) > 0
    with pytest.raises(WorkloadError, match=r"source: missing option\(s\) turns"):
        multi_turn_workload({k: v for k, v in SESSIONS.items() if k != "turns"}, rng())


# ---------------------------------------------------------------------- tenant mixes


def test_mix_sets_tenants_priorities_and_slos() -> None:
    chat = {"kind": "synthetic", "duration_s": 100.0, "arrivals": {"process": "poisson", "rate": 5},
            "prompt": {"dist": "fixed", "value": 50}, "output": {"dist": "fixed", "value": 5}}
    agent = {**SESSIONS, "kind": "sessions", "num_sessions": 2,
             "arrivals": {"process": "poisson", "rate": 0.1}}
    spec = {"kind": "mix", "tenants": [
        {"name": "chat", "priority": 0, "ttft_slo": 1.0, "tpot_slo": 0.05, "source": chat},
        {"name": "agent", "priority": 1, "source": agent},
        {"name": "agent2", "priority": 2, "source": agent},
    ]}
    w = make_source(spec, rng(), SourceContext())
    assert w.tenant_names == ("chat", "agent", "agent2")
    assert np.all(np.diff(w.arrival_time) >= 0)
    assert np.all(w.priority == w.tenant)
    assert np.all(w.ttft_slo[w.tenant == 0] == 1.0) and np.all(np.isinf(w.ttft_slo[w.tenant == 1]))
    chats = np.flatnonzero(w.tenant == 0)
    assert all(w.prefix_hashes[i] == () for i in chats[:20])
    first_agent = w.prefix_hashes[int(np.flatnonzero(w.tenant == 1)[0])]
    first_agent2 = w.prefix_hashes[int(np.flatnonzero(w.tenant == 2)[0])]
    assert first_agent and not set(first_agent) & set(first_agent2)  # tenants never collide
    with pytest.raises(WorkloadError, match=r"tenants\[0\]: missing option\(s\) name"):
        make_source({"kind": "mix", "tenants": [{"source": chat}]}, rng(), SourceContext())
    with pytest.raises(WorkloadError, match="tenant names .* repeat"):
        make_source({"kind": "mix", "tenants": [{"name": "a", "source": chat}] * 2}, rng(),
                    SourceContext())
