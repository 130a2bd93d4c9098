"""KV retention between the calls of a session or agentic program (Continuum).

Spec. When a request that has a next call (`request.session >= 0` and a finite
`request.next_delay`: closed-loop sessions and programs, envs/core/release.py) finishes, a
RETAIN decision is asked (`DecisionKind.RETAIN`, candidate set "options"): what happens
to its KV (the prefix-cache blocks of its prompt, `cached_hashes`; the answer's own tokens
are private blocks and always freed). Its candidates are the retention menu
(`retain_options(ttls)`, the simulator's `retain_ttls`, default `DEFAULT_TTLS_S`):

    choice 0: None   release now: its unreferenced cached blocks leave the cache at once
                     (freed, not kept for reuse; a lower tier does not get them either)
    choice 1: 0.0    leave them to LRU (the plain prefix cache): cached, unreferenced, in
                     LRU order, evicted (down a tier, envs/core/kv_tiers.py) when needed
    choice 2..: ttl  pin them for `ttl` seconds: they stay referenced (they cost GPU
                     capacity: admissions and growth see fewer free blocks) until the
                     session's next call is admitted (its own references then hold them),
                     the TTL expires, or the instance would otherwise idle with a waiting
                     request that does not fit (pressure release: a pin never deadlocks)

The decision is asked once the event in which the call finished is closed and before the
instance plans its next batch (`Instance.on_event` / `build_next`): every call finishing
at that event first frees its blocks, then each is asked in finish order. An inline policy
(`Simulator(policies={RETAIN: ...})`) is answered there by a plain call
(`answer_inline`); without one the decision surfaces through `next_decision()` (the
instance's `build_next` yields it) at the same point, so a stepped run and an inline run
with the same answers are identical. Retention is on when the simulator has a menu
(`retain_ttls`, or a legacy `retention=` policy); off (the default), nothing is asked and
the prefix cache is plain LRU. `RetentionPolicy` (a `ttl(request, instance, now)` method)
is the older answer form, adapted by `TTLAnswers` to the menu: a TTL is rounded up to the
next option (capped at the longest).

A TTL that is negative, NaN or infinite is refused with a message (`check_ttl`). Expiry is
a typed event (`EventKind.RETAIN_EXPIRY`, target: the pin's number) handled by
`Retention.on_expiry`: the pin is released, and an instance whose waiting head may fit now
is woken (idle) or has its decode run cut at the next boundary (so the run is what
iteration-by-iteration simulation gives). A released pin's event is stale and ignored.

Continuum (Li et al., "Continuum: Efficient and Robust Multi-Turn LLM Agent Scheduling
with KV Cache Time-to-Live", 2025) pins a program's KV for a TTL set from the predicted
tool-call duration; the heuristics in agents/heuristics/retention.py include that rule
(with a predictor that learns from observed delays only) and an oracle that reads the
true `next_delay` (labelled as such).

Not modelled: retention of the answer's tokens (only prompt blocks are named by hashes
here, so the next call recomputes the previous answer and the tool result), pins on
prefill/decode instances of a disaggregated cluster (retention runs on mixed instances),
and Continuum's scheduler changes beyond the TTL (its queue ordering by program).

Writers: `BlockManager.pin` / `unpin` / `drop_cached` change KV state; this module keeps
only the table of pins, the questions of the event being closed and its statistics.
Not modelled for the surfaced (agent) form: instances of other roles (disaggregated
prefill/decode, live migration) whose `on_event` returns before planning when idle leave
their questions to their next event.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from typing import Any, Protocol, runtime_checkable

from servegym.envs.core.events import EventKind
from servegym.envs.protocol import Action, Decision, DecisionKind

DROP = None  # answer: no retention
RELEASE_NOW, LEAVE_TO_LRU = 0, 1  # the menu's first two choices
DEFAULT_TTLS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
RETAIN = DecisionKind.RETAIN


def check_ttl(ttl: Any, who: str = "retention policy") -> float | None:
    """`ttl` as an answer (None = DROP, 0 = LRU, > 0 = pin); a clear error otherwise."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise ValueError(f"{who} answered {ttl!r}: a TTL is a number of seconds >= 0 "
                         "(0: leave the blocks to the LRU cache) or None (drop them)")
    ttl = float(ttl)
    if math.isnan(ttl) or ttl < 0 or math.isinf(ttl):
        raise ValueError(f"{who} answered a TTL of {ttl!r} s: a TTL must be finite and >= 0 "
                         "(NaN, negative or infinite TTLs are refused; None drops the KV)")
    return ttl


