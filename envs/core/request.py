"""A request's identity and its mutable serving state inside the simulator.

The workload is columnar (numpy arrays, see `servegym.envs.workloads.Workload`); a `Request` object
is made only when the request arrives, so a 50k-request run never holds 50k idle objects on the hot
path. Token timestamps are not stored one by one: the instance derives the time between tokens from
iteration boundaries (see `servegym.envs.core.instance`).
"""

from __future__ import annotations

import math

WAITING = 0
RUNNING = 1
SWAPPED = 2
FINISHED = 3
REJECTED = 4

STATUS_NAMES = ("waiting", "running", "swapped", "finished", "rejected")


class ProgramState:
    """What the calls of one session or program share while it runs (envs/core/release.py)."""

    __slots__ = ("first_arrival", "ident", "service")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.service = 0.0  # prompt + output tokens of its finished calls
        self.first_arrival = math.nan


class SessionCall:
    """Where one call sits in its closed-loop session or agentic program; set once, by
    envs/core/release.py, when the call is made (the fields are `Request`'s of the same
    names). One object per call, so that requests outside sessions carry one empty slot
    instead of six."""

    __slots__ = ("critical_path", "next_delay", "program", "session", "tool_kind", "turn")

    def __init__(self, session: int, turn: int, next_delay: float, tool_kind: int,
                 critical_path: int, program: ProgramState | None) -> None:
        self.session = session
        self.turn = turn
        self.next_delay = next_delay
        self.tool_kind = tool_kind
        self.critical_path = critical_path
        self.program = program


class Request:
    """One request: workload fields (read-only by convention) plus serving state.

    Token accounting follows vLLM: `num_tokens = prompt_len + num_generated` tokens exist;
    `num_computed` of them have KV in the cache. An iteration computes `num_new` tokens; when
    `num_computed` reaches `num_tokens`, a token is sampled (`num_generated += 1`). Prefill,
    chunked prefill, decode and recompute after preemption are all this one rule.

    Closed-loop sessions and agentic programs (envs/core/release.py) also set `call` (a
    `SessionCall`; None outside them), read through these properties: `session`
    (its session or program, -1 none), `turn` (its turn / depth in the program),
    `next_delay` (seconds from its finish to the release of its session's or program's
    next call, NaN without one: what a KV-retention policy predicts), `tool_kind` (the
    kind of tool called after it, -1 none), `critical_path` (calls on the longest path from
    it to its program's end, itself included) and `program` (the program's shared state,
    whose `service` is the tokens its finished calls were served; `program_service`).
    Outside a session they read -1, 0, NaN, -1, 1 and None.
    """

    __slots__ = (
        "rid", "arrival_time", "prompt_len", "output_len", "tenant", "priority",
        "ttft_slo", "tpot_slo", "prefix_hashes",
        "status", "instance", "num_computed", "num_generated", "num_blocks", "cached_hashes",
        "swapped_blocks", "first_scheduled", "first_token_time", "finish_time", "last_token_time",
        "num_preemptions", "num_swaps", "recomputed_tokens", "prefix_hit_tokens",
        "reject_reason", "token_times",
        "call",
    )

    def __init__(
        self,
        rid: int,
        arrival_time: float,
        prompt_len: int,
        output_len: int,
        tenant: int = 0,
        priority: int = 0,
        ttft_slo: float = math.inf,
        tpot_slo: float = math.inf,
        prefix_hashes: tuple[int, ...] | None = None,
    ) -> None:
        self.rid = rid
        self.arrival_time = arrival_time
        self.prompt_len = prompt_len
        self.output_len = output_len
        self.tenant = tenant
        self.priority = priority
        self.ttft_slo = ttft_slo
        self.tpot_slo = tpot_slo
        self.prefix_hashes = prefix_hashes
        self.status = WAITING
        self.instance = -1
        self.num_computed = 0
        self.num_generated = 0
        self.num_blocks = 0  # GPU blocks held, shared prefix blocks included
        self.cached_hashes: list[int] | None = None  # prefix-cache blocks this request references
        self.swapped_blocks = 0
        self.first_scheduled = math.nan
        self.first_token_time = math.nan
        self.finish_time = math.nan
        self.last_token_time = math.nan
        self.num_preemptions = 0
        self.num_swaps = 0
        self.recomputed_tokens = 0
        self.prefix_hit_tokens = 0
        self.reject_reason = ""
        self.token_times: list[float] | None = None
        self.call: SessionCall | None = None

    @property
    def session(self) -> int:
        call = self.call
        return -1 if call is None else call.session

    @property
    def turn(self) -> int:
        call = self.call
        return 0 if call is None else call.turn

    @property
    def next_delay(self) -> float:
        call = self.call
        return math.nan if call is None else call.next_delay

    @property
    def tool_kind(self) -> int:
        call = self.call
        return -1 if call is None else call.tool_kind

    @property
    def critical_path(self) -> int:
        call = self.call
        return 1 if call is None else call.critical_path

    @property
    def program(self) -> ProgramState | None:
        call = self.call
        return None if call is None else call.program

    @property
    def program_service(self) -> float:
        """Tokens (prompt + output) served so far to this request's program's finished
        calls (Autellix's attained service); 0 outside a program."""
        call = self.call
        return 0.0 if call is None or call.program is None else call.program.service

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_generated

    @property
    def tokens_to_compute(self) -> int:
        """Tokens to compute before the next token is sampled (1 while decoding)."""
        return self.prompt_len + self.num_generated - self.num_computed

    @property
    def remaining_output(self) -> int:
        return self.output_len - self.num_generated

    def __repr__(self) -> str:
        return (
            f"Request(rid={self.rid}, status={STATUS_NAMES[self.status]}, "
            f"prompt={self.prompt_len}, output={self.output_len}, "
            f"computed={self.num_computed}, generated={self.num_generated})"
        )
