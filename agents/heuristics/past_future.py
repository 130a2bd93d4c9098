"""Past-Future memory-aware admission (LightLLM).

Gong et al., "Past-Future Scheduler for LLM Serving under SLA Guarantees", ASPLOS 2025, as
LightLLM's `PastFutureQueue`: admit the head of the waiting queue only while the *future peak*
KV use of the running batch plus the newcomer, predicted from the *past* output lengths,
fits in the KV cache, so admitted requests are rarely preempted later.

* History: the output lengths of the last `window` finished requests, seeded with `window/2`
  copies of `prior_output_len` (LightLLM's `router_max_new_token_len`).
* A running request that has generated g tokens gets a total output length drawn from the
  history conditioned on being > g: uniform over the sorted history values above g, with g
  and its cap (`max_model_len - prompt`, the longest it may run) added as end points and
  linear interpolation between neighbours. The newcomer's length is a random history value.
* Peak: with requests sorted by remaining tokens r_1 >= r_2 >= ... and current tokens s_i
  (prompt + generated), the KV use when the k-th longest finishes is
  k * r_k + s_1 + ... + s_k; the peak is the maximum over k.
* `min(max_samples, min_draws // batch + 1)` independent draws (LightLLM: 5 and 200); the
  largest peak counts. Admit if it is at most `(1 - reserve)` of the KV capacity in tokens
  (minus the watermark), LightLLM's 5% reserve by default.

Only the head is ever admitted while the instance is busy (FCFS order), so the policy declares
`head_of_line`. The draws use the policy's generator (from `reset(rng)`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from servegym.envs.core.request import FINISHED
from servegym.envs.protocol import STOP, Decision

if TYPE_CHECKING:
    from servegym.envs.core.instance import Instance
    from servegym.envs.core.request import Request


class PastFutureAdmission:
    """LightLLM's Past-Future admission (see the module docstring)."""

    head_of_line = True

    def __init__(self, window: int = 200, prior_output_len: int = 1024, max_samples: int = 5,
                 min_draws: int = 200, reserve: float = 0.05) -> None:
        if window < 2 or prior_output_len < 1 or max_samples < 1 or min_draws < 1:
            raise ValueError("window >= 2, prior_output_len >= 1, max_samples >= 1 and "
                             "min_draws >= 1 are required")
        if not 0 <= reserve < 1:
            raise ValueError(f"reserve is a fraction of the KV cache in [0, 1), got {reserve}")
        self.window = int(window)
        self.prior_output_len = int(prior_output_len)
        self.max_samples = int(max_samples)
        self.min_draws = int(min_draws)
        self.reserve = float(reserve)
        self.reset()

    def reset(self, rng: np.random.Generator | None = None) -> None:
        self._rng = rng
        self.history: deque[int] = deque([self.prior_output_len] * (self.window // 2),
                                          maxlen=self.window)
        self._seen = 0  # requests of `Simulator.departed` already read

    def decide(self, decision: Decision) -> int:
        instance = decision.instance
        self._record_finished(instance.sim.departed)
        head = decision.candidates[0]
        if not instance.can_admit(head):
            if decision.can_stop():
                return STOP
            return int(np.flatnonzero(decision.mask())[0])
        if decision.can_stop() and self.predicted_peak(instance, head) > self.capacity(instance):
            return STOP
        return 0

    def capacity(self, instance: Instance) -> float:
        """KV tokens the predicted peak may use."""
        blocks = instance.bm.num_blocks - instance.watermark_blocks
        return (1.0 - self.reserve) * blocks * instance.block_size

    def predicted_peak(self, instance: Instance, newcomer: Request) -> float:
        """Largest predicted future KV use (tokens) of the running batch plus `newcomer`."""
        if self._rng is None:
            raise RuntimeError("PastFutureAdmission: call reset(rng) before deciding")
        history = np.sort(np.fromiter(self.history, dtype=np.float64, count=len(self.history)))
        running = instance.running
        n = len(running) + 1
        samples = min(self.max_samples, self.min_draws // n + 1)
        current = np.empty(n)
        generated = np.empty(n)
        cap = np.empty(n - 1)
        for i, request in enumerate(running):
            current[i] = request.prompt_len + request.num_generated
            generated[i] = request.num_generated
            cap[i] = max(instance.max_model_len - request.prompt_len, request.num_generated + 1)
        current[-1] = newcomer.prompt_len + newcomer.num_generated
        generated[-1] = newcomer.num_generated
        total = np.empty((samples, n))
        total[:, :-1] = self._conditional_draws(history, generated[:-1], cap, samples)
        total[:, -1] = self._rng.choice(history, size=samples)
        remaining = np.maximum(total - generated, 1.0)
        return float(peak_usage(current, remaining).max())

    def _conditional_draws(self, history: np.ndarray, generated: np.ndarray, cap: np.ndarray,
                           samples: int) -> np.ndarray:
        """Per request, draws of the total length from [g, history values > g, cap]."""
        m = history.size
        start = np.searchsorted(history, generated, side="right")
        tail = m - start  # history values above g
        position = self._rng.random((samples, generated.size)) * (tail + 1)
        low = np.floor(position).astype(np.int64)
        frac = position - low

        def value(k: np.ndarray) -> np.ndarray:
            inner = history[np.clip(start + k - 1, 0, m - 1)] if m else np.zeros_like(generated)
            return np.where(k == 0, generated, np.where(k >= tail + 1, cap, inner))

        left, right = value(low), value(low + 1)
        return np.round(left + (right - left) * frac)

    def _record_finished(self, departed: list[Request]) -> None:
        for request in departed[self._seen:]:
            if request.status == FINISHED:  # not rejected
                self.history.append(request.num_generated)
        self._seen = len(departed)


def peak_usage(current: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """Peak KV tokens per row: max_k of k * r_(k) + (s of the k longest-remaining requests).

    `current` (n,) tokens held now; `remaining` (samples, n) tokens still to generate.
    """
    order = np.argsort(-remaining, axis=1, kind="stable")
    rem = np.take_along_axis(remaining, order, axis=1)
    held = np.cumsum(current[order], axis=1)
    sizes = np.arange(1, remaining.shape[1] + 1)
    return (rem * sizes + held).max(axis=1)
