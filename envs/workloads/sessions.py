"""Multi-turn chat sessions whose turns share their conversation as a KV prefix.

Config of a ``sessions`` source::

    num_sessions: 500              # or duration_s: 3600 (sessions starting before it)
    arrivals: {process: poisson, rate: 0.5}         # session starts
    turns: {dist: uniform, low: 1, high: 8}         # turns per session (length dist)
    think_time: {dist: exponential, mean: 20.0}     # seconds between turns
    first_prompt: {dist: lognormal, mean: 600, cv: 1.0}
    user_prompt: {dist: lognormal, mean: 120, cv: 1.0}
    output: {dist: lognormal, mean: 250, cv: 0.8}
    system_prompt_len: 0           # tokens shared by every session (a common system prompt)
    closed_loop: false             # true: think_time counts from the previous turn's finish

Open loop (the default): turn ``k`` of a session arrives ``think_time`` after turn ``k-1``
arrived (the workload cannot know when the answer finished). Closed loop
(``closed_loop: true``, :mod:`servegym.envs.workloads.graph`): turn ``k`` waits for turn
``k-1`` (``parents``) and is released ``think_time`` after it *finished*; the rows keep the
open-loop times as their nominal ``arrival_time`` (ordering and splits only), every turn
carries ``session_id`` and ``turn``, and the same seed draws the same lengths and think
times either way. Its prompt is the previous prompt,
the previous answer and the new user message: ``P_k = P_{k-1} + O_{k-1} + U_k`` with
``P_1 = system_prompt_len + first_prompt``. Every prompt is therefore a prefix of the next
one, which the prefix hashes express: block ``j`` of any turn of session ``s`` has the
same hash (session key ``s``), and blocks wholly inside the system prompt share one key
across sessions. Hashes are stored compactly (:class:`~servegym.envs.workloads.prefix.BlockChains`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from servegym.envs.workloads.distributions import sample_durations, sample_lengths
from servegym.envs.workloads.prefix import BLOCK_INDEX_BITS, BlockChains
from servegym.envs.workloads.spec import options, positive_int
from servegym.envs.workloads.synthetic import TraceData, arrival_times, sized_arrivals
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = ["multi_turn_workload"]

_NO_END = (1 << BLOCK_INDEX_BITS) - 1  # a segment that covers every block of a prompt


def multi_turn_workload(
    spec: Mapping[str, Any],
    rng: np.random.Generator,
    block_size: int = 16,
    traces: TraceData | None = None,
    where: str = "source",
) -> Workload:
    """Multi-turn sessions from ``spec`` (see the module docstring), sorted by arrival."""
    traces = traces or TraceData()
    opts = options(
        spec, where, ("arrivals", "turns", "think_time", "first_prompt", "user_prompt", "output"),
        {"kind": "sessions", "num_sessions": None, "duration_s": None, "system_prompt_len": 0,
         "name": None, "closed_loop": False},
    )
    closed = opts["closed_loop"]
    if not isinstance(closed, bool):
        raise WorkloadError(f"{where}.closed_loop = {closed!r}: must be true or false")
    system = positive_int(f"{where}.system_prompt_len", opts["system_prompt_len"], minimum=0)
    start_rng, turn_rng, think_rng, first_rng, user_rng, out_rng = rng.spawn(6)
    sized = {"num_requests": opts["num_sessions"], "duration_s": opts["duration_s"],
             "arrivals": opts["arrivals"]}
    starts = sized_arrivals(sized, start_rng, where, traces,
                            lambda n, r: arrival_times(opts["arrivals"], n, r,
                                                       f"{where}.arrivals", traces))
    if starts.size == 0:
        raise WorkloadError(f"{where}: no session starts within duration_s; lengthen it")
    turns = sample_lengths(opts["turns"], starts.size, turn_rng, f"{where}.turns", traces.column)
    session = np.repeat(np.arange(starts.size), turns)
    first_turn = np.r_[0, np.cumsum(turns)[:-1]]  # index of each session's first turn
    is_first = np.zeros(session.size, dtype=bool)
    is_first[first_turn] = True
    think = sample_durations(opts["think_time"], session.size, think_rng, f"{where}.think_time")
    think[is_first] = 0.0
    arrival = starts[session] + _within_session_cumsum(think, first_turn, turns)
    user = np.where(
        is_first,
        sample_lengths(opts["first_prompt"], session.size, first_rng, f"{where}.first_prompt",
                       traces.column),
        sample_lengths(opts["user_prompt"], session.size, user_rng, f"{where}.user_prompt",
                       traces.column),
    )
    output = sample_lengths(opts["output"], session.size, out_rng, f"{where}.output",
                            traces.column)
    # P_k = system + sum of U up to k + sum of O before k.
    before = _within_session_cumsum(user + output, first_turn, turns) - output
    prompt = system + before
    order = np.argsort(arrival, kind="stable")
    chains = _session_chains(session, prompt, system, starts.size, block_size)
    program: dict[str, Any] = {}
    if closed:
        # Rows are sorted stably by nominal arrival, which grows along a session, so turn
        # k-1 sits before turn k; its new row is the parent.
        row = np.empty(session.size, dtype=np.int64)
        row[order] = np.arange(session.size)
        previous = np.where(is_first, -1, np.arange(session.size) - 1)
        parent_row = np.where(is_first, -1, row[np.maximum(previous, 0)])[order]
        program = {
            "session_id": session[order],
            "turn": (np.arange(session.size) - np.repeat(first_turn, turns))[order],
            "parents": [() if p < 0 else (int(p),) for p in parent_row.tolist()],
            "release_delay": np.where(is_first, np.nan, think)[order],
        }
    return Workload.from_lengths(
        arrival[order], prompt[order], output[order],
        prefix_hashes=chains.take(order), prefix_block_size=block_size,
        name=str(opts["name"] or ("sessions_closed" if closed else "multi_turn")),
        **program,
    )


def _within_session_cumsum(values: np.ndarray, first_turn: np.ndarray,
                           turns: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each session's first turn."""
    total = np.cumsum(values)
    before_session = np.r_[0, total[:-1]][first_turn]  # sum of earlier sessions' values
    return total - np.repeat(before_session, turns)


def _session_chains(session: np.ndarray, prompt: np.ndarray, system: int, sessions: int,
                    block_size: int) -> BlockChains:
    system_blocks = system // block_size
    if system_blocks:
        # Per session: [system prompt (key 0), the conversation (key 1 + s)].
        keys = np.column_stack([np.zeros(sessions), 1 + np.arange(sessions)]).ravel()
        ends = np.tile([system_blocks, _NO_END], sessions)
        width = 2
    else:
        keys, ends, width = 1 + np.arange(sessions), np.full(sessions, _NO_END), 1
    start = session * width
    blocks = np.minimum(prompt // block_size, _NO_END)
    return BlockChains(keys, ends, start, start + width, blocks)
