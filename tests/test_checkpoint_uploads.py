"""A checkpoint queued for the run's artifacts (TrackedRun.upload_later) may be pruned
by the checkpointer before or while the outbox's thread uploads it. That is no failure
of the store: the job goes on to deliver its last checkpoint and model, and reports
nothing undelivered (exit 0). A store that does refuse a file that is there still
counts. Real MLflow (a sqlite store, local artifacts), real files, in this process.

The interleaving is forced, not waited for: the file is deleted the moment MLflow's
log_artifact is entered, after any check rayprop itself could make."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    import mlflow

    from experiments.tracking import run as tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    mlflow.set_tracking_uri(uri)
    return tracking


def checkpoint_file(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{step:09d}.npz"
    np.savez(path, theta=np.arange(5.0))
    return path


def drain(run) -> None:
    """Return once the outbox's thread has run everything queued before this call.
    (This task's success resets `store_ok`: what the store refused shows in `error`.)"""
    done = threading.Event()
    run.metrics.outbox.put_task(done.set)
    assert done.wait(60), "the outbox did not get to its queue"


def pruned_as_upload_starts(run, monkeypatch):
    """MLflow's log_artifact, with the file deleted just as it is entered: the
    checkpointer pruning it between the outbox picking the task up and MLflow opening it."""
    real = run.client.log_artifact

    def log_artifact(run_id, local_path, artifact_path=None):
        Path(local_path).unlink()
        return real(run_id, local_path, artifact_path)

    monkeypatch.setattr(run.client, "log_artifact", log_artifact)
    return real


def artifacts(run, folder="checkpoints") -> list[str]:
    return sorted(Path(a.path).name for a in run.client.list_artifacts(run.run_id, folder))


def test_a_checkpoint_pruned_during_its_upload_is_not_a_store_failure(tracking, tmp_path, monkeypatch):
    experiment = tracking.open_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "uploads")
    out = tmp_path / "job"
    with tracking.TrackedRun(experiment, out_dir=out) as run:
        real = pruned_as_upload_starts(run, monkeypatch)
        run.upload_later(str(checkpoint_file(out / "checkpoints", 18)), "checkpoints")
        drain(run)
        assert run.metrics.outbox.error is None  # the store refused nothing
        monkeypatch.setattr(run.client, "log_artifact", real)
        # What fit does at the end: the last checkpoint goes, in this thread.
        last = checkpoint_file(out / "checkpoints", 108)
        assert run.deliver("the last checkpoint", lambda: run.client.log_artifact(run.run_id, str(last),
                                                                                   "checkpoints"))
    assert run.undelivered == [] and run.report is None
    assert artifacts(run) == [last.name]
    assert run.client.get_run(run.run_id).info.status == "FINISHED"


def test_a_checkpoint_pruned_before_its_upload_is_skipped(tracking, tmp_path):
    experiment = tracking.open_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "uploads")
    out = tmp_path / "job"
    with tracking.TrackedRun(experiment, out_dir=out) as run:
        gate = threading.Event()
        run.metrics.outbox.put_task(lambda: gate.wait(60))  # the outbox is busy meanwhile
        first = checkpoint_file(out / "checkpoints", 18)
        run.upload_later(str(first), "checkpoints")
        first.unlink()
        gate.set()
        drain(run)
        assert run.metrics.outbox.error is None
    assert run.report is None and artifacts(run) == []


def test_a_store_that_refuses_a_checkpoint_still_counts(tracking, tmp_path):
    """The file is there and the store cannot take it (its artifact folder is a file):
    that is a failure, and the job's end says so."""
    from mlflow import MlflowClient

    tracking.open_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "uploads")
    blocked = tmp_path / "artifacts-are-a-file"
    blocked.write_text("")
    experiment = MlflowClient().create_experiment("refusing", artifact_location=str(blocked))
    out = tmp_path / "job"
    with tracking.TrackedRun(experiment, out_dir=out) as run:
        path = checkpoint_file(out / "checkpoints", 18)
        run.upload_later(str(path), "checkpoints")
        drain(run)
        assert isinstance(run.metrics.outbox.error, OSError) and path.exists()
        assert not run.deliver("the last checkpoint",
                               lambda: run.client.log_artifact(run.run_id, str(path), "checkpoints"))
    assert run.undelivered[0] == "the last checkpoint"
    assert "the last checkpoint not uploaded" in run.report
    shutil.rmtree(out, ignore_errors=True)
