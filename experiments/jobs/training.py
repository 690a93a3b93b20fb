"""One training job, from a config to a trained model inside an MLflow run.

`train` is `rayprop train` whole, in this order: `prepare` (every check that can
fail on bad input: config, data source, columns, labels, --init-from, the output
folder, the tracking store, a run to resume), then the Ray connection, the pool
(which reads and checks every row), the MLflow run, and `fit` (the coordinator,
checkpoints, the model files). So a bad input costs nothing and writes nothing.
`rayprop sweep` uses the same parts for each of its child runs.

Ray and MLflow are imported inside the functions: the input checks run first.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from experiments.jobs.output_uri import UriClaim, claim_output
from experiments.jobs.overlap import Once, release_ray, warm_up
from experiments.tracking import stores
from trainer import __version__
from trainer.batches import BatchPlan
from trainer.checkpoint import Checkpoint, Checkpointer
from trainer.config import Config, check_size
from trainer.coordinator import TrainingStopped, train as coordinate
from trainer.errors import DataChangedError, InputError, RunError
from trainer.model_io import (expected_shapes, probe_write, read_arrays, save_model, theta_from_arrays,
                              write_json)
from trainer.network import NetworkSpec, init_theta
from trainer.optimizers import make_optimizer
from workers.data.examples import Schema, resolve_schema, split_rows
from workers.data.sources import Source, open_source
from workers.shard import ShardTask

DEFAULT_HIDDEN = 64  # the one hidden layer when model.layers is not given
MAX_INFERRED_CLASSES = 10_000  # past this a label column is more likely an id than a class
ARTIFACT_CHECKPOINT_SECONDS = 60


@dataclass
class Job:
    """A checked config with what it resolved to: the data, the network, the batches."""

    cfg: Config
    source: Source
    schema: Schema
    spec: NetworkSpec
    train_rows: np.ndarray
    val_rows: np.ndarray
    plan: BatchPlan
    theta0: np.ndarray  # initial parameters
    fingerprint: dict | None = None  # of the data, from metadata (workers/data/fingerprint.py)

    @property
    def task(self) -> ShardTask:
        """What every shard worker of this job opens (local and Ray pools alike)."""
        return ShardTask(self.spec, self.plan, self.source.spec, self.source.num_rows, self.schema,
                         (self.cfg.data.validation_fraction, self.cfg.data.split_seed),
                         self.source.handoff(), self.fingerprint)

    @property
    def resolved_cfg(self) -> Config:
        """The config as trained: layers and output activation filled in from the data and cost."""
        return self.cfg.resolved(list(self.spec.layers), self.spec.output_activation)


@dataclass(frozen=True)
class Options:
    """What the command line adds to the config for one `rayprop train`."""

    config_name: str | None  # as the user gave it; None: `--resume RUN_ID` with the run's own config
    workers: int | str | None = None  # a count or "auto"; None: cluster.workers (1 with local)
    local: bool = False
    address: str | None = None
    tracking_uri: str | None = None
    init_from: str | None = None
    output: str | None = None
    resume: str | None = None  # an MLflow run id
    quiet: bool = False


def infer_layers(cfg: Config, source: Source) -> list[int]:
    """[n_features, 64, n_outputs] when model.layers is not given.

    n_outputs is the number of target columns, or for cross-entropy the number of
    classes, max(label) + 1 (`largest_label`). A missing column is left for
    resolve_schema to name.
    """
    targets = [cfg.data.target] if isinstance(cfg.data.target, str) else list(cfg.data.target)
    features = cfg.data.features or [c for c in source.column_names if c not in targets]
    n_out = len(targets)
    if cfg.model.cost == "cross_entropy" and targets[0] in source.column_names:
        top = largest_label(source, targets[0])
        if top is not None:
            n_out = int(top) + 1  # bad labels are named when the rows are loaded
            if n_out > MAX_INFERRED_CLASSES:
                raise InputError(f"data.target: column {targets[0]!r} has label {top:g}; "
                                 f"set model.layers to say how many classes there are")
    return [len(features), DEFAULT_HIDDEN, max(n_out, 2 if cfg.output_activation == "softmax" else 1)]


def largest_label(source: Source, column: str) -> float | None:
    """The largest value of the label column, or None when it is not all finite numbers
    (the rows' check names what is wrong). A built-in set knows its classes; a Parquet
    footer's statistics give it without reading data pages; else the one column is
    streamed a batch at a time."""
    classes = getattr(source, "classes", None)
    if classes:
        return classes - 1
    top = source.column_max(column)
    if top is not None:
        return top
    for _, chunk in source.pieces(0, source.num_rows, [column]):
        labels = chunk[column]
        if not (np.issubdtype(labels.dtype, np.number) and np.isfinite(labels).all()):
            return None
        if labels.size:
            top = labels.max() if top is None else max(top, labels.max())
    return None if top is None else float(top)


def prepare(cfg: Config, init_from: str | None = None) -> Job:
    source = open_source(cfg.data.source)
    layers = cfg.model.layers
    if layers is None:
        layers = infer_layers(cfg, source)
        check_size(layers)  # the data chose them: still refused before anything is built
    schema = resolve_schema(source, cfg.data.features, cfg.data.target, layers, cfg.model.cost)
    spec = NetworkSpec(tuple(layers), cfg.model.hidden_activation, cfg.output_activation,
                       cfg.model.cost, cfg.model.dtype)
    train_rows, val_rows = split_rows(source.num_rows, cfg.data.validation_fraction, cfg.data.split_seed)
    plan = BatchPlan(len(train_rows), cfg.batch_size, cfg.train.seed)
    if init_from:
        path = Path(init_from).expanduser()
        theta0 = theta_from_arrays(spec, read_arrays(path, expected_shapes(spec)), path)
    else:
        theta0 = init_theta(spec, cfg.model.init, cfg.train.seed)
    from workers.data.fingerprint import take

    return Job(cfg, source, schema, spec, train_rows, val_rows, plan, theta0, take(source))


# ---- where things go -----------------------------------------------------------------

def tracking_uri(flag: str | None, cfg: Config) -> str:
    """The MLflow store to use, checked (InputError) without importing MLflow."""
    uri = stores.resolve_uri(flag, cfg.tracking.uri)
    stores.check(uri)
    stores.hide_links_if_secret(uri)
    return uri


def check_writable_dir(path: Path, what: str) -> None:
    """InputError now, rather than a failure after training, if `path` cannot become a directory."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{what}: {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what}: {parent} is not a directory, so {path} cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what}: no permission to write in {parent}")
    try:  # root passes os.access everywhere; /proc, a read-only or full disk refuse a real write
        probe_write(parent)
    except OSError as e:
        raise InputError(f"{what}: cannot write in {parent} ({e.strerror})") from None


