"""The parts of starting a training job that `train` and `sweep` share: the Ray
connection and actor pool, and one training inside an MLflow run.

Ray and MLflow are imported inside the functions: the CLI's checks run first.
"""

from __future__ import annotations

import os
import time

import numpy as np

from experiments import job as jobs

ARTIFACT_CHECKPOINT_SECONDS = 60


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


def open_pool(job, workers: int, local: bool):
    """The job's pool, which `train` and `sweep` both use: in-process shard workers
    (local mode) or Ray actors on the connected Ray, configured by the job's config
    whole. Opening it reads every row (bad data: InputError). The caller closes it."""
    if local:
        return jobs.local_pool(job, workers)
    from workers.ray_pool import RayPool

    return RayPool(job.task, job.cfg.cluster, workers, job.cfg.train.max_worker_failures)


def describe(job, pool, where) -> str:
    nodes = pool.num_nodes
    return (f"{list(job.spec.layers)} on {job.source.name} ({job.plan.m} examples, "
            f"{len(job.val_rows)} held out) in {where}: {pool.num_workers} worker"
            f"{'s' if pool.num_workers != 1 else ''} on {nodes} node{'s' if nodes != 1 else ''}")


def train_tracked(job, pool, run, out_dir, listeners, ray_kind, resume=None, should_stop=None,
                  checkpointer_out=None) -> dict:
    """Train `job` on `pool` inside the MLflow run `run` (from checkpoint `resume` if
    given); each checkpoint is also copied to the run's artifacts. Returns the summary."""
    from experiments.resume import OUTPUT_TAG
    from experiments.run_artifacts import log_outputs

    nodes = pool.num_nodes
    resolved = jobs.resolved_config(job)
    if resume is None:
        run.log_job(resolved, job.source, [*job.schema.features, *job.schema.targets],
                    pool.num_workers, nodes, ray_kind)
    run.set_tags({OUTPUT_TAG: str(out_dir.resolve()), "rayprop.workers": pool.num_workers,
                  "rayprop.nodes": nodes})

    last_upload = [-ARTIFACT_CHECKPOINT_SECONDS]

    def to_artifacts(path):
        # A copy in the run's artifacts (for --resume where DIR is gone) at most once per
        # ARTIFACT_CHECKPOINT_SECONDS: a store round trip per epoch costs more than a
        # short epoch. Resuming from an older copy is still exact, only longer.
        now = time.monotonic()
        if now - last_upload[0] >= ARTIFACT_CHECKPOINT_SECONDS:
            run.client.log_artifact(run.run_id, str(path), "checkpoints")
            last_upload[0] = now

    with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught by the coordinator
        summary = jobs.run(job, pool, out_dir, [*listeners, run.metrics],
                           extra={"nodes": nodes, "ray": ray_kind}, run_id=run.run_id,
                           resume=resume, should_stop=should_stop, on_checkpoint=to_artifacts,
                           before_checkpoint=run.metrics.sync,
                           checkpointer_out=checkpointer_out)
    log_outputs(job, out_dir, resolved)
    return summary
