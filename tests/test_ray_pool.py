"""Shard workers as Ray actors on a real local Ray: same training as local mode."""

import dataclasses
import os
import sys

import numpy as np
import pytest

from experiments.jobs import training
from tests.raydata import config, ray_pool, write_parquet
from trainer.config import from_dict
from trainer.coordinator import train
from trainer.optimizers import make_optimizer
from trainer.pool import WorkerLostError
from workers.ray_pool import RayPool
from workers.shard import ShardTask


def run(job, pool):
    theta = job.theta0.copy()
    t = job.cfg.train
    result = train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs)
    return theta, result


# Every optimizer over 1, 2 and 3 uneven shards is checked in process
# (test_training.py::test_one_two_three_uneven_shards_train_the_same_weights); the pool
# adds only Ray's transport, which carries (theta, epoch, batch number) whatever the
# optimizer. So Adam (a state of its own, mini-batches with a last one of 7) goes over
# every Ray pool, and the full batch (gd) over one.
POOLS = ((1, "shm"), (2, "shm"), (3, "shm"), (2, "object_store"))


@pytest.mark.parametrize("optimizer,batch_size,pools", [("adam", 64, POOLS), ("gd", None, ((2, "shm"),))],
                         ids=["adam-64-every-pool", "gd-full-batch"])
def test_local_and_1_2_3_ray_workers_end_with_the_same_weights(ray_session, tmp_path, optimizer, batch_size,
                                                               pools):
    path = write_parquet(tmp_path / "d.parquet")
    job = training.prepare(from_dict(config(path, optimizer, batch_size)))
    # 1003 rows, 100 held out -> m = 903 = 14 batches of 64 and a last one of 7
    assert job.plan.n_train == 903 and (batch_size is None or job.plan.batch_size_of(14) == 7)
    ref, ref_result = run(job, training.open_pool(job, 1, local=True))
    # Steps through the node's shared-memory plane, and once through Ray's object store.
    for workers, plane in pools:
        pool = ray_pool(job, workers, data_plane=plane)
        try:
            assert pool.num_workers == workers and pool.n_train == 903 and pool.n_val == 100
            theta, result = run(job, pool)
            steps = pool.traffic["steps"]
            # One node: the coordinator gets one array of sums per step through shared
            # memory, or one per worker through the object store.
            per_step = 1 if plane == "shm" else workers
            assert pool.traffic["bytes_received"] == steps * per_step * theta.nbytes
        finally:
            pool.close()
        rel = np.max(np.abs(theta - ref)) / np.max(np.abs(ref))
        assert rel <= 1e-9, f"{workers} workers ({plane}): relative difference {rel:.2e}"
        assert result.history[-1]["val_loss"] == pytest.approx(ref_result.history[-1]["val_loss"], rel=1e-9)
        assert result.history[-1]["val_accuracy"] == ref_result.history[-1]["val_accuracy"]


def test_each_actor_reads_only_its_rows(ray_session, tmp_path):
    path = write_parquet(tmp_path / "d.parquet", row_group_size=100)
    job = training.prepare(from_dict(config(path)))
    pool = ray_pool(job, 3)
    try:
        info = pool.info
    finally:
        pool.close()
    # 903 training rows in 8 blocks, 2 + 3 + 3 of them per worker, cut where a block's
    # first training row starts (the validation rows before it go to that worker)
    assert [i["rows"] for i in info] == [(0, 253), (253, 629), (629, 1003)] == job.task.ranges(3)
    for i in info:
        lo, hi = i["rows"]
        assert i["rows_held"] == hi - lo  # reported by the worker from what it holds
        # the row groups of 100 rows that overlap [lo, hi), as opened by the worker's reader
        assert i["row_groups_read"] == list(range(lo // 100, (hi - 1) // 100 + 1))
    assert len({i["pid"] for i in info}) == 3


def test_bad_data_in_a_worker_range_is_an_input_error(ray_session, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.errors import InputError

    path = write_parquet(tmp_path / "d.parquet")
    table = pq.read_table(path)
    x0 = table.column("x0").to_numpy().copy()
    x0[900] = np.nan  # in the last worker's range only
    pq.write_table(table.set_column(0, "x0", pa.array(x0)), path, row_group_size=100)
    job = training.prepare(from_dict(config(path)))  # the driver reads no rows, so it cannot see it
    with pytest.raises(InputError, match="NaN at row 900"):
        ray_pool(job, 3)


class DyingTask(ShardTask):
    """A shard whose worker process dies while it reads its rows."""

    def open(self, lo, hi, source=None, threads=1):
        os._exit(1)


def test_a_worker_that_dies_while_starting_is_a_lost_worker(ray_session, tmp_path):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor unpickles DyingTask
    path = write_parquet(tmp_path / "d.parquet")
    job = training.prepare(from_dict(config(path)))
    task = DyingTask(*(getattr(job.task, f.name) for f in dataclasses.fields(job.task)))
    # Each death is a lost worker, started again, until train.max_worker_failures is past.
    with pytest.raises(WorkerLostError, match=r"4 worker losses, more than train.max_worker_failures=3 allows "
                                              r"\(last: worker \d \(rows \d+-\d+\) died while starting"):
        RayPool(task, job.cfg.cluster, 2, 3)


def test_a_plane_that_cannot_be_wired_is_one_line_not_a_traceback(ray_session, tmp_path, monkeypatch):
    """The coordinator's node cannot make its shared memory (memfd or the abstract
    socket refused, as when the process is out of file descriptors): RayPool ends with
    a RunError of one line (exit 1) that names the way around it, no traceback.
    (Workers that do not attach in time are lost workers: tests/test_hung_worker.py.)"""
    import errno

    from trainer.errors import RunError
    from workers import transports as module

    def no_plane(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(module, "PlaneHost", no_plane)
    job = training.prepare(from_dict(config(write_parquet(tmp_path / "d.parquet"))))
    with pytest.raises(RunError) as e:
        ray_pool(job, 2)
    assert str(e.value) == ("the shared-memory data plane could not be wired: [Errno 24] Too many open files; "
                            "cluster.data_plane: object_store does without it")
