"""vLLM v1 `scheduler_cls` that lets servegym's decisions choose admission and preemption.

The backend decides before each step (it mirrors vLLM's running loop to find where KV runs
short and asks PREEMPT decisions there, then asks ADMIT decisions), and hands the scheduler
a plan: the requests to admit, in order, and the victims, in order. `schedule()` then
* orders `running` so the victims sit at its end in reverse order: vLLM's FCFS path preempts
  `running.pop()`, so it preempts exactly the policy's victims, first victim first;
* holds back every waiting request the policy did not admit (they are taken out of `waiting`
  for this call and put back afterwards), and puts the admitted ones first, in order.
vLLM still does all the work (allocation, chunking, preemption bookkeeping); where the mirror
predicted wrongly, vLLM's own rules win and the backend counts a mismatch.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler


class PolicyScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan: tuple[list[str], list[str]] | None = None
        self.last_output: Any = None
        self.clock: Any = None  # set by the backend: the clock its virtual time reads
        self.hook_seconds = 0.0  # time spent carrying out the plan, not vLLM's own work

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        clock = self.clock
        start = clock() if clock is not None else 0.0
        plan, self.plan = self.plan, None
        held: list[Any] = []
        if plan is not None:
            admitted, victims = plan
            if victims:
                rank = {rid: i for i, rid in enumerate(victims)}
                keep = [r for r in self.running if r.request_id not in rank]
                chosen = sorted((r for r in self.running if r.request_id in rank),
                                key=lambda r: rank[r.request_id], reverse=True)
                self.running = keep + chosen
            waiting = list(self.waiting)
            by_id = {r.request_id: r for r in waiting}
            admit = [by_id[rid] for rid in admitted if rid in by_id]
            admit_ids = {r.request_id for r in admit}
            held = [r for r in waiting if r.request_id not in admit_ids]
            if waiting:
                self.waiting.remove_requests(waiting)
            for request in admit:
                self.waiting.add_request(request)
        if clock is not None:
            middle = clock()
            self.hook_seconds += middle - start
        output = super().schedule(*args, **kwargs)
        if clock is not None:
            end = clock()
        for request in held:
            self.waiting.add_request(request)
        if clock is not None:
            self.hook_seconds += clock() - end
        self.last_output = output
        return output
