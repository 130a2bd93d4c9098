"""Synthetic agentic programs: small graphs of dependent LLM calls with tool calls between.

As in Parrot (Lin et al., OSDI 2024: an application is a DAG of LLM calls whose outputs
feed later prompts) and HEXGEN-Text2SQL (multi-stage agentic pipelines with fan-out), a
program is a sequence of *stages* of LLM calls; every call of stage ``s + 1`` waits for
every call of stage ``s`` (fan-out after a one-call stage, fan-in into the next one) and
for the stage's tool step. Config of a ``programs`` source::

    num_programs: 300              # or duration_s: 600 (programs starting before it)
    arrivals: {process: poisson, rate: 1.0}          # program starts
    stages: {dist: uniform, low: 2, high: 5}         # stages of LLM calls per program
    width: {dist: uniform, low: 1, high: 3}          # calls in a middle stage (1: a chain)
    system_prompt_len: 512         # tokens shared by every program (the agent's prompt)
    task_prompt: {dist: lognormal, mean: 400, cv: 0.8}   # the program's task
    instruction: {dist: lognormal, mean: 40, cv: 0.5}    # each call's own instruction
    output: {dist: lognormal, mean: 150, cv: 0.8}
    tools:                         # the tool step after a stage: kind drawn by weight
      - {name: search, weight: 0.5, duration: {dist: lognormal, mean: 1.5, cv: 1.0},
         result: {dist: lognormal, mean: 300, cv: 1.0}}
      - {name: code, weight: 0.5, duration: {dist: exponential, mean: 4.0},
         result: {dist: lognormal, mean: 150, cv: 1.0}}

What is modelled: the first and the last stage have one call (a planner and an
aggregator; a 1-stage program is one call), middle stages ``width`` calls. After every
stage but the last, one tool step of kind ``k`` (drawn by ``weight``) lasts ``duration``
seconds (its calls' tools run in parallel; the step lasts as long as the slowest) and
returns ``result`` tokens. The program's context grows by what it produced:
``C_0 = system_prompt_len + task_prompt``, ``C_{s+1} = C_s + (outputs of stage s) +
result_s``; a call of stage ``s`` has prompt ``C_s + instruction``. Prefix hashes express
the sharing: blocks inside the system prompt share one key across programs, blocks inside
``C_s`` one key per program (every later call resends them), the rest are the call's own.
In the workload (closed loop, :mod:`servegym.envs.workloads.graph`) a stage-``s + 1`` call
has the stage's calls as parents and ``release_delay = duration_s``; stage-``s`` calls carry
``tool_kind = k`` (its index in ``tools``; -1 in the last stage) and, derived,
``next_delay``. Nominal arrival times (ordering and splits only) add the tool durations
to the program's start. Not modelled: per-call tools with their own durations (the
release waits for the slowest), calls whose output length depends on the tool result,
branches that end early, loops (a program graph is acyclic; a ReAct loop is unrolled into
stages), and prompts beyond the model context (such a call is rejected at arrival and
its descendants with ``parent_rejected``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from servegym.envs.workloads.distributions import sample_durations, sample_lengths
from servegym.envs.workloads.prefix import BLOCK_INDEX_BITS, BlockChains
from servegym.envs.workloads.spec import number, options, positive_int
from servegym.envs.workloads.synthetic import TraceData, arrival_times, sized_arrivals
from servegym.envs.workloads.workload import Workload, WorkloadError

__all__ = ["agentic_program_workload"]

_NO_END = (1 << BLOCK_INDEX_BITS) - 1
_NOMINAL_STEP_S = 1e-3  # nominal arrivals: stage s + 1 at least this after stage s


def agentic_program_workload(
    spec: Mapping[str, Any],
    rng: np.random.Generator,
    block_size: int = 16,
    traces: TraceData | None = None,
    where: str = "source",
) -> Workload:
    """Agentic programs from ``spec`` (see the module docstring), sorted by arrival."""
    traces = traces or TraceData()
    opts = options(
        spec, where, ("arrivals", "stages", "width", "task_prompt", "instruction", "output",
                      "tools"),
        {"kind": "programs", "num_programs": None, "duration_s": None, "system_prompt_len": 0,
         "name": None},
    )
    system = positive_int(f"{where}.system_prompt_len", opts["system_prompt_len"], minimum=0)
    tools = _tools(opts["tools"], f"{where}.tools")
    (start_rng, stage_rng, width_rng, task_rng, instr_rng, out_rng, kind_rng, dur_rng,
     result_rng) = rng.spawn(9)
    sized = {"num_requests": opts["num_programs"], "duration_s": opts["duration_s"],
             "arrivals": opts["arrivals"]}
    starts = sized_arrivals(sized, start_rng, where, traces,
                            lambda n, r: arrival_times(opts["arrivals"], n, r,
                                                       f"{where}.arrivals", traces))
    if starts.size == 0:
        raise WorkloadError(f"{where}: no program starts within duration_s; lengthen it")
    programs = starts.size
    stages = sample_lengths(opts["stages"], programs, stage_rng, f"{where}.stages",
                            traces.column)
    # Stage widths, program by program: 1, middle widths..., 1.
    stage_program = np.repeat(np.arange(programs), stages)
    first_stage = np.r_[0, np.cumsum(stages)[:-1]]
    stage_index = np.arange(stage_program.size) - np.repeat(first_stage, stages)
    middle = (stage_index > 0) & (stage_index < stages[stage_program] - 1)
    widths = np.ones(stage_program.size, dtype=np.int64)
    widths[middle] = sample_lengths(opts["width"], int(middle.sum()), width_rng,
                                    f"{where}.width", traces.column)
    # The tool step after each stage (unused after a program's last stage).
    weights = np.array([t["weight"] for t in tools])
    kind = kind_rng.choice(len(tools), size=stage_program.size, p=weights / weights.sum())
    duration = np.zeros(stage_program.size)
    result = np.zeros(stage_program.size, dtype=np.int64)
    dur_rngs, result_rngs = dur_rng.spawn(len(tools)), result_rng.spawn(len(tools))
    for k, tool in enumerate(tools):
        rows = np.flatnonzero(kind == k)
        duration[rows] = sample_durations(tool["duration"], rows.size, dur_rngs[k],
                                          f"{where}.tools[{k}].duration")
        result[rows] = sample_lengths(tool["result"], rows.size, result_rngs[k],
                                      f"{where}.tools[{k}].result", traces.column)
    last_stage = stage_index == stages[stage_program] - 1
    kind[last_stage] = -1
    duration[last_stage] = 0.0
    result[last_stage] = 0
    # Calls.
    call_stage = np.repeat(np.arange(stage_program.size), widths)
    calls = call_stage.size
    call_program = stage_program[call_stage]
    task = sample_lengths(opts["task_prompt"], programs, task_rng, f"{where}.task_prompt",
                          traces.column)
    instruction = sample_lengths(opts["instruction"], calls, instr_rng, f"{where}.instruction",
                                 traces.column)
    output = sample_lengths(opts["output"], calls, out_rng, f"{where}.output", traces.column)
    stage_output = np.bincount(call_stage, weights=output, minlength=stage_program.size)
    grown = (stage_output + result).astype(np.int64)  # what each stage adds to the context
    context = _within_program_exclusive_cumsum(grown, first_stage, stages)
    context += system + task[stage_program]
    prompt = context[call_stage] + instruction
    # Nominal times: the program's start plus the tool steps before the stage.
    stage_time = starts[stage_program] + _within_program_exclusive_cumsum(
        duration + _NOMINAL_STEP_S, first_stage, stages)
    arrival = stage_time[call_stage]
    order = np.argsort(arrival, kind="stable")
    row = np.empty(calls, dtype=np.int64)
    row[order] = np.arange(calls)
    first_call = np.r_[0, np.cumsum(widths)[:-1]]  # per stage, its first call
    parents: list[tuple[int, ...]] = []
    for c in order.tolist():
        s = int(call_stage[c])
        if stage_index[s] == 0:
            parents.append(())
        else:
            before = s - 1
            lo = int(first_call[before])
            parents.append(tuple(int(row[p]) for p in range(lo, lo + int(widths[before]))))
    delay = np.where(stage_index[call_stage] == 0, np.nan,
                     duration[np.maximum(call_stage - 1, 0)])
    chains = _program_chains(call_program, context[call_stage], prompt, system, programs,
                             block_size)
    return Workload.from_lengths(
        arrival[order], prompt[order], output[order],
        prefix_hashes=chains.take(order), prefix_block_size=block_size,
        name=str(opts["name"] or "agentic_programs"),
        session_id=call_program[order], turn=stage_index[call_stage][order],
        parents=parents, release_delay=delay[order], tool_kind=kind[call_stage][order],
    )


def _tools(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__len__") or \
            len(value) == 0:
        raise WorkloadError(f"{where} must be a non-empty list of tools, each "
                            "{name, weight, duration, result}")
    tools = []
    for k, tool in enumerate(value):
        opts = options(tool, f"{where}[{k}]", ("name", "duration", "result"), {"weight": 1.0})
        opts["weight"] = number(f"{where}[{k}].weight", opts["weight"], low=0.0,
                                strict_low=True)
        tools.append(opts)
    return tools


def _within_program_exclusive_cumsum(values: np.ndarray, first: np.ndarray,
                                     counts: np.ndarray) -> np.ndarray:
    """Per stage, the sum of the values of the earlier stages of its program."""
    total = np.cumsum(values)
    before = np.r_[0, total[:-1]]
    return before - np.repeat(before[first], counts)


def _program_chains(program: np.ndarray, context: np.ndarray, prompt: np.ndarray,
                    system: int, programs: int, block_size: int) -> BlockChains:
    """Per call three segments: system prompt (key 0), the program's context (key 1 +
    program), the call's own blocks (key 1 + programs + call)."""
    calls = program.size
    keys = np.column_stack([np.zeros(calls, dtype=np.int64), 1 + program,
                            1 + programs + np.arange(calls)]).ravel()
    system_blocks = system // block_size
    context_blocks = np.maximum(context // block_size, system_blocks)
    ends = np.column_stack([np.full(calls, system_blocks), context_blocks,
                            np.full(calls, _NO_END)]).ravel()
    start = 3 * np.arange(calls)
    blocks = np.minimum(prompt // block_size, _NO_END)
    return BlockChains(keys, ends, start, start + 3, blocks)
