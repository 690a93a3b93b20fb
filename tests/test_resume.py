"""The coordinator killed (SIGKILL) mid-training, or interrupted (SIGINT), then
`rayprop train CONFIG --resume RUN_ID`: the same MLflow run ends FINISHED with each
step's `loss` exactly once, and the weights equal an undisturbed run's. Real
subprocesses, a real sqlite MLflow store, local mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import one_line_exit_2

EPOCHS, BATCH = 12, 8
CONFIG = f"""\
experiment: resume-test
model: {{layers: [2, 16, 3], hidden_activation: tanh, dtype: float64}}
data: {{source: spirals, validation_fraction: 0.1}}
train: {{optimizer: adam, learning_rate: 0.01, batch_size: {BATCH}, epochs: {EPOCHS}, seed: 3,
        checkpoint_seconds: 0}}
"""
STEPS = EPOCHS * -(-810 // BATCH)  # 810 training rows


def cli(*args, cwd):
    return [sys.executable, "-m", "experiments.cli", *map(str, args)]


def env():
    return dict(os.environ)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "c.yaml").write_text(CONFIG)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    ref = subprocess.run(cli("train", "c.yaml", "--local", "--quiet", "--output", "ref", "--tracking-uri", uri,
                             cwd=d), cwd=d, env=env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return d, uri


def weights(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return np.concatenate([z[k].ravel() for k in sorted(z.files)])


def start(work, out, uri):
    return subprocess.Popen(cli("train", "c.yaml", "--local", "--quiet", "--output", out, "--tracking-uri", uri,
                                cwd=work), cwd=work, env=env(), stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_checkpoint(proc, ckpt_dir: Path, min_files=2, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if len(list(ckpt_dir.glob("ckpt-*.npz"))) >= min_files:
            return
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def the_run(uri, out: Path):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("resume-test")
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("rayprop.output") == str(out.resolve())]
    assert len(runs) == 1, f"{len(runs)} runs write to {out}"
    return client, runs[0]


def resume_and_check(work, uri, out: Path, run_id: str):
    proc = subprocess.run(cli("train", "c.yaml", "--local", "--quiet", "--resume", run_id, "--tracking-uri", uri,
                              cwd=work), cwd=work, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming at step" in proc.stderr
    check_resumed(work, uri, out, run_id)
    return proc


def check_resumed(work, uri, out: Path, run_id: str):
    client, run = the_run(uri, out)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), "each step's loss exactly once"
    assert len(client.get_metric_history(run_id, "epoch_loss")) == EPOCHS
    ref = weights(work / "ref" / "model.npz")
    rel = np.max(np.abs(weights(out / "model.npz") - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-9, f"relative difference to the undisturbed run {rel:.2e}"
    assert json.loads((out / "summary.json").read_text())["steps"] == STEPS
    assert not (out / "mlflow-undelivered").exists(), "a store that took everything leaves no spool"


def test_coordinator_sigkilled_mid_epoch_then_resumed(work):
    d, uri = work
    out = d / "killed"
    proc = start(d, "killed", uri)
    wait_for_checkpoint(proc, out / "checkpoints", min_files=2)
    time.sleep(0.05)  # into the next epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    client, run = the_run(uri, out)
    assert run.info.status == "RUNNING"  # nobody could end it: that is what --resume is for
    resume_and_check(d, uri, out, run.info.run_id)


def test_sigint_checkpoints_ends_killed_then_resumes(work):
    d, uri = work
    out = d / "interrupted"
    proc = start(d, "interrupted", uri)
    wait_for_checkpoint(proc, out / "checkpoints", min_files=1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "stopped after step" in err and "--resume" in err
    client, run = the_run(uri, out)
    assert run.info.status == "KILLED"
    # The run's artifacts end with its newest checkpoint, whatever the once-a-minute rule
    # skipped; with the folder's copies gone, --resume takes it from there, quietly.
    newest = sorted((out / "checkpoints").glob("ckpt-*.npz"))[-1].name
    in_store = [Path(a.path).name for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert newest in in_store, (newest, in_store)
    shutil.rmtree(out / "checkpoints")
    proc = resume_and_check(d, uri, out, run.info.run_id)
    assert "Downloading" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]


# --- A checkpoint names its run; a folder belongs to one run; --resume keeps the config ---

def runs_of(uri):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("resume-test")
    return {r.info.run_id: r.info.status for r in client.search_runs([exp.experiment_id])}


def folder_state(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stopped(work):
    """A run stopped by SIGINT (KILLED, its checkpoint in `stopped/`), resumed last."""
    d, uri = work
    proc = start(d, "stopped", uri)
    wait_for_checkpoint(proc, d / "stopped" / "checkpoints", min_files=1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    _, run = the_run(uri, d / "stopped")
    return d, uri, run.info.run_id


@pytest.mark.parametrize("override, key", [
    ("train.seed=4", "train.seed"), ("model.layers=[2,8,3]", "model.layers"),
    ("train.batch_size=16", "train.batch_size"), ("data.validation_fraction=0.2", "data.validation_fraction"),
    ("train.optimizer=momentum", "train.optimizer"), ("train.epochs=13", "train.epochs")])
def test_resume_refuses_a_config_that_changes_the_result(stopped, rayprop, override, key):
    d, uri, run_id = stopped
    before = runs_of(uri)
    result = rayprop("train", "c.yaml", "--local", "--quiet", "--resume", run_id, "--tracking-uri", uri,
                     "--set", override, cwd=d)
    one_line_exit_2(result, f"--resume {run_id}", key)
    assert runs_of(uri) == before  # the run is still KILLED, no new run


def run_in(folder: Path) -> str:
    """The one run whose files `folder` holds: summary, checkpoints and owner file agree."""
    from trainer.checkpoint import checkpoint_files, run_of

    run_id = json.loads((folder / "summary.json").read_text())["run_id"]
    assert json.loads((folder / ".rayprop-run").read_text())["run_id"] == run_id
    assert {run_of(p) for p in checkpoint_files(folder / "checkpoints")} == {run_id}
    return run_id


def test_the_same_command_twice_writes_two_folders(work, rayprop):
    """A quick start run twice: the second run writes to DIR-2, says so, and the two
    runs' files do not mix; both are the same training, so the same weights."""
    d, uri = work
    args = ("train", "c.yaml", "--local", "--quiet", "--output", "twice", "--tracking-uri", uri,
            "--set", "train.epochs=2")
    first = rayprop(*args, cwd=d)
    assert first.returncode == 0, first.stderr[-2000:]
    first_id, first_files = run_in(d / "twice"), folder_state(d / "twice")
    second = rayprop(*args, cwd=d)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"rayprop: twice holds the files of run {first_id}; this run writes to twice-2\n" in second.stderr
    assert folder_state(d / "twice") == first_files, "the first run's folder is left as it was"
    second_id = run_in(d / "twice-2")
    assert second_id != first_id
    assert the_run(uri, d / "twice-2")[1].info.run_id == second_id  # its rayprop.output tag
    assert np.array_equal(weights(d / "twice" / "model.npz"), weights(d / "twice-2" / "model.npz"))


