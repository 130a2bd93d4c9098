"""Route to the instance with the lowest predicted time to first token.

The estimate, per instance, from its state at the arrival and its cost model: the prefill
tokens ahead of the request (waiting requests' tokens to compute, running requests' unfinished
prompt chunks) plus its own prompt (less cached prefix blocks), processed at the prefill
share of the token budget left by the running decodes, `max_num_batched_tokens - running`,
each iteration taking `cost.iteration_time` of a full prefill chunk beside those decodes:

    iterations = ceil(tokens / (budget - running)),
    TTFT ~ iterations * iteration_time([(min(budget - running, tokens), 0)], running, context).

This is the load signal of SLO-aware routers (e.g. the TTFT predictor of Llumnix/Aladdin-style
schedulers) in its simplest form: it ignores KV-limited admission and future arrivals.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from servegym.envs.protocol import Decision

if TYPE_CHECKING:
    from servegym.envs.core.instance import Instance
    from servegym.envs.core.request import Request


def predicted_ttft(instance: Instance, request: Request) -> float:
    """Estimated seconds until `request` gets its first token on `instance`."""
    block_size = instance.block_size
    hits = instance.bm.count_prefix_hits(request)[0]
    tokens = request.prompt_len - hits * block_size
    tokens += sum(r.prompt_len + r.num_generated - r.num_computed for r in instance.waiting)
    decodes = context = 0
    for r in instance.running:
        ahead = r.prompt_len + r.num_generated - r.num_computed
        if ahead > 1 or not r.num_generated:
            tokens += ahead
        else:
            decodes += 1
            context += r.num_computed + 1
    per_iteration = max(instance.config.max_num_batched_tokens - decodes, 1)
    iterations = math.ceil(tokens / per_iteration)
    chunk = min(per_iteration, tokens)
    return iterations * instance.cost.iteration_time([(chunk, 0)], decodes, context)


class MinPredictedTTFT:
    def decide(self, decision: Decision) -> int:
        instances = decision.candidates
        request = decision.request
        return min(range(len(instances)), key=lambda i: predicted_ttft(instances[i], request))
