"""The one table format for measured operation times (Vidur-derived and our own profiler's).

A table is a CSV file (optionally gzip-compressed, ``.csv.gz``) whose first lines are
``# key: value`` metadata, followed by a header row and one row per measured point::

    # servegym-op-table: 1
    # kind: ops                 ops | network
    # source: vidur             vidur | servegym-profiler
    # gpu: A100-80GB            registry name of the GPU the times are for ("cpu" for CPU runs)
    # model: Llama-2-7B         registry name (absent for network tables)
    # tensor_parallel: 1,2,4,8  TP degrees with rows in the table
    # device_name: ...          what the device called itself; torch, dtype, driver, date, ...
    op,tensor_parallel,num_tokens,batch_size,context_tokens,size_bytes,median_ms,min_ms,max_ms,std_ms,samples

Times are **milliseconds** on one GPU of the tensor-parallel group. Key columns that do not
apply to an operation are 0. Per operation family:

* token-level ops (``emb``, ``input_layernorm``, ``attn_pre_proj`` (QKV), ``attn_rope``,
  ``attn_kv_cache_save``, ``attn_post_proj`` (O), ``post_attention_layernorm``,
  ``mlp_up_proj`` (gate+up), ``mlp_act``, ``mlp_down_proj``, ``add``): key ``num_tokens``.
* ``attn_prefill``: one request, ``num_tokens`` new (chunk) tokens attending to
  ``context_tokens`` cached ones plus themselves (causal); ``batch_size`` 1.
* ``attn_decode``: ``batch_size`` requests, each reading ``context_tokens`` KV entries;
  ``num_tokens`` = ``batch_size``.
* ``all_reduce``, ``send_recv`` (network tables): key ``size_bytes``, ``tensor_parallel`` =
  number of GPUs taking part.

``samples`` is the number of timed repeats (0 when the source does not say). Several rows
may share a key (repeated profiling runs); readers take the median of their medians.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO

import numpy as np

FORMAT_VERSION = "1"
COLUMNS = (
    "op", "tensor_parallel", "num_tokens", "batch_size", "context_tokens", "size_bytes",
    "median_ms", "min_ms", "max_ms", "std_ms", "samples",
)
KEY_COLUMNS = ("tensor_parallel", "num_tokens", "batch_size", "context_tokens", "size_bytes")
VALUE_COLUMNS = ("median_ms", "min_ms", "max_ms", "std_ms", "samples")
KINDS = ("ops", "network")
TOKEN_OPS = (
    "emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_kv_cache_save",
    "attn_post_proj", "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj",
    "add",
)
ATTENTION_OPS = ("attn_prefill", "attn_decode")
NETWORK_OPS = ("all_reduce", "send_recv")


class TableFormatError(ValueError):
    """A table file does not follow the format in this module's docstring."""


