"""Output-length knowledge: what a scheduler may know about how long a request will run.

Length-aware schedulers (shortest-job-first, memory-aware admission, longest-remaining
preemption) need each request's output length, which a real server does not know. The
literature works at three levels of knowledge, and `LengthPredictor` offers each one:

* ``"oracle"``: the true output length (an upper bound on what prediction can buy; e.g. the
  oracle rows of Fu et al., "Efficient LLM Scheduling by Learning to Rank", NeurIPS 2024).
* ``"predicted"``: the true length times a log-normal error ``exp(sigma * z)``, ``z ~ N(0, 1)``,
  drawn once per request (median-unbiased; ``sigma=0.5`` puts about 68% of predictions within
  a factor 1.65 of the truth, the spread reported for learned predictors such as Qiu et al.,
  "Efficient Interactive LLM Serving with Proxy Model-based Sequence Length Prediction"
  (SSJF), 2024). Optionally bucketed as S3 (Jin et al., "S3: Increasing GPU Utilization
  during Generative Inference for Higher Throughput", NeurIPS 2023) predicts a length class:
  a prediction is replaced by the smallest bucket bound at or above it (the capacity the class
  reserves); predictions above the last bound take the last bound.
* ``"none"``: no per-request knowledge: a constant, the mean of the finished outputs
  reported through `observe` (a server's running mean), or `prior` before any.

`reset(workload, rng)` draws every request's prediction at once (vectorised), so
`predict(request)` is an array lookup by `request.rid` (the request's index in the workload).
The same workload and generator state give the same predictions, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from servegym.envs.core.request import Request
    from servegym.envs.workloads.workload import Workload

LENGTH_MODES = ("oracle", "predicted", "none")


class LengthPredictor:
    """Per-request output-length predictions at one level of knowledge.

    Args:
        mode: ``"oracle"``, ``"predicted"`` or ``"none"`` (see the module docstring).
        sigma: standard deviation of the log of the multiplicative error (``"predicted"``).
        buckets: increasing upper bounds of length classes (S3); ``None`` keeps raw values.
            Applies to ``"oracle"`` and ``"predicted"``.
        prior: the ``"none"`` prediction before any finished output has been observed.
    """

    def __init__(
        self,
        mode: str = "predicted",
        sigma: float = 0.5,
        buckets: Sequence[float] | None = None,
        prior: float = 256.0,
    ) -> None:
        if mode not in LENGTH_MODES:
            raise ValueError(f"unknown length mode {mode!r}; choose one of {LENGTH_MODES}")
        if not (isinstance(sigma, int | float) and np.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        if not (isinstance(prior, int | float) and np.isfinite(prior) and prior > 0):
            raise ValueError(f"prior must be a finite number > 0, got {prior!r}")
        self.mode = mode
        self.sigma = float(sigma)
        self.buckets = _check_buckets(buckets)
        self.prior = float(prior)
        self.predictions: np.ndarray | None = None
        self._observed_sum = 0.0
        self._observed_count = 0

    def reset(self, workload: Workload, rng: np.random.Generator) -> None:
        """Draw the predictions of every request of `workload` (and forget observations)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self._observed_sum = 0.0
        self._observed_count = 0
        if self.mode == "none":
            self.predictions = None
            return
        values = workload.output_len.astype(np.float64)
        if self.mode == "predicted":
            # Drawn even when sigma is 0, so the generator advances the same way for any sigma.
            values = values * np.exp(self.sigma * rng.standard_normal(values.size))
        if self.buckets is not None:
            index = np.minimum(np.searchsorted(self.buckets, values, side="left"),
                               self.buckets.size - 1)
            values = self.buckets[index]
        values.flags.writeable = False
        self.predictions = values

    def predict(self, request: Request) -> float:
        """Predicted total output length of `request` (tokens, the first one included)."""
        if self.mode == "none":
            return self.mean()
        if self.predictions is None:
            raise RuntimeError("LengthPredictor.predict before reset(workload, rng)")
        return float(self.predictions[request.rid])

    def remaining(self, request: Request) -> float:
        """Predicted output tokens still to generate, at least 1 while it is unfinished.

        A request that has outlived its prediction is assumed to be about to finish (the
        prediction is not revised).
        """
        return max(self.predict(request) - request.num_generated, 1.0)

    def observe(self, output_len: int) -> None:
        """Report the length of a finished output (feeds the ``"none"`` running mean)."""
        self._observed_sum += output_len
        self._observed_count += 1

    def mean(self) -> float:
        """The ``"none"`` prediction: mean observed output length, or `prior` before any."""
        if self._observed_count == 0:
            return self.prior
        return self._observed_sum / self._observed_count

    def describe(self) -> dict[str, object]:
        return {"mode": self.mode, "sigma": self.sigma, "prior": self.prior,
                "buckets": None if self.buckets is None else self.buckets.tolist()}


def _check_buckets(buckets: Sequence[float] | None) -> np.ndarray | None:
    if buckets is None:
        return None
    bounds = np.asarray(buckets, dtype=np.float64)
    if bounds.ndim != 1 or bounds.size == 0:
        raise ValueError(f"buckets must be a non-empty 1-D sequence of bounds, got {buckets!r}")
    if not np.all(np.isfinite(bounds)) or np.any(bounds <= 0) or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"buckets must be finite, positive and strictly increasing: {buckets!r}")
    bounds.flags.writeable = False
    return bounds
