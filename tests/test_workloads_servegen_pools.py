"""ServeGen pools loaded by path: any category, both length layouts, the reasoning share.

Fixtures: ``tests/servegen_pools/`` (a small reasoning pool, see its README) and the shipped
pools of ``envs/data/traces/servegen_bailian/``.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest

import servegym.envs
from servegym.envs.workloads import (
    TraceFileNotFoundError,
    Workload,
    WorkloadError,
    build_workload,
    generate_servegen_with_report,
)
from servegym.envs.workloads.servegen_stats import servegen_pool_stats
from servegym.envs.workloads.stats import load_from_overrides

SHIPPED = Path(servegym.envs.__file__).parent / "data" / "traces" / "servegen_bailian"
POOLS = Path(__file__).parent / "servegen_pools"
STEM = "reasoning_deepseek-r1"
RATES = POOLS / f"{STEM}_rates.csv"
LENGTHS = POOLS / f"{STEM}_lengths.csv"
COLUMNS = ("arrival_time", "prompt_len", "output_len", "tenant", "priority", "ttft_slo",
           "tpot_slo")


def same(a: Workload, b: Workload) -> bool:
    """Bit-for-bit the same requests (reasoning shares included), tenants and name."""
    ratios = (a.reason_ratio is None and b.reason_ratio is None) or (
        a.reason_ratio is not None and b.reason_ratio is not None
        and a.reason_ratio.tobytes() == b.reason_ratio.tobytes())
    return (all(getattr(a, c).tobytes() == getattr(b, c).tobytes() for c in COLUMNS)
            and ratios and a.tenant_names == b.tenant_names and a.name == b.name)


def generate(pool: str | None = None, path: Path | None = None, **kwargs):
    kwargs.setdefault("rng", np.random.default_rng(3))
    return generate_servegen_with_report(pool, path=path, **kwargs)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def pool_copy(folder: Path, rates: list[str] | None = None, lengths: list[str] | None = None,
              lengths_name: str = f"{STEM}_lengths.csv") -> Path:
    """The reasoning fixture copied into ``folder`` (rows replaced where given); the rates."""
    folder.mkdir(exist_ok=True)
    (folder / RATES.name).write_text("\n".join(rates or lines_of(RATES)) + "\n")
    (folder / lengths_name).write_text("\n".join(lengths or lines_of(LENGTHS)) + "\n")
    return folder / RATES.name


def as_pmf_layout(long_rows: list[str]) -> list[str]:
    """The lengths layout re-encoded as PMF lines (probabilities as weights), upstream order."""
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for client, window, field, value, prob in csv.reader(long_rows[1:]):
        groups.setdefault((client, window, field), []).append((value, prob))
    return ["client_id,window_start_s,field,values,weights"] + [
        f"{c},{w},{f},{' '.join(v for v, _ in rows)},{' '.join(p for _, p in rows)}"
        for (c, w, f), rows in groups.items()
    ]


def fixture_pmfs() -> dict[tuple[int, str], dict[float, float]]:
    """(client, field) -> {value: prob} of the fixture (one 6-hour window, 0)."""
    pmfs: dict[tuple[int, str], dict[float, float]] = {}
    for row in csv.DictReader(LENGTHS.open()):
        pmf = pmfs.setdefault((int(row["client_id"]), row["field"]), {})
        pmf[float(row["value"])] = float(row["prob"])
    return pmfs


# ---------------------------------------------------------------------- pools by path


@pytest.mark.parametrize("name", ["language_m-small_rates.csv.xz", "language_m-small_pmfs.csv.xz"])
def test_shipped_language_pool_by_path_is_the_named_pool(name: str) -> None:
    kwargs = {"duration_s": 1200, "rate_scale": 0.002, "max_clients": 4}
    named, _ = generate("language/m-small", **kwargs)
    by_path, report = generate(None, SHIPPED / name, **kwargs)
    assert len(named) > 50 and same(named, by_path)
    assert by_path.reason_ratio is None  # a language pool has no reasoning share
    assert any("lengths from" in n and "language_m-small_pmfs.csv.xz" in n
               for n in report.notes)
    # The same pool named explicitly beside its path is accepted too.
    explicit, _ = generate("language/m-small", SHIPPED / name, **kwargs)
    assert same(named, explicit)


def test_joined_lengths_layout_gives_the_same_workload(tmp_path: Path) -> None:
    """The raw ``<pool>_lengths.csv.gz`` layout (expanded from the shipped PMFs by
    ``convert.py``, i.e. the shared trace folder's bytes) reads as the shipped pool."""
    spec = importlib.util.spec_from_file_location("servegen_convert", SHIPPED / "convert.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    stem = "multimodal_mm-image"
    pmfs = lzma.decompress((SHIPPED / f"{stem}_pmfs.csv.xz").read_bytes()).decode()
    (tmp_path / f"{stem}_lengths.csv.gz").write_bytes(
        gzip.compress(convert.expand_pmfs(pmfs).encode()))
    rates = tmp_path / f"{stem}_rates.csv.gz"
    rates.write_bytes(gzip.compress(lzma.decompress((SHIPPED / f"{stem}_rates.csv.xz")
                                                    .read_bytes())))
    kwargs = {"start_s": 3600, "duration_s": 3600, "rate_scale": 0.25}
    named, _ = generate("multimodal/mm-image", **kwargs)
    for path in (rates, tmp_path / f"{stem}_lengths.csv.gz", tmp_path):
        raw, report = generate(None, path, **kwargs)
        assert len(named) > 1000 and same(named, raw), path
        assert report.rows_skipped == 0


def test_reasoning_pool_by_path_carries_the_reasoning_share() -> None:
    w, report = generate(path=RATES)
    assert w.name == "servegen_reasoning_deepseek-r1"
    assert w.tenant_names == ("client_30", "client_39", "client_62")
    ratio = w.reason_ratio
    assert ratio is not None and ratio.shape == (len(w),) and ratio.dtype == np.float64
    assert not np.isnan(ratio).any() and ratio.min() >= 0 and ratio.max() <= 1
    pmfs = fixture_pmfs()
    for t, name in enumerate(w.tenant_names):
        client = int(name.removeprefix("client_"))
        mine = w.tenant == t
        shares = pmfs[(client, "reason_ratio")]
        assert set(ratio[mine].tolist()) <= {v for v, p in shares.items() if p > 0}
        assert set(w.prompt_len[mine].tolist()) <= set(pmfs[(client, "input_tokens")])
        expected = sum(v * p for v, p in shares.items()) / sum(shares.values())
        assert abs(ratio[mine].mean() - expected) < 0.03, (name, expected)
    assert w.arrival_time[w.tenant == 1].max() < 1800  # client 39 has no rate after 1800 s
    assert "Workload.reason_ratio" in " ".join(report.notes)
    assert not any("not modelled" in n for n in report.notes)  # every field is modelled


def test_reasoning_pool_is_the_same_from_any_of_its_paths(tmp_path: Path) -> None:
    first, _ = generate(path=RATES)
    assert same(first, generate(path=LENGTHS)[0])
    assert same(first, generate("reasoning/deepseek-r1", POOLS)[0])
    assert same(first, generate(None, POOLS)[0])  # the folder holds one pool
    pmf_rates = pool_copy(tmp_path, lengths=as_pmf_layout(lines_of(LENGTHS)),
                          lengths_name=f"{STEM}_pmfs.csv")
    assert same(first, generate(path=pmf_rates)[0])


def test_slicing_and_building_keep_the_reasoning_share_aligned() -> None:
    full = build_workload({"kind": "servegen", "path": str(RATES)}, seed=5)
    ratio = full.reason_ratio
    assert ratio is not None
    index = np.array([3, 10, 11, 40])
    assert full.take(index).reason_ratio.tolist() == ratio[index].tolist()
    assert full.head(7).reason_ratio.tolist() == ratio[:7].tolist()
    test = build_workload({"kind": "servegen", "path": str(RATES)}, split="test", rate=2.0,
                          seed=5)
    assert test.reason_ratio.tolist() == ratio[len(full) - len(test):].tolist()
    window = build_workload({"kind": "servegen", "path": str(RATES)}, window=[600, 1200],
                            seed=5)
    inside = (full.arrival_time >= 600) & (full.arrival_time < 1200)
    assert window.reason_ratio.tolist() == ratio[inside].tolist()
    clipped, count = full.clip_total_tokens(1000)
    assert count > 0 and clipped.reason_ratio.tolist() == ratio.tolist()  # a share is kept
    with pytest.raises(ValueError, match="read-only"):
        ratio[0] = 0.5


def test_workloads_without_reasoning_are_unchanged() -> None:
    w = Workload.from_lengths([0.0, 1.0], [5, 6], [7, 8])
    assert w.reason_ratio is None and w.take(np.array([1])).reason_ratio is None
    with_share = Workload.from_lengths([0.0, 1.0], [5, 6], [7, 8], reason_ratio=[0.25, np.nan])
    assert np.isnan(with_share.reason_ratio[1]) and with_share.reason_ratio[0] == 0.25
    with pytest.raises(WorkloadError, match=r"reason_ratio\[1\] = 1.5: reasoning shares must"):
        Workload.from_lengths([0.0, 1.0], [5, 6], [7, 8], reason_ratio=[0.5, 1.5])
    with pytest.raises(WorkloadError, match="columns have different lengths"):
        Workload.from_lengths([0.0, 1.0], [5, 6], [7, 8], reason_ratio=[0.5, 0.5, 0.5])


def test_windows_without_a_reasoning_pmf_get_nan_and_a_note(tmp_path: Path) -> None:
    rows = [r for r in lines_of(LENGTHS) if not r.startswith("39,0,reason_ratio,")]
    w, report = generate(path=pool_copy(tmp_path, lengths=rows))
    client39 = w.tenant == w.tenant_names.index("client_39")
    assert client39.any() and np.isnan(w.reason_ratio[client39]).all()
    assert not np.isnan(w.reason_ratio[~client39]).any()
    assert f"{int(client39.sum())} request(s)" in " ".join(report.notes)
    assert "have reason_ratio NaN" in " ".join(report.notes)


def test_the_report_names_fields_the_generator_does_not_model(tmp_path: Path) -> None:
    _, report = generate("multimodal/mm-image", duration_s=600)
    note = next(n for n in report.notes if "not modelled" in n)
    for name in ("image_count", "audio_count", "video_count"):
        assert name in note
    extra = [*lines_of(LENGTHS), "30,0,cached_tokens,64,0.5", "30,0,cached_tokens,128,0.5"]
    w, report = generate(path=pool_copy(tmp_path, lengths=extra))
    note = next(n for n in report.notes if "not modelled" in n)
    assert "cached_tokens" in note and "image_count" not in note
    assert same(w, generate(path=RATES)[0])  # an unmodelled field changes no request


def test_pool_stats_read_a_pool_by_path() -> None:
    stats = servegen_pool_stats(None, RATES)
    assert stats["pool"] == "reasoning/deepseek-r1" and stats["clients"] == 3
    rates = list(csv.DictReader(RATES.open()))
    requests = {c: sum(float(r["rate_rps"]) * 600 for r in rates if r["client_id"] == c)
                for c in ("30", "39", "62")}
    pmfs = fixture_pmfs()
    means = {c: sum(v * p for v, p in pmfs[(int(c), "reason_ratio")].items())
             / sum(pmfs[(int(c), "reason_ratio")].values()) for c in requests}
    expected = sum(requests[c] * means[c] for c in requests) / sum(requests.values())
    assert stats["reason_ratio_mean"] == pytest.approx(expected)
    assert stats["rate_mean"] == pytest.approx(sum(requests.values()) / 3600)  # span: 1 h


def test_hydra_takes_a_pool_path() -> None:
    overrides = ["workload=servegen_m_large", "workload.source.pool=null",
                 f"workload.source.path={RATES.resolve()}", "workload.source.rate_scale=1"]
    w, report = load_from_overrides(overrides)
    assert w.name == "servegen_reasoning_deepseek-r1" and w.reason_ratio is not None
    assert "lengths from" in report
    with pytest.raises(WorkloadError, match=r"is pool 'reasoning/deepseek-r1' but pool = "
                                            r"'language/m-large'.*workload.source.pool=null"):
        load_from_overrides(overrides[:1] + overrides[2:])


# ---------------------------------------------------------------------- bad input


def test_a_path_matching_no_layout_says_how_to_name_it(tmp_path: Path) -> None:
    other = tmp_path / "deepseek_rates.txt"
    shutil.copy(RATES, other)
    with pytest.raises(WorkloadError, match="deepseek_rates.txt: the file name matches no "
                                            "ServeGen layout; pass path= a pool's file, named "
                                            r"<category>_<model>_rates.csv\[.xz|.gz\]"):
        generate(path=other)
    with pytest.raises(TraceFileNotFoundError, match="nope_rates.csv: no such file or folder"):
        generate(path=tmp_path / "nope_rates.csv")


def test_a_file_without_its_partner_names_what_is_missing(tmp_path: Path) -> None:
    shutil.copy(RATES, tmp_path / RATES.name)
    with pytest.raises(TraceFileNotFoundError) as info:
        generate(path=tmp_path / RATES.name)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / RATES.name}: no lengths (PMF) file beside it")
    assert f"{STEM}_lengths.csv.gz" in message and f"{STEM}_pmfs.csv.xz" in message
    assert isinstance(info.value, FileNotFoundError)
    lonely = tmp_path / "other"
    lonely.mkdir()
    shutil.copy(LENGTHS, lonely / LENGTHS.name)
    with pytest.raises(TraceFileNotFoundError, match=r"no rates file beside it; expected one "
                                                     rf"of {STEM}_rates.csv.xz or"):
        generate(path=lonely / LENGTHS.name)


@pytest.mark.parametrize(("value", "problem"), [
    ("1.5", "reason_ratio value 1.5 is outside [0, 1]"),
    ("-0.1", "reason_ratio value -0.1 is outside [0, 1]"),
    ("nan", "reason_ratio value nan is NaN"),
    ("half", "reason_ratio values must be numbers in [0, 1]"),
])
def test_a_bad_reasoning_share_is_a_bad_row(tmp_path: Path, value: str, problem: str) -> None:
    rows = lines_of(LENGTHS)
    bad = rows.index(next(r for r in rows if r.startswith("30,0,reason_ratio,0.5,")))
    rows[bad] = f"30,0,reason_ratio,{value},0.1"
    rates = pool_copy(tmp_path, lengths=rows)
    located = f"{tmp_path / LENGTHS.name}:{bad + 1}: {problem}"
    with pytest.raises(WorkloadError) as info:
        generate(path=rates)
    assert str(info.value).startswith(located), str(info.value)
    assert str(info.value).endswith("; fix the row or pass on_error='skip'")
    w, report = generate(path=rates, on_error="skip")
    assert report.rows_skipped == 1 and report.problems[0].startswith(located)
    assert np.nanmax(w.reason_ratio) <= 1 and np.nanmin(w.reason_ratio) >= 0
    assert 0.5 not in set(w.reason_ratio[w.tenant == 0].tolist())  # the row was left out


def test_a_bad_reasoning_share_in_the_pmf_layout(tmp_path: Path) -> None:
    rows = as_pmf_layout(lines_of(LENGTHS))
    bad = next(i for i, r in enumerate(rows) if r.startswith("62,0,reason_ratio,"))
    rows[bad] = "62,0,reason_ratio,0.2 1.7,1 1"
    rates = pool_copy(tmp_path, lengths=rows, lengths_name=f"{STEM}_pmfs.csv")
    with pytest.raises(WorkloadError, match=rf"{STEM}_pmfs.csv:{bad + 1}: reason_ratio value "
                                            r"1.7 is outside \[0, 1\]"):
        generate(path=rates)
    w, report = generate(path=rates, on_error="skip")
    assert report.rows_skipped == 1
    client62 = w.tenant == w.tenant_names.index("client_62")
    assert np.isnan(w.reason_ratio[client62]).all()  # its share PMF was skipped: unknown


@pytest.mark.parametrize(("which", "header", "problem"), [
    ("rates", "client_id,window_start_s,rate_rps,iat_cv,iat_dist,iat_param1,iat_param2,model",
     "unknown column(s) 'model'"),
    ("rates", "client_id,window_start_s,rate_rps,iat_cv,iat_dist,iat_param1",
     "missing iat_param2"),
    ("lengths", "client_id,window_start_s,field,value,prob,reasoning_tokens",
     "unknown column(s) 'reasoning_tokens'"),
    ("lengths", "client_id,window_start_s,field,value,probability",
     "unknown column(s) 'probability'; missing prob"),
])
def test_unknown_columns_are_named(tmp_path: Path, which: str, header: str, problem: str) -> None:
    rates, lengths = lines_of(RATES), lines_of(LENGTHS)
    (rates if which == "rates" else lengths)[0] = header
    path = pool_copy(tmp_path, rates, lengths)
    bad = path if which == "rates" else tmp_path / LENGTHS.name
    with pytest.raises(WorkloadError) as info:
        generate(path=path, on_error="skip")  # a header problem raises even when skipping
    message = str(info.value)
    assert message.startswith(f"{bad}:1: header is "), message
    assert problem in message and "write exactly these columns" in message


def test_an_unknown_field_is_a_bad_row(tmp_path: Path) -> None:
    rows = [*lines_of(LENGTHS), "30,0,reasoning,0.5,1"]
    with pytest.raises(WorkloadError, match=rf"{STEM}_lengths.csv:{len(rows)}: field = "
                                            "'reasoning' is not a known PMF field"):
        generate(path=pool_copy(tmp_path, lengths=rows))


def test_pool_names_that_do_not_fit_the_files(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="is pool 'reasoning/deepseek-r1' but pool = "
                                            "'language/m-large'"):
        generate("language/m-large", RATES)
    with pytest.raises(WorkloadError, match="pool=None but the folder holds the pools "
                                            "language/m-large, language/m-mid"):
        generate(None, SHIPPED)
    with pytest.raises(WorkloadError, match="pool = 'reasoning_deepseek-r1': give "
                                            "'<category>/<model>'"):
        generate("reasoning_deepseek-r1", POOLS)
    with pytest.raises(WorkloadError, match="unknown ServeGen pool 'reasoning/deepseek-r1'; "
                                            "shipped pools: .*pass path="):
        generate("reasoning/deepseek-r1")
    with pytest.raises(WorkloadError, match=r"start_s = 3600: pool reasoning/deepseek-r1 spans "
                                            r"\[0, 3600\) seconds"):
        generate(path=RATES, start_s=3600)


def test_merge_keeps_the_reasoning_share_aligned() -> None:
    from servegym.envs.workloads.transforms import merge
    from servegym.envs.workloads.workload import Workload

    plain = Workload.from_lengths([0.0, 2.0], [10, 20], [5, 6], tenant_names=("a",))
    reasoning = Workload.from_lengths([1.0, 3.0], [30, 40], [7, 8], tenant_names=("b",),
                                      reason_ratio=[0.25, 0.75])
    merged = merge([plain, reasoning])
    assert merged.prompt_len.tolist() == [10, 30, 20, 40]
    assert np.isnan(merged.reason_ratio[[0, 2]]).all()
    assert merged.reason_ratio[[1, 3]].tolist() == [0.25, 0.75]
    other = Workload.from_lengths([0.5], [15], [5], tenant_names=("c",))
    assert merge([plain, other]).reason_ratio is None  # no part has one: none
