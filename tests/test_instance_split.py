"""The instance split by responsibility (envs/core/{lifecycle,batching,tokens,decode_runs}.py):
the block manager is the only writer of KV state, the reference token rule is what the
reference path runs, and the block manager's bulk growth keeps its books."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from sim_fixtures import AffineCost, make_workload

import servegym.envs.core.tokens as tokens
from servegym.envs.core.instance import Instance, InstanceConfig
from servegym.envs.core.kv_cache import BlockManager, KVCacheError
from servegym.envs.core.request import Request
from servegym.envs.core.simulator import Simulator
from servegym.envs.core.tokens import (
    FIRST_TOKEN,
    LAST_TOKEN,
    NO_TOKEN,
    TOKEN,
    DecodeTally,
    IterationEnd,
    TokenGaps,
    complete_tokens,
)

CORE = Path(__file__).resolve().parents[1] / "envs" / "core"
# A request's KV fields and the block manager's pools.
KV_FIELDS = {"num_blocks", "cached_hashes", "swapped_blocks", "free_uncached", "swap_used",
             "reserved", "refcount", "evictable"}


def kv_writes(source: str, filename: str) -> list[str]:
    """Assignments to a KV field outside the block manager: `x.field = ...`, `x.field +=
    ...`, `x.field[k] = ...`; a request's own `__init__` may set its fields (`self.`)."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Subscript):
                    part = part.value
                if not (isinstance(part, ast.Attribute) and part.attr in KV_FIELDS):
                    continue
                owner = part.value
                if filename == "request.py" and isinstance(owner, ast.Name) and \
                        owner.id == "self":
                    continue
                found.append(f"{filename}:{node.lineno}: {ast.unparse(target)}")
    return found


def test_the_block_manager_is_the_only_writer_of_kv_state() -> None:
    modules = sorted(path for path in CORE.glob("*.py") if path.name != "kv_cache.py")
    assert {"instance.py", "batching.py", "tokens.py", "decode_runs.py",
            "lifecycle.py"} <= {path.name for path in modules}
    writes = [w for path in modules for w in kv_writes(path.read_text(), path.name)]
    assert writes == [], "write KV state through BlockManager methods:\n" + "\n".join(writes)


@pytest.mark.parametrize("line", [
    "request.num_blocks += need", "r.cached_hashes = None", "bm.free_uncached -= 1",
    "victim.swapped_blocks = 0", "self.bm.reserved = 3", "bm.refcount[h] = 1",
    "a, request.num_blocks = 1, 2",
])
def test_the_kv_writer_check_sees_a_write(line: str) -> None:
    assert kv_writes(f"def f(request, r, bm, victim, h):\n    {line}\n", "instance.py")
    assert not kv_writes("def f(request):\n    x = request.num_blocks\n", "instance.py")


def test_the_reference_path_runs_the_reference_token_rule(monkeypatch) -> None:
    calls = []

    def counting(request, num_new, end):
        calls.append(num_new)
        return complete_tokens(request, num_new, end)

    monkeypatch.setattr(tokens, "complete_tokens", counting)
    workload = make_workload([0.0, 0.0, 0.5], [40, 100, 30], [5, 3, 8])
    config = InstanceConfig(max_num_batched_tokens=64, max_num_seqs=8, num_kv_blocks=100)
    report = Simulator(AffineCost(), config, decode_runs=False, debug_checks=True).run(workload)
    assert report.summary["serving/finished"] == 3
    # Every computed token went through it (no recompute here: enough KV).
    assert sum(calls) == 40 + 100 + 30 + (5 - 1) + (3 - 1) + (8 - 1)
    calls.clear()
    Simulator(AffineCost(), config, decode_runs=True).run(workload)
    assert calls == []  # the fast paths copy it inline


def test_complete_tokens_is_the_vllm_rule() -> None:
    request = Request(0, 0.0, prompt_len=20, output_len=2)
    end = IterationEnd(0.0, 1.0, 16, False, TokenGaps().singles)
    assert complete_tokens(request, 12, end) == NO_TOKEN  # a prefill chunk
    assert not end.all_decoding and request.num_computed == 12
    request.num_blocks = 2  # (as the block manager would have it, for the next-block count)
    end = IterationEnd(1.0, 2.0, 16, False, TokenGaps().singles)
    assert complete_tokens(request, 8, end) == TOKEN | FIRST_TOKEN
    assert request.first_token_time == 2.0 and request.num_generated == 1
    assert (end.decoding, end.context, end.min_left, end.new_blocks) == (1, 21, 1, 0)
    end = IterationEnd(2.0, 3.5, 16, False, TokenGaps().singles)
    assert complete_tokens(request, 1, end) == TOKEN | LAST_TOKEN
    assert end.continuing == 1 and end.decoding == 0
    assert end.tally(running=1) is None  # one is running, not decoding
    assert end.tally(running=0) == DecodeTally(0, 0, math.inf, 0)


def test_block_manager_grows_requests_in_bulk() -> None:
    bm = BlockManager(10, 4)
    a, b = Request(0, 0.0, 8, 10), Request(1, 0.0, 8, 10)
    for request in (a, b):
        bm.allocate(request, 8)
        request.num_computed = 8
    assert not bm.can_reserve(7) and bm.can_reserve(6)
    bm.reserve(2)
    bm.check([a, b])  # reserved blocks count as used
    with pytest.raises(KVCacheError):
        bm.claim_reserved([a])  # two were reserved
    bm.claim_reserved([a, b])
    assert (a.num_blocks, b.num_blocks, bm.reserved, bm.num_free) == (3, 3, 0, 4)
    bm.check([a, b])
    a.num_computed = 17
    bm.catch_up([a, b], ahead=1)  # a's 18 tokens fill 5 blocks; b's 9 fit the 3 it has
    assert (a.num_blocks, b.num_blocks, bm.num_free) == (5, 3, 2)
    with pytest.raises(KVCacheError):
        bm.reserve(3)
    bm.allocate_each([(a, 1), (b, 1)])
    assert (a.num_blocks, b.num_blocks, bm.num_free) == (6, 4, 0)
    bm.check([a, b])


def test_instance_is_a_facade_over_the_split() -> None:
    from servegym.envs.core.batching import BatchBuilding
    from servegym.envs.core.decode_runs import DecodeRuns
    from servegym.envs.core.lifecycle import Lifecycle
    from servegym.envs.core.tokens import TokenBookkeeping

    assert Instance.__mro__[1:5] == (Lifecycle, BatchBuilding, TokenBookkeeping, DecodeRuns)
    own = {name for name, value in vars(Instance).items() if callable(value)}
    assert own <= {"__init__", "on_event", "_close_event", "build_next", "_start_iteration",
                   "_sample_kv"}