def default_output(cfg: Config, kind: str = "") -> Path:
    """runs/EXPERIMENT-TIMESTAMP (kind "sweep": runs/EXPERIMENT-sweep-TIMESTAMP)."""
    return Path("runs") / f"{cfg.experiment}{'-' + kind if kind else ''}-{datetime.now():%Y%m%d-%H%M%S}"


# ---- Ray and the pool ----------------------------------------------------------------

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


def open_pool(job: Job, workers: int | str, local: bool, strategy=None):
    """The job's pool, which `train` and `sweep` both use: in-process shard workers
    (local mode; "auto" is one) or Ray actors on the connected Ray, configured by the
    job's config whole; `strategy` places the actors (a sweep trial's placement group),
    default SPREAD. Opening it reads every row (bad data: InputError). The caller closes it."""
    if local:
        from workers.local_pool import LocalPool

        return LocalPool.open(job.task, 1 if workers == "auto" else workers, job.source)
    from workers.ray_pool import RayPool

    if strategy is None:
        return RayPool(job.task, job.cfg.cluster, workers, job.cfg.train.max_worker_failures)
    return RayPool(job.task, job.cfg.cluster, workers, job.cfg.train.max_worker_failures, strategy=strategy)


def describe(job: Job, pool, where: str) -> str:
    nodes = pool.num_nodes
    return (f"{list(job.spec.layers)} on {job.source.name} ({job.plan.m} examples, "
            f"{len(job.val_rows)} held out) in {where}: {pool.num_workers} worker"
            f"{'s' if pool.num_workers != 1 else ''} on {nodes} node{'s' if nodes != 1 else ''}")


# ---- training ------------------------------------------------------------------------

