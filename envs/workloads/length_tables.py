"""Loaders for request-length tables without timestamps: ShareGPT and arXiv summarisation.

Both ship verbatim under ``envs/data/traces/`` (see each folder's ``SOURCE.md``): token
counts only (Llama-2 tokenizer), no text and no arrival times, so they are paired with an
arrival process (see :mod:`servegym.envs.workloads.synthetic`).

File format: CSV, optionally gzip- or xz-compressed, header with at least
``num_prefill_tokens`` (prompt tokens) and ``num_decode_tokens`` (output tokens); other
columns (``num_total_tokens``, ``pd_ratio``) are ignored. Bad rows follow the Azure loader:
``on_error="raise"`` names file, line and problem, ``"skip"`` leaves them out and counts
them in the :class:`LoadReport`. Bounds (a row past one is a bad row): a row is at most
:data:`~servegym.envs.workloads.tracefiles.MAX_CSV_ROW_CHARS` characters (65,536), a token count at
most :data:`~servegym.envs.workloads.tracefiles.MAX_TOKENS` (10,000,000).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from servegym.envs.workloads.tracefiles import (
    MAX_CSV_ROW_CHARS,
    READ_ERRORS,
    BoundedLines,
    LoadReport,
    RowError,
    RowProblems,
    check_on_error,
    open_text,
    parse_count,
    trace_file,
    unreadable,
    warn_if_skipped,
)
from servegym.envs.workloads.workload import WorkloadError

__all__ = [
    "LENGTH_TABLES",
    "LengthTable",
    "load_length_table",
    "load_length_table_with_report",
]

# Read-only: constants are never mutated (no module-level mutable state).
LENGTH_TABLES: Mapping[str, str] = MappingProxyType({
    "sharegpt": "traces/sharegpt_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv.gz",
    "arxiv": "traces/arxiv_summarization_lengths/"
    "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv.gz",
})
_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")


@dataclass(frozen=True, eq=False)
class LengthTable:
    """Joint (prompt, output) token counts of a table's rows, in file order (read-only)."""

    name: str
    prompt_len: np.ndarray
    output_len: np.ndarray

    def __len__(self) -> int:
        return int(self.prompt_len.shape[0])


def load_length_table(
    name: str = "sharegpt", path: str | Path | None = None, *, on_error: str = "raise"
) -> LengthTable:
    """Load a shipped length table (``"sharegpt"`` or ``"arxiv"``) or the CSV at ``path``.

    Skipped rows (``on_error="skip"``) are reported in a warning.
    """
    table, report = load_length_table_with_report(name, path, on_error=on_error)
    warn_if_skipped(report)
    return table


def load_length_table_with_report(
    name: str = "sharegpt", path: str | Path | None = None, *, on_error: str = "raise"
) -> tuple[LengthTable, LoadReport]:
    """Like :func:`load_length_table`, but return ``(table, report)`` and never warn."""
    if path is None and name not in LENGTH_TABLES:
        raise WorkloadError(
            f"unknown length table {name!r}; shipped tables: {', '.join(sorted(LENGTH_TABLES))} "
            "(or pass path= to a CSV with num_prefill_tokens,num_decode_tokens)"
        )
    check_on_error(on_error)
    hint = "pass the path of a CSV with columns num_prefill_tokens,num_decode_tokens"
    with trace_file(path, LENGTH_TABLES.get(name, ""), hint) as file_path:
        problems = RowProblems(file_path, on_error)
        prompt, output, rows_read = _read(file_path, problems)
    table = LengthTable(name, _frozen(prompt), _frozen(output))
    return table, problems.report(rows_read, len(prompt))


def _read(path: Path, problems: RowProblems) -> tuple[list[int], list[int], int]:
    with open_text(path) as text:
        lines = BoundedLines(text, problems, MAX_CSV_ROW_CHARS, header=True)
        reader = csv.reader(lines)
        try:
            header = next(reader, None)
            if header is None:
                raise WorkloadError(
                    f"{path}: file is empty; expected a header with {', '.join(_COLUMNS)}"
                )
            index = _column_index(path, header)
            return _rows(reader, index, problems, lines)
        except READ_ERRORS as exc:
            raise unreadable(path, reader.line_num + 1, exc, "CSV") from exc


def _rows(
    reader: object, index: tuple[int, int], problems: RowProblems, lines: BoundedLines
) -> tuple[list[int], list[int], int]:
    prompt: list[int] = []
    output: list[int] = []
    rows_read = 0
    width = max(index) + 1
    for row in reader:  # type: ignore[attr-defined]
        if not row:
            continue
        rows_read += 1
        try:
            if len(row) < width:
                missing = [c for c, i in zip(_COLUMNS, index, strict=True) if i >= len(row)]
                raise RowError(f"row has {len(row)} field(s); missing {', '.join(missing)}")
            p = parse_count(_COLUMNS[0], row[index[0]])
            o = parse_count(_COLUMNS[1], row[index[1]])
        except RowError as problem:
            problems.bad(reader.line_num, problem)  # type: ignore[attr-defined]
            continue
        prompt.append(p)
        output.append(o)
    rows_read += lines.too_long  # rows over the length bound, reported by `lines`
    problems.check_loaded(rows_read, len(prompt))
    return prompt, output, rows_read


def _column_index(path: Path, header: list[str]) -> tuple[int, int]:
    names = [name.strip() for name in header]
    missing = [column for column in _COLUMNS if column not in names]
    if missing:
        raise WorkloadError(
            f"{path}:1: header lacks column(s) {', '.join(missing)} (found: "
            f"{', '.join(repr(n) for n in names)}); the first line must name the columns "
            f"{','.join(_COLUMNS)}"
        )
    return names.index(_COLUMNS[0]), names.index(_COLUMNS[1])


def _frozen(values: list[int]) -> np.ndarray:
    array = np.array(values, dtype=np.int64)
    array.flags.writeable = False
    return array
