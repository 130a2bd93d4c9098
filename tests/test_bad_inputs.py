"""The corpus of bad trace files in tests/bad_inputs/, run case by case from its cases.json.

Every case names a loader, a file (ServeGen: a rates and a PMF file), ``on_error`` and what
must happen: a :class:`WorkloadError` (a ``ValueError``) whose message matches a regex and
names the file and line, or a load that keeps an exact number of rows, skips the bad one
and warns. See the ``about`` text of cases.json.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servegym.envs.workloads import (
    generate_servegen,
    generate_servegen_with_report,
    load_azure_2023,
    load_azure_2023_with_report,
    load_length_table,
    load_length_table_with_report,
    load_mooncake,
    load_mooncake_with_report,
)
from servegym.envs.workloads.tracefiles import LoadReport
from servegym.envs.workloads.workload import WorkloadError, WorkloadWarning

CORPUS = Path(__file__).parent / "bad_inputs"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text())["cases"]
ERRORS = {"WorkloadError": WorkloadError}
POOL = "multimodal/mm-image"


def case_path(case: dict[str, Any], tmp_path: Path) -> Path:
    """The file the loader reads (ServeGen: the folder holding the pool's two files)."""
    if case["loader"] != "servegen":
        return CORPUS / case["file"]
    folder = tmp_path / "pool"
    folder.mkdir()
    stem = POOL.replace("/", "_")
    # The loader finds a pool's files by name and detects compression from the content.
    shutil.copy(CORPUS / case["rates"], folder / f"{stem}_rates.csv.xz")
    shutil.copy(CORPUS / case["pmfs"], folder / f"{stem}_pmfs.csv.xz")
    return folder


def bad_file(case: dict[str, Any], path: Path) -> Path:
    """The file the bad row is in, as messages name it."""
    if case["loader"] != "servegen":
        return path
    kind = "rates" if case["rates"] != "servegen_good_rates.csv" else "pmfs"
    return path / f"{POOL.replace('/', '_')}_{kind}.csv.xz"


def load(case: dict[str, Any], path: Path, *, report: bool) -> Any:
    """Call the case's loader; with ``report`` the variant returning (result, report)."""
    on_error = case["on_error"]
    loader = case["loader"]
    if loader == "mooncake":
        call = load_mooncake_with_report if report else load_mooncake
        return call(path, arrivals="batch", on_error=on_error)
    if loader == "azure":
        call = load_azure_2023_with_report if report else load_azure_2023
        return call("conv", path, on_error=on_error)
    if loader == "length_table":
        call = load_length_table_with_report if report else load_length_table
        return call(path=path, on_error=on_error)
    if loader == "servegen":
        call = generate_servegen_with_report if report else generate_servegen
        return call(POOL, duration_s=1800, rng=np.random.default_rng(0), path=path,
                    on_error=on_error)
    raise AssertionError(f"unknown loader {loader!r} in cases.json")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input(case: dict[str, Any], tmp_path: Path) -> None:
    path = case_path(case, tmp_path)
    located = None if case["line"] is None else f"{bad_file(case, path)}:{case['line']}: "
    if "error" in case:
        error = ERRORS[case["error"]]
        assert issubclass(error, ValueError)
        with pytest.raises(error) as info:
            load(case, path, report=True)
        message = str(info.value)
        assert re.search(case["match"], message), message
        if located is not None:
            assert message.startswith(located), message
            assert message.endswith("; fix the row or pass on_error='skip'"), message
        return
    result, report = load(case, path, report=True)
    assert isinstance(report, LoadReport)
    assert (report.rows_loaded, report.rows_skipped) == (case["kept"], case["skipped"])
    if case["loader"] in ("mooncake", "azure", "length_table"):
        assert len(result) == case["kept"]  # one request (or length pair) per kept row
    assert [p.split(": ", 1)[0] + ": " for p in report.problems] == [located]
    assert re.search(case["warning"], report.problems[0]), report.problems[0]
    with pytest.warns(WorkloadWarning, match=f"skipped {case['skipped']} bad rows") as caught:
        load(case, path, report=False)
    text = " ".join(str(w.message) for w in caught)
    assert re.search(case["warning"], text), text


def test_every_corpus_file_is_used_and_exists() -> None:
    named = {c[key] for c in CASES for key in ("file", "rates", "pmfs") if key in c}
    on_disk = {p.name for p in CORPUS.iterdir()} - {"cases.json", "README.md"}
    assert named == on_disk
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        assert case["on_error"] in ("raise", "skip")
        assert ("error" in case) != ("kept" in case), case["name"]


def test_out_of_order_keeps_the_longest_sorted_run() -> None:
    """The rule behind the *_future_row cases: the rows dropped are the fewest possible."""
    from servegym.envs.workloads.tracefiles import out_of_order

    assert out_of_order([0, 1, 1, 2]) == []
    assert out_of_order([0, 90, 1, 2, 3]) == [(1, False, 2)]  # the spike, not its successors
    assert out_of_order([0, 5, 1, 6]) == [(2, True, 1)]  # ties: the earlier row (5) stays
    assert out_of_order([0, 90, 91, 1, 2, 3]) == [(1, False, 3), (2, False, 3)]
    assert out_of_order([9, 0, 1]) == [(0, False, 1)]
