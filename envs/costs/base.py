"""Interface between the simulator and anything that predicts how long GPU work takes.

Decode context convention (used by ``iteration_time`` and ``decode_coeffs`` alike):
the *context* of a decoding request is the number of KV entries its attention reads in
this iteration, i.e. the tokens already in its KV cache **plus the one being decoded**.
A request whose prompt of 100 tokens has been prefilled and which has produced 5 tokens
(the 5th being fed now) has 100 + 4 cached entries and context 105.
``decode_context_sum`` is the sum of these contexts over the decoding requests, so it is
always >= ``decode_count``.

Prefill chunks are given as ``(new_tokens, cached_context_tokens)``: ``new_tokens`` are
processed in this iteration; ``cached_context_tokens`` are earlier tokens of the same
request whose KV is already cached (earlier chunks, or a prefix-cache hit). A decode step
is therefore the same work as a chunk ``(1, context - 1)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np


class CostModel(ABC):
    """Predicts wall-clock seconds of engine iterations and KV copies."""

    source: str  # "roofline" | "measured" | "fitted": every report says which produced it
    block_size: int

    @abstractmethod
    def iteration_time(
        self,
        prefill_chunks: Sequence[tuple[int, int]],
        decode_count: int,
        decode_context_sum: int,
    ) -> float:
        """Seconds for one engine iteration (forward pass + scheduling/sampling overhead).

        prefill_chunks: ``(new_tokens, cached_context_tokens)`` per prefill chunk in the batch.
        decode_count: requests decoding one token each.
        decode_context_sum: sum of their contexts (cached tokens + 1, see module docstring).
        An empty batch (no chunks, no decodes) takes 0 s.
        """

    @abstractmethod
    def decode_coeffs(self, batch_size: int) -> tuple[float, float]:
        """``(base_s, per_context_token_s)`` for a decode-only iteration.

        A decode-only iteration of ``batch_size`` requests with total context ``S`` takes
        ``base_s + per_context_token_s * S``; this agrees with
        ``iteration_time([], batch_size, S)`` to 1e-9 relative, so the simulator can advance
        runs of decode-only iterations in closed form.
        """

    @abstractmethod
    def swap_time(self, num_blocks: int) -> float:
        """Seconds to copy ``num_blocks`` KV blocks one way between GPU and host memory.

        Each GPU of the tensor-parallel group copies its shard over its own host link.
        """

    @abstractmethod
    def kv_transfer_time(self, num_tokens: int) -> float:
        """Seconds to move the KV of ``num_tokens`` tokens between two instances over the
        interconnect (prefill/decode disaggregation)."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary; subclasses add their model, GPU and parameters."""
        return {"source": self.source, "block_size": self.block_size}


def check_decodes(decode_count: int, decode_context_sum: int) -> None:
    """Reject decode arguments that break the context convention (shared by every model)."""
    if (decode_count < 0 or decode_context_sum < decode_count
            or (decode_context_sum and not decode_count)):
        raise ValueError(
            f"need decode_count >= 0 and decode_context_sum >= decode_count (each "
            f"context counts the decoded token), and no context without requests; "
            f"got decode_count={decode_count}, decode_context_sum={decode_context_sum}"
        )


def bad_chunk(new: int, cached: int) -> ValueError:
    """The error for a prefill chunk with `new < 1` or `cached < 0`."""
    return ValueError(
        f"prefill chunk (new_tokens={new}, cached_context_tokens={cached}) needs "
        f"new_tokens >= 1 and cached_context_tokens >= 0"
    )


def time_table(seconds: np.ndarray) -> array:
    """A lookup table of precomputed times, indexed by a count (tokens or sequences).

    An ``array('d')`` holds 8 bytes per entry where a list of floats holds 32 (a pointer
    and a float object); a 16,385-entry table is 131 kB instead of 524 kB, and lookups
    return the same floats."""
    return array("d", np.ascontiguousarray(seconds, dtype=np.float64).tobytes())
