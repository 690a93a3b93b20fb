"""Starting the Ray pool's workers and moving them to a new layout (the executing side
of workers/reshard.py): new actors read their rows while the job waits, bounded; a
change of size is one `reshard` at a step boundary, after which the transport is
wired anew. RayPool (workers/ray_pool.py) is made of this and of recovery
(workers/pool_recovery.py) and growth (workers/pool_growth.py).
"""

from __future__ import annotations

import logging
import time

import ray

from trainer.errors import InputError, WorkerLostError
from workers.data.fingerprint import raise_if_changed
from workers.hang import FACTOR, FIRST_S
from workers.pool_policy import Replace, Stop
from workers.pool_state import PoolState
from workers.pool_waits import wait_ready
from workers.reshard import reassign
from workers.data.storage_env import worker_error

log = logging.getLogger("workers.ray_pool")  # the pool's one logger: lost-worker lines read the same from every part


class StragglerDeadline:
    """A deadline for starting workers: none until the first of them is ready
    (`first_seconds` after t0), then t0 + max(FIRST_S, FACTOR x first_seconds)."""

    def __init__(self, t0: float, first_seconds: float | None = None):
        self.t0, self.first_seconds = t0, first_seconds

    def __call__(self, n_ready: int) -> float | None:
        if self.first_seconds is None:
            if not n_ready:
                return None
            self.first_seconds = time.monotonic() - self.t0
        return self.t0 + max(FIRST_S, FACTOR * self.first_seconds)

    def seconds(self) -> float:
        """The bound it has come to (a worker being ready, or counted as if one were)."""
        until = self(1)
        assert until is not None
        return until - self.t0


class Launching(PoolState):
    """The part of RayPool that starts actors and carries out a new layout."""

    def _start(self, lo: int, hi: int):
        return self._actor.remote(self._task, lo, hi, self._cpus)

    def _count_losses(self, lost: list[int], reason: str) -> Replace | None:
        """Count the workers `lost`; the failure policy's decision (Replace or None), or
        WorkerLostError when it says Stop."""
        self.failures += len(lost)
        decision = self.failure_policy.on_loss(self.failures, lost, reason)
        if isinstance(decision, Stop):
            raise WorkerLostError(decision.reason)
        return decision

    def _launch(self, ranges, takers, timeout: float | None, when: str) -> dict:
        """New actors for the ranges no current actor takes, ready (their rows read):
        {index: (actor, info)}. One that dies meanwhile is a lost worker: counted
        against max_failures and started again. Those not ready within `timeout` (None:
        no limit) or when the job is asked to stop are stopped and left out."""
        should_stop = self.waits.should_stop
        starting = self._start_missing(ranges, takers)
        # The pool's start (no timeout): no bound until a worker has read its rows, then
        # the others get FACTOR times as long (at least FIRST_S): the rows are split
        # evenly, so a worker far behind hangs (workers/hang.py).
        straggler = StragglerDeadline(time.monotonic()) if timeout is None else None
        deadline: float | StragglerDeadline = straggler or time.monotonic() + (timeout or 0.0)
        ready: dict = {}
        try:
            while starting:
                done, died = wait_ready(starting, deadline, should_stop)
                ready.update(done)
                if straggler is not None and not should_stop():
                    hung = [j for j in starting if j not in done and j not in died]
                    died.update({j: f"hung: its rows not read within {straggler.seconds():.0f} s, "
                                    f"{FACTOR:g}x the first worker's time" for j in hung})
                    straggler = deadline = StragglerDeadline(time.monotonic(), straggler.first_seconds)
                starting = {}
                for j, why in sorted(died.items()):
                    reason = f"worker {j} (rows {ranges[j][0]}-{ranges[j][1]}) died {when} ({why})"
                    self._count_losses([j], reason)
                    self.events.append(f"{reason}; started again")
                    log.warning("rayprop: %s; started again", reason)
                    actor = self._start(*ranges[j])
                    starting[j] = (actor, actor.ready.remote())
        except BaseException:
            for actor, _ in [*starting.values(), *ready.values()]:
                ray.kill(actor)
            raise
        errors = [info for _, info in ready.values() if info["error"]]
        if errors:
            for actor, _ in ready.values():
                ray.kill(actor)
            for info in errors:  # a file other than the job's fingerprint says: exit 2, the run FAILED
                raise_if_changed(info)
            if timeout is None:  # the first reading of the rows: the user's data (which side fails)
                raise InputError(worker_error(self._task.source_spec, errors[0]))
            raise WorkerLostError(f"a new worker could not read its rows: {errors[0]['error']}")
        return dict(sorted(ready.items()))

    def _plan(self, n: int, keep: list[int]) -> tuple[list, list]:
        """(row ranges for n workers, for each range the rank in `keep` that takes it or
        None for a new actor)."""
        ranges = self._task.ranges(n)
        takers = reassign([self.ranges[r] for r in keep], ranges)
        return ranges, [None if i is None else keep[i] for i in takers]

    def _start_missing(self, ranges, takers) -> dict:
        """New actors for the ranges no current actor takes, or kept ones renewed over them
        (RayPool's `kept`): {index: (actor, ready ref)}."""
        started = {}
        for j, taker in enumerate(takers):
            if taker is None and self._kept:  # a process of an earlier pool: over these rows now
                actor = self._kept.pop(0)
                started[j] = (actor, actor.renew.remote(self._task, *ranges[j]))
            elif taker is None:
                actor = self._start(*ranges[j])
                started[j] = (actor, actor.ready.remote())
        return started

    def _reshard(self, ranges, takers, started: dict, same_workers: bool = False) -> None:
        """Move to len(ranges) workers at a step boundary: takers[j] (a current rank)
        or started[j] (a new, ready actor) holds ranges[j]; current actors that take no
        range are stopped; the transport is wired anew. same_workers: a rebalance (every
        worker keeps its rank); else the workers' speeds are measured anew."""
        if self.balance is not None and not same_workers:
            self.balance.workers_changed()
        self.transport.unwire()
        for r, actor in enumerate(self.actors):
            if r not in takers:
                ray.kill(actor)
        moves = {j: self.actors[t].reshard.remote(*ranges[j]) for j, t in enumerate(takers)
                 if t is not None and tuple(self.ranges[t]) != tuple(ranges[j])}
        actors = [started[j][0] if t is None else self.actors[t] for j, t in enumerate(takers)]
        infos = [started[j][1] if t is None else self.info[t] for j, t in enumerate(takers)]
        # The new layout first: if a moving worker dies now, recovery replaces it over its new rows.
        self.actors, self.info, self.ranges = actors, infos, ranges
        # A mover that dies or hangs is named (WorkersLost) by its new rank.
        infos = self.waits.all(list(moves.values()), [[j] for j in moves], time.monotonic() + FIRST_S)
        for j, info in zip(moves, infos):
            self.info[j] = info
            raise_if_changed(info)  # it read a file that changed: stop the job
        assert sum(i["n_train"] for i in self.info) == self._n_train, "a re-shard must cover every training row"
        self.transport.wire(self.actors, self.info)

    def _resize(self, ranges, takers, started: dict, why: str) -> None:
        """_reshard to another size, and the line that says so."""
        old = self.num_workers
        try:
            self._reshard(ranges, takers, started)
        finally:  # the new layout counts even if a moving worker died in it (then recovered)
            if len(self.actors) != old:
                self.resizes.append(f"{old} -> {len(self.actors)} workers: {why}")
