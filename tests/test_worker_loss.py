"""A shard worker's process killed mid-training on a real local Ray: the pool starts a
new worker over the same rows, the step is recomputed, and the weights end exactly as
an undisturbed run's; past train.max_worker_failures training stops."""

import os
import signal

import numpy as np
import pytest

from experiments.jobs import training
from tests.raydata import prepared, ray_pool, trained
from trainer.pool import WorkerLostError


class KillWorker:
    """A coordinator listener that SIGKILLs worker `rank`'s process once step `at_step`
    has been taken, before the next is sent: that step finds it dead.

    (A kill from a timer thread "while the next step is computed" raced the end of the
    run: steps of this network take a fraction of a millisecond, and the timer fired
    after the last one, so the loss was never seen.)"""

    def __init__(self, pool, rank, at_step):
        self.pool, self.rank, self.at_step = pool, rank, at_step
        self.killed = []

    def on_step(self, step, epoch, loss, n):
        if step in self.at_step:
            pid = self.pool.info[self.rank]["pid"]  # the worker reported its own pid
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)

    def on_epoch(self, epoch, metrics):
        pass


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("d"), epochs=2)


@pytest.mark.parametrize("data_plane", ["shm", "object_store"])
def test_killed_worker_is_replaced_and_weights_equal_an_undisturbed_run(ray_session, job, data_plane):
    ref = trained(job, training.open_pool(job, 1, local=True))
    pool = ray_pool(job, 2, data_plane=data_plane)
    try:
        first_pid = pool.info[1]["pid"]
        killer = KillWorker(pool, rank=1, at_step={3, 20})  # twice: in epoch 1 and epoch 2
        theta = trained(job, pool, [killer])
        assert pool.failures == 2 and len(pool.events) == 2, (
            killer.killed, first_pid, pool.events, [i["pid"] for i in pool.info], pool.resizes)
        assert pool.info[1]["pid"] not in (first_pid, killer.killed[-1])  # a new process
        assert pool.info[1]["rows"] == (502, 1003) and pool.info[1]["rows_held"] == 501
        assert "worker 1 (rows 502-1003) lost" in pool.events[0]
    finally:
        pool.close()
    rel = np.max(np.abs(theta - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-9, f"relative difference to the undisturbed run {rel:.2e}"


def test_losses_past_the_limit_stop_training(ray_session, job):
    pool = ray_pool(job, 2, max_failures=0)
    try:
        with pytest.raises(WorkerLostError, match="1 worker loss, more than train.max_worker_failures=0 allows"):
            trained(job, pool, [KillWorker(pool, rank=0, at_step={2})])
    finally:
        pool.close()
