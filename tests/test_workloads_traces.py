"""Shipped trace data and the Mooncake, length-table and ServeGen loaders (bad input too)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import lzma
from pathlib import Path

import numpy as np
import pytest

import servegym.envs
from servegym.envs.workloads import (
    TraceFileNotFoundError,
    WorkloadError,
    WorkloadWarning,
    generate_servegen_with_report,
    load_length_table,
    load_length_table_with_report,
    load_mooncake,
    load_mooncake_with_report,
)
from servegym.envs.workloads.servegen_stats import servegen_pool_stats

TRACES = Path(servegym.envs.__file__).parent / "data" / "traces"
M = 1 << 24


# ---------------------------------------------------------------------- shipped data


def test_shipped_trace_data_is_under_25_mb() -> None:
    total = sum(p.stat().st_size for p in TRACES.rglob("*") if p.is_file())
    assert total < 25_000_000


@pytest.mark.parametrize(
    ("folder", "licence", "citation"),
    [
        ("azure_llm_2023", "CC-BY-4.0", "Splitwise"),
        ("mooncake_fast25", "Apache-2.0", "Mooncake"),
        ("sharegpt_lengths", "Apache-2.0", "Sarathi-Serve"),
        ("arxiv_summarization_lengths", "MIT", "Vidur"),
        ("servegen_bailian", "Apache-2.0", "arXiv:2505.09999"),
    ],
)
def test_every_data_file_is_listed_with_its_hash_licence_and_citation(
    folder: str, licence: str, citation: str
) -> None:
    source = (TRACES / folder / "SOURCE.md").read_text()
    assert licence in source and citation in source and "commit" in source.lower()
    data = [p for p in (TRACES / folder).iterdir() if p.suffix in (".gz", ".xz")]
    assert data
    for path in data:
        assert hashlib.sha256(path.read_bytes()).hexdigest() in source, path.name


@pytest.mark.parametrize(
    ("path", "blob"),
    [
        ("mooncake_fast25/conversation_trace.jsonl.gz", "5a371794b81d7fc7487ec8a02a2c631bcc7fbdf8"),
        ("sharegpt_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv.gz",
         "85fc0434bc46d2b68351dfb86a43a995877dbb0e"),
        ("arxiv_summarization_lengths/arxiv_summarization_stats_llama2_tokenizer_filtered_v2"
         ".csv.gz", "a0f23bceb4a19edc032faf92b23e4547e60293d3"),
    ],
)
def test_verbatim_files_equal_the_upstream_blobs(path: str, blob: str) -> None:
    data = gzip.decompress((TRACES / path).read_bytes())
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob


def test_servegen_reencoding_expands_to_the_upstream_bytes() -> None:
    spec = importlib.util.spec_from_file_location(
        "servegen_convert", TRACES / "servegen_bailian" / "convert.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    folder = TRACES / "servegen_bailian"
    source = (folder / "SOURCE.md").read_text()
    pmfs = lzma.decompress((folder / "multimodal_mm-image_pmfs.csv.xz").read_bytes()).decode()
    rates = lzma.decompress((folder / "multimodal_mm-image_rates.csv.xz").read_bytes())
    expanded = convert.expand_pmfs(pmfs).encode()
    assert hashlib.sha256(expanded).hexdigest() in source
    assert hashlib.sha256(rates).hexdigest() in source
    assert convert.counts_for(["0.25", "0.75"]) == [1, 3]
    assert convert.counts_for(["0.3333", "0.6667"]) is None  # not c/N exactly: kept as text


# ---------------------------------------------------------------------- Mooncake


@pytest.fixture(scope="module")
def mooncake_batch():
    return load_mooncake_with_report(arrivals="batch")


def test_mooncake_matches_readme(mooncake_batch) -> None:
    w, report = mooncake_batch
    s = w.summary()
    assert len(w) == 12_031 and w.name == "mooncake_conv"
    assert s["duration"] == pytest.approx(3537, abs=0.5)
    assert s["mean_rate"] == pytest.approx(3.40, abs=0.005)
    assert s["prompt_mean"] == pytest.approx(12_035, abs=0.5)
    assert (s["prompt_p50"], round(s["prompt_p99"])) == (6909, 85_400)
    assert s["output_mean"] == pytest.approx(342.6, abs=0.05)
    assert (s["output_p50"], round(s["output_p99"])) == (350, 1119)
    assert "36.6% (105,710 / 288,500 blocks)" in str(report)
    assert len(np.unique(w.arrival_time)) == 1180  # the 3-s ticks
    assert Path(report.path).resolve().is_relative_to(TRACES.resolve())


def test_mooncake_hashes_expand_the_512_token_ids(mooncake_batch) -> None:
    w, _ = mooncake_batch
    first, second = w.prefix_hashes[0], w.prefix_hashes[1]
    assert w.prefix_block_size == 16 and len(first) == 6758 // 16
    # Row 0's ids are 0..13, row 1's are 0, 14, 15, ...: 32 blocks of 16 tokens per id.
    assert first[:3] == (0, 1, 2) and first[32] == 1 * M + 32
    assert second[:32] == first[:32] and second[32] == 14 * M + 32
    coarse = load_mooncake(arrivals="batch", block_size=512).prefix_hashes[0]
    assert coarse == tuple(k * M + k for k in range(13))  # full 512-token blocks only
    odd = load_mooncake(arrivals="batch", block_size=48).prefix_hashes[0]
    assert odd[9] == 0 * M + 9 and odd[10] == 1 * M + 10  # block 10 ends in id 1's tokens


def test_mooncake_spread_is_seeded_ordered_and_inside_ticks(mooncake_batch) -> None:
    batch, _ = mooncake_batch
    a = load_mooncake(rng=1).arrival_time
    assert a.tobytes() == load_mooncake(rng=np.random.default_rng(1)).arrival_time.tobytes()
    assert not np.array_equal(a, load_mooncake(rng=2).arrival_time)
    assert np.all(np.diff(a) >= 0)
    offsets = a - batch.arrival_time
    assert offsets.min() >= 0 and offsets.max() < 3.0
    gaps = np.diff(a)
    assert gaps.std() / gaps.mean() < 1.5  # ticks no longer arrive as batches (CV 3.03)


MOONCAKE_GOOD = [
    '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}',
    '{"timestamp": 0, "input_length": 40, "output_length": 7, "hash_ids": [2]}',
    '{"timestamp": 3000, "input_length": 530, "output_length": 2, "hash_ids": [0, 3]}',
]
MOONCAKE_BAD = {
    "not_json": ('{"timestamp": 1,', "not valid JSON"),
    "not_object": ("[1, 2, 3]", "expected a JSON object"),
    "missing": ('{"timestamp": 3000, "input_length": 5, "hash_ids": []}', "output_length"),
    "zero": ('{"timestamp": 3000, "input_length": 0, "output_length": 1, "hash_ids": []}',
             "input_length = 0 is zero"),
    "negative": ('{"timestamp": 3000, "input_length": 5, "output_length": -2, "hash_ids": []}',
                 "negative"),
    "nan_time": ('{"timestamp": NaN, "input_length": 5, "output_length": 1, "hash_ids": []}',
                 "NaN"),
    "text_time": ('{"timestamp": "soon", "input_length": 5, "output_length": 1, "hash_ids": []}',
                  "not a number of milliseconds"),
    "earlier": ('{"timestamp": 10, "input_length": 5, "output_length": 1, "hash_ids": []}',
                "earlier than the previous"),
    "ids": ('{"timestamp": 3000, "input_length": 5, "output_length": 1, "hash_ids": [1.5]}',
            "hash_ids[0]"),
}


def write_jsonl(tmp_path: Path, lines: list[str], name: str = "t.jsonl.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    return path


def test_mooncake_custom_file_by_hand(tmp_path: Path) -> None:
    w = load_mooncake(write_jsonl(tmp_path, MOONCAKE_GOOD), arrivals="batch")
    assert w.arrival_time.tolist() == [0.0, 0.0, 3.0]
    assert w.prompt_len.tolist() == [600, 40, 530]
    assert w.prefix_hashes[0][31] == 31 and w.prefix_hashes[2][:32] == w.prefix_hashes[0][:32]
    assert w.prefix_hashes[1] == (2 * M, 2 * M + 1)  # 40 tokens: 2 full blocks of id 2
    spread = load_mooncake(write_jsonl(tmp_path, MOONCAKE_GOOD, "s.jsonl"), rng=0)
    assert 0 <= spread.arrival_time[0] <= spread.arrival_time[1] < 3.0 <= spread.arrival_time[2]


@pytest.mark.parametrize("case", sorted(MOONCAKE_BAD))
def test_mooncake_bad_row_raises_or_is_skipped(tmp_path: Path, case: str) -> None:
    line, problem = MOONCAKE_BAD[case]
    path = write_jsonl(tmp_path, [*MOONCAKE_GOOD, line])
    with pytest.raises(WorkloadError) as info:
        load_mooncake(path)
    assert str(info.value).startswith(f"{path}:4: ") and problem in str(info.value)
    workload, report = load_mooncake_with_report(path, on_error="skip")
    assert len(workload) == 3 and report.rows_skipped == 1
    assert report.problems[0].startswith(f"{path}:4: ")
    with pytest.warns(WorkloadWarning, match="skipped 1 bad rows"):
        load_mooncake(path, on_error="skip")


def test_mooncake_bad_files_and_options(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(WorkloadError, match="file is empty"):
        load_mooncake(empty)
    with pytest.raises(TraceFileNotFoundError, match="no such file"):
        load_mooncake(tmp_path / "missing.jsonl")
    with pytest.raises(WorkloadError, match="'spread'.*'batch'"):
        load_mooncake(arrivals="jitter")
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress("\n".join(MOONCAKE_GOOD).encode())[:-10])
    with pytest.raises(WorkloadError, match="cannot read the file"):
        load_mooncake(truncated)


# ---------------------------------------------------------------------- length tables


@pytest.mark.parametrize(
    ("name", "rows", "prompt", "output"),
    [
        ("sharegpt", 30_731, (2340, 1730, 7434), (438.7, 415, 998)),
        ("arxiv", 28_257, (2588, 2730, 3933), (291.4, 167, 3271)),
    ],
)
def test_length_tables_match_readme(name: str, rows: int, prompt: tuple, output: tuple) -> None:
    table, report = load_length_table_with_report(name)
    assert len(table) == rows == report.rows_loaded
    p50, p99 = np.percentile(table.prompt_len, [50, 99])
    assert (round(table.prompt_len.mean()), p50, round(p99)) == prompt
    o50, o99 = np.percentile(table.output_len, [50, 99])
    assert round(table.output_len.mean(), 1) == output[0] and (o50, round(o99)) == output[1:]


LENGTH_HEADER = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio"
LENGTH_BAD = {
    "zero": ("10,0,10,1", "num_decode_tokens is 0"),
    "negative": ("-5,3,0,1", "negative"),
    "nan": ("nan,3,0,1", "NaN"),
    "text": ("ten,3,0,1", "not a number"),
    "missing": ("10", "missing num_decode_tokens"),
}


@pytest.mark.parametrize("case", sorted(LENGTH_BAD))
def test_length_table_bad_rows(tmp_path: Path, case: str) -> None:
    row, problem = LENGTH_BAD[case]
    path = tmp_path / "lengths.csv"
    path.write_text("\n".join([LENGTH_HEADER, "74,918,992,0.08", row, "290,905,1195,0.3"]))
    with pytest.raises(WorkloadError) as info:
        load_length_table(path=path)
    assert str(info.value).startswith(f"{path}:3: ") and problem in str(info.value)
    table, report = load_length_table_with_report(path=path, on_error="skip")
    assert table.prompt_len.tolist() == [74, 290] and report.rows_skipped == 1


def test_length_table_bad_files(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="unknown length table 'lmsys'"):
        load_length_table("lmsys")
    header_only = tmp_path / "h.csv"
    header_only.write_text("prompt,output\n1,2\n")
    with pytest.raises(WorkloadError, match="header lacks column"):
        load_length_table(path=header_only)
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(WorkloadError, match="file is empty"):
        load_length_table(path=empty)
    with pytest.raises(TraceFileNotFoundError):
        load_length_table(path=tmp_path / "nope.csv")


# ---------------------------------------------------------------------- ServeGen


def test_servegen_mm_image_pool_matches_readme() -> None:
    s = servegen_pool_stats("multimodal/mm-image")
    assert (s["clients"], s["clients_with_lengths"]) == (35, 35)
    assert round(s["rate_mean"], 2) == 9.47 and round(s["rate_peak"], 1) == 13.3
    assert round(s["rate_min"], 1) == 4.9 and round(s["iat_cv_mean"], 2) == 2.21
    assert s["share_with_lengths"] == 1.0
    text = (s["text_tokens_mean"], s["text_tokens_p50"], s["text_tokens_p99"])
    assert (round(text[0]), text[1], text[2]) == (572, 106, 3064)
    assert (round(s["image_tokens_mean"]), s["image_tokens_p50"]) == (650, 540)
    assert s["image_tokens_p99"] == 1271 and round(s["image_count_mean"], 2) == 1.59
    out = (s["output_tokens_mean"], s["output_tokens_p50"], s["output_tokens_p99"])
    assert (round(out[0]), out[1], out[2]) == (130, 100, 587)


def test_servegen_m_small_pool_matches_readme() -> None:
    s = servegen_pool_stats("language/m-small")  # a language pool: 14 days, 43 clients
    assert (s["clients"], s["clients_with_lengths"]) == (43, 38)
    assert (round(s["rate_mean"]), round(s["rate_peak"]), s["rate_min"]) == (1174, 3880, 0.0)
    assert round(s["iat_cv_mean"], 2) == 3.58 and round(s["share_with_lengths"], 2) == 0.43
    assert (round(s["input_tokens_mean"]), s["input_tokens_p50"], s["input_tokens_p99"]) == (
        120, 40, 1478)
    assert (round(s["output_tokens_mean"]), s["output_tokens_p50"], s["output_tokens_p99"]) == (
        15, 3, 142)


def test_servegen_generation_follows_the_rates() -> None:
    rng = np.random.default_rng(0)
    w, report = generate_servegen_with_report("multimodal/mm-image", start_s=3600,
                                              duration_s=7200, rate_scale=0.25, rng=rng)
    again, _ = generate_servegen_with_report("multimodal/mm-image", start_s=3600,
                                             duration_s=7200, rate_scale=0.25,
                                             rng=np.random.default_rng(0))
    assert w.arrival_time.tobytes() == again.arrival_time.tobytes()
    assert w.arrival_time.min() >= 0 and w.arrival_time.max() < 7200
    assert all(name.startswith("client_") for name in w.tenant_names)
    s = servegen_rates_between(3600, 10_800)
    assert len(w) == pytest.approx(0.25 * s, rel=0.05)
    assert "generated" in str(report) and report.rows_skipped == 0


def servegen_rates_between(start: int, end: int) -> float:
    """Expected requests of mm-image in [start, end): sum of rate * 600 over its windows."""
    with lzma.open(TRACES / "servegen_bailian" / "multimodal_mm-image_rates.csv.xz", "rt") as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:]]
    return sum(float(r[2]) * 600 for r in rows if start <= int(r[1]) < end)


def test_servegen_skips_clients_without_lengths_and_counts_them() -> None:
    w, report = generate_servegen_with_report("language/m-small", duration_s=1800,
                                              rate_scale=0.002, rng=np.random.default_rng(1))
    notes = " ".join(report.notes)
    assert "without length data" in notes and " 5 8 11 38" in notes
    assert not {"client_5", "client_8", "client_11", "client_38"} & set(w.tenant_names)
    picked, _ = generate_servegen_with_report("language/m-small", duration_s=1800,
                                              rate_scale=0.002, max_clients=3,
                                              rng=np.random.default_rng(1))
    assert len(picked.tenant_names) == 3


RATES_HEADER = "client_id,window_start_s,rate_rps,iat_cv,iat_dist,iat_param1,iat_param2"
PMF_HEADER = "client_id,window_start_s,field,values,weights"
RATES_GOOD = ["0,0,0.5,1.2,Gamma,0.7,2.0", "0,600,0,0,,0,0", "1,0,0.2,2.0,Weibull,0.5,1.0"]
PMFS_GOOD = ["0,0,text_tokens,100 200,1 3", "0,0,image_tokens,500,1",
             "0,0,output_tokens,5 9,0.5 0.5", "1,0,input_tokens,0 7,1 1", "1,0,output_tokens,3,2"]
SERVEGEN_BAD = {
    "rates": {
        "negative_rate": ("0,1200,-1,1,Gamma,1,1", "rate_rps = -1 is negative"),
        "nan": ("0,1200,nan,1,Gamma,1,1", "rate_rps is NaN"),
        "dist": ("0,1200,1,1,Pareto,1,1", "not Gamma, Weibull or empty"),
        "order": ("0,0,1,1,Gamma,1,1", "not after its previous window"),
        "missing": ("0,1200,1,1", "row has 4 field(s)"),
        "window": ("0,20 min,1,1,Gamma,1,1", "window_start_s = '20 min' is not"),
        "no_dist": ("0,1200,1,1,,0,0", "iat_dist is empty"),
    },
    "pmfs": {
        "mismatch": ("1,0,audio_tokens,1 2,1", "2 values but 1 weights"),
        "negative": ("1,0,audio_tokens,-3,1", "value -3 is negative"),
        "weights": ("1,0,audio_tokens,3,x", "weights must be"),
        "values": ("1,0,audio_tokens,a,1", "non-negative integers"),
        "zero_mass": ("1,0,audio_tokens,3,0", "sum to 0"),
    },
}


def write_pool(folder: Path, rates: list[str], pmfs: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "multimodal_mm-image_rates.csv.xz").write_bytes(
        lzma.compress("\n".join([RATES_HEADER, *rates]).encode()))
    (folder / "multimodal_mm-image_pmfs.csv.xz").write_text("\n".join([PMF_HEADER, *pmfs]))
    return folder


def test_servegen_custom_pool_by_hand(tmp_path: Path) -> None:
    folder = write_pool(tmp_path / "pool", RATES_GOOD, PMFS_GOOD)
    w, report = generate_servegen_with_report("multimodal/mm-image", duration_s=1200,
                                              rng=np.random.default_rng(0), path=folder)
    assert w.tenant_names == ("client_0", "client_1")
    client0 = w.tenant == 0
    assert set(w.prompt_len[client0].tolist()) <= {600, 700}  # text + image tokens
    assert set(w.output_len[client0].tolist()) <= {5, 9}
    assert set(w.prompt_len[~client0].tolist()) <= {1, 7}  # a drawn 0 becomes 1 ...
    assert "set to 1 token" in " ".join(report.notes)  # ... and is counted
    assert w.arrival_time[client0].max() < 600  # client 0 has no requests after 600 s


@pytest.mark.parametrize(("kind", "case"), [(k, c) for k in SERVEGEN_BAD for c in
                                            SERVEGEN_BAD[k]])
def test_servegen_bad_rows(tmp_path: Path, kind: str, case: str) -> None:
    line, problem = SERVEGEN_BAD[kind][case]
    rates = [*RATES_GOOD, line] if kind == "rates" else RATES_GOOD
    pmfs = [*PMFS_GOOD, line] if kind == "pmfs" else PMFS_GOOD
    folder = write_pool(tmp_path / "pool", rates, pmfs)
    lineno = (len(RATES_GOOD) if kind == "rates" else len(PMFS_GOOD)) + 2
    with pytest.raises(WorkloadError) as info:
        generate_servegen_with_report("multimodal/mm-image", rng=np.random.default_rng(0),
                                      path=folder)
    assert f"_{kind}.csv.xz:{lineno}: " in str(info.value) and problem in str(info.value)
    _, report = generate_servegen_with_report("multimodal/mm-image", rng=np.random.default_rng(0),
                                              path=folder, on_error="skip")
    assert report.rows_skipped == 1


def test_servegen_bad_options(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(WorkloadError, match="unknown ServeGen pool 'language/m-huge'"):
        generate_servegen_with_report("language/m-huge", rng=rng)
    with pytest.raises(WorkloadError, match="spans"):
        generate_servegen_with_report("multimodal/mm-image", start_s=90_000, rng=rng)
    with pytest.raises(WorkloadError, match="not in the pool"):
        generate_servegen_with_report("multimodal/mm-image", clients=[999], rng=rng)
    with pytest.raises(TraceFileNotFoundError, match="multimodal_mm-image_rates.csv.xz"):
        generate_servegen_with_report("multimodal/mm-image", rng=rng, path=tmp_path)
    (tmp_path / "multimodal_mm-image_rates.csv.xz").write_text("")
    with pytest.raises(WorkloadError, match="file is empty"):
        generate_servegen_with_report("multimodal/mm-image", rng=rng, path=tmp_path)
