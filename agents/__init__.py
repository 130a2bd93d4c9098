"""Schedulers for servegym: heuristic baselines (`servegym.agents.heuristics`) and, later, learned
agents. `build_scheduler(spec)` turns a policy spec into the simulator's policies:

* ``"srpt-oracle"``: one registered baseline; the other decision kinds keep the defaults
  (round-robin routing, FCFS admission, vLLM's latest-arrival preemption).
* ``"srpt-pred(sigma=1.0, max_wait_s=30)+lor+swap-cost-aware"``: one baseline per kind,
  joined by ``+``, each with optional keyword arguments (Python literals).
* ``"agent:<path>"``: a saved learned agent (`load_agent`; a train.py run folder), loaded
  without unpickling; ``"agent+pickle:<path>"`` also loads older, pickle-only folders.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from servegym.agents.heuristics import make_policy, policy_info
from servegym.envs.core.decisions import default_policies
from servegym.envs.protocol import DecisionKind, Policy

_TERM = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\((.*)\))?\s*$", re.S)
KIND_ORDER = tuple(DecisionKind)  # the order a scheduler's policies are listed in


def load_agent(path: str, allow_pickle: bool = False) -> dict[DecisionKind, Policy]:
    """Policies of the learned agent saved at `path` (a train.py run folder, its `model/`
    folder or a checkpoint): the agent answers the decisions it was trained on, its training
    heuristics (or the defaults) the others. Nothing is unpickled unless `allow_pickle`
    (for folders saved before the safe files existed). See `servegym.agents.learned`."""
    from servegym.agents.learned import load_agent as load

    return load(path, allow_pickle=allow_pickle)


def parse_spec(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """Split ``"name(k=v, ...)+name..."`` into (name, kwargs) terms."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"policy spec must be a non-empty string, got {spec!r}")
    terms = []
    for text in _split_top_level(spec):
        match = _TERM.match(text)
        if match is None:
            raise ValueError(f"cannot parse policy term {text!r} in {spec!r}; "
                             "write name or name(key=value, ...)")
        terms.append((match.group(1), _parse_kwargs(match.group(2) or "", text)))
    return terms


def build_scheduler(spec: str) -> dict[DecisionKind, Policy]:
    """Fresh policies for every decision kind from a spec (see the module docstring)."""
    if spec.strip().startswith("agent:"):
        return load_agent(spec.strip()[len("agent:"):])
    if spec.strip().startswith("agent+pickle:"):  # an old pickled folder you trust
        return load_agent(spec.strip()[len("agent+pickle:"):], allow_pickle=True)
    chosen: dict[DecisionKind, Policy] = {}
    for name, kwargs in parse_spec(spec):
        kind = policy_info(name).kind
        if kind in chosen:
            raise ValueError(f"policy spec {spec!r} names two {kind.name} policies; "
                             "give at most one per decision kind")
        chosen[kind] = make_policy(name, **kwargs)
    defaults = default_policies()
    return {kind: chosen.get(kind, defaults[kind]) for kind in KIND_ORDER}


def _split_top_level(spec: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for position, char in enumerate(spec):
        depth += (char in "([{") - (char in ")]}")
        if char == "+" and depth == 0:
            parts.append(spec[start:position])
            start = position + 1
    parts.append(spec[start:])
    return parts


def _parse_kwargs(text: str, term: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if call.args:
            raise ValueError("positional arguments")
        return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as error:
        raise ValueError(f"bad arguments in policy term {term!r}: {error}; "
                         "write key=value pairs with Python literals") from None


__all__ = ["KIND_ORDER", "build_scheduler", "load_agent", "parse_spec"]
