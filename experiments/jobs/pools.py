"""Where a job runs: Ray (connected through cluster/), and the pool of shard workers on it.

`start_pool` is what `rayprop train` does; a sweep uses the parts (one connection,
a pool per trial in its placement group). Opening a pool reads and checks every row,
so bad data is exit 2 before an MLflow run exists.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

from experiments.jobs.job import Job, Options
from experiments.jobs.overlap import Once, release_ray
from trainer.config import Config


def start_pool(job: Job, opts: Options, workers: int | str, stack: ExitStack):
    """(pool, where it runs in words, the Ray connection's kind, what to call once
    training is over or None) for `rayprop train`; the connection and the pool are
    closed by `stack`, or, once training is over, by that call in the background while
    the model is logged (jobs/overlap.py). Local mode starts no Ray; through Ray Client
    the coordinator goes into the cluster (jobs/remote_pool.py)."""
    cfg = job.cfg
    conn = None
    if opts.local:
        place, kind = "local mode", "none"
    else:
        conn = connect_ray(opts.address or cfg.cluster.address, cpus_needed(cfg, workers), stack)
        place, kind = where(conn), conn.kind
    if kind == "client":
        from experiments.jobs.remote_pool import RemotePool

        pool = RemotePool(job.task, cfg.cluster, workers, cfg.train.max_worker_failures)
    else:
        pool = open_pool(job, workers, opts.local)
    close_pool = Once(pool.close)  # at the end of training, or on the way out
    stack.callback(close_pool)
    return pool, place, kind, release_ray(conn, close_pool)


def connect_ray(address, cpus, stack):
    """Connect to Ray (cluster/), closed by `stack`; returns the Connection."""
    from cluster.auth import enable_token_mode

    if address or os.environ.get("RAY_ADDRESS"):
        enable_token_mode()  # before the first `import ray`: Ray reads RAY_AUTH_MODE once
    from cluster.connect import connect

    return stack.enter_context(connect(address, cpus))


def where(conn) -> str:
    return {"local": "a local Ray started for this job", "client": f"Ray Client at {conn.address}",
            "job": "a Ray job"}.get(conn.kind, f"the Ray cluster at {conn.address}")


def cpus_needed(cfg: Config, workers: int | str) -> int:
    """CPUs the cluster must have for the job to start: `workers: auto` starts with what
    is free, and needs room for cluster.min_workers."""
    return (cfg.cluster.min_workers if workers == "auto" else workers) * cfg.cluster.cpus_per_worker


def open_pool(job: Job, workers: int | str, local: bool, strategy=None, kept=None):
    """The job's pool, which `train` and `sweep` both use: in-process shard workers
    (local mode; "auto" is one) or Ray actors on the connected Ray, configured by the
    job's config whole; `strategy` places the actors (a sweep trial's placement group),
    default SPREAD; `kept`: worker processes of an earlier pool to take first (a sweep's,
    workers/actor_keeper.py). Opening it reads every row (bad data: InputError). The
    caller closes it."""
    if local:
        from workers.local_pool import LocalPool

        return LocalPool.open(job.task, 1 if workers == "auto" else workers, job.source)
    from workers.ray_pool import RayPool

    if strategy is None:
        return RayPool(job.task, job.cfg.cluster, workers, job.cfg.train.max_worker_failures)
    return RayPool(job.task, job.cfg.cluster, workers, job.cfg.train.max_worker_failures, strategy=strategy,
                   kept=kept)


def describe(job: Job, pool, where: str) -> str:
    nodes = pool.num_nodes
    return (f"{list(job.spec.layers)} on {job.source.name} ({job.plan.n_train} examples, "
            f"{len(job.val_rows)} held out) in {where}: {pool.num_workers} worker"
            f"{'s' if pool.num_workers != 1 else ''} on {nodes} node{'s' if nodes != 1 else ''}")