def retain_options(ttls: Sequence[float] = DEFAULT_TTLS_S) -> tuple[float | None, ...]:
    """The RETAIN menu: (None: release now, 0.0: leave to LRU, *ttls); `ttls` finite,
    > 0 and increasing (a clear error otherwise)."""
    if isinstance(ttls, (str, bytes)) or not isinstance(ttls, Sequence):
        raise ValueError(f"retain_ttls = {ttls!r}: give a list of TTLs in seconds, e.g. "
                         f"{list(DEFAULT_TTLS_S)}")
    values = []
    for ttl in ttls:
        value = check_ttl(ttl, "retain_ttls")
        if value is None or value <= 0:
            raise ValueError(f"retain_ttls = {list(ttls)}: every TTL must be > 0 (release "
                             "now and leave to LRU are always the menu's first two choices)")
        values.append(value)
    if not values or any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"retain_ttls = {list(ttls)}: give at least one TTL, strictly "
                         "increasing")
    return (DROP, 0.0, *values)


def option_for(ttl: float | None, options: Sequence[float | None]) -> int:
    """The menu choice for a wanted TTL: None -> release, 0 -> LRU, ttl > 0 -> the first
    option >= ttl (the longest if none is)."""
    if ttl is None:
        return RELEASE_NOW
    if ttl == 0.0:
        return LEAVE_TO_LRU
    for choice in range(2, len(options)):
        if options[choice] >= ttl:
            return choice
    return len(options) - 1


@runtime_checkable
class RetentionPolicy(Protocol):
    """The older answer form: a TTL for a finished call (None drop, 0 LRU, > 0 pin)."""

    def ttl(self, request: Any, instance: Any, now: float) -> float | None: ...


class TTLAnswers:
    """A `RetentionPolicy` as a RETAIN policy: its TTL, checked, rounded up to the menu."""

    def __init__(self, policy: RetentionPolicy) -> None:
        if not callable(getattr(policy, "ttl", None)):
            raise ValueError(f"a retention policy needs a decide(decision) or a "
                             f"ttl(request, instance, now) method; got {type(policy).__name__}")
        self.policy = policy
        self.name = getattr(policy, "name", type(policy).__name__)

    def reset(self, rng: Any = None) -> None:
        reset = getattr(self.policy, "reset", None)
        if reset is not None:
            reset(rng)

    def decide(self, decision: Decision) -> int:
        ttl = check_ttl(self.policy.ttl(decision.request, decision.instance, decision.time),
                        type(self.policy).__name__)
        return option_for(ttl, decision.candidates)


def as_retain_policy(policy: Any) -> Any:
    """`policy` as a RETAIN policy: one with `decide` as is, a `ttl`-only one adapted."""
    if callable(getattr(policy, "decide", None)):
        return policy
    return TTLAnswers(policy)


