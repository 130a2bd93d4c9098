"""Long-context models: registry entries, KV arithmetic by hand, the KV-bound concurrency in
reports, and the cost model's account of which tables it scales from and how far they
were measured."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from sim_fixtures import AffineCost, make_workload

from servegym.envs.core.instance import InstanceConfig
from servegym.envs.core.metrics import format_summary
from servegym.envs.core.simulator import Simulator
from servegym.envs.costs import (
    MODELS,
    MissingTableError,
    RooflineFallbackWarning,
    UnknownSpecError,
    build_cost_model,
    catalog,
    get_model,
)
from servegym.envs.costs.specs import (
    GiB,
    kv_bound_sequences,
    kv_bytes_per_token_per_gpu,
    kv_capacity_blocks,
    kv_concurrency,
)
from servegym.envs.costs.table_model import BeyondMeasuredRangeWarning

LONG = {"Llama-3.1-8B": (131072, "Llama-3-8B"), "Llama-3.1-70B": (131072, "Llama-3-70B"),
        "Yi-34B-200K": (200000, "")}


@pytest.mark.parametrize("name", sorted(LONG))
def test_registry_has_the_long_context_models(name: str) -> None:
    spec = get_model(name.lower())  # case-insensitive, as every lookup
    assert (spec.max_context, spec.tables_from) == LONG[name]


def test_the_registered_shapes_are_the_published_configs() -> None:
    yi = get_model("Yi-34B-200K")
    assert (yi.num_layers, yi.hidden_size, yi.num_heads, yi.num_kv_heads, yi.ffn_size,
            yi.vocab_size, yi.head_dim) == (60, 7168, 56, 8, 20480, 64000, 128)
    assert 34.3e9 < yi.num_params < 34.5e9  # "34B"
    for new, old in (("Llama-3.1-8B", "Llama-3-8B"), ("Llama-3.1-70B", "Llama-3-70B")):
        a, b = get_model(new), get_model(old)
        assert dataclasses.replace(a, name=old, max_context=b.max_context, tables_from="") == b


def test_every_tables_from_names_a_model_of_the_same_shape() -> None:
    borrowers = [spec for spec in MODELS.values() if spec.tables_from]
    assert {spec.name for spec in borrowers} == {"Llama-3.1-8B", "Llama-3.1-70B"}
    for spec in borrowers:
        assert get_model(spec.tables_from).cost_shape == spec.cost_shape


def test_kv_bytes_per_token_by_hand() -> None:
    # 2 (K and V) x layers x KV heads x head_dim x 2 bytes (fp16/bf16).
    assert get_model("Yi-34B-200K").kv_bytes_per_token == 2 * 60 * 8 * 128 * 2 == 245_760
    assert get_model("Llama-3.1-70B").kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680
    assert get_model("Llama-3.1-8B").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    # TP4 splits Yi's 8 KV heads two per GPU.
    assert kv_bytes_per_token_per_gpu(get_model("Yi-34B-200K"), 4) == 2 * 60 * 2 * 128 * 2
    # One 50,000-token sequence: 12.29 GB (11.44 GiB).
    assert 50_000 * 245_760 == 12_288_000_000


def test_kv_bound_sequences_by_hand() -> None:
    assert kv_bound_sequences(59_650, 50_000, 16) == 59_650 // 3125 == 19
    assert kv_bound_sequences(100, 321, 16) == 100 // 21 == 4  # a partial block is a block
    assert kv_bound_sequences(10, 321, 16) == 0  # not even one fits
    for bad in ({"num_kv_blocks": 0}, {"tokens_per_sequence": 0}, {"block_size": 1.5}):
        args = {"num_kv_blocks": 10, "tokens_per_sequence": 10, "block_size": 16, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            kv_bound_sequences(**args)


def test_kv_concurrency_of_the_34b_model_on_four_a100s_by_hand() -> None:
    h, ffn, vocab, layers = 7168, 20480, 64000, 60
    q, kv = h, 8 * 128
    params = 2 * vocab * h + layers * (h * (q + 2 * kv) + q * h + 3 * h * ffn + 2 * h) + h
    weights_per_gpu = 2 * params / 4
    reserve = GiB + 8192 * (2 * h + 2 * ffn // 4) * 2  # default activation reserve
    usable = 80 * GiB * 0.9 - weights_per_gpu - reserve
    blocks = math.floor(usable / (16 * 2 * layers * 2 * 128 * 2))
    assert kv_capacity_blocks("Yi-34B-200K", "A100-80GB", 4) == blocks
    for context in (4096, 50_000, 200_000):
        expected = blocks // math.ceil(context / 16)
        assert kv_concurrency("Yi-34B-200K", "a100", 4, context) == expected
    assert kv_concurrency("Yi-34B-200K", "a100", 4, 50_000) == 19
    # Default: the model's whole context (200,000 tokens).
    assert kv_concurrency("Yi-34B-200K", "a100", 4) == blocks // 12_500 == 4


def test_llama31_is_timed_by_the_llama3_tables_and_says_so() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RooflineFallbackWarning)  # no fallback: measured
        new = build_cost_model("Llama-3.1-8B", "A100-80GB", 1)
    old = build_cost_model("Llama-3-8B", "A100-80GB", 1)
    assert new.source == "measured"
    d = new.describe()
    assert d["tables_model"] == "Llama-3-8B" and "Llama-3-8B" in d["scaled_from"]
    assert d["measured_up_to"] == {"batched_tokens": 32768, "prefill_context_tokens": 4096,
                                   "decode_context_tokens": 4032}
    assert d["model_context"] == 131072
    assert old.describe()["scaled_from"] is None
    batch = [(512, 1000), (64, 0)]
    assert new.iteration_time(batch, 8, 8 * 900) == old.iteration_time(batch, 8, 8 * 900)
    seventy = build_cost_model("Llama-3.1-70B", "a100", 4).describe()
    assert seventy["tables_model"] == "Llama-3-70B"


def test_llama31_on_a_gpu_without_llama3_tables_names_both() -> None:
    with pytest.raises(MissingTableError, match=r"Llama-3\.1-8B \(served by Llama-3-8B's"):
        build_cost_model("Llama-3.1-8B", "H100", 1, source="measured")
    with pytest.warns(RooflineFallbackWarning):
        yi = build_cost_model("Yi-34B-200K", "A100-80GB", 4)
    d = yi.describe()
    assert (d["source"], d["tables_model"], d["measured_up_to"], d["model_context"]) == (
        "roofline", None, None, 200000)


def test_beyond_the_measured_context_is_said_once_per_cost_model() -> None:
    cost = build_cost_model("Llama-3.1-8B", "A100-80GB", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cost.iteration_time([(1024, 3072)], 4, 4 * 4000)  # 4,096 and 4,000: measured
        assert not [w for w in caught if w.category is BeyondMeasuredRangeWarning]
        cost.iteration_time([(1024, 8000)], 0, 0)
        cost.iteration_time([(8192, 100_000)], 0, 0)
        cost.iteration_time([], 2, 2 * 120_000)
    notes = [str(w.message) for w in caught if w.category is BeyondMeasuredRangeWarning]
    assert len(notes) == 1
    assert "Llama-3.1-8B" in notes[0] and "4096" in notes[0] and "Llama-3-8B" in notes[0]

    decode_only = build_cost_model("Llama-3.1-8B", "A100-80GB", 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_only.iteration_time([], 3, 3 * 5000)  # mean decode context past 4,096
    assert [w.category for w in caught] == [BeyondMeasuredRangeWarning]


def test_unknown_model_keeps_its_clear_error() -> None:
    with pytest.raises(UnknownSpecError, match=r"unknown model 'Llama-3\.2-8B'.*Llama-3\.1-8B"):
        build_cost_model("Llama-3.2-8B", "A100-80GB", 1)


def test_tables_from_with_another_shape_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = dataclasses.replace(get_model("Mistral-7B"), tables_from="Llama-3-8B")  # vocab differs
    real = catalog.get_model
    monkeypatch.setattr(catalog, "get_model",
                        lambda name: bad if name == "Mistral-7B" else real(name))
    with pytest.raises(ValueError, match="differ in shape"):
        catalog.tables_model("Mistral-7B")


def test_report_shows_the_kv_bound_beside_max_num_seqs() -> None:
    # 100 blocks of 16 tokens; every request ends at 300 + 20 = 320 tokens = 20 blocks:
    # five fit at once, far below max_num_seqs.
    cost = AffineCost(max_context=320)
    workload = make_workload(np.zeros(12), np.full(12, 300), np.full(12, 20))
    sim = Simulator(cost, InstanceConfig(num_kv_blocks=100, max_num_seqs=64))
    report = sim.run(workload, seed=0)
    s = report.summary
    assert (s["serving/kv_bound_seqs_max_len"], s["serving/kv_bound_seqs_mean_len"],
            s["serving/max_num_seqs"]) == (5.0, 5.0, 64.0)
    r = report.records
    start, finish = r["first_scheduled"], r["finish"]
    running = [int(((start <= t) & (finish > t)).sum()) for t in start]
    assert max(running) == 5 and s["serving/preemptions"] == 0
    assert "KV-bound seqs max-len / mean-len  5 / 5 (max_num_seqs 64)" in format_summary(s)


def test_the_reproduction_writes_once_and_reproduces_the_papers_points(tmp_path) -> None:
    import long_context

    result = long_context.main(["--out", str(tmp_path), "--name", "t", "--requests", "25"])
    paper = {row["context"]: row for row in result["paper_setting"]}
    assert paper[50_000]["peak"]["concurrency"] == 1  # the paper's one user at 50K
    for context, seconds in ((4096, 8.5), (50_000, 9.8)):  # decoding 250 tokens alone
        assert paper[context]["peak"]["decode_250_s"] == pytest.approx(seconds, rel=0.02)
    assert paper[4096]["peak"]["prefill_s"] == pytest.approx(0.89, rel=0.1)
    tp4 = [row["max_seqs_by_kv"] for row in result["tp4"]]
    assert tp4 == sorted(tp4, reverse=True) and tp4[-1] >= 1
    prefill = [row["prefill_s"] for row in result["tp4"]]
    assert prefill == sorted(prefill)
    sim = result["simulated"]
    assert sim["peak_running"] == sim["kv_bound_prompt"] < sim["max_num_seqs"]
    assert sim["preemptions"] == 0
    assert result["llama"]["tables_model"] == "Llama-3-70B" and result["llama"]["notice"]
    assert "## Where servegym agrees" in (tmp_path / "t.md").read_text()
    with pytest.raises(SystemExit):
        long_context.main(["--out", str(tmp_path), "--name", "t"])  # never overwrites
