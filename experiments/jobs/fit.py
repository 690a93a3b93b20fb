"""The run being trained and recorded: a prepared job on an open pool, inside an MLflow
run, from its first step (or a checkpoint) to its model files.

`fit` records what runs (params, the data's fingerprint, tags), starts the weights and
the optimizer, and hands them to the coordinator (trainer/coordinator.py: one step is
Eq. 1 and Eq. 12 on the workers, one sum, one optimizer step); the run's metrics go
to MLflow through its listener. Checkpoints go to out_dir/checkpoints and on from
there (jobs/checkpoint_copies.py). At the end: model.npz, model.json, summary.json,
and the run's artifacts (tracking/run_artifacts.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path

import numpy as np

from experiments.jobs.checkpoint_copies import CheckpointCopies
from experiments.jobs.job import Job
from experiments.jobs.pool_size import PoolSize
from experiments.jobs.remote_pool import RemotePool
from experiments.jobs.worker_seconds import WorkerSeconds
from experiments.tracking.tags import OUTPUT_TAG, SUBMISSION_TAG
from trainer import __version__
from trainer.checkpoint import Checkpoint, Checkpointer
from trainer.coordinator import train as coordinate
from trainer.errors import DataChangedError, RunError
from trainer.model_io import save_model, write_json
from trainer.optimizers import make_optimizer
from trainer.param_hash import param_hash

@functools.cache  # once per process
def freeze_imports() -> None:
    """Move every object alive now (Ray's, MLflow's, pandas' modules: ~300,000 of them)
    out of the cyclic collector's reach, once per process, as training starts. Each
    full collection otherwise walked them all: 7 of them, 0.84 s with the GIL held, in
    a 6-trial sweep whose trials' coordinators share this interpreter. Objects made
    later (a trial's pool, its run) are collected as before."""
    import gc

    gc.freeze()


def fit(job: Job, pool, run, out_dir: Path, listeners, ray_kind: str,
        resume: Checkpoint | None = None, should_stop=None, end_early=None, output=None,
        trained=None, samplers=None) -> dict:
    """Train `job` on `pool` inside the MLflow run `run` (from checkpoint `resume` if
    given), checkpointing into out_dir/checkpoints; then write the model files and
    summary.json. Returns the summary.
    `end_early`: a sweep's early-stopping decision (trainer/coordinator.py); a run it
    ends has `stopped_early_at_epoch` in its summary. A RunError leaves with a hint
    naming the last good checkpoint. `output`: the output's claim (output_folder.py,
    output_uri.py); a URI's copies each checkpoint and the model files there from
    out_dir, its staging folder. `trained()`: called once training is over and the pool
    is no longer needed (`train` shuts Ray down meanwhile: jobs/overlap.py). `samplers`:
    the nodes' system-metrics actors shared by a sweep's runs (None: the run's own)."""
    from experiments.tracking.metrics import PARAM_HASH_TAG
    from experiments.tracking.run_artifacts import log_outputs

    freeze_imports()
    where_to = output.name if output is not None else str(out_dir.resolve())  # the URI for a URI
    resolved = record(job, pool, run, ray_kind, where_to, first=resume is None)
    t = job.cfg.train
    theta = resume.theta.astype(job.spec.dtype) if resume else job.theta0.copy()
    optimizer = make_optimizer(t.optimizer, t.learning_rate, t.momentum, t.beta1, t.beta2, t.epsilon)
    if resume:
        optimizer.load_state(resume.optimizer)
    from experiments.tracking.checkpoint_models import CheckpointModels

    copies = CheckpointCopies(run, output, models=CheckpointModels(run, job))  # checkpoints as logged models too
    checkpointer = Checkpointer(out_dir / "checkpoints", t.checkpoint_every,
                                {"run_id": run.run_id, "layers": list(job.spec.layers),
                                 "data_fingerprint": job.fingerprint},
                                on_saved=copies.saved, before_save=run.metrics.before_checkpoint,
                                min_seconds=t.checkpoint_seconds, last_epoch=t.epochs)
    from experiments.tracking.system_metrics import NodeMetrics

    # A Ray Client job's pool runs the coordinator in the cluster, where its workers are.
    remote = isinstance(pool, RemotePool)
    # CPU, memory, network per node, beside training (not for a Ray Client job: its
    # coordinator runs in the cluster, not here).
    nodes = None if remote else NodeMetrics.start(pool, run.metrics.outbox.put, samplers=samplers)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught by the coordinator
            # A Ray Client job's coordinator runs in the cluster; a pool of one worker's, in
            # that worker (workers/solo.py), which asks a sweep's scheduler at its milestones.
            solo = not remote and pool.solo and (end_early is None or hasattr(end_early, "milestones"))
            drive = pool.coordinate if remote or solo else functools.partial(coordinate, pool)
            result = drive(theta, optimizer, job.plan, t.epochs,
                           [*listeners, run.metrics, PoolSize(pool, run.metrics), WorkerSeconds(pool, run.metrics)],
                           resume=resume.position if resume else None, checkpointer=checkpointer,
                           should_stop=should_stop, end_early=end_early)
    except (RunError, DataChangedError) as e:  # the run ends FAILED; what is kept
        if checkpointer.latest:
            where = f"{where_to}/checkpoints/{checkpointer.latest.name}"
            e.hint = "; ".join(filter(None, [e.hint, f"last good checkpoint {where}"]))
        raise
    finally:  # finished, stopped or failed: the run's artifacts end with its newest checkpoint
        if nodes is not None:
            nodes.stop()
        copies.finish(checkpointer.latest)
    # The pool's size at the end, and how often it changed on the way (README: Faults and elasticity).
    summary = {**summary_of(job, result, pool.num_workers, run.run_id, theta), "nodes": pool.num_nodes,
               "ray": ray_kind, "resizes": len(pool.resizes)}
    if trained is not None:
        trained()
    if result.stopped_early:
        summary["stopped_early_at_epoch"] = (resume.position.epoch if resume else 0) + result.epochs
    write_outputs(job, theta, out_dir, summary)
    if output is not None:
        output.written(out_dir)
    # a dead store: said at the end
    run.deliver("the parameter hash tag", lambda: run.set_tags({PARAM_HASH_TAG: summary["param_hash"]}))
    run.deliver("model artifacts", lambda: log_outputs(out_dir, resolved, job.source, job.schema, job.spec, run))
    return summary


def record(job: Job, pool, run, ray_kind: str, where_to: str, first: bool):
    """What runs, into the MLflow run: params and the data's fingerprint (`first`: not
    when resuming), and the tags that find it again. Returns the config as trained."""
    from cluster.jobs import SUBMISSION_ENV

    nodes = pool.num_nodes
    # The params say what ran: cluster.workers is the pool's size (1 in local mode, or
    # --workers), as the rayprop.workers tag does.
    resolved = dataclasses.replace(job.resolved_cfg, cluster=dataclasses.replace(
        job.resolved_cfg.cluster, workers=pool.num_workers))
    # A sweep's trial killed before its first checkpoint starts over in its own run,
    # whose params (the same config) may already be there: MLflow refuses them twice.
    if first and not (run.resume_run_id and run.client.get_run(run.run_id).data.params):
        run.log_job(resolved, job.source, [*job.schema.features, *job.schema.targets],
                    pool.num_workers, nodes, ray_kind)
        run.log_fingerprint(job.fingerprint)
    if os.environ.get(SUBMISSION_ENV):  # a submitted job: `rayprop fetch JOB_ID` finds its run by this
        run.set_tags({SUBMISSION_TAG: os.environ[SUBMISSION_ENV]})
    run.set_tags({OUTPUT_TAG: where_to, "rayprop.workers": pool.num_workers, "rayprop.nodes": nodes,
                  "rayprop.exact_sums": str(job.plan.exact and job.spec.dtype == "float32").lower()})
    return resolved


def summary_of(job: Job, result, workers: int, run_id: str | None, theta: np.ndarray) -> dict:
    return {"run_id": run_id, "steps": result.steps, "epochs": result.epochs,
            "final_loss": result.final_loss, "val_loss": result.val_loss,
            "val_accuracy": result.val_accuracy,
            "examples_per_second": result.examples_per_second,
            "wall_seconds": result.wall_seconds, "workers": workers,
            # The final weights' hash, and each epoch's (trainer/param_hash.py): runs with
            # equal hashes trained bitwise-equal weights.
            "param_hash": param_hash(theta),
            "param_hashes": {str(e): h for e, h in sorted(result.param_hashes.items())},
            # Whether the float32 sums were added exactly (train.exact_sums, "auto" resolved).
            "exact_sums": job.plan.exact and job.spec.dtype == "float32",
            "m": job.plan.n_train, "m_val": len(job.val_rows), "rayprop_version": __version__,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_outputs(job: Job, theta: np.ndarray, out_dir: Path, summary: dict) -> None:
    columns = {"features": list(job.schema.features), "targets": list(job.schema.targets),
               "encoding": job.schema.encoding}
    save_model(out_dir, job.spec, theta, columns)
    write_json(out_dir / "summary.json", summary)