@dataclass(frozen=True)
class OpTable:
    """Rows of one table file, columnar, plus its metadata.

    ``columns`` maps each name in ``COLUMNS`` to a read-only array (``op`` as str).
    """

    meta: Mapping[str, str]
    columns: Mapping[str, np.ndarray]
    path: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        for array in self.columns.values():
            array.setflags(write=False)
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def gpu(self) -> str:
        return self.meta["gpu"]

    @property
    def model(self) -> str:
        return self.meta.get("model", "")

    @property
    def tensor_parallel(self) -> tuple[int, ...]:
        return tuple(sorted({int(v) for v in self.columns["tensor_parallel"]}))

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.columns["op"].tolist())))

    def __len__(self) -> int:
        return len(self.columns["op"])

    def rows(self, op: str, tensor_parallel: int) -> dict[str, np.ndarray]:
        """Columns of the rows for ``op`` at ``tensor_parallel`` (empty arrays if none)."""
        key = (op, tensor_parallel)
        if key not in self._cache:
            mask = (self.columns["op"] == op) & (self.columns["tensor_parallel"] == tensor_parallel)
            self._cache[key] = {name: values[mask] for name, values in self.columns.items()}
        return self._cache[key]

    def curve(self, op: str, tensor_parallel: int, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(sorted unique key values, median ms)`` for a one-key op; duplicates -> median."""
        rows = self.rows(op, tensor_parallel)
        if not len(rows["op"]):
            raise KeyError(
                f"{self.describe()} has no rows for op {op!r} at tensor_parallel="
                f"{tensor_parallel}; it has ops {list(self.ops)} at TP {list(self.tensor_parallel)}"
            )
        keys, ms = median_by_key(rows[key], rows["median_ms"])
        return keys.astype(np.float64), ms

    def select(self, keep: np.ndarray) -> OpTable:
        """A table with only the rows where ``keep`` is true (for held-out evaluation)."""
        columns = {name: values[keep] for name, values in self.columns.items()}
        return OpTable(dict(self.meta), columns, self.path)

    def describe(self) -> str:
        what = f"{self.meta.get('source', '?')} {self.kind} table for {self.gpu}"
        if self.model:
            what += f" / {self.model}"
        return f"{what} ({self.path or 'in memory'})"


def median_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique sorted keys (their own dtype) and the median of the values sharing each key."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order].astype(np.float64)
    unique, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    medians = values[starts]
    for group in np.flatnonzero(counts > 1):  # duplicates are rare: loop over them only
        first = starts[group]
        medians[group] = np.median(values[first:first + counts[group]])
    return unique, medians


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


def _parse_meta_line(line: str, path: Path, number: int) -> tuple[str, str]:
    body = line[1:].strip()
    key, sep, value = body.partition(":")
    if not sep or not key.strip():
        raise TableFormatError(f"{path}:{number}: metadata lines look like '# key: value'")
    return key.strip(), value.strip()


def read_meta(path: str | Path) -> dict[str, str]:
    """Only the ``# key: value`` header of a table (cheap: stops at the first data line)."""
    path = Path(path)
    meta: dict[str, str] = {}
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.startswith("#"):
                break
            key, value = _parse_meta_line(line, path, number)
            meta[key] = value
    _check_meta(meta, path)
    return meta


def _check_meta(meta: Mapping[str, str], path: Path) -> None:
    if meta.get("servegym-op-table") != FORMAT_VERSION:
        raise TableFormatError(
            f"{path}: not a servegym op table (first line must be "
            f"'# servegym-op-table: {FORMAT_VERSION}'); see envs/costs/tables.py"
        )
    for key in ("kind", "source", "gpu"):
        if not meta.get(key):
            raise TableFormatError(f"{path}: metadata '# {key}: ...' is missing")
    if meta["kind"] not in KINDS:
        raise TableFormatError(f"{path}: kind {meta['kind']!r} is not one of {KINDS}")
    if meta["kind"] == "ops" and not meta.get("model"):
        raise TableFormatError(f"{path}: an ops table needs '# model: <registry name>'")


def read_table(path: str | Path) -> OpTable:
    """Read a table file; raises ``TableFormatError`` with ``file:line`` on bad content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cost table {path} does not exist")
    meta: dict[str, str] = {}
    with _open_text(path) as handle:
        lines = handle.read().splitlines()
    number = 0
    while number < len(lines) and lines[number].startswith("#"):
        key, value = _parse_meta_line(lines[number], path, number + 1)
        meta[key] = value
        number += 1
    _check_meta(meta, path)
    if number >= len(lines) or tuple(lines[number].split(",")) != COLUMNS:
        raise TableFormatError(f"{path}:{number + 1}: header must be {','.join(COLUMNS)}")
    return OpTable(meta, _parse_rows(lines[number + 1:], path, number + 2), str(path))


def _parse_rows(lines: list[str], path: Path, first_line: int) -> dict[str, np.ndarray]:
    ops: list[str] = []
    numbers: list[list[float]] = []
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != len(COLUMNS):
            raise TableFormatError(
                f"{path}:{first_line + offset}: {len(cells)} cells, expected {len(COLUMNS)}"
            )
        try:
            values = [float(cell) for cell in cells[1:]]
        except ValueError:
            raise TableFormatError(
                f"{path}:{first_line + offset}: non-numeric value in {line!r}"
            ) from None
        if not all(np.isfinite(values)) or min(values) < 0:
            raise TableFormatError(
                f"{path}:{first_line + offset}: values must be finite and >= 0, got {line!r}"
            )
        ops.append(cells[0])
        numbers.append(values)
    if not ops:
        raise TableFormatError(f"{path}: the table has no rows")
    matrix = np.asarray(numbers, dtype=np.float64)
    columns: dict[str, np.ndarray] = {"op": np.asarray(ops, dtype=str)}
    for index, name in enumerate(COLUMNS[1:]):
        column = matrix[:, index]
        columns[name] = column.astype(np.int64) if name in KEY_COLUMNS + ("samples",) else column
    return columns


def format_table(meta: Mapping[str, str], rows: Iterable[Mapping[str, object]]) -> str:
    """Text of a table file: metadata (``servegym-op-table`` first), header, rows."""
    lines = [f"# servegym-op-table: {FORMAT_VERSION}"]
    lines += [f"# {key}: {value}" for key, value in meta.items() if key != "servegym-op-table"]
    lines.append(",".join(COLUMNS))
    for row in rows:
        cells = [str(row["op"])]
        cells += [str(int(row.get(name, 0))) for name in KEY_COLUMNS]
        cells += [f"{float(row[name]):.6g}" for name in VALUE_COLUMNS[:-1]]
        cells.append(str(int(row.get("samples", 0))))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def table_writer(text: str, path: Path) -> Callable[[IO[str]], None]:
    """A writer for ``atomic_write`` (which opens text files); ``.gz`` paths are compressed
    deterministically (mtime 0) so the same table always gives the same bytes."""
    if path.suffix != ".gz":
        return lambda handle: handle.write(text)

    def write(handle: IO[str]) -> None:
        # atomic_write hands a text handle; write the gzip bytes through its buffer.
        handle.flush()
        handle.buffer.write(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))

    return write
