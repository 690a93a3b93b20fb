"""`rayprop train` whole, top to bottom: the job being prepared, then the run being
trained and recorded.

First every check that can fail on bad input: the job (`prepare`, jobs/job.py: config,
data source, columns, labels, --init-from), the tracking store, a run to resume
(jobs/resume.py) and the output folder or URI, claimed for this run
(jobs/output_folder.py, jobs/output_uri.py). So a bad input costs nothing and writes
nothing. Then Ray and the pool, which reads and checks every row (jobs/pools.py), the
MLflow run (tracking/run.py), and `fit` (jobs/fit.py): the coordinator, checkpoints,
the model files. `rayprop sweep` uses the same parts for each of its child runs.

Ray and MLflow are imported inside the functions: the input checks run first.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from experiments.jobs.fit import fit
from experiments.jobs.job import Job, Options, prepare
from experiments.jobs.output_folder import check_writable_dir, default_output
from experiments.jobs.output_uri import UriClaim, claim_output
from experiments.jobs.overlap import warm_up
from experiments.jobs.pools import describe, open_pool, start_pool
from experiments.jobs.resume import deliver_only, find_checkpoint, mark_resumed, resume_command
from experiments.tracking import stores
from trainer.config import Config
from trainer.coordinator import TrainingStopped
from trainer.errors import InputError

__all__ = ["Job", "Options", "open_pool", "prepare", "train"]  # what a sweep, tests and benchmarks use


def train(cfg: Config, opts: Options) -> tuple[dict, str, str | None]:
    """`rayprop train`: (summary, output folder or URI, the line saying what the tracking
    store did not get, or None). Raises InputError before anything is written;
    RunError (run FAILED) or TrainingStopped (run KILLED) while running, each with a
    `hint` naming the checkpoint to go on from."""
    job = prepare(cfg, opts.init_from)
    uri = stores.choose(opts.tracking_uri, cfg.tracking.uri)
    resume, experiment_id, output = None, None, opts.output or cfg.train.output
    if opts.resume:
        if opts.init_from:
            raise InputError("--resume and --init-from: give one (a resumed run has its own weights)")
        resume, resumed_output, experiment_id = find_checkpoint(uri, opts.resume, job)
        output = output or resumed_output
    # A new run whose folder is taken writes to a free sibling (jobs/output_folder.py).
    claim = claim_output(output or str(default_output(cfg)), opts.resume, move_aside=opts.resume is None)
    if not isinstance(claim, UriClaim):  # a URI's check() writes a probe object
        check_writable_dir(claim.out_dir, "--output")
    claim.check()  # unwritable, or another run's folder and --resume: refused before Ray starts
    if resume is not None and resume.position.epoch >= cfg.train.epochs:
        return deliver_only(job, opts.resume, experiment_id, claim)
    workers = pool_workers(cfg, opts)

    from experiments.jobs.interrupts import StopFlag
    from experiments.jobs.progress import ProgressBar

    # MLflow takes seconds to import: that happens in the background while Ray starts and
    # the workers read their rows (an import writes nothing; the run comes after the checks).
    warm_up(plot=job.spec.layers[0] == 2)
    run = None
    try:
        with ExitStack() as stack:
            # The pool reads (and checks) every row: bad data is exit 2 before a run exists.
            pool, place, ray_kind, trained = start_pool(job, opts, workers, stack)
            from experiments.tracking import run as tracking  # mlflow: ~2 s, paid only once the inputs are good

            if experiment_id is None:
                experiment_id = tracking.open_experiment(uri, cfg.experiment)
            stack.enter_context(claim)  # the folder is this job's until the run has ended
            bar = ProgressBar(cfg.train.epochs, job.plan.steps_per_epoch, opts.quiet)
            stack.callback(bar.close)
            print(f"rayprop: training {describe(job, pool, place)}", file=sys.stderr)
            stop = stack.enter_context(StopFlag())  # before the run: its SIGTERM hook defers to this
            run = stack.enter_context(tracking.TrackedRun(experiment_id, resume_run_id=opts.resume,
                                                          out_dir=claim.out_dir, stop=stop))
            claim.record(run.run_id)
            if resume is not None:
                mark_resumed(run)
            verb = f"resuming at step {resume.position.global_step}: MLflow run" if resume else "MLflow run"
            print(f"rayprop: {verb} {run.run_id} ({run.run_name}) in experiment "
                  f"{cfg.experiment!r} at {stores.where_to_see(uri, experiment_id, run.run_id)}",
                  file=sys.stderr)
            summary = fit(job, pool, run, claim.out_dir, [bar], ray_kind,
                          resume=resume, should_stop=stop, output=claim, trained=trained)
            from experiments.tracking.checkpoint_models import hint

            print(hint(stores.redact(uri), experiment_id, run.run_id), file=sys.stderr)
    except TrainingStopped as e:  # the run has ended KILLED
        e.hint = (f"checkpoint in {claim.name}/checkpoints; continue with: "
                  f"{resume_command(run.run_id, uri, opts.local, opts.address)}")
        raise
    return summary, claim.name, run.report


def pool_workers(cfg: Config, opts: Options) -> int | str:
    """How many workers the job starts with: --workers, else cluster.workers (1 with --local)."""
    workers = opts.workers or (1 if opts.local else cfg.cluster.workers)
    if not opts.local and workers != "auto" and workers < cfg.cluster.min_workers:
        raise InputError(f"--workers {workers}: fewer than cluster.min_workers={cfg.cluster.min_workers}")
    if cfg.sweep:
        print("rayprop train: the config's sweep: section is for `rayprop sweep` and is ignored "
              "here; training the config as given (with its --set values) once", file=sys.stderr)
    return workers
