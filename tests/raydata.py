"""Small real data files for the Ray tests, and the jobs they train (not a test module)."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(path, m=1003, row_group_size=100, seed=0):
    """m rows (not a multiple of any worker count used), 4 features, 3 classes."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 4))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] * X[:, 2] > 0.3)
    cols = {f"x{j}": X[:, j] for j in range(4)}
    cols["y"] = y
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def config(path, optimizer="adam", batch_size=64, epochs=2, dtype="float64", **train):
    return {"experiment": "raytest",
            "model": {"layers": [4, 12, 3], "hidden_activation": "tanh", "dtype": dtype},
            "data": {"source": str(path), "validation_fraction": 0.1},
            "train": {"optimizer": optimizer, "learning_rate": 0.05, "epochs": epochs,
                      **({} if batch_size is None else {"batch_size": batch_size}), **train}}


def prepared(folder, **cfg):
    """The job of config(FOLDER/d.parquet, **cfg) on write_parquet's rows."""
    from experiments.jobs import training
    from trainer.config import from_dict

    return training.prepare(from_dict(config(write_parquet(folder / "d.parquet"), **cfg)))


def trained(job, pool, listeners=()):
    """The job's weights after its epochs on `pool` (trainer.coordinator.train; the pool stays open)."""
    from trainer.coordinator import train
    from trainer.optimizers import make_optimizer

    theta = job.theta0.copy()
    t = job.cfg.train
    train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs, list(listeners))
    return theta


def ray_pool(job, workers, max_failures=None, **cluster):
    """A RayPool of `workers` over the job's rows; cluster: keys of the job's cluster
    section to change (data_plane, rebalance_seconds, ...)."""
    from workers.ray_pool import RayPool

    return RayPool(job.task, dataclasses.replace(job.cfg.cluster, **cluster), workers,
                   job.cfg.train.max_worker_failures if max_failures is None else max_failures)


class MetricPoints:
    """Stands where a run's MetricLogger would: keeps what its `point` receives."""

    def __init__(self):
        self.got = []

    def point(self, key, value, step):
        self.got.append((key, value, step))