@pytest.mark.parametrize("folder", ["stopped", "ref"])
def test_a_new_run_in_a_run_folder_writes_beside_it(work, stopped, rayprop, folder):
    """A stopped run's folder (which --resume may still continue) or a finished one's."""
    d, uri, stopped_id = stopped
    owner = json.loads((d / "ref" / "summary.json").read_text())["run_id"] if folder == "ref" else stopped_id
    before_runs, before_files = runs_of(uri), folder_state(d / folder)
    result = rayprop("train", "c.yaml", "--local", "--quiet", "--output", folder, "--tracking-uri", uri,
                     "--set", "train.seed=4", "--set", "train.epochs=2", cwd=d)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"rayprop: {folder} holds the files of run {owner}; this run writes to {folder}-2" in result.stderr
    assert folder_state(d / folder) == before_files
    new_id = run_in(d / f"{folder}-2")
    assert runs_of(uri) == {**before_runs, new_id: "FINISHED"}


def test_resume_into_another_runs_folder_is_refused(work, stopped, rayprop):
    """--resume keeps to one folder: another run's is refused, nothing written."""
    d, uri, stopped_id = stopped
    owner = json.loads((d / "ref" / "summary.json").read_text())["run_id"]
    before_runs, before_files = runs_of(uri), folder_state(d / "ref")
    result = rayprop("train", "c.yaml", "--local", "--quiet", "--resume", stopped_id, "--output", "ref",
                     "--tracking-uri", uri, cwd=d)
    one_line_exit_2(result, "--output ref", owner)
    assert runs_of(uri) == before_runs and folder_state(d / "ref") == before_files


def test_two_jobs_at_once_on_one_folder(work, rayprop):
    """The second job writes beside the first, which goes on undisturbed."""
    d, uri = work
    first = subprocess.Popen(cli("train", "c.yaml", "--local", "--quiet", "--output", "busy", "--tracking-uri", uri,
                                 "--set", "train.epochs=100000", cwd=d), cwd=d, env=env(),
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_checkpoint(first, d / "busy" / "checkpoints", min_files=1)
        first_id = json.loads((d / "busy" / ".rayprop-run").read_text())["run_id"]
        second = rayprop("train", "c.yaml", "--local", "--quiet", "--output", "busy", "--tracking-uri", uri,
                         "--set", "train.seed=4", "--set", "train.epochs=2", cwd=d)
        assert second.returncode == 0, second.stderr[-2000:]
        assert f"rayprop: busy: run {first_id} (pid {first.pid}) is writing there now; " \
               "this run writes to busy-2" in second.stderr
        assert first.poll() is None, "the first job must go on"
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err[-2000:]
    from trainer.checkpoint import checkpoint_files, run_of
    assert {run_of(p) for p in checkpoint_files(d / "busy" / "checkpoints")} == {first_id}
    assert not (d / "busy" / "summary.json").exists()
    assert run_in(d / "busy-2") not in (first_id, None)


def test_resume_uses_only_its_own_checkpoints_and_may_change_workers(stopped):
    """Another run's checkpoint with a higher step in the folder (as an older rayprop
    could leave) is skipped; the run resumes with 2 in-process workers instead of 1."""
    from trainer.checkpoint import Checkpoint, Position, latest_checkpoint, write_checkpoint

    d, uri, run_id = stopped
    own = latest_checkpoint(d / "stopped" / "checkpoints")
    foreign = Checkpoint(np.full_like(own.theta, 0.5), own.optimizer,
                         Position(EPOCHS - 1, 0, STEPS - 102), {"run_id": "f" * 32, "layers": [2, 16, 3]})
    write_checkpoint(d / "stopped" / "checkpoints", foreign)
    proc = subprocess.run(cli("train", "c.yaml", "--local", "--workers", "2", "--quiet", "--resume", run_id,
                              "--tracking-uri", uri, cwd=d), cwd=d, env=env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "another run" in proc.stderr and f"resuming at step {own.position.global_step}" in proc.stderr
    check_resumed(d, uri, d / "stopped", run_id)
