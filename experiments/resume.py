"""`rayprop train CONFIG --resume RUN_ID`: find the run's newest good checkpoint.

The run's output directory is recorded in its `rayprop.output` tag; its checkpoints
are there, and also in the run's artifacts under `checkpoints/`, which are used when
the directory is gone (another machine, a cleaned-up disk). A corrupt newest
checkpoint falls back to the one before (trainer/checkpoint.py), with a warning.
Everything here is a check that can fail on bad input, so it runs before training.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from trainer.checkpoint import Checkpoint, latest_checkpoint
from trainer.errors import InputError

OUTPUT_TAG = "rayprop.output"


def _warn(message: str) -> None:
    print(f"rayprop train: warning: {message}", file=sys.stderr)


def find_checkpoint(uri: str, run_id: str, job) -> tuple[Checkpoint, Path, str]:
    """(checkpoint, output directory, experiment id) of run `run_id` in the store at `uri`."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from experiments.stores import quiet_mlflow

    quiet_mlflow()  # no "Downloading artifacts" bars when the checkpoint comes from the store

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise InputError(f"--resume {run_id}: no such run in the tracking store") from None
    if run.info.status == "FINISHED":
        raise InputError(f"--resume {run_id}: the run already FINISHED; nothing to resume")
    out = run.data.tags.get(OUTPUT_TAG)
    if not out:
        raise InputError(f"--resume {run_id}: not a rayprop training run (no {OUTPUT_TAG} tag)")
    out_dir = Path(out)
    ckpt = latest_checkpoint(out_dir / "checkpoints", _warn)
    if ckpt is None:
        tmp = Path(tempfile.mkdtemp(prefix="rayprop-resume-"))
        try:
            local = client.download_artifacts(run_id, "checkpoints", str(tmp))
            ckpt = latest_checkpoint(Path(local), _warn)
        except (MlflowException, OSError):
            ckpt = None
    if ckpt is None:
        raise InputError(f"--resume {run_id}: the run has no readable checkpoint "
                         f"(in {out_dir / 'checkpoints'} or its artifacts)")
    if ckpt.theta.size != job.spec.size or ckpt.meta.get("layers", list(job.spec.layers)) != list(job.spec.layers):
        raise InputError(f"--resume {run_id}: its checkpoint is of layers {ckpt.meta.get('layers')}, "
                         f"the config says {list(job.spec.layers)}")
    if ckpt.position.epoch > job.cfg.train.epochs:
        raise InputError(f"--resume {run_id}: the checkpoint is past train.epochs={job.cfg.train.epochs}")
    return ckpt, out_dir, run.info.experiment_id
