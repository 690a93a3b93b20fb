"""float32 bit for bit on a real local Ray: 1, 2, 3, 4 and 8 shard workers (shared-memory
plane and object store) end with np.array_equal weights to local mode; so do a pool
that shrinks and grows at step boundaries and one whose worker is killed and replaced.
(Three nodes: tests/test_multinode.py.)"""

import numpy as np
import pytest

from experiments.jobs import training
from tests.raydata import prepared, ray_pool, trained
from tests.test_worker_loss import KillWorker

RAY_CPUS = 8  # the ray_session's logical CPUs: 8 one-CPU workers share the machine's cores


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("d"), epochs=2, dtype="float32", exact_sums=True)


@pytest.fixture(scope="module")
def local(job):
    theta = run(job, training.open_pool(job, 1, local=True))
    assert theta.dtype == np.float32
    return theta


def run(job, pool, listeners=()):
    try:
        return trained(job, pool, listeners)
    finally:
        pool.close()


@pytest.mark.parametrize("workers,plane", [(1, "shm"), (2, "shm"), (3, "shm"), (4, "shm"), (8, "shm"),
                                           (3, "object_store")])
def test_ray_workers_train_the_bits_of_local_mode(ray_session, job, local, workers, plane):
    pool = ray_pool(job, workers, data_plane=plane)
    assert pool.num_workers == workers
    theta = run(job, pool)
    assert np.array_equal(theta, local), f"{workers} workers ({plane}): max diff {np.abs(theta - local).max():.3e}"
    # The sums travel as float64 integers: one theta-sized float64 array per node (shm),
    # one per worker (object store), per step.
    per_step = 1 if plane == "shm" else workers
    assert pool.traffic["bytes_received"] == pool.traffic["steps"] * per_step * theta.size * 8


class Resize:
    """A coordinator listener that moves the pool to `sizes[step]` workers after that step."""

    def __init__(self, pool, sizes):
        self.pool, self.sizes = pool, sizes

    def on_step(self, step, epoch, loss, n):
        if step in self.sizes:
            pool = self.pool
            ranges, takers = pool._plan(self.sizes[step], list(range(pool.num_workers)))
            started = pool._launch(ranges, takers, 120, "while growing")
            pool._resize(ranges, takers, started, f"test at step {step}")

    def on_epoch(self, epoch, metrics):
        pass


def test_shrink_and_grow_keep_the_bits(ray_session, job, local):
    pool = ray_pool(job, 3)
    resize = Resize(pool, {4: 2, 9: 5, 20: 1})
    theta = run(job, pool, [resize])
    assert [line.split(":")[0] for line in pool.resizes] == ["3 -> 2 workers", "2 -> 5 workers", "5 -> 1 workers"]
    assert np.array_equal(theta, local)


def test_replaced_worker_keeps_the_bits(ray_session, job, local):
    pool = ray_pool(job, 3)
    killer = KillWorker(pool, rank=1, at_step={5})
    theta = run(job, pool, [killer])
    assert pool.failures == 1 and killer.killed
    assert np.array_equal(theta, local)