def train(cfg: Config, opts: Options) -> tuple[dict, str, str | None]:
    """`rayprop train`: (summary, output folder or URI, the line saying what the tracking store
    did not get, or None). Raises InputError before anything is
    written; RunError (run FAILED) or TrainingStopped (run KILLED) while running, each
    with a `hint` naming the checkpoint to go on from."""
    job = prepare(cfg, opts.init_from)
    uri = tracking_uri(opts.tracking_uri, cfg)
    resume, experiment_id = None, None
    if opts.resume:
        if opts.init_from:
            raise InputError("--resume and --init-from: give one (a resumed run has its own weights)")
        from experiments.jobs.resume import find_checkpoint

        resume, resumed_out, experiment_id = find_checkpoint(uri, opts.resume, job)
        output = opts.output or cfg.train.output or resumed_out
    else:
        output = opts.output or cfg.train.output or str(default_output(cfg))
    # A new run whose folder is taken writes to a free sibling (experiments/jobs/output_folder.py).
    claim = claim_output(output, opts.resume, move_aside=opts.resume is None)
    if not isinstance(claim, UriClaim):  # a URI's check() writes a probe object
        check_writable_dir(claim.out_dir, "--output")
    claim.check()  # unwritable, or another run's folder and --resume: refused before Ray starts
    if resume is not None and resume.position.epoch >= cfg.train.epochs:
        return deliver_only(job, opts, uri, experiment_id, claim)
    workers = opts.workers or (1 if opts.local else cfg.cluster.workers)
    if not opts.local and workers != "auto" and workers < cfg.cluster.min_workers:
        raise InputError(f"--workers {workers}: fewer than cluster.min_workers={cfg.cluster.min_workers}")
    if cfg.sweep:
        print("rayprop train: the config's sweep: section is for `rayprop sweep` and is ignored "
              "here; training the config as given (with its --set values) once", file=sys.stderr)

    from experiments.jobs.interrupts import StopFlag
    from experiments.jobs.progress import ProgressBar

    # MLflow takes seconds to import: that happens in the background while Ray starts and
    # the workers read their rows (an import writes nothing; the run comes after the checks).
    warm_up(plot=job.spec.layers[0] == 2)
    run, conn = None, None
    try:
        with ExitStack() as stack:
            # The pool reads (and checks) every row: bad data is exit 2 before a run exists.
            if opts.local:
                place, kind = "local mode", "none"
            else:
                conn = connect_ray(opts.address or cfg.cluster.address, cpus_needed(cfg, workers), stack)
                place, kind = where(conn), conn.kind
            if kind == "client":  # the coordinator goes into the cluster (experiments/jobs/remote_pool.py)
                from experiments.jobs.remote_pool import RemotePool

                pool = RemotePool(job.task, cfg.cluster, workers, cfg.train.max_worker_failures)
            else:
                pool = open_pool(job, workers, opts.local)
            close_pool = Once(pool.close)  # at the end of training (overlap.py), or on the way out
            stack.callback(close_pool)
            from experiments.tracking import run as tracking  # mlflow: ~2 s, paid only once the inputs are good

            if experiment_id is None:
                experiment_id = tracking.open_experiment(uri, cfg.experiment)
            stack.enter_context(claim)  # the folder is this job's until the run has ended
            out_dir = claim.out_dir  # where training writes (for a URI: a local staging folder)
            bar = ProgressBar(cfg.train.epochs, job.plan.steps_per_epoch, opts.quiet)
            stack.callback(bar.close)
            print(f"rayprop: training {describe(job, pool, place)}", file=sys.stderr)
            stop = stack.enter_context(StopFlag())  # before the run: its SIGTERM hook defers to this
            run = stack.enter_context(tracking.TrackedRun(experiment_id, resume_run_id=opts.resume,
                                                          out_dir=out_dir, stop=stop))
            claim.record(run.run_id)
            if resume is not None:  # a sweep trial stopped early goes on: no longer stopped
                from experiments.jobs.resume import STOPPED_EARLY_TAG

                if run.client.get_run(run.run_id).data.tags.get(STOPPED_EARLY_TAG) == "true":
                    run.set_tags({STOPPED_EARLY_TAG: "resumed"})
            verb = f"resuming at step {resume.position.global_step}: MLflow run" if resume else "MLflow run"
            print(f"rayprop: {verb} {run.run_id} ({run.run_name}) in experiment "
                  f"{cfg.experiment!r} at {stores.where_to_see(uri, experiment_id, run.run_id)}",
                  file=sys.stderr)
            summary = fit(job, pool, run, out_dir, [bar], kind, resume=resume, should_stop=stop, output=claim,
                          trained=release_ray(conn, close_pool))
    except TrainingStopped as e:  # the run has ended KILLED
        from experiments.jobs.resume import resume_command

        e.hint = (f"checkpoint in {claim.name}/checkpoints; continue with: "
                  f"{resume_command(run.run_id, uri, opts.local, opts.address)}")
        raise
    return summary, claim.name, run.report


