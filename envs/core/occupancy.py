"""Who is in the system: arrivals, departures, and the time integral behind latency rewards.

Shared by every backend (the simulator and the live engines), so the envs' rewards read the
same numbers whichever runs.
"""

from __future__ import annotations

import bisect

from servegym.envs.core.request import Request


class Occupancy:
    """Mixin: the episode's arrival times, departure and first-token logs, O(1) sums for
    the integral of requests in the system."""

    def reset_occupancy(self, arrival_times: list[float]) -> None:
        """Empty logs for an episode whose requests arrive at `arrival_times` (sorted)."""
        self.departed: list[Request] = []  # finished or rejected, in order; read incrementally
        self.first_tokens: list[Request] = []  # requests in order of their first token
        self.arrival_times = arrival_times  # every request's; the first `arrived_count` so far
        self.arrived_count = 0
        self.arrival_sum = 0.0
        self.departed_arrival_sum = 0.0
        self.departed_finish_sum = 0.0

    def record_arrival(self, request: Request) -> None:
        self.arrived_count += 1
        self.arrival_sum += request.arrival_time

    def arrivals_since(self, time: float) -> int:
        """Requests that arrived at or after `time` (so far): the recent arrival rate."""
        arrived = self.arrived_count
        return arrived - bisect.bisect_left(self.arrival_times, time, 0, arrived)

    def record_first_token(self, request: Request) -> None:
        """A request produced its first token (its TTFT is settled)."""
        self.first_tokens.append(request)

    def record_departure(self, request: Request, time: float) -> None:
        """A request left the system at `time` (finished, or rejected on arrival)."""
        self.departed.append(request)
        self.departed_arrival_sum += request.arrival_time
        self.departed_finish_sum += time

    def requests_in_system(self) -> int:
        return self.arrived_count - len(self.departed)

    def latency_area(self, time: float) -> float:
        """Integral over [0, time] of the number of requests in the system (request-seconds).

        Exact for any `time` not before the last processed event: departed requests count
        until they left, the others until `time`.
        """
        active_arrivals = self.arrival_sum - self.departed_arrival_sum
        return (self.departed_finish_sum - self.departed_arrival_sum
                + self.requests_in_system() * time - active_arrivals)
