"""Test helpers: a cost model with hand-computable times and a workload builder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from servegym.envs.costs.base import CostModel
from servegym.envs.workloads.workload import Workload


class AffineCost(CostModel):
    """time = overhead + per_token * batched tokens + per_context * decode context.

    Small enough to compute scenarios by hand; satisfies the decode_coeffs contract exactly.
    """

    source = "test-affine"

    def __init__(self, overhead=0.010, per_token=0.001, per_context=1e-5, swap_per_block=0.002,
                 block_size=16, max_context=100_000):
        self.overhead, self.per_token, self.per_context = overhead, per_token, per_context
        self.swap_per_block = swap_per_block
        self.block_size = block_size
        self.model = type("Model", (), {"max_context": max_context})()

    def iteration_time(self, prefill_chunks: Sequence[tuple[int, int]], decode_count: int,
                       decode_context_sum: int) -> float:
        tokens = sum(new for new, _ in prefill_chunks) + decode_count
        return self.overhead + self.per_token * tokens + self.per_context * decode_context_sum

    def decode_coeffs(self, batch_size: int) -> tuple[float, float]:
        return self.overhead + self.per_token * batch_size, self.per_context

    def swap_time(self, num_blocks: int) -> float:
        return self.swap_per_block * num_blocks

    def kv_transfer_time(self, num_tokens: int) -> float:
        return 0.0

    def describe(self) -> dict:
        return {"source": self.source}


def make_workload(arrivals, prompts, outputs, **kwargs) -> Workload:
    return Workload.from_lengths(
        np.asarray(arrivals, dtype=float), np.asarray(prompts), np.asarray(outputs), **kwargs
    )
