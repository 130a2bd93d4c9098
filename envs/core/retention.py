"""KV retention between the calls of a session or agentic program (Continuum).

Spec. When a request that has a next call (`request.session >= 0` and a finite
`request.next_delay`: closed-loop sessions and programs, envs/core/release.py) finishes, a
retention policy (`RetentionPolicy`, agents/heuristics/retention.py) answers what happens
to its KV (the prefix-cache blocks of its prompt, `cached_hashes`; the answer's own tokens
are private blocks and always freed):

    DROP (None)   no retention: its unreferenced cached blocks leave the cache at once
                  (freed, not kept for reuse; a lower tier does not get them either)
    0.0 (LRU)     the plain prefix cache: the blocks stay cached, unreferenced, in LRU
                  order, evicted (down a tier, envs/core/kv_tiers.py) when space is needed
    ttl > 0       pin them for `ttl` seconds: they stay referenced (they cost GPU
                  capacity: admissions and growth see fewer free blocks) until the
                  session's next call is admitted (its own references then hold them),
                  the TTL expires, or the instance would otherwise idle with a waiting
                  request that does not fit (pressure release: a pin never deadlocks)

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
only the table of pins and its statistics.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

from servegym.envs.core.events import EventKind

DROP = None  # answer: no retention


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


@runtime_checkable
class RetentionPolicy(Protocol):
    """Answers what happens to a finished call's KV (the module docstring)."""

    def ttl(self, request: Any, instance: Any, now: float) -> float | None: ...


class Retention:
    """The simulator's side of retention: asks the policy, keeps the pins, expires them."""

    def __init__(self, policy: RetentionPolicy) -> None:
        if not callable(getattr(policy, "ttl", None)):
            raise ValueError(f"a retention policy needs a ttl(request, instance, now) method; "
                             f"got {type(policy).__name__}")
        self.policy = policy
        self.sim: Any = None
        self.pins: dict[int, tuple[Any, int, float]] = {}  # pin -> (instance, session, expiry)
        self.by_session: dict[int, int] = {}  # session -> its pin
        self.next_pin = 0
        # Statistics (the report's serving/retain_*).
        self.asked = self.pinned = self.dropped = self.lru = 0
        self.pinned_blocks = 0
        self.consumed = self.expired = self.pressure_released = 0

    def reset(self, sim: Any, rng: Any) -> None:
        self.sim = sim
        self.pins.clear()
        self.by_session.clear()
        self.next_pin = 0
        self.asked = self.pinned = self.dropped = self.lru = self.pinned_blocks = 0
        self.consumed = self.expired = self.pressure_released = 0
        reset = getattr(self.policy, "reset", None)
        if reset is not None:
            reset(rng)

    # ------------------------------------------------------------ called by the instance
    def on_finish(self, instance: Any, request: Any, hashes: list[int], now: float) -> None:
        """`request` finished on `instance` and its blocks were freed; `hashes` were its
        cached prompt blocks. Ask the policy and apply its answer."""
        self.asked += 1
        ttl = check_ttl(self.policy.ttl(request, instance, now),
                        type(self.policy).__name__)
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


__all__ = ["DROP", "Retention", "RetentionPolicy", "check_ttl"]
