"""A worker lost after a rebalance, on a real local Ray: its replacement takes the rows
the lost worker held (the rebalanced ones, not the even split), the survivors keep
theirs (nothing read again, the same processes), the line names the lost worker's
rank and rows, and the weights are those of an undisturbed run.

The straggler is made as in test_rebalance (ShardActor.slow_down: a real sleep per
row in its timed compute); the kill is a real SIGKILL of a worker's process."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from tests.raydata import prepared, ray_pool, trained
from workers.local_pool import LocalPool

SLOW = 2  # the straggler's rank
LOST = 0  # the rank killed right after the first rebalance
DELAY = 1e-4  # the straggler's extra seconds per row (test_rebalance's)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("data"), epochs=4, dtype="float64")


class KillAfterFirstMove:
    """A coordinator listener: at the step of the pool's first rebalance it notes the
    ranges and SIGKILLs worker LOST (the next step finds it dead); at the step after,
    the ranges the replacement left. The balancer weighs no move for MIN_STEPS steps
    after a move or a replacement, so nothing else moves rows in between."""

    def __init__(self, pool):
        self.pool = pool
        self.held = self.after = None
        self.pids: list[int] = []
        self.killed_at = None

    def on_step(self, step, epoch, loss, n):
        if self.killed_at is None and self.pool.balance.lines:
            self.held, self.killed_at = list(self.pool.ranges), step
            self.pids = [i["pid"] for i in self.pool.info]
            os.kill(self.pids[LOST], signal.SIGKILL)
        elif self.killed_at is not None and self.after is None:
            self.after = list(self.pool.ranges)

    def on_epoch(self, epoch, metrics):
        pass


def test_a_worker_lost_after_a_rebalance_is_replaced_over_the_rows_it_held(ray_session, job):
    import ray

    ref = trained(job, LocalPool.open(job.task, 1, job.source))
    pool = ray_pool(job, 3, rebalance_seconds=1e-6)
    try:
        even = list(pool.ranges)
        ray.get(pool.actors[SLOW].slow_down.remote(DELAY))
        killer = KillAfterFirstMove(pool)
        theta = trained(job, pool, [killer])
        assert killer.killed_at is not None, "the straggler was not rebalanced"
        assert killer.held != even  # the kill came after rows moved
        assert pool.failures == 1 and len(pool.events) == 1, pool.events
        lo, hi = killer.held[LOST]
        assert pool.events[0].startswith(f"worker {LOST} (rows {lo}-{hi}) lost"), pool.events
        # The replacement took the lost worker's rows; the survivors kept theirs.
        assert killer.after == killer.held, (killer.held, killer.after)
        survivors = [r for r in range(3) if r != LOST]
        assert [pool.info[r]["pid"] for r in survivors] == [killer.pids[r] for r in survivors]
        assert pool.info[LOST]["pid"] != killer.pids[LOST]
    finally:
        pool.close()
    assert np.max(np.abs(theta - ref)) <= 1e-9 * np.max(np.abs(ref))
