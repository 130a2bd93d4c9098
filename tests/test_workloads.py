"""Tests for servegym.envs.workloads: Workload, the Azure 2023 loader and arrival processes."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import servegym.envs
from servegym.envs.workloads import (
    AZURE_2023_KINDS,
    TraceFileNotFoundError,
    Workload,
    WorkloadError,
    WorkloadWarning,
    load_azure_2023,
    load_azure_2023_with_report,
    poisson_arrivals,
    scale_to_rate,
    with_poisson_arrivals,
)

TRACE_DIR = Path(servegym.envs.__file__).parent / "data" / "traces" / "azure_llm_2023"
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
GOOD_ROWS = (
    "2023-11-16 18:15:46.6805900,374,44",
    "2023-11-16 18:15:50.9951690,396,109",
    "2023-11-16 18:15:51.2224670,879,55",
)


def write_trace(tmp_path: Path, lines: list[str], *, gz: bool = True, name: str = "t") -> Path:
    """A trace file in the upstream layout (CRLF, no final newline)."""
    data = "\r\n".join(lines).encode()
    path = tmp_path / (f"{name}.csv.gz" if gz else f"{name}.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make(n: int = 4, **overrides: object) -> Workload:
    columns: dict[str, object] = {
        "arrival_time": np.arange(n, dtype=float),
        "prompt_len": np.full(n, 10),
        "output_len": np.full(n, 5),
        "tenant": np.zeros(n, dtype=np.int32),
        "priority": np.zeros(n, dtype=np.int32),
        "ttft_slo": np.full(n, np.inf),
        "tpot_slo": np.full(n, np.inf),
    }
    columns.update(overrides)
    return Workload(**columns)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- shipped traces


@pytest.fixture(scope="module")
def conv() -> Workload:
    return load_azure_2023("conv")


@pytest.fixture(scope="module")
def code() -> Workload:
    return load_azure_2023("code")


def test_conv_trace_matches_readme_stats(conv: Workload) -> None:
    s = conv.summary()
    assert conv.name == "azure_conv_2023"
    assert s["count"] == len(conv) == 19_366
    assert s["prompt_mean"] == pytest.approx(1155, abs=0.5)
    assert s["output_mean"] == pytest.approx(211.1, abs=0.05)
    assert (s["prompt_p50"], s["prompt_p99"]) == (1020, 4142)
    assert (s["output_p50"], s["output_p99"]) == (129, 601)
    assert s["duration"] == pytest.approx(3502, abs=1)
    assert s["mean_rate"] == pytest.approx(5.53, abs=0.005)


def test_code_trace_matches_readme_stats(code: Workload) -> None:
    s = code.summary()
    assert code.name == "azure_code_2023"
    assert s["count"] == len(code) == 8_819
    assert s["prompt_mean"] == pytest.approx(2048, abs=0.5)
    assert s["output_mean"] == pytest.approx(27.9, abs=0.05)
    assert s["mean_rate"] == pytest.approx(2.57, abs=0.005)


@pytest.mark.parametrize("kind", AZURE_2023_KINDS)
def test_shipped_trace_times_start_at_zero_and_are_sorted(kind: str) -> None:
    workload, report = load_azure_2023_with_report(kind)
    times = workload.arrival_time
    assert times[0] == 0.0
    assert np.all(np.diff(times) >= 0)
    assert times.dtype == np.float64 and workload.prompt_len.dtype == np.int64
    assert report.rows_read == report.rows_loaded == len(workload) and report.rows_skipped == 0
    # The loader must read the copy inside the package, never the shared folder.
    assert Path(report.path).resolve().is_relative_to(TRACE_DIR.resolve())


def test_conv_first_gaps_exact(conv: Workload) -> None:
    # 18:15:50.9951690 - 18:15:46.6805900 and 18:15:51.2224670 - 18:15:46.6805900
    assert conv.arrival_time[1] == 4.314579
    assert conv.arrival_time[2] == 4.541877
    assert conv.prompt_len[:3].tolist() == [374, 396, 879]
    assert conv.output_len[:3].tolist() == [44, 109, 55]


@pytest.mark.parametrize(
    ("kind", "sha256", "blob"),
    [
        (
            "code",
            "b99df47b5e34740244c5231814f8c3b8172f171a5a4bd7b2aeb16fe4501a874e",
            "62bd8109d0f2b1bc48206d397ecca48d8de03aab",
        ),
        (
            "conv",
            "ff242f3e188a47560ece64f1f9583cfed080118422e6307e0d5384eedd6dbbe7",
            "5b9219f2caf93bbbf95ec29894e206115658e235",
        ),
    ],
)
def test_shipped_files_are_verbatim(kind: str, sha256: str, blob: str) -> None:
    raw = (TRACE_DIR / f"AzureLLMInferenceTrace_{kind}.csv.gz").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == sha256
    data = gzip.decompress(raw)
    # git's blob id of the upstream file: the decompressed bytes are the upstream bytes.
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob
    source = (TRACE_DIR / "SOURCE.md").read_text()
    assert sha256 in source and blob in source and "CC-BY-4.0" in source
    assert "Splitwise" in source


def test_custom_path_gz_and_plain_csv(tmp_path: Path) -> None:
    lines = [HEADER, *GOOD_ROWS]
    for gz in (True, False):
        workload = load_azure_2023("code", write_trace(tmp_path, lines, gz=gz, name=f"g{gz}"))
        assert workload.name == "azure_code_2023"
        assert workload.arrival_time.tolist() == [0.0, 4.314579, 4.541877]
        assert workload.prompt_len.tolist() == [374, 396, 879]


def test_sub_microsecond_precision_kept(tmp_path: Path) -> None:
    lines = [
        HEADER,
        "2023-11-16 18:15:46.0000000,1,1",
        "2023-11-16 18:15:46.0000001,1,1",
        "2023-11-16 18:15:47,1,1",  # no fraction
        "2023-11-16 18:15:47.0000003,1,1",
        "2023-11-17T00:00:00.5,1,1",  # next day, 'T' separator, short fraction
    ]
    times = load_azure_2023(path=write_trace(tmp_path, lines)).arrival_time
    assert times.tolist() == [0.0, 1e-7, 1.0, 1.0000003, 20654.5]


def test_tolerant_of_bom_blank_lines_extra_columns_and_column_order(tmp_path: Path) -> None:
    lines = [
        "\ufeffGeneratedTokens, TIMESTAMP ,ContextTokens,Note",
        "44,2023-11-16 18:15:46.6805900,374,a",
        "",
        "109,2023-11-16 18:15:50.9951690,396,b",
        "",
    ]
    workload, report = load_azure_2023_with_report(path=write_trace(tmp_path, lines, gz=False))
    assert workload.prompt_len.tolist() == [374, 396]
    assert workload.output_len.tolist() == [44, 109]
    assert report.rows_read == 2 and report.rows_skipped == 0


def test_slos_are_applied(tmp_path: Path) -> None:
    workload = load_azure_2023(
        path=write_trace(tmp_path, [HEADER, *GOOD_ROWS]), ttft_slo=2.0, tpot_slo=0.1
    )
    assert workload.ttft_slo.tolist() == [2.0] * 3
    assert workload.tpot_slo.tolist() == [0.1] * 3


# ---------------------------------------------------------------------- bad rows

BAD_ROWS = {
    "missing_field": ("2023-11-16 18:15:52.0000000,10", "missing GeneratedTokens"),
    "extra_field": ("2023-11-16 18:15:52.0000000,10,5,7", "4 field(s)"),
    "empty_value": ("2023-11-16 18:15:52.0000000,,5", "ContextTokens is empty"),
    "non_integer": ("2023-11-16 18:15:52.0000000,12.5,5", "not a whole number"),
    "zero": ("2023-11-16 18:15:52.0000000,10,0", "GeneratedTokens is 0"),
    "negative": ("2023-11-16 18:15:52.0000000,-3,5", "negative"),
    "nan": ("2023-11-16 18:15:52.0000000,nan,5", "NaN"),
    "text_length": ("2023-11-16 18:15:52.0000000,ten,5", "not a number"),
    "bad_timestamp": ("16/11/2023 18:15:52,10,5", "is not a timestamp"),
    "invalid_date": ("2023-02-30 18:15:52.0000000,10,5", "not a valid date"),
    "not_monotonic": ("2023-11-16 18:15:40.0000000,10,5", "earlier than the previous"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_raises_with_file_and_line(tmp_path: Path, case: str) -> None:
    bad_row, problem = BAD_ROWS[case]
    path = write_trace(tmp_path, [HEADER, *GOOD_ROWS[:2], bad_row, GOOD_ROWS[2]])
    with pytest.raises(WorkloadError) as info:
        load_azure_2023(path=path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: ")
    assert problem in message
    assert "on_error='skip'" in message


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_skipped_and_counted(tmp_path: Path, case: str) -> None:
    bad_row, problem = BAD_ROWS[case]
    path = write_trace(tmp_path, [HEADER, *GOOD_ROWS[:2], bad_row, GOOD_ROWS[2]])
    workload, report = load_azure_2023_with_report(path=path, on_error="skip")
    assert len(workload) == 3
    assert workload.prompt_len.tolist() == [374, 396, 879]
    assert (report.rows_read, report.rows_loaded, report.rows_skipped) == (4, 3, 1)
    assert report.problems[0].startswith(f"{path}:4: ") and problem in report.problems[0]
    assert "skipped 1 bad rows" in str(report)


def test_skip_without_report_warns_with_count(tmp_path: Path) -> None:
    rows = [HEADER, GOOD_ROWS[0], "x,1,1", "2023-11-16 18:15:52.0,0,1", GOOD_ROWS[1]]
    with pytest.warns(WorkloadWarning, match="skipped 2 bad rows"):
        workload = load_azure_2023(path=write_trace(tmp_path, rows), on_error="skip")
    assert len(workload) == 2


def test_clean_load_does_not_warn(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_azure_2023(path=write_trace(tmp_path, [HEADER, *GOOD_ROWS]), on_error="skip")


def test_skipped_first_row_times_start_at_first_kept_row(tmp_path: Path) -> None:
    rows = [HEADER, "2023-11-16 18:15:46.6805900,0,44", *GOOD_ROWS[1:]]
    workload, report = load_azure_2023_with_report(
        path=write_trace(tmp_path, rows), on_error="skip"
    )
    assert workload.arrival_time.tolist() == [0.0, 0.227298]  # 18:15:51.2224670 - 50.9951690
    assert report.rows_skipped == 1


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = write_trace(tmp_path, [HEADER, "x,1,1", "y,1,1"])
    with pytest.raises(WorkloadError, match="all 2 data rows are bad"):
        load_azure_2023_with_report(path=path, on_error="skip")


# ---------------------------------------------------------------------- bad files


def test_missing_file_names_path_and_kinds(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv.gz"
    with pytest.raises(TraceFileNotFoundError) as info:
        load_azure_2023(path=path)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, WorkloadError)
    assert str(path) in str(info.value)
    assert "'code'" in str(info.value) and "'conv'" in str(info.value)


def test_directory_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(TraceFileNotFoundError, match="is a directory"):
        load_azure_2023(path=tmp_path)


def test_unknown_kind_and_on_error() -> None:
    with pytest.raises(WorkloadError, match=r"unknown .* kind 'chat'.*'code', 'conv'"):
        load_azure_2023("chat")
    with pytest.raises(WorkloadError, match="on_error='raise' or on_error='skip'"):
        load_azure_2023("conv", on_error="ignore")


@pytest.mark.parametrize("gz", [True, False])
def test_empty_file(tmp_path: Path, gz: bool) -> None:
    path = write_trace(tmp_path, [], gz=gz)
    with pytest.raises(WorkloadError, match=f"^{path}: file is empty"):
        load_azure_2023(path=path)


def test_header_only(tmp_path: Path) -> None:
    path = write_trace(tmp_path, [HEADER])
    with pytest.raises(WorkloadError, match="no data rows"):
        load_azure_2023(path=path, on_error="skip")


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ("TIMESTAMP,PromptTokens,GeneratedTokens", "ContextTokens"),
        ("Time,ContextTokens,Output", "TIMESTAMP, GeneratedTokens"),
        (GOOD_ROWS[0], "TIMESTAMP, ContextTokens, GeneratedTokens"),  # no header line
    ],
)
def test_missing_or_renamed_columns(tmp_path: Path, header: str, missing: str) -> None:
    path = write_trace(tmp_path, [header, *GOOD_ROWS])
    with pytest.raises(WorkloadError) as info:
        load_azure_2023(path=path, on_error="skip")  # a bad header is never skippable
    assert str(info.value).startswith(f"{path}:1: header lacks column(s) {missing} ")


@pytest.mark.parametrize(
    "payload",
    [
        gzip.compress(("\r\n".join([HEADER, *GOOD_ROWS])).encode())[:-12],  # truncated
        b"\x1f\x8bnot really gzip",
        HEADER.encode() + b"\r\n\xff\xfe\x00\x01,1,1",  # not UTF-8
    ],
)
def test_unreadable_file(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(payload)
    with pytest.raises(WorkloadError, match=f"^{path}: .*cannot read the file"):
        load_azure_2023(path=path)


# ---------------------------------------------------------------------- Workload


def test_from_lengths_broadcasts_scalars() -> None:
    w = Workload.from_lengths([0.0, 1.0, 1.0], 100, [1, 2, 3], ttft_slo=2.0, name="x")
    assert len(w) == 3 and w.name == "x"
    assert w.prompt_len.tolist() == [100] * 3 and w.prompt_len.dtype == np.int64
    assert w.ttft_slo.tolist() == [2.0] * 3 and np.all(np.isinf(w.tpot_slo))
    assert w.tenant.dtype == np.int32 and w.tenant.tolist() == [0] * 3
    assert w.priority.tolist() == [0] * 3
    assert w.tenant_names == ("default",) and w.prefix_hashes is None


def test_from_lengths_mismatched_lengths() -> None:
    with pytest.raises(WorkloadError, match=r"arrival_time=2, prompt_len=3"):
        Workload.from_lengths([0.0, 1.0], [1, 2, 3], 1)


def test_workload_is_immutable_and_does_not_alias_inputs() -> None:
    prompts = np.array([5, 6, 7])
    w = Workload.from_lengths([0.0, 1.0, 2.0], prompts, 1)
    prompts[0] = 99
    assert w.prompt_len[0] == 5
    with pytest.raises(ValueError, match="read-only"):
        w.prompt_len[0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.name = "y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"prompt_len": np.full(3, 10)}, r"prompt_len has 3 entries but arrival_time has 4"),
        ({"arrival_time": np.array([0.0, 2.0, 1.0, 3.0])}, r"arrival_time\[2\] = 1\.0 is earlier"),
        ({"arrival_time": np.array([-1.0, 2.0, 3.0, 4.0])}, r"arrival_time\[0\].*>= 0"),
        ({"arrival_time": np.array([0.0, np.nan, 3.0, 4.0])}, r"arrival_time\[1\].*finite"),
        ({"arrival_time": np.array([0.0, 1.0, np.inf, np.inf])}, r"arrival_time\[2\].*finite"),
        ({"prompt_len": np.array([10, 10, 0, 10])}, r"prompt_len\[2\] = 0.*positive"),
        ({"output_len": np.array([1, -1, 1, 1])}, r"output_len\[1\] = -1.*positive"),
        ({"output_len": np.array([1.0, 1.5, 1.0, 1.0])}, r"output_len\[1\].*whole number"),
        ({"tenant": np.array([0, 0, 0, 1])}, r"tenant\[3\] = 1.*\[0, 1\)"),
        ({"tenant": np.array([0, -1, 0, 0])}, r"tenant\[1\]"),
        ({"ttft_slo": np.array([1.0, 0.0, 1.0, 1.0])}, r"ttft_slo\[1\].*> 0"),
        ({"tpot_slo": np.array([np.nan, 1.0, 1.0, 1.0])}, r"tpot_slo\[0\]"),
        ({"priority": np.array([0, 2**40, 0, 0])}, r"priority\[1\].*int32"),
        ({"prompt_len": np.ones((4, 1))}, r"prompt_len must be a 1-D array"),
        ({"prompt_len": np.array(["a"] * 4)}, r"prompt_len must be numeric"),
        ({"prefix_hashes": ((1,),) * 3}, r"prefix_hashes has 3 entries but there are 4"),
        ({"prefix_hashes": ((1,), (1, 2), ("a",), ())}, r"prefix_hashes\[2\]"),
        ({"tenant_names": ()}, r"at least one non-empty tenant name"),
        ({"tenant_names": ("a", "a")}, r"must be unique"),
        ({"prefix_block_size": 0}, r"prefix_block_size = 0"),
    ],
)
def test_workload_validation(overrides: dict[str, object], pattern: str) -> None:
    with pytest.raises(WorkloadError, match=pattern):
        make(**overrides)


def test_integral_floats_and_hash_sequences_are_coerced() -> None:
    w = make(prompt_len=np.array([1.0, 2.0, 3.0, 4.0]), prefix_hashes=[[1], (np.int64(2),), [], []])
    assert w.prompt_len.dtype == np.int64 and w.prompt_len.tolist() == [1, 2, 3, 4]
    assert w.prefix_hashes == ((1,), (2,), (), ())


def test_head_and_summary() -> None:
    w = Workload.from_lengths([0.0, 1.0, 2.0, 4.0], [1, 2, 3, 100], [10, 20, 30, 40])
    h = w.head(2)
    assert len(h) == 2 and h.prompt_len.tolist() == [1, 2]
    assert np.shares_memory(h.prompt_len, w.prompt_len)  # a view, no copy
    assert len(w.head(0)) == 0 and len(w.head(10)) == 4
    with pytest.raises(WorkloadError, match="non-negative integer"):
        w.head(-1)
    s = w.summary()
    assert (s["count"], s["duration"], s["mean_rate"]) == (4, 4.0, 1.0)
    assert (s["prompt_mean"], s["prompt_p50"]) == (26.5, 2.5)
    assert s["prompt_p99"] == pytest.approx(3 + 0.97 * 97)
    assert (s["output_mean"], s["output_p50"]) == (25.0, 25.0)
    assert w.head(0).summary()["count"] == 0


def test_clip_total_tokens_by_hand() -> None:
    w = Workload.from_lengths(
        [0.0, 1.0, 2.0, 3.0],
        [10, 100, 5, 3],
        [10, 5, 100, 1],
        prefix_hashes=[(1, 2), tuple(range(25)), (7,), ()],
        prefix_block_size=4,
    )
    clipped, changed = w.clip_total_tokens(20)
    assert changed == 2
    assert clipped.prompt_len.tolist() == [10, 19, 5, 3]
    assert clipped.output_len.tolist() == [10, 1, 15, 1]
    assert clipped.prefix_hashes == ((1, 2), (0, 1, 2, 3), (7,), ())  # 19 tokens: 4 full blocks
    assert w.prompt_len.tolist() == [10, 100, 5, 3]  # the original is untouched
    same, none = w.clip_total_tokens(200)
    assert same is w and none == 0
    with pytest.raises(WorkloadError, match="max_total_tokens >= 2"):
        w.clip_total_tokens(1)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 10_000), st.integers(1, 10_000)), min_size=1, max_size=30),
    st.integers(2, 5_000),
)
def test_clip_total_tokens_properties(lengths: list[tuple[int, int]], limit: int) -> None:
    prompts, outputs = (np.array(c) for c in zip(*lengths, strict=True))
    w = Workload.from_lengths(np.zeros(len(lengths)), prompts, outputs)
    clipped, changed = w.clip_total_tokens(limit)
    total = clipped.prompt_len + clipped.output_len
    assert np.all(total <= limit) and np.all(clipped.prompt_len >= 1)
    assert np.all(clipped.output_len >= 1)
    fits = prompts + outputs <= limit
    assert changed == np.count_nonzero(~fits)
    assert np.array_equal(clipped.prompt_len[fits], prompts[fits])


# ---------------------------------------------------------------------- arrivals


def test_poisson_is_deterministic_per_seed() -> None:
    a = poisson_arrivals(1000, 3.0, np.random.default_rng(7))
    b = poisson_arrivals(1000, 3.0, np.random.default_rng(7))
    c = poisson_arrivals(1000, 3.0, np.random.default_rng(8))
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_poisson_rate_and_shape() -> None:
    times = poisson_arrivals(20_000, 7.0, np.random.default_rng(0))
    assert times.shape == (20_000,) and times.dtype == np.float64
    assert 0 < times[0] < 5.0 and np.all(np.diff(times) >= 0)
    assert len(times) / times[-1] == pytest.approx(7.0, rel=0.03)
    gaps = np.diff(times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
    assert poisson_arrivals(0, 1.0, np.random.default_rng(0)).shape == (0,)


@pytest.mark.parametrize(("n", "rate"), [(-1, 1.0), (2.5, 1.0), (True, 1.0), (5, 0.0)])
def test_poisson_validation(n: object, rate: float) -> None:
    with pytest.raises(WorkloadError):
        poisson_arrivals(n, rate, np.random.default_rng(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [0, -1.0, float("nan"), float("inf"), "fast"])
def test_rate_validation(rate: object) -> None:
    with pytest.raises(WorkloadError, match="rate"):
        poisson_arrivals(5, rate, np.random.default_rng(0))  # type: ignore[arg-type]
    with pytest.raises(WorkloadError, match="rate"):
        scale_to_rate(make(), rate)  # type: ignore[arg-type]


def test_poisson_needs_a_generator() -> None:
    with pytest.raises(TypeError, match="default_rng"):
        poisson_arrivals(5, 1.0, np.random.RandomState(0))  # type: ignore[arg-type]


def test_with_poisson_arrivals_keeps_requests(conv: Workload) -> None:
    base = conv.head(500)
    w = with_poisson_arrivals(base, 10.0, np.random.default_rng(1))
    again = with_poisson_arrivals(base, 10.0, np.random.default_rng(1))
    assert np.array_equal(w.prompt_len, base.prompt_len)
    assert np.array_equal(w.output_len, base.output_len)
    assert w.arrival_time.tobytes() == again.arrival_time.tobytes()
    assert not np.array_equal(w.arrival_time, base.arrival_time)
    assert w.name == base.name
    assert with_poisson_arrivals(base, 1.0, np.random.default_rng(1), name="p").name == "p"


def test_scale_to_rate_keeps_gap_ratios(code: Workload) -> None:
    scaled = scale_to_rate(code, 10.0)
    assert scaled.summary()["mean_rate"] == pytest.approx(10.0, rel=1e-9)
    old, new = np.diff(code.arrival_time), np.diff(scaled.arrival_time)
    factor = code.summary()["mean_rate"] / 10.0
    np.testing.assert_allclose(new, old * factor, rtol=1e-9, atol=1e-9)
    assert new.std() / new.mean() == pytest.approx(old.std() / old.mean(), rel=1e-6)
    assert scaled.arrival_time[0] == code.arrival_time[0]
    assert np.array_equal(scaled.prompt_len, code.prompt_len)


def test_scale_to_rate_needs_a_span() -> None:
    with pytest.raises(WorkloadError, match="no rate to rescale"):
        scale_to_rate(make(1), 1.0)
    with pytest.raises(WorkloadError, match="no rate to rescale"):
        scale_to_rate(make(arrival_time=np.ones(4)), 1.0)
