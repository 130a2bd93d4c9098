"""Prefix-cache-affinity routing with a load cap.

Send a request where the longest prefix of its prompt is already cached, so its prefill skips
those blocks (Preble, Srivatsa et al., ICLR 2025; SGLang's cache-aware router), unless that
instance is overloaded: only instances whose outstanding requests (waiting + running +
swapped) are at most `max(min_load + load_slack, load_ratio * min_load)` are eligible, as
SGLang's router falls back to the least loaded instance when the imbalance exceeds its
thresholds. Among the eligible: the most cached leading blocks (`BlockManager.
count_prefix_hits`), then the fewest outstanding requests, then the lowest index. Without
prefix caching (or prefix hashes) this is least-outstanding routing within the cap.
"""

from __future__ import annotations

from servegym.agents.heuristics.load_balance import outstanding
from servegym.envs.protocol import Decision


class PrefixAffinity:
    def __init__(self, load_slack: int = 4, load_ratio: float = 1.5) -> None:
        if load_slack < 0 or load_ratio < 1:
            raise ValueError(f"need load_slack >= 0 and load_ratio >= 1, got "
                             f"{load_slack}, {load_ratio}")
        self.load_slack = int(load_slack)
        self.load_ratio = float(load_ratio)

    def decide(self, decision: Decision) -> int:
        instances = decision.candidates
        request = decision.request
        loads = [outstanding(instance) for instance in instances]
        least = min(loads)
        cap = max(least + self.load_slack, self.load_ratio * least)
        best, best_key = 0, None
        for index, instance in enumerate(instances):
            if loads[index] > cap:
                continue
            hits = instance.bm.count_prefix_hits(request)[0]
            key = (-hits, loads[index], index)
            if best_key is None or key < best_key:
                best, best_key = index, key
        return best
