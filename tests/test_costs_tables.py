"""The op-table format: round trip, clear errors, and the shipped calibration data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from servegym.envs.core.metrics import atomic_write
from servegym.envs.costs.catalog import SHIPPED_DIR, scan
from servegym.envs.costs.tables import (
    COLUMNS,
    TableFormatError,
    format_table,
    read_meta,
    read_table,
    table_writer,
)

META = {"kind": "ops", "source": "servegym-profiler", "gpu": "A100-80GB", "model": "Llama-2-7B",
        "tensor_parallel": "1", "ops": "add"}


def _rows() -> list[dict]:
    return [{"op": "add", "tensor_parallel": 1, "num_tokens": t, "median_ms": 0.01 * t,
             "min_ms": 0.009 * t, "max_ms": 0.02 * t, "std_ms": 0.001, "samples": 5}
            for t in (1, 8, 8, 64)]


def _write(path: Path, text: str) -> Path:
    return atomic_write(path, table_writer(text, path))


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    rows = _rows()
    rows[2] = {**rows[2], "median_ms": 0.5}  # duplicate key 8: the median of medians wins
    path = _write(tmp_path / name, format_table(META, rows))
    table = read_table(path)
    assert dict(table.meta) == {"servegym-op-table": "1", **META}
    assert read_meta(path) == dict(table.meta)
    assert len(table) == 4 and table.ops == ("add",) and table.tensor_parallel == (1,)
    grid, ms = table.curve("add", 1, "num_tokens")
    assert grid.tolist() == [1, 8, 64]
    assert ms.tolist() == pytest.approx([0.01, (0.08 + 0.5) / 2, 0.64])
    assert table.columns["samples"].tolist() == [5, 5, 5, 5]


def test_gzip_output_is_deterministic(tmp_path: Path) -> None:
    text = format_table(META, _rows())
    a = _write(tmp_path / "a.csv.gz", text).read_bytes()
    b = _write(tmp_path / "b.csv.gz", text).read_bytes()
    assert a == b and gzip.decompress(a).decode() == text


def test_rows_are_read_only(tmp_path: Path) -> None:
    table = read_table(_write(tmp_path / "t.csv", format_table(META, _rows())))
    with pytest.raises(ValueError):
        table.columns["median_ms"][0] = 1.0


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda t: t.replace("# servegym-op-table: 1\n", ""), "not a servegym op table"),
        (lambda t: t.replace("# gpu: A100-80GB\n", ""), "'# gpu: ...' is missing"),
        (lambda t: t.replace("kind: ops", "kind: weird"), "kind 'weird'"),
        (lambda t: t.replace("# model: Llama-2-7B\n", ""), "needs '# model"),
        (lambda t: t.replace("median_ms", "med"), r"t.csv:\d+: header must be"),
        (lambda t: t.replace("add,1,64,", "add,1,x,"), r"t.csv:\d+: non-numeric"),
        (lambda t: t.replace("add,1,64,0,0,0,0.64", "add,1,64,0,0,0,-1"), r"finite and >= 0"),
        (lambda t: t.replace("add,1,64,0,0,0,", "add,1,64,0,"), r"t.csv:\d+: 9 cells"),
        (lambda t: t.split(",".join(COLUMNS))[0] + ",".join(COLUMNS) + "\n", "has no rows"),
    ],
)
def test_bad_tables_say_where_and_what(tmp_path: Path, mutate, pattern: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(mutate(format_table(META, _rows())))
    with pytest.raises(TableFormatError, match=pattern):
        read_table(path)


def test_missing_file_and_missing_op(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_table(tmp_path / "nope.csv")
    table = read_table(_write(tmp_path / "t.csv", format_table(META, _rows())))
    with pytest.raises(KeyError, match="no rows for op 'mlp_act'.*it has ops"):
        table.curve("mlp_act", 1, "num_tokens")


def test_shipped_tables_are_small_documented_and_valid() -> None:
    files = [p for p in SHIPPED_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5 * 2**20
    assert (SHIPPED_DIR / "vidur" / "SOURCE.md").is_file()
    entries = scan()
    assert {e.source for e in entries} == {"vidur"}
    origins = {read_meta(e.path)["origin"].split()[0] for e in entries}
    assert all(o.startswith("microsoft/vidur@") for o in origins)
    ops = [e for e in entries if e.kind == "ops" and e.has_token_ops]
    assert {(e.model, e.gpu) for e in ops} == {
        ("Llama-2-7B", "A100-80GB"), ("Llama-2-70B", "A100-80GB"), ("Llama-3-8B", "A100-80GB"),
        ("Llama-3-70B", "A100-80GB"), ("Llama-2-7B", "H100-80GB"), ("Llama-2-70B", "H100-80GB")}
    assert all(e.tensor_parallel == (1, 2, 4, 8) for e in ops)
    nets = {(e.gpu, e.network) for e in entries if e.kind == "network"}
    assert nets == {(g, n) for g in ("A100-80GB", "H100-80GB")
                    for n in ("dgx", "pairwise_nvlink")}


def test_shipped_medians_lie_between_min_and_max() -> None:
    table = read_table(SHIPPED_DIR / "vidur" / "a100" / "Llama-2-7B.csv.gz")
    c = table.columns
    assert np.all(c["min_ms"] <= c["median_ms"] + 1e-12)
    assert np.all(c["median_ms"] <= c["max_ms"] + 1e-12)
