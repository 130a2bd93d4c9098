"""Weighted-priority admission: rank waiting requests by a linear score over their features.

A learned priority function in its simplest form: each waiting request gets the score ``w .
f(request)`` over the small, normalised feature vector below, and the request with the **lowest**
score is admitted first (a score is a rank key, as in `RankedAdmission`: smallest first, ties in
canonical queue order). The weights `w` are the policy's only parameters, so an agent can set them
once per scheduling interval (`servegym.envs.interval_env.IntervalEnv`) instead of answering every
admission. Scoring jobs with a learned function of their features is Decima's idea (Mao et al.,
"Learning Scheduling Algorithms for Data Processing Clusters", SIGCOMM 2019: a learned per-node
score, softmax over nodes) and, for LLM serving, that of learned ranking (Fu et al., "Efficient LLM
Scheduling by Learning to Rank", NeurIPS 2024: a learned score orders the queue, shortest-predicted-
first). A linear score generalises the ranked heuristics it contains as corner cases (`PRESETS`):
FCFS (all weights 0), SPF (shortest prefill first), SJF / SRPT on output lengths (FastServe, Wu et
al. 2023; SSJF, Qiu et al. 2024), strict priority (vLLM's priority scheduling), and least-TTFT-slack
first (an EDF variant, Liu and Layland 1973; with the "late" feature, the "late last" fix of Andes,
Qiu et al. 2024).

Features, in order (`FEATURES`; squash(x, s) = x / (x + s), in [0, 1)):

    0 prefill     squash(tokens still to compute before the next token, 1024): the prompt,
                  or prompt + generated tokens after a recompute preemption (SPF's key)
    1 output      squash(predicted total output tokens, 256)
    2 remaining   squash(predicted output tokens still to generate, 256)
    3 waited      squash(seconds since arrival, TTFT target)
    4 slack       (TTFT target - waited) / target clipped to [-1, 1]; 1 once the first
                  token is out (a resumed request has no TTFT at stake)
    5 late        1 if the TTFT target has already passed without a first token, else 0
    6 prefix_hit  fraction of the prompt's blocks already in the prefix cache (0 without
                  prefix caching)
    7 priority    squash(priority class, 4) (lower class = more urgent; classes < 0 read 0)
    8 preempted   1 if the request was preempted before (it waits to be recomputed), else 0
    9 bias        1 (shifts every score alike: it never changes the order)

The TTFT target is the request's own, or `default_ttft_slo` where it has none. Output
lengths come from a `LengthPredictor` with the same knowledge options as the length
heuristics (``lengths`` = "oracle" | "predicted" | "none", `sigma`, `buckets`, `prior`).

Admission rule (`RankedAdmission`'s): admit the best-ranked candidate if it fits; if not,
STOP (vLLM's head-of-line rule on the ranked queue), or with `backfill` admit the
best-ranked candidate that fits. When STOP is refused (the instance would idle), the
best-ranked candidate that fits is admitted. Only features with a nonzero weight are
computed, so the FCFS and one-feature presets cost what the heuristics they mirror cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from servegym.agents.heuristics.base import PredictorUser
from servegym.envs.protocol import STOP, Decision

if TYPE_CHECKING:
    from servegym.envs.core.request import Request

FEATURES: tuple[str, ...] = ("prefill", "output", "remaining", "waited", "slack", "late",
                             "prefix_hit", "priority", "preempted", "bias")
NUM_FEATURES = len(FEATURES)
PREFILL_SCALE = 1024.0
OUTPUT_SCALE = 256.0
PRIORITY_SCALE = 4.0


def _preset(**weights: float) -> tuple[float, ...]:
    return tuple(float(weights.get(name, 0.0)) for name in FEATURES)


# Weight vectors of known rules (lowest score first). Exact: fcfs (FCFSAdmission's picks),
# spf (ShortestPromptFirst), sjf / srpt (ShortestOutputFirst / ShortestRemainingFirst with
# oracle lengths, whose integer lengths squash to distinct scores), priority (StrictPriority
# for classes >= 0). Approximate: lsf (EarliestDeadlineFirst while no request is more than
# one target late, beyond which slack saturates at -1), lsf-late-last (edf-late-last alike).
PRESETS: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "fcfs": _preset(),
    "spf": _preset(prefill=1.0),
    "sjf": _preset(output=1.0),
    "srpt": _preset(remaining=1.0),
    "priority": _preset(priority=1.0),
    "lsf": _preset(slack=1.0),
    "lsf-late-last": _preset(slack=0.5, late=1.0),
})


def _squash(value: float, scale: float) -> float:
    return value / (value + scale) if value > 0 else 0.0


def check_weights(weights: Any) -> np.ndarray:
    """`weights` as a float64 vector of `NUM_FEATURES` entries in [-1, 1], or a ValueError
    saying what is wrong and what to pass."""
    expected = (f"pass {NUM_FEATURES} finite numbers in [-1, 1], one per feature "
                f"{list(FEATURES)}, or a preset name from {sorted(PRESETS)}")
    try:
        vector = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights {weights!r} are not numbers; {expected}") from None
    if vector.shape != (NUM_FEATURES,):
        raise ValueError(f"weights have shape {vector.shape}, need ({NUM_FEATURES},); {expected}")
    bad = ~np.isfinite(vector)
    if bad.any():
        names = [FEATURES[i] for i in np.flatnonzero(bad)]
        raise ValueError(f"weights hold NaN or inf for {names}; {expected}")
    outside = np.abs(vector) > 1.0
    if outside.any():
        names = {FEATURES[i]: float(vector[i]) for i in np.flatnonzero(outside)}
        raise ValueError(f"weights outside [-1, 1] (the IntervalEnv action bounds): {names}; "
                         f"{expected} (dividing by the largest |w| keeps the ranking)")
    return vector


class WeightedPriorityAdmission(PredictorUser):
    """Admit the waiting request with the lowest score ``w . f`` (see the module docstring).

    Args:
        weights: the initial weights (a preset name or `NUM_FEATURES` numbers in [-1, 1]);
            `set_weights` changes them at any time, e.g. once per scheduling interval.
        lengths, sigma, buckets, prior: output-length knowledge (`LengthPredictor`).
        backfill: when the best-ranked request does not fit, admit the best-ranked one that
            does instead of stopping.
        default_ttft_slo: TTFT target (s) of requests without their own.
    """

    def __init__(self, weights: str | Sequence[float] | np.ndarray = "fcfs",
                 lengths: str = "oracle", sigma: float = 0.5,
                 buckets: Sequence[float] | None = None, prior: float = 256.0,
                 backfill: bool = False, default_ttft_slo: float = 2.0) -> None:
        if not (isinstance(default_ttft_slo, int | float) and 0 < default_ttft_slo < math.inf):
            raise ValueError(f"default_ttft_slo must be a finite number of seconds > 0, got "
                             f"{default_ttft_slo!r}")
        self._init_predictor(lengths, sigma, buckets, prior)
        self.backfill = bool(backfill)
        self.default_ttft_slo = float(default_ttft_slo)
        self._columns: tuple[Callable[[Decision], np.ndarray], ...] = (
            self._prefill, self._output, self._remaining, self._waited, self._slack,
            self._late, self._prefix_hit, self._priority, self._preempted, self._bias)
        self._weights = np.zeros(NUM_FEATURES)
        self._active: list[int] = []
        self.set_weights(weights)

    # ------------------------------------------------------------------ weights
    @property
    def weights(self) -> np.ndarray:
        """A copy of the current weights, one per feature of `FEATURES`."""
        return self._weights.copy()

    def set_weights(self, weights: str | Sequence[float] | np.ndarray) -> None:
        """Use `weights` (a preset name or numbers, validated by `check_weights`) from now on."""
        if isinstance(weights, str):
            if weights not in PRESETS:
                raise ValueError(f"unknown weight preset {weights!r}; presets: {sorted(PRESETS)}")
            weights = PRESETS[weights]
        self._weights = check_weights(weights)
        self._active = [int(i) for i in np.flatnonzero(self._weights)]

    # ------------------------------------------------------------------ protocol
    def bind(self, decision: Decision) -> None:
        """Draw this workload's length predictions if not done yet (first decision)."""
        self._bind(decision)

    def output_estimate(self, request: Request) -> float:
        """Predicted total output tokens of `request` (after `bind`)."""
        return self.predictor.predict(request)

    def decide(self, decision: Decision) -> int:
        self._bind(decision)
        candidates = decision.candidates
        scores = self.scores(decision)
        best = int(np.argmin(scores))  # the first of equal scores: canonical order
        instance = decision.instance
        if instance.can_admit(candidates[best]):
            return best
        if not self.backfill and decision.can_stop():
            return STOP
        for index in np.argsort(scores, kind="stable").tolist():
            if index != best and instance.can_admit(candidates[index]):
                return index
        return STOP  # nothing fits: STOP is then always allowed

    # ------------------------------------------------------------------ scoring
    def scores(self, decision: Decision) -> np.ndarray:
        """Score of every candidate (lower is admitted first); only weighted features."""
        scores = np.zeros(len(decision.candidates))
        for index in self._active:
            scores += self._weights[index] * self._columns[index](decision)
        return scores

    def features(self, decision: Decision) -> np.ndarray:
        """The full (candidates x `NUM_FEATURES`) feature matrix, for inspection."""
        self._bind(decision)
        return np.stack([column(decision) for column in self._columns], axis=1)

    def _target(self, request: Request) -> float:
        return request.ttft_slo if request.ttft_slo < math.inf else self.default_ttft_slo

    @staticmethod
    def _prefill(decision: Decision) -> np.ndarray:
        return _column(decision, lambda r: _squash(
            r.prompt_len + r.num_generated - r.num_computed, PREFILL_SCALE))

    def _output(self, decision: Decision) -> np.ndarray:
        predict = self.predictor.predict
        return _column(decision, lambda r: _squash(predict(r), OUTPUT_SCALE))

    def _remaining(self, decision: Decision) -> np.ndarray:
        remaining = self.predictor.remaining
        return _column(decision, lambda r: _squash(remaining(r), OUTPUT_SCALE))

    def _waited(self, decision: Decision) -> np.ndarray:
        now, target = decision.time, self._target
        return _column(decision, lambda r: _squash(now - r.arrival_time, target(r)))

    def _slack(self, decision: Decision) -> np.ndarray:
        now, target = decision.time, self._target
        return _column(decision, lambda r: ttft_slack(r, now, target(r)))

    def _late(self, decision: Decision) -> np.ndarray:
        now, target = decision.time, self._target
        return _column(decision, lambda r: float(
            not r.num_generated and now - r.arrival_time > target(r)))

    @staticmethod
    def _prefix_hit(decision: Decision) -> np.ndarray:
        bm = decision.instance.bm
        if not bm.enable_prefix_caching:
            return np.zeros(len(decision.candidates))
        return _column(decision, lambda r: prefix_hit_fraction(r, bm))

    @staticmethod
    def _priority(decision: Decision) -> np.ndarray:
        return _column(decision, lambda r: _squash(r.priority, PRIORITY_SCALE))

    @staticmethod
    def _preempted(decision: Decision) -> np.ndarray:
        return _column(decision, lambda r: float(r.num_preemptions > 0))

    @staticmethod
    def _bias(decision: Decision) -> np.ndarray:
        return np.ones(len(decision.candidates))


def _column(decision: Decision, feature: Callable[[Request], float]) -> np.ndarray:
    candidates = decision.candidates
    return np.fromiter(map(feature, candidates), np.float64, len(candidates))


def ttft_slack(request: Request, now: float, target: float) -> float:
    """(target - waited) / target clipped to [-1, 1]; 1 once the first token is out."""
    if request.num_generated:
        return 1.0
    return max(-1.0, min(1.0, (target - (now - request.arrival_time)) / target))


def prefix_hit_fraction(request: Request, bm: Any) -> float:
    """Fraction of the request's prompt blocks found in `bm`'s prefix cache now."""
    hashes = request.prefix_hashes
    if not hashes or not bm.enable_prefix_caching:
        return 0.0
    return bm.count_prefix_hits(request)[0] / len(hashes)


__all__ = ["FEATURES", "NUM_FEATURES", "PRESETS", "WeightedPriorityAdmission", "check_weights",
           "prefix_hit_fraction", "ttft_slack"]
