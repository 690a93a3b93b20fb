"""`rayprop train CONFIG --resume RUN_ID`: find the run's newest good checkpoint.

The run's output folder (or URI: its checkpoints are copied down from there) is
recorded in its `rayprop.output` tag; its checkpoints are there, and also in the
run's artifacts under `checkpoints/`, which are used when the folder is gone
(another machine, a cleaned-up disk). A corrupt newest
checkpoint falls back to the one before (trainer/checkpoint.py), with a warning.
Only the run's own checkpoints count: each names its run, and another run's file in
the same folder is skipped.

The config must be the run's: any setting that changes the result (data, model,
optimizer, batch size, seed, split, epochs...) is compared with the run's logged
params and a difference is refused, naming the key; so is data that changed since
the run (its checkpoint's fingerprint, workers/data/fingerprint.py), naming the file. Where and how it runs
(cluster.*, --workers, --local, tracking.*) may change: the result does not.
Everything here is a check that can fail on bad input, so it runs before training.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from experiments.tracking import stores
from experiments.tracking.tags import OUTPUT_TAG, SOURCE_TAG, STOPPED_EARLY_TAG
from trainer.checkpoint import Checkpoint, check_resumable, latest_checkpoint
from trainer.errors import InputError
from trainer.optimizers import make_optimizer
from workers.data.locations import explain, is_uri

# Settings that do not change the trained weights (DESIGN section 2): free to differ.
FREE_PREFIXES = ("cluster.", "tracking.")
FREE_KEYS = {"experiment", "train.output", "train.checkpoint_every", "train.checkpoint_seconds",
             "train.max_worker_failures"}
SHOWN = 60  # characters of a value shown in a refusal


def _warn(message: str) -> None:
    print(f"rayprop train: warning: {message}", file=sys.stderr)


def _short(value: str) -> str:
    return value if len(value) <= SHOWN else value[:SHOWN - 3] + "..."


def resume_command(run_id: str, uri: str, local: bool, address: str | None) -> str:
    """The command that continues run `run_id`, as it is printed: no CONFIG (the run's own
    is used, --set values included), and the flags that say where the run and its
    workers are when they were not found by default."""
    return shlex.join(["rayprop", "train", "--resume", run_id, *where_flags(uri, local, address)])


def where_flags(uri: str, local: bool, address: str | None) -> list[str]:
    """--local, --address, --tracking-uri as a printed command needs them to find the run."""
    words = []
    if local:
        words.append("--local")
    if address:
        words += ["--address", stores.redact(address)]
    if uri != stores.DEFAULT_URI:  # said even when it came from MLFLOW_TRACKING_URI: pasted anywhere, it works
        words += ["--tracking-uri", stores.redact(uri)]
    return words


def check_same_config(run_id: str, logged: dict[str, str], params: dict[str, str]) -> None:
    """InputError naming the first setting that changes the result and differs from
    the run's logged params. Keys only one side has (another rayprop version) pass."""
    for key in sorted(params.keys() & logged.keys()):
        if key in FREE_KEYS or key.startswith(FREE_PREFIXES):
            continue
        if params[key] != logged[key]:
            raise InputError(f"--resume {run_id}: {key} is {_short(params[key])} here but "
                             f"{_short(logged[key])} in the run; resume with the run's config")


