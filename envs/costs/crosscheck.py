"""Vidur's own evaluation setting, for cross-checking our simulator against Vidur's numbers.

Used by ``conf/experiment/vidur_crosscheck.yaml``: Llama-2-70B on A100 at TP2, ``vllm_v0``
batching, Azure 2023 conversation lengths clipped to 4096 total tokens (Vidur's context),
Poisson arrivals at 1 request/s, 10,000 requests (the trace's lengths cycled, as Vidur's
trace generator does past its end).
"""

from __future__ import annotations

import numpy as np

from servegym.envs.workloads import Workload, load_azure_2023


def vidur_crosscheck_workload(
    num_requests: int = 10_000,
    rate: float = 1.0,
    max_total_tokens: int = 4096,
    seed: int = 0,
) -> Workload:
    """Azure conv lengths (clipped, cycled) with Poisson arrivals at ``rate`` req/s.

    Arrival gaps come from ``np.random.default_rng(seed).exponential(1 / rate)``.
    """
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
        raise ValueError(f"num_requests must be an int >= 1, got {num_requests!r}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
    trace, _ = load_azure_2023("conv").clip_total_tokens(max_total_tokens)
    index = np.arange(num_requests) % len(trace)
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, num_requests))
    return Workload.from_lengths(arrivals, trace.prompt_len[index], trace.output_len[index],
                                 name=f"vidur_crosscheck_azure_conv_poisson_{rate:g}")
