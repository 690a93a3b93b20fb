"""Waiting for the Ray pool's workers: every wait bounded, every wait stoppable.

A worker that dies, or is silent past its wait's bound (workers/hang.py), is named
by rank as `WorkersLost`; the pool then recovers (workers/pool_recovery.py). Every
wait also looks at the job's stop request every SLICE_S and gives up the step in
flight (StepAbandoned) once the request is STOP_GRACE_S old.
"""

from __future__ import annotations

import time

import ray

from trainer.errors import one_line
from trainer.pool import StepAbandoned
from workers.hang import SLICE_S, StopGrace, WaitBound
from workers.node_plane import PeerLost


class WorkersLost(Exception):
    """Workers `ranks` died or hang (no answer within the bound): lost, by name."""

    def __init__(self, ranks: list[int], why: str):
        super().__init__(sorted(set(ranks)), why)
        self.ranks = sorted(set(ranks))

    def __str__(self) -> str:
        return str(self.args[1])


# What a dead (or hung) worker process or node looks like to the driver.
LOST_WORKER_ERRORS = (ray.exceptions.RayActorError, PeerLost, WorkersLost)


def never() -> bool:
    return False


def named(e: Exception, owners: list[int]) -> Exception:
    """The error of a call that answered for `owners` (ranks, by slot), as WorkersLost
    naming the workers it lost; other errors (a bug) as they are."""
    cause = getattr(e, "cause", None) or e  # a leader's RayTaskError carries its PeerLost
    if isinstance(cause, PeerLost):
        slots = getattr(cause, "slots", [cause.slot])
        return WorkersLost([owners[s] for s in slots if s < len(owners)], one_line(cause))
    if isinstance(cause, WorkersLost):
        return cause
    if isinstance(e, ray.exceptions.RayActorError):
        return WorkersLost([owners[0]], one_line(e))
    return e


class Waits:
    """The pool's bounds (steps and evaluations apart) and the stop request of the call
    in progress, which the pool's caller passes in with each call (`stop_on`)."""

    def __init__(self, hang_seconds: float | str):
        # How long a step or an evaluation may wait for a worker before it counts as hung.
        self.step_bound = WaitBound(hang_seconds)
        self.eval_bound = WaitBound(hang_seconds)
        self.should_stop = never
        self.give_up = StopGrace(never)

    def stop_on(self, should_stop) -> None:
        """The stop request of the calls to come (None: none). The same request keeps
        its grace: a wait gives up once it is STOP_GRACE_S old, not 2 s after each call."""
        should_stop = should_stop or never
        if should_stop != self.should_stop:  # a bound method is made anew at each look-up: equal, not the same
            self.should_stop = should_stop
            self.give_up = StopGrace(should_stop)

    def all(self, refs: list, owners: list[list[int]], deadline: float) -> list:
        """ray.get(refs), the stop request looked at every SLICE_S. owners[i]: the ranks
        refs[i] answers for, by slot (one worker's call: [rank]; a leader's node: its
        ranks, the leader first). Raises WorkersLost naming the workers that died or did
        not answer by `deadline`, StepAbandoned on a stop."""
        within = deadline - time.monotonic()  # for the message of a worker that misses it
        try:  # the usual case: every answer in before the first look at the stop flag
            return ray.get(refs, timeout=min(SLICE_S, max(deadline - time.monotonic(), 0)))
        except ray.exceptions.GetTimeoutError:
            pass
        except (*LOST_WORKER_ERRORS, ray.exceptions.RayTaskError):
            pass  # named below, with the rank it came from
        results, pending = {}, dict(zip(refs, range(len(refs))))
        while True:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except (*LOST_WORKER_ERRORS, ray.exceptions.RayTaskError) as e:
                    raise named(e, owners[i]) from None
            if not pending:
                return [results[i] for i in range(len(refs))]
            if self.give_up():
                raise StepAbandoned("stopped while waiting for the workers")
            left = deadline - time.monotonic()
            if left <= 0:
                silent = [owners[i][0] for i in pending.values()]
                raise WorkersLost(silent, f"hung: no answer within {within:.0f} s (cluster.hang_seconds)")
            ray.wait(list(pending), num_returns=len(pending), timeout=min(SLICE_S, left))


def wait_ready(started: dict, deadline, should_stop=never) -> tuple[dict, dict]:
    """({index: (actor, info)} of the new actors that have read their rows by
    `deadline` (None: no limit; a callable: the deadline given how many are ready)
    or until `should_stop()`, looked at every SLICE_S; {index: why} of those that
    died meanwhile). The others (not placed, still starting, or hung) are stopped."""
    index = {ref: j for j, (_, ref) in started.items()}
    done: list = []
    pending = list(index)
    while pending:
        until = deadline(len(done)) if callable(deadline) else deadline
        left = SLICE_S if until is None else max(0.0, min(SLICE_S, until - time.monotonic()))
        came, pending = ray.wait(pending, num_returns=len(pending), timeout=left)
        done += came
        until = deadline(len(done)) if callable(deadline) else deadline
        if (until is not None and time.monotonic() >= until) or should_stop():
            break
    ready: dict = {}
    died: dict = {}
    for ref in done:
        try:
            ready[index[ref]] = (started[index[ref]][0], ray.get(ref))
        except LOST_WORKER_ERRORS as e:
            died[index[ref]] = one_line(e, 80)
    for j, (actor, _) in started.items():
        if j not in ready:
            ray.kill(actor)
    return dict(sorted(ready.items())), died
