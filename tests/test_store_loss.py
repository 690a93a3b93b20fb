"""A tracking server that dies mid-training: the job talks to a real `mlflow server`
on loopback through a TCP proxy of the test's own, a process killed with SIGKILL while
the job trains: to the job, the server died (its connections drop, its port refuses).
The server behind it lives on for the next test and stands for the server started
again on the same backend: one server start for the module, not one per kill.

Training goes on, the model files are written, the job ends with exit 3 and one
line saying what the store did not get and where it is kept; started again on the
same backend, the server's points plus the kept ones are every step exactly, and
`replay` delivers the kept ones once. Ctrl-C after the server died stops the job
promptly (130), a second Ctrl-C at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tcpproxy import TcpProxy

EPOCHS, BATCH, TRAIN_ROWS = 40, 8, 810
STEPS = EPOCHS * -(-TRAIN_ROWS // BATCH)
CONFIG = f"""\
experiment: store-loss
model: {{layers: [2, 16, 3], hidden_activation: tanh, dtype: float64}}
data: {{source: spirals, validation_fraction: 0.1}}
train: {{optimizer: adam, learning_rate: 0.01, batch_size: {BATCH}, epochs: {EPOCHS}, seed: 3,
        checkpoint_seconds: 0}}
"""


def start_job(work: Path, uri: str, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.Popen([sys.executable, "-m", "experiments.cli", "train", "c.yaml", "--local", "--quiet",
                             "--output", "out", "--tracking-uri", uri, *extra], cwd=work, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path_glob, work: Path, proc, seconds=180):
    deadline = time.time() + seconds
    while not list(work.glob(path_glob)):
        assert proc.poll() is None, f"the job ended first:\n{proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"no {path_glob} within {seconds}s"
        time.sleep(0.02)


@pytest.fixture
def work(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    return tmp_path


@pytest.fixture
def proxy(mlflow_server):
    """The server as the job sees it; `proxy.kill()` is the server's death."""
    proxy = TcpProxy(mlflow_server.port)
    yield proxy
    proxy.kill()


def test_training_outlives_a_dead_tracking_server_and_nothing_is_lost(work, mlflow_server, proxy):
    proc = None
    try:
        proc = start_job(work, proxy.uri)
        wait_for("out/checkpoints/ckpt-*.npz", work, proc)  # epoch 1 of 40 is done
        proxy.kill()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err
    spool = work / "out" / "mlflow-undelivered" / "metrics.jsonl"
    lines = [line for line in err.splitlines() if "did not get everything" in line]
    assert len(lines) == 1, err[-3000:]
    assert str(spool) in lines[0] or "mlflow-undelivered" in lines[0]
    assert "model artifacts not uploaded" in lines[0] and "left RUNNING" in lines[0]
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["steps"] == STEPS and (work / "out" / "model.npz").is_file()
    run_id = summary["run_id"]

    # The same backend, reached again (the server behind the dead proxy): what it has
    # plus what was kept is every step, and `--resume` sends what it lacks (each point
    # once), the model, and ends the run.
    from mlflow import MlflowClient

    from experiments.tracking.outbox import read_spool

    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    stored = {m.step for m in client.get_metric_history(run_id, "loss")}
    kept = {m.step for m in read_spool(spool) if m.key == "loss"}
    assert stored < set(range(1, STEPS + 1)), "the server died before the end"
    assert stored | kept == set(range(1, STEPS + 1))
    resumed = start_job(work, mlflow_server.uri, "--resume", run_id)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, STEPS + 1)), "each step exactly once"
    assert len(client.get_metric_history(run_id, "epoch_loss")) == EPOCHS
    assert {a.path for a in client.list_artifacts(run_id)} >= {"model.npz", "summary.json"}
    assert not spool.exists()
    assert json.loads((work / "out" / "summary.json").read_text()) == summary


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_promptly_after_the_server_died(work, proxy, presses):
    proc = None
    try:
        proc = start_job(work, proxy.uri, "--set", "train.epochs=100000")
        wait_for("out/checkpoints/ckpt-*.npz", work, proc)
        proxy.kill()
        time.sleep(3)  # training goes on without the store
        assert proc.poll() is None
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
        seconds = time.time() - t0
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert seconds < (30 if presses == 1 else 10), f"took {seconds:.1f}s to stop"
    lines = [line for line in err.splitlines() if "did not get everything" in line]
    assert len(lines) == 1 and "mlflow-undelivered" in lines[0], err[-3000:]
    assert list((work / "out" / "checkpoints").glob("ckpt-*.npz"))
