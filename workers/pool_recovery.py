"""Carrying out the failure policy (workers/pool_policy.py) in the Ray pool.

A lost worker (dead, or silent past its bound: workers/hang.py) is replaced over the
same rows; when no replacement can start within cluster.replace_seconds the pool goes
on with the workers left, over all the rows, down to cluster.min_workers. The policy
decides which (Replace, Shrink, Stop); this module finds the lost workers, kills
them, starts the replacements, and reshards.
"""

from __future__ import annotations

import os
import signal
import time

import ray

from trainer.errors import WorkerLostError, one_line
from trainer.pool import StepAbandoned
from workers.hang import SLICE_S
from workers.pool_launch import Launching, log
from workers.pool_policy import Stop
from workers.pool_waits import LOST_WORKER_ERRORS

# What a call that lost workers raises: a leader's step fails (RayTaskError) when one
# of its node's workers dies.
RECOVERABLE = (*LOST_WORKER_ERRORS, ray.exceptions.RayTaskError)


class Recovery(Launching):
    """The part of RayPool that recovers from lost workers."""

    def _with_recovery(self, call):
        while True:
            try:
                return call()
            except RECOVERABLE as e:
                cause = e
            while True:
                try:
                    self._replace_lost_workers(cause)
                    break
                except RECOVERABLE as again:
                    if again is cause:
                        raise  # not a lost worker after all
                    # Another worker died while the pool recovered: recover again
                    # (train.max_worker_failures bounds the rounds).
                    cause = again

    def _replace_lost_workers(self, cause: Exception) -> None:
        """Start a new actor over each lost worker's rows (Ray places it wherever a
        CPU is free, another node if its node is gone). If none can start within
        placement_timeout, go on with the workers left over all the rows, down to
        min_workers. Count the losses; wire the transport anew."""
        self._drop_joining()
        self.transport.unwire()
        lost = self._find_lost(getattr(cause, "ranks", []))
        reason = one_line(cause)
        if self._count_losses(lost, reason) is None:
            raise cause  # nothing to replace: not a lost worker after all
        for r in lost:
            self._kill(r)
        survivors = [r for r in range(self.num_workers) if r not in lost]
        # The same ranges: the pool's own, which a rebalance may have moved off the even
        # split; survivors keep theirs (nothing read), the lost ones go to new actors.
        ranges = list(self.ranges)
        takers = [None if r in lost else r for r in range(self.num_workers)]
        started = self._launch(ranges, takers, self.placement_timeout, "while starting as a replacement")
        # A solo pool's worker took the steps itself: its replacement goes on from its last mark.
        redo = "training goes on from its last mark" if self.in_worker else "the step is recomputed"
        for r in started:
            event = (f"worker {r} (rows {ranges[r][0]}-{ranges[r][1]}) lost ({reason}); replaced on node "
                     f"{started[r][1]['node_id'][:8]}, {redo}")
            self.events.append(event)
            log.warning("rayprop: %s", event)
        if len(started) == len(lost):
            self._reshard(ranges, takers, started)
            return
        # Some could not start in time: go on with the survivors and the replacements
        # that did start (each in its lost worker's place for now), over all the rows.
        for r, (actor, info) in started.items():
            self.actors[r], self.info[r] = actor, info
        left = sorted([*survivors, *started])
        gone = [r for r in lost if r not in started]
        within = "(stopping: no wait)" if self.waits.should_stop() else f"within {self.placement_timeout:g} s"
        which = ", ".join(f"worker {r} (rows {ranges[r][0]}-{ranges[r][1]})" for r in gone)
        decision = self.failure_policy.on_unplaced(
            left, f"{which} lost ({one_line(reason, 60)}); no CPU for a replacement {within}")
        if isinstance(decision, Stop):
            raise WorkerLostError(decision.reason)
        self._resize(*self._plan(decision.to, list(decision.keep)), {},
                     f"{which} lost ({one_line(reason, 80)}) and no CPU for a replacement "
                     f"{within}; the rows are split over the workers left")

    def _kill(self, rank: int) -> None:
        """End worker `rank`'s actor, and its process now if it is on this node: Ray ends
        a process that does not answer (stopped, hung) only some seconds later."""
        ray.kill(self.actors[rank], no_restart=True)
        info = self.info[rank] if rank < len(self.info) else None
        if info is not None and info["node_id"] == self._here:
            try:
                os.kill(info["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # already gone

    def _find_lost(self, known: list[int]) -> list[int]:
        """`known` (named lost by the failed call) and every other worker that is dead or
        does not answer a ping within the step's hang bound, all pinged at once."""
        others = [r for r in range(self.num_workers) if r not in known]
        refs = {self.actors[r].ready.remote(): r for r in others}
        lost, pending = set(known), list(refs)
        deadline = time.monotonic() + self.waits.step_bound.seconds()
        while pending:
            if self.waits.give_up():
                raise StepAbandoned("stopped while looking for lost workers")
            left = deadline - time.monotonic()
            if left <= 0:
                lost.update(refs[ref] for ref in pending)  # alive, perhaps, but silent: hung
                break
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=min(SLICE_S, left))
            for ref in done:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    lost.add(refs[ref])
        return sorted(lost)
