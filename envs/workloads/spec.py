"""Reading generator and loader options from plain mappings (Hydra configs included).

Every option error names where in the config it is (``source.prompt.cv``), what is wrong
and what would be valid, so a typo in a YAML file never passes silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from servegym.envs.workloads.workload import WorkloadError

__all__ = ["as_plain", "number", "options", "positive_int", "text"]

_REQUIRED = object()


def as_plain(value: Any) -> Any:
    """``value`` with every mapping turned into a dict and every list/tuple into a list.

    Hydra passes ``DictConfig``/``ListConfig`` objects; they behave as mappings and
    sequences, so no OmegaConf import is needed here.
    """
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [as_plain(v) for v in value]
    return value


def options(
    spec: Any, where: str, required: Sequence[str] = (), optional: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The options of ``spec``: every ``required`` key plus ``optional`` defaults.

    Raises :class:`WorkloadError` for a non-mapping, a missing key or an unknown key.
    """
    if not isinstance(spec, Mapping):
        raise WorkloadError(f"{where} must be a mapping of options, got {spec!r}")
    optional = dict(optional or {})
    known = [*required, *optional]
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise WorkloadError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    missing = [key for key in required if key not in spec]
    if missing:
        raise WorkloadError(f"{where}: missing option(s) {', '.join(missing)}")
    return {**optional, **dict(spec)}


def number(
    where: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
) -> float:
    """A finite float in ``[low, high]`` (``(low, high]`` with ``strict_low``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    result = float(value) if ok else math.nan
    if ok and math.isfinite(result):
        below = low is not None and (result <= low if strict_low else result < low)
        above = high is not None and result > high
        if not (below or above):
            return result
    bounds = _bounds_text(low, high, strict_low)
    raise WorkloadError(f"{where} = {value!r}: must be a finite number{bounds}")


def positive_int(where: str, value: Any, *, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (integral floats such as 2.0 are accepted)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WorkloadError(f"{where} = {value!r}: must be an integer >= {minimum}")
    return int(value)


def text(where: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise WorkloadError(f"{where} = {value!r}: choose one of {', '.join(map(repr, choices))}")
    return str(value)


def _bounds_text(low: float | None, high: float | None, strict_low: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if strict_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return f" {' and '.join(parts)}" if parts else ""
