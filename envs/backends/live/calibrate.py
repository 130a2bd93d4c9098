"""Calibrating the simulator from the live engine: whole-step times into a cost table.

`profile_engine` drives one vLLM engine through a grid of batch compositions (D requests
decoding at context L each, beside a prefill chunk of P tokens) and times `engine.step()`
with the backend's clock. Rows go into the project's one table format
(`envs/costs/tables.py`) as op ``engine_step``: ``num_tokens`` = prefill tokens in the step,
``batch_size`` = decoding requests, ``context_tokens`` = their total context (the
simulator's `decode_context_sum`), times in ms. Any step log of the live backend
(`LiveBackend.step_log()`) converts to the same rows.

`StepCostModel` is the simulator's predictor fitted to such a table (`source = "measured"`):

    t = a0 + a_d * decodes + a_s * decode_context_sum
        + a_p * prefill_tokens + a_q * sum_chunks n (c + n / 2) + a_c * chunks

(fixed step overhead; per-decode work; decode attention over the KV read; per-token
linear layers; prefill attention, causal; per-sequence sampling of chunks). It is affine in
the decode context, so `decode_coeffs` is exact and the simulator's closed-form decode runs
apply. Coefficients are fitted by least squares, features with negative weights dropped.
The per-operation `TableCostModel` needs per-op tables, which an engine step cannot give;
this is the step-level counterpart for the live engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.costs.base import CostModel
from servegym.envs.costs.tables import OpTable, format_table, read_table, table_writer

OP = "engine_step"
FEATURES = ("const", "decodes", "decode_context", "prefill_tokens", "prefill_attention",
            "chunks")


def step_features(chunks: Sequence[tuple[int, int]], decodes: int, context: int) -> np.ndarray:
    prefill = sum(n for n, _ in chunks)
    attention = sum(n * (c + n / 2) for n, c in chunks)
    return np.array([1.0, decodes, context, prefill, attention, len(chunks)])


class StepCostModel(CostModel):
    source = "measured"

    def __init__(self, coefficients: Sequence[float], block_size: int = 32,
                 name: str = "live-engine") -> None:
        self.coef = np.asarray(coefficients, dtype=float)
        self.block_size = block_size
        self.name = name

    def iteration_time(self, prefill_chunks: Sequence[tuple[int, int]], decode_count: int,
                       decode_context_sum: int) -> float:
        if not prefill_chunks and not decode_count:
            return 0.0
        return float(step_features(prefill_chunks, decode_count, decode_context_sum)
                     @ self.coef)

    def decode_coeffs(self, batch_size: int) -> tuple[float, float]:
        return float(self.coef[0] + self.coef[1] * batch_size), float(self.coef[2])

    def swap_time(self, num_blocks: int) -> float:
        return math.inf

    def kv_transfer_time(self, num_tokens: int) -> float:
        return math.inf

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "block_size": self.block_size, "model": self.name,
                "coefficients_s": dict(zip(FEATURES, self.coef.tolist(), strict=True))}


# ------------------------------------------------------------------ fitting
def fit_steps(rows: Sequence[tuple[Sequence[tuple[int, int]], int, int, float]]
              ) -> np.ndarray:
    """Least-squares coefficients (seconds) from (chunks, decodes, context, seconds) rows."""
    x = np.array([step_features(c, d, s) for c, d, s, _ in rows])
    y = np.array([t for *_, t in rows])
    return fit_features(x, y)


def fit_features(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Relative error matters (steps span 100x): weight rows by 1 / time.
    w = 1.0 / np.maximum(y, 1e-6)
    active = [j for j in range(x.shape[1]) if np.any(x[:, j])]
    while True:
        coef, *_ = np.linalg.lstsq(x[:, active] * w[:, None], y * w, rcond=None)
        negative = [a for a, c in zip(active, coef, strict=True) if c < 0 and a != 0]
        if not negative:
            break
        active.remove(negative[0])
    full = np.zeros(x.shape[1])
    full[active] = coef
    return full


def relative_errors(model: CostModel, rows: Sequence) -> np.ndarray:
    predicted = np.array([model.iteration_time(c, d, s) for c, d, s, _ in rows])
    measured = np.array([t for *_, t in rows])
    return np.abs(predicted - measured) / measured


def error_summary(errors: np.ndarray) -> dict[str, float]:
    return {"rows": int(errors.size), "mean": float(errors.mean()),
            "p50": float(np.percentile(errors, 50)), "p90": float(np.percentile(errors, 90)),
            "max": float(errors.max())}


# ------------------------------------------------------------------ table I/O
def _op(chunks: int) -> str:
    return f"{OP}_c{chunks}"


def rows_to_table(rows: Sequence, meta: dict[str, str]) -> str:
    """Rows as table text, one row per distinct composition key (median/min/max/std).

    Op ``engine_step_c<k>``: a step with k prefill chunks. Key columns: ``num_tokens`` =
    prefill tokens, ``batch_size`` = decoding requests, ``context_tokens`` = their total
    context, ``size_bytes`` = prefill attention work sum(n * (c + n/2)) over the chunks,
    rounded (not bytes: the column is reused for this op family).
    """
    groups: dict[tuple[int, int, int, int, int], list[float]] = {}
    for chunks, decodes, context, seconds in rows:
        prefill = sum(n for n, _ in chunks)
        attention = round(sum(n * (c + n / 2) for n, c in chunks))
        key = (len(chunks), prefill, decodes, context, attention)
        groups.setdefault(key, []).append(1000 * seconds)
    out = []
    for (count, prefill, decodes, context, attention), times in sorted(groups.items()):
        t = np.array(times)
        out.append({"op": _op(count), "tensor_parallel": 1, "num_tokens": prefill,
                    "batch_size": decodes, "context_tokens": context, "size_bytes": attention,
                    "median_ms": float(np.median(t)), "min_ms": float(t.min()),
                    "max_ms": float(t.max()), "std_ms": float(t.std()), "samples": t.size})
    return format_table(meta, out)


def table_to_features(table: OpTable) -> tuple[np.ndarray, np.ndarray]:
    """(features, seconds) per table row, features as `step_features` gives them."""
    cols = table.columns
    x, y = [], []
    for op, prefill, decodes, context, attention, median in zip(
            cols["op"], cols["num_tokens"], cols["batch_size"], cols["context_tokens"],
            cols["size_bytes"], cols["median_ms"], strict=True):
        if not str(op).startswith(OP + "_c"):
            continue
        chunks = int(str(op)[len(OP) + 2:])
        x.append([1.0, decodes, context, prefill, attention, chunks])
        y.append(float(median) / 1000)
    return np.array(x, dtype=float), np.array(y)


def write_table(text: str, path: Path) -> Path:
    from servegym.envs.core.metrics import atomic_write

    return atomic_write(Path(path), table_writer(text, Path(path)), overwrite=True)


def load_step_model(path: str | Path, block_size: int = 32) -> StepCostModel:
    """The predictor fitted to a table written by `rows_to_table` (one point per key)."""
    return StepCostModel(fit_features(*table_to_features(read_table(path))), block_size,
                         name=Path(path).name)


# ------------------------------------------------------------------ profiling the engine
def profile_engine(instance: Any, decodes: Sequence[int] = (0, 1, 2, 4, 8, 16, 24, 32),
                   contexts: Sequence[int] = (32, 128, 384, 896),
                   prefills: Sequence[int] = (0, 16, 64, 192, 480), repeats: int = 3,
                   seed: int = 0) -> list[tuple]:
    """Time engine steps over a grid of compositions on a `LiveInstance`'s engine (vLLM's
    own scheduling: no plan). Returns (chunks, decodes, context, seconds) rows as measured."""
    from vllm import SamplingParams

    engine, scheduler = instance.engine, instance.scheduler
    clock, scale = instance.sim.clock_fn, instance.sim.time_scale
    budget = instance.config.max_num_batched_tokens
    rng = np.random.default_rng(seed)
    vocab = getattr(instance.sim.model, "vocab_size", 2048)
    counter = iter(range(10**9))
    rows: list[tuple] = []

    def add(prompt: int, output: int) -> str:
        params = SamplingParams(max_tokens=output, min_tokens=output, ignore_eos=True,
                                temperature=0.0, detokenize=False)
        tokens = rng.integers(3, vocab, prompt).tolist()
        return engine.add_request(f"profile-{next(counter)}", {"prompt_token_ids": tokens},
                                  params)

    def timed_step() -> None:
        before = {r.request_id: (r.num_computed_tokens, r.num_tokens)
                  for r in scheduler.requests.values()}
        start = clock()
        engine.step()
        seconds = (clock() - start) * scale
        out = scheduler.last_output
        chunks, count, context = composition(out.num_scheduled_tokens, before)
        rows.append((chunks, count, context, seconds))

    for d in decodes:
        for length in (contexts if d else contexts[:1]):
            if d * (length + 64) > instance.num_kv_blocks * instance.block_size * 0.8:
                continue
            for _ in range(d):
                add(length, 10_000)
            while any(r.num_computed_tokens < r.num_prompt_tokens
                      for r in scheduler.requests.values()):
                engine.step()
            for p in prefills:
                chunk = min(p, budget - d)
                if chunk <= 0 and d == 0:
                    continue
                for _ in range(repeats):
                    if chunk > 0:
                        add(chunk, 1)
                    timed_step()
            ids = list(scheduler.requests)
            if ids:
                engine.abort_request(ids, internal=True)
            while engine.has_unfinished_requests():
                engine.step()
    return rows


def composition(num_scheduled: dict[str, int], before: dict[str, tuple[int, int]]
                ) -> tuple[list[tuple[int, int]], int, int]:
    chunks, decodes, context = [], 0, 0
    for rid, n in num_scheduled.items():
        computed, tokens = before.get(rid, (0, n))
        if n == 1 and computed + 1 == tokens:
            decodes += 1
            context += computed + 1
        else:
            chunks.append((n, computed))
    return chunks, decodes, context
