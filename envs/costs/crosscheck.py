"""Vidur's own evaluation setting, for cross-checking our simulator against Vidur's numbers.

Vidur: Agrawal et al., "Vidur: A Large-Scale Simulation Framework for LLM Inference",
MLSys 2024; code read at microsoft/vidur @7d47513 (:data:`VIDUR_COMMIT`).

Used by ``conf/experiment/vidur_crosscheck.yaml`` (and ``vidur_crosscheck_reverse.yaml``):
Llama-2-70B on A100 at TP2, ``vllm_v0`` batching, Azure 2023 conversation lengths clipped to
4096 total tokens (Vidur's context), Poisson arrivals at 1 request/s, 10,000 requests.

The **Vidur compatibility profile** is a set of named options, each off in servegym's own
defaults and on in the cross-check configs:

* KV capacity as Vidur plans it: :func:`servegym.envs.costs.specs.vidur_kv_capacity_blocks`
  (layer weights only, no activation reserve, whole max-length requests: 3,328 blocks here,
  against servegym's 2,487). The configs set ``cluster.instance.num_kv_blocks`` to it;
  ``tests/test_vidur_profile.py`` checks that the number is the planner's.
* Request sampling (``sampling="vidur"`` below): Vidur's trace length generator
  (``trace_request_length_generator.py``) clips each request to ``max_tokens`` by taking the
  excess from prompt and output in proportion (:func:`vidur_clip_lengths`) and shuffles the
  trace rows with its seed (:func:`vidur_trace_order`); its Poisson interval generator
  (``poisson_request_interval_generator.py``) caps every gap at 3 mean gaps, so the realised
  rate is ~1.052 req/s at ``rate=1`` (:func:`vidur_poisson_arrivals`). Both reproduce Vidur's
  draws for the same seed (Vidur's default: 42). Vidur serves at most the trace's rows
  (19,366 here; it crashes when asked for more): ``sampling="vidur"`` refuses more.
* The NCCL launch term: ``cost.allreduce_launch_overhead_s`` =
  :data:`VIDUR_NCCL_LAUNCH_OVERHEAD_S` on each of the two all-reduces per layer (3.2 ms per
  iteration for 80 layers; Vidur's ``skip_cpu_overhead_modeling`` does not remove it).
* The GQA attention factor: ``cost.gqa_attention_overhead`` =
  :data:`VIDUR_GQA_ATTENTION_OVERHEAD` (attention x1.1 in batches with more than one decode,
  or more than one prefill chunk, of a grouped-query model).

``sampling="servegym"`` (the default) keeps what this module did before: the first
``num_requests`` rows in trace order, cycled past the trace's end (servegym's choice; Vidur
does not cycle), clipped by :meth:`Workload.clip_total_tokens`, with uncapped exponential
gaps from ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import math

import numpy as np

from servegym.envs.workloads import Workload, load_azure_2023

VIDUR_COMMIT = "7d47513"
VIDUR_SEED = 42  # Vidur's default seed (request generator, length and interval generators)
VIDUR_NCCL_LAUNCH_OVERHEAD_S = 2e-5  # Vidur's nccl_cpu_launch_overhead_ms = 0.02
VIDUR_GQA_ATTENTION_OVERHEAD = 0.1  # attention_{decode,prefill}_batching_overhead_fraction
VIDUR_MEMORY_MARGIN_FRACTION = 0.1  # ReplicaConfig.memory_margin_fraction
VIDUR_GAP_CAP_IN_MEANS = 3.0  # PoissonRequestIntervalGenerator: max_interval = 3 / qps
SAMPLINGS = ("servegym", "vidur")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


def vidur_clip_lengths(
    prompt: np.ndarray, output: np.ndarray, max_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fit each request into ``max_tokens`` as Vidur's trace length generator does.

    The excess ``prompt + output - max_tokens`` is taken from prompt and output in
    proportion to their shares, each share rounded up, and both are kept >= 1.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2 (one prompt and one output token), "
                         f"got {max_tokens!r}")
    prompt = np.asarray(prompt, dtype=np.int64)
    output = np.asarray(output, dtype=np.int64)
    total = prompt + output
    excess = np.clip(total - max_tokens, 0, None).astype(np.float64)
    prompt_cut = np.ceil(excess * (prompt / total)).astype(np.int64)
    output_cut = np.ceil(excess * (output / total)).astype(np.int64)
    return np.maximum(prompt - prompt_cut, 1), np.maximum(output - output_cut, 1)


def vidur_trace_order(num_rows: int, seed: int = VIDUR_SEED) -> np.ndarray:
    """Row order of Vidur's shuffled trace: ``DataFrame.sample(frac=1, random_state=seed)``,
    which is ``np.random.RandomState(seed).permutation(num_rows)`` (a private legacy
    generator, as pandas uses; no global state)."""
    if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < 1:
        raise ValueError(f"num_rows must be an int >= 1, got {num_rows!r}")
    return np.random.RandomState(_check_seed(seed)).permutation(num_rows)


def _python_random_stream(seed: int) -> np.random.RandomState:
    """The Mersenne Twister state of Python's ``random.seed(seed)`` (CPython seeds an int
    by ``init_by_array`` of its 32-bit words, least significant first), as a private
    ``RandomState``: its ``random_sample`` draws equal ``random.random()``'s."""
    seed = _check_seed(seed)
    words = [(seed >> (32 * i)) & 0xFFFFFFFF for i in range(max(1, -(-seed.bit_length() // 32)))]
    # A list, not an array: numpy squeezes a one-element array to a scalar and would then
    # seed by init_genrand instead of init_by_array.
    return np.random.RandomState(words)


def vidur_poisson_arrivals(num_requests: int, rate: float, seed: int = VIDUR_SEED) -> np.ndarray:
    """Arrival times of Vidur's capped Poisson generator for Vidur's ``seed``.

    Gap ``i`` is ``min(-log(1 - u_i) / rate, 3 / rate)`` with ``u_i`` the ``i``-th draw of
    Python's ``random`` after ``random.seed(seed)`` (Vidur's ``set_seeds``); arrival ``i``
    is the running sum of the gaps, the first one gap after 0.
    """
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
        raise ValueError(f"num_requests must be an int >= 1, got {num_requests!r}")
    if not (isinstance(rate, int | float) and not isinstance(rate, bool)
            and 0 < rate < math.inf):
        raise ValueError(f"rate must be a finite number > 0 requests/s, got {rate!r}")
    draws = _python_random_stream(seed).random_sample(num_requests).tolist()
    cap = (1.0 / rate) * VIDUR_GAP_CAP_IN_MEANS
    gaps = np.array([min(-math.log(1.0 - u) / rate, cap) for u in draws])
    return np.cumsum(gaps)


def vidur_crosscheck_workload(
    num_requests: int = 10_000,
    rate: float = 1.0,
    max_total_tokens: int = 4096,
    seed: int = 0,
    sampling: str = "servegym",
) -> Workload:
    """Azure 2023 conversation lengths with Poisson arrivals at ``rate`` req/s.

    ``sampling="servegym"``: trace order, cycled past its end, uncapped exponential gaps
    from ``np.random.default_rng(seed)``. ``sampling="vidur"``: Vidur's clipping, shuffle and
    capped gaps for ``seed`` (use 42, Vidur's default, to draw Vidur's requests); at most the
    trace's rows. See the module docstring.
    """
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
        raise ValueError(f"num_requests must be an int >= 1, got {num_requests!r}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {SAMPLINGS}")
    if sampling == "vidur":
        trace = load_azure_2023("conv")
        if num_requests > len(trace):
            raise ValueError(
                f"num_requests={num_requests} exceeds the trace's {len(trace)} rows: Vidur's "
                "trace length generator does not cycle (Vidur crashes past the end); use "
                f"num_requests <= {len(trace)} or sampling='servegym' (which cycles)")
        prompt, output = vidur_clip_lengths(trace.prompt_len, trace.output_len,
                                            max_total_tokens)
        index = vidur_trace_order(len(trace), seed)[:num_requests]
        arrivals = vidur_poisson_arrivals(num_requests, float(rate), seed)
        return Workload.from_lengths(arrivals, prompt[index], output[index],
                                     name=f"vidur_crosscheck_azure_conv_vidur_poisson_{rate:g}")
    trace, _ = load_azure_2023("conv").clip_total_tokens(max_total_tokens)
    index = np.arange(num_requests) % len(trace)  # servegym cycles; Vidur stops at the end
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, num_requests))
    return Workload.from_lengths(arrivals, trace.prompt_len[index], trace.output_len[index],
                                 name=f"vidur_crosscheck_azure_conv_poisson_{rate:g}")