class Retention:
    """The simulator's side of retention: asks RETAIN, keeps the pins, expires them."""

    def __init__(self, ttls: Sequence[float] = DEFAULT_TTLS_S) -> None:
        self.options = retain_options(ttls)
        self.sim: Any = None
        self.policy: Any = None  # the inline RETAIN policy, or None (surfaced)
        self.pins: dict[int, tuple[Any, int, float]] = {}  # pin -> (instance, session, expiry)
        self.by_session: dict[int, int] = {}  # session -> its pin
        self.next_pin = 0
        self._reset_stats()

    def _reset_stats(self) -> None:
        # Statistics (the report's serving/retain_*).
        self.asked = self.pinned = self.dropped = self.lru = 0
        self.pinned_blocks = 0
        self.consumed = self.expired = self.pressure_released = 0

    def reset(self, sim: Any) -> None:
        self.sim = sim
        self.policy = sim.policies.get(RETAIN)
        self.pins.clear()
        self.by_session.clear()
        self.next_pin = 0
        self._reset_stats()

    # ------------------------------------------------------------ called by the instance
    def on_finish(self, instance: Any, request: Any, hashes: list[int]) -> None:
        """`request` finished on `instance` and its blocks were freed; `hashes` were its
        cached prompt blocks. Its RETAIN question waits for the end of the event."""
        instance.retain_queue.append((request, hashes))

    def answer_inline(self, instance: Any, now: float) -> None:
        """Answer `instance`'s questions with the inline policy (a plain call)."""
        queue = instance.retain_queue
        policy = self.policy
        options = self.options
        sim = self.sim
        if getattr(sim, "lazy_runs", None) and getattr(policy, "reads_token_state", True):
            sim.sync_lazy_runs()  # as DecisionLoop.ask does before a policy's decision
        for request, hashes in queue:
            decision = Decision(RETAIN, now, options, instance=instance, request=request,
                                cluster=self.sim)
            action = decision.validate(policy.decide(decision))
            self._apply(instance, request, hashes, options[action.choice], now)
        queue.clear()

    def ask(self, instance: Any, now: float) -> Generator[Decision, Action, None]:
        """Ask `instance`'s questions through the simulator (surfaced: `next_decision`)."""
        queue = instance.retain_queue
        options = self.options
        while queue:
            request, hashes = queue.pop(0)
            decision = Decision(RETAIN, now, options, instance=instance, request=request,
                                cluster=self.sim)
            action = yield from self.sim.ask(decision)
            self._apply(instance, request, hashes, options[action.choice], now)

    def _apply(self, instance: Any, request: Any, hashes: list[int], ttl: float | None,
               now: float) -> None:
        self.asked += 1
        bm = instance.bm
        if ttl is None:
            self.dropped += 1
            bm.drop_cached(hashes)
            return
        if ttl == 0.0 or not hashes:
            self.lru += 1
            return
        old = self.by_session.pop(request.session, None)
        if old is not None:  # an earlier call's pin of the same session (a fan-out)
            self._release(old)
        pin = self.next_pin
        self.next_pin += 1
        held = bm.pin(pin, hashes)
        if not held:
            self.lru += 1
            return
        self.pinned += 1
        self.pinned_blocks += held
        self.pins[pin] = (instance, request.session, now + ttl)
        self.by_session[request.session] = pin
        self.sim.schedule_event(now + ttl, EventKind.RETAIN_EXPIRY, pin)
    def on_admit(self, request: Any) -> None:
        """The session's next call was admitted (it references its cached prefix now)."""
        pin = self.by_session.pop(request.session, None)
        if pin is not None:
            self.consumed += 1
            self._release(pin)

    def release_for_room(self, instance: Any) -> bool:
        """Release `instance`'s oldest pin (it would idle with a request that does not
        fit); False if it holds none."""
        for pin, (owner, session, _) in self.pins.items():
            if owner is instance:
                self.by_session.pop(session, None)
                self.pressure_released += 1
                self._release(pin)
                return True
        return False

    def on_expiry(self, pin: int, now: float) -> None:
        """The TTL of `pin` ran out (a typed event; stale if already released)."""
        entry = self.pins.get(pin)
        if entry is None:
            return
        instance, session, _ = entry
        if self.by_session.get(session) == pin:
            del self.by_session[session]
        self.expired += 1
        self._release(pin)
        if instance.waiting:
            if instance.run is not None:
                self.sim.interrupt(instance)  # the head may fit at the next boundary
            elif not instance.event_pending:
                self.sim.schedule(now, instance)

    def _release(self, pin: int) -> None:
        instance, _, _ = self.pins.pop(pin)
        instance.bm.unpin(pin)

    def release_all(self) -> None:
        for pin in list(self.pins):
            self._release(pin)
        self.by_session.clear()

    def stats(self) -> dict[str, float]:
        return {"retain_asked": float(self.asked), "retain_pinned": float(self.pinned),
                "retain_dropped": float(self.dropped), "retain_lru": float(self.lru),
                "retain_pinned_blocks": float(self.pinned_blocks),
                "retain_consumed": float(self.consumed), "retain_expired": float(self.expired),
                "retain_pressure_released": float(self.pressure_released)}


__all__ = ["DEFAULT_TTLS_S", "DROP", "LEAVE_TO_LRU", "RELEASE_NOW", "Retention",
           "RetentionPolicy", "TTLAnswers", "as_retain_policy", "check_ttl", "option_for",
           "retain_options"]