def deliver_only(job: Job, opts: Options, uri: str, experiment_id: str, claim) -> tuple[dict, str, str | None]:
    """--resume of a run whose training is complete (the tracking store died at its end):
    send the store what it missed (kept metric points, model artifacts) and end the run."""
    import json

    from experiments.jobs.interrupts import StopFlag
    from experiments.tracking import run as tracking
    from experiments.tracking.run_artifacts import log_outputs

    with claim:  # for a URI, its files are copied to the staging folder
        out_dir = claim.out_dir
        try:
            summary = json.loads((out_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("run_id") != opts.resume:
            raise InputError(f"--resume {opts.resume}: its training is complete but {claim.name}/summary.json "
                             "is not this run's; nothing to resume")
        print(f"rayprop: run {opts.resume} finished training; sending the tracking store what it missed",
              file=sys.stderr)
        with StopFlag() as stop, tracking.TrackedRun(experiment_id, resume_run_id=opts.resume,
                                                     out_dir=out_dir, stop=stop) as run:
            run.deliver("model artifacts", lambda: log_outputs(job, out_dir, job.resolved_cfg))
    return summary, claim.name, run.report


def fit(job: Job, pool, run, out_dir: Path, listeners, ray_kind: str,
        resume: Checkpoint | None = None, should_stop=None, end_early=None, output=None,
        trained=None) -> dict:
    """Train `job` on `pool` inside the MLflow run `run` (from checkpoint `resume` if
    given), checkpointing into out_dir/checkpoints and, at most once a minute, to the
    run's artifacts; then write the model files and summary.json. Returns the summary.
    `end_early`: a sweep's early-stopping decision (trainer/coordinator.py); a run it
    ends has `stopped_early_at_epoch` in its summary. A RunError leaves with a hint
    naming the last good checkpoint. `output`: the output's claim (output_folder.py,
    output_uri.py); a URI's copies each checkpoint and the model files there from
    out_dir, its staging folder. `trained()`: called once training is over and the pool
    is no longer needed (`train` shuts Ray down meanwhile: experiments/jobs/overlap.py)."""
    from experiments.jobs.pool_size import PoolSize
    from experiments.jobs.resume import OUTPUT_TAG
    from experiments.tracking.run_artifacts import log_outputs

    nodes = pool.num_nodes
    # The params say what ran: cluster.workers is the pool's size (1 in local mode, or
    # --workers), as the rayprop.workers tag does.
    resolved = dataclasses.replace(job.resolved_cfg, cluster=dataclasses.replace(
        job.resolved_cfg.cluster, workers=pool.num_workers))
    # A sweep's trial killed before its first checkpoint starts over in its own run,
    # whose params (the same config) may already be there: MLflow refuses them twice.
    if resume is None and not (run.resume_run_id and run.client.get_run(run.run_id).data.params):
        run.log_job(resolved, job.source, [*job.schema.features, *job.schema.targets],
                    pool.num_workers, nodes, ray_kind)
        run.log_fingerprint(job.fingerprint)
    from cluster.jobs import SUBMISSION_ENV
    from experiments.cli.fetch import SUBMISSION_TAG

    if os.environ.get(SUBMISSION_ENV):  # a submitted job: `rayprop fetch JOB_ID` finds its run by this
        run.set_tags({SUBMISSION_TAG: os.environ[SUBMISSION_ENV]})
    where_to = output.name if output is not None else str(out_dir.resolve())  # the URI for a URI
    run.set_tags({OUTPUT_TAG: where_to, "rayprop.workers": pool.num_workers, "rayprop.nodes": nodes})

    last_upload, uploaded = [-ARTIFACT_CHECKPOINT_SECONDS], [None]

    def saved(path):
        if output is not None:
            output.saved(path)  # to a URI output before the artifacts
        to_artifacts(path)

    def to_artifacts(path, final=False):
        # A copy in the run's artifacts (for --resume where DIR is gone) at most once per
        # ARTIFACT_CHECKPOINT_SECONDS: a store round trip per epoch costs more than a
        # short epoch. Resuming from an older copy is still exact, only longer. The
        # newest one goes at the end (final), whatever the minute rule skipped.
        now = time.monotonic()
        if final:  # at the end, in this thread; a store that failed gets it in the report
            run.deliver("the last checkpoint", lambda: run.client.log_artifact(run.run_id, str(path), "checkpoints"))
            uploaded[0] = path
        elif now - last_upload[0] >= ARTIFACT_CHECKPOINT_SECONDS:
            run.upload_later(str(path), "checkpoints")  # from the outbox's thread: no wait
            last_upload[0], uploaded[0] = now, path

    if should_stop is not None and hasattr(pool, "should_stop"):
        pool.should_stop = should_stop  # Ctrl-C ends a wait for a lost worker's replacement
    t = job.cfg.train
    theta = resume.theta.astype(job.spec.dtype) if resume else job.theta0.copy()
    optimizer = make_optimizer(t.optimizer, t.learning_rate, t.momentum, t.beta1, t.beta2, t.epsilon)
    if resume:
        optimizer.load_state(resume.optimizer)
    checkpointer = Checkpointer(out_dir / "checkpoints", t.checkpoint_every,
                                {"run_id": run.run_id, "layers": list(job.spec.layers),
                                 "data_fingerprint": job.fingerprint},
                                on_saved=saved, before_save=run.metrics.before_checkpoint,
                                min_seconds=t.checkpoint_seconds, last_epoch=t.epochs)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught by the coordinator
            # A Ray Client job's pool runs the coordinator in the cluster, where its workers are.
            drive = getattr(pool, "coordinate", None) or functools.partial(coordinate, pool)
            result = drive(theta, optimizer, job.plan, t.epochs,
                           [*listeners, run.metrics, PoolSize(pool, run.metrics)],
                           resume=resume.position if resume else None, checkpointer=checkpointer,
                           should_stop=should_stop, end_early=end_early)
    except (RunError, DataChangedError) as e:  # the run ends FAILED; what is kept
        if checkpointer.latest:
            where = f"{where_to}/checkpoints/{checkpointer.latest.name}"
            e.hint = "; ".join(filter(None, [e.hint, f"last good checkpoint {where}"]))
        raise
    finally:  # finished, stopped or failed: the run's artifacts end with its newest checkpoint
        if checkpointer.latest is not None and checkpointer.latest != uploaded[0]:
            try:
                to_artifacts(checkpointer.latest, final=True)
            except Exception as err:  # the store failing here must not hide why training ended
                print(f"rayprop: warning: the last checkpoint did not reach the run's artifacts "
                      f"({type(err).__name__}); it is in {checkpointer.latest.parent}", file=sys.stderr)
    # The pool's size at the end, and how often it changed on the way (README: Faults and elasticity).
    summary = {**summary_of(job, result, pool.num_workers, run.run_id), "nodes": pool.num_nodes,
               "ray": ray_kind, "resizes": len(pool.resizes)}
    if trained is not None:
        trained()
    if result.stopped_early:
        summary["stopped_early_at_epoch"] = (resume.position.epoch if resume else 0) + result.epochs
    write_outputs(job, theta, out_dir, summary)
    if output is not None:
        output.written(out_dir)
    run.deliver("model artifacts", lambda: log_outputs(job, out_dir, resolved))  # a dead store: said at the end
    return summary


def summary_of(job: Job, result, workers: int, run_id: str | None) -> dict:
    return {"run_id": run_id, "steps": result.steps, "epochs": result.epochs,
            "final_loss": result.final_loss, "val_loss": result.val_loss,
            "val_accuracy": result.val_accuracy,
            "examples_per_second": result.examples_per_second,
            "wall_seconds": result.wall_seconds, "workers": workers,
            "m": job.plan.m, "m_val": len(job.val_rows), "rayprop_version": __version__,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_outputs(job: Job, theta: np.ndarray, out_dir: Path, summary: dict) -> None:
    columns = {"features": list(job.schema.features), "targets": list(job.schema.targets),
               "encoding": job.schema.encoding}
    save_model(out_dir, job.spec, theta, columns)
    write_json(out_dir / "summary.json", summary)