def open_run(uri: str, run_id: str):
    """(MlflowClient, the run) for `--resume run_id`; InputError when there is no such run."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    stores.quiet_mlflow()  # no "Downloading artifacts" bars when the checkpoint comes from the store
    db = stores.sqlite_path(uri)
    if db is not None and not db.exists():  # MLflow would create it just to look
        raise InputError(f"--resume {run_id}: no such run (no tracking store at {db})")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        return client, client.get_run(run_id)
    except MlflowException:
        raise InputError(f"--resume {run_id}: no such run in the tracking store") from None


def find_checkpoint(uri: str, run_id: str, job, required: bool = True) -> tuple[Checkpoint | None, str, str]:
    """(checkpoint, output folder or URI, experiment id) of run `run_id` in the store at `uri`;
    not `required` (a sweep's trial killed in its first epoch): None when it has none."""
    from mlflow.exceptions import MlflowException

    client, run = open_run(uri, run_id)
    if run.info.status == "FINISHED" and run.data.tags.get(STOPPED_EARLY_TAG) != "true":
        raise InputError(f"--resume {run_id}: the run already FINISHED; nothing to resume")
    out = run.data.tags.get(OUTPUT_TAG)
    if not out:
        raise InputError(f"--resume {run_id}: not a rayprop training run (no {OUTPUT_TAG} tag)")
    from experiments.tracking.params import run_params

    here, logged = run_params(job.resolved_cfg), dict(run.data.params)
    if here.get("data.source") == run.data.tags.get(SOURCE_TAG):  # the file the run read, named absolutely
        logged["data.source"] = here["data.source"]  # (a config-less resume names it so)
    check_same_config(run_id, logged, here)
    skipped = []  # unreadable checkpoints: warnings if a good one is found, else the error
    if is_uri(out):  # an output URI: its checkpoints are read from there
        from experiments.jobs.output_uri import fetch_checkpoints

        try:
            folder = fetch_checkpoints(out, Path(tempfile.mkdtemp(prefix="rayprop-resume-")))
        except OSError as err:
            raise InputError(f"--resume {run_id}: cannot read {out}/checkpoints ({explain(err)})") from None
    else:
        folder = Path(out) / "checkpoints"
    ckpt = latest_checkpoint(folder, skipped.append, run_id=run_id)
    if ckpt is None:
        tmp = Path(tempfile.mkdtemp(prefix="rayprop-resume-"))
        try:
            local = client.download_artifacts(run_id, "checkpoints", str(tmp))
            ckpt = latest_checkpoint(Path(local), skipped.append, run_id=run_id)
        except (MlflowException, OSError):
            ckpt = None
    if ckpt is None and not required and not skipped:
        return None, out, run.info.experiment_id
    if ckpt is None:
        if skipped:  # name what is wrong with the newest; the line has no room for the folder too
            raise InputError(f"--resume {run_id}: no readable checkpoint in the run's folder or artifacts; "
                             f"newest: {skipped[0].split(';')[0].removeprefix('checkpoint ')}")
        raise InputError(f"--resume {run_id}: the run has no readable checkpoint "
                         f"(in {out}/checkpoints or its artifacts)")
    for message in skipped:
        _warn(message)
    if ckpt.meta.get("layers", list(job.spec.layers)) != list(job.spec.layers):
        raise InputError(f"--resume {run_id}: its checkpoint is of layers {ckpt.meta.get('layers')}, "
                         f"the config says {list(job.spec.layers)}")
    if ckpt.position.epoch > job.cfg.train.epochs:
        raise InputError(f"--resume {run_id}: the checkpoint is past train.epochs={job.cfg.train.epochs}")
    if ckpt.position.epoch < job.cfg.train.epochs:  # rows will be read again: they must be the run's
        from workers.data.fingerprint import compare

        compare(run_id, ckpt.meta.get("data_fingerprint"), job.fingerprint)
    try:  # a checkpoint edited by hand, or another optimizer's, must not reach training
        check_resumable(ckpt, job.spec.size, make_optimizer(job.cfg.train.optimizer, 1.0).state(),
                        job.plan.steps_per_epoch)
    except ValueError as e:
        raise InputError(f"--resume {run_id}: checkpoint {e}") from None
    return ckpt, out, run.info.experiment_id


def mark_resumed(run) -> None:
    """A sweep trial that early stopping ended goes on: it is no longer stopped."""
    if run.client.get_run(run.run_id).data.tags.get(STOPPED_EARLY_TAG) == "true":
        run.set_tags({STOPPED_EARLY_TAG: "resumed"})


def deliver_only(job, run_id: str, experiment_id: str, claim) -> tuple[dict, str, str | None]:
    """--resume of a run whose training is complete (the tracking store died at its end):
    send the store what it missed (kept metric points, model artifacts) and end the run."""
    from experiments.jobs.interrupts import StopFlag
    from experiments.tracking import run as tracking
    from experiments.tracking.run_artifacts import log_outputs

    with claim:  # for a URI, its files are copied to the staging folder
        out_dir = claim.out_dir
        try:
            summary = json.loads((out_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("run_id") != run_id:
            raise InputError(f"--resume {run_id}: its training is complete but {claim.name}/summary.json "
                             "is not this run's; nothing to resume")
        print(f"rayprop: run {run_id} finished training; sending the tracking store what it missed",
              file=sys.stderr)
        with StopFlag() as stop, tracking.TrackedRun(experiment_id, resume_run_id=run_id,
                                                     out_dir=out_dir, stop=stop) as run:
            run.deliver("model artifacts",
                        lambda: log_outputs(out_dir, job.resolved_cfg, job.source, job.schema, job.spec, run))
    return summary, claim.name, run.report
