"""Ray Client jobs (`--address ray://...`) against a real `ray start --head` with token
auth: the coordinator runs in the cluster (experiments/jobs/remote_pool.py), and what the
user gets on this machine is what a local-mode run gives: the same weights, the
checkpoints in the local output folder, every step's loss in the MLflow run, Ctrl-C
after a step with a checkpoint to resume from, and errors of the same kinds."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.raycluster import Head
from tests.test_remote import client_env, one_line_error, rayprop

EPOCHS = 3
CONFIG = ("experiment: rc\ndata: {source: spirals}\n"
          "model: {layers: [2, 16, 3], dtype: float64}\n"
          "train: {optimizer: adam, learning_rate: 0.01, batch_size: 64, epochs: %d, seed: 4, "
          "checkpoint_seconds: 0}\n")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    h = Head(tmp_path_factory.mktemp("rayhead"))
    yield h
    h.stop()


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """An empty sqlite store with MLflow's tables, made once (copying it is instant)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def store(template_db, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlflow.db").write_bytes(template_db.read_bytes())
    return f"sqlite:///{folder / 'mlflow.db'}"


def weights(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return np.concatenate([z[k].ravel() for k in sorted(z.files)])


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def newest_checkpoint(folder: Path):
    from trainer.checkpoint import latest_checkpoint

    return latest_checkpoint(folder / "checkpoints")


def the_run(uri: str, run_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return client, client.get_run(run_id)


def test_a_ray_client_job_trains_in_the_cluster_as_local_mode(head, tmp_path, template_db):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG % EPOCHS)
    env = client_env(tmp_path, head.token)
    uri = store(template_db, tmp_path / "store")
    proc = rayprop("train", cfg, "--address", head.client_address, "--workers", "2", "--output",
                   tmp_path / "client", "--tracking-uri", uri, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    local = rayprop("train", cfg, "--local", "--output", tmp_path / "local", "--tracking-uri",
                    store(template_db, tmp_path / "store-local"), env=env, cwd=tmp_path)
    assert local.returncode == 0, local.stderr

    summary = json.loads((tmp_path / "client" / "summary.json").read_text())
    assert summary["ray"] == "client" and summary["workers"] == 2
    steps = summary["steps"]
    assert steps == json.loads((tmp_path / "local" / "summary.json").read_text())["steps"] == EPOCHS * 13
    # The same weights as one process over all rows (float64: only the order of additions differs).
    rel = rel_diff(weights(tmp_path / "client" / "model.npz"), weights(tmp_path / "local" / "model.npz"))
    assert rel <= 1e-9, f"ray:// vs local mode: relative difference {rel:.2e}"

    # Checkpoints were written here, by this run, the last at the last step, holding the
    # final weights and the optimizer's state as local mode's.
    ckpt, ref = newest_checkpoint(tmp_path / "client"), newest_checkpoint(tmp_path / "local")
    assert ckpt is not None and ckpt.meta["run_id"] == summary["run_id"]
    assert ckpt.position.global_step == steps and ckpt.position.epoch == EPOCHS
    assert len(list((tmp_path / "client" / "checkpoints").glob("ckpt-*.npz"))) == EPOCHS  # one per epoch
    assert rel_diff(ckpt.theta, ref.theta) <= 1e-9
    assert int(ckpt.optimizer["t"]) == steps
    assert rel_diff(ckpt.optimizer["v"], ref.optimizer["v"]) <= 1e-9

    # The MLflow run: one loss point per step, the epoch metrics, the pool's size.
    client, run = the_run(uri, summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rayprop.workers"] == "2"
    loss = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in loss] == list(range(1, steps + 1))
    epoch_loss = sorted(client.get_metric_history(run.info.run_id, "epoch_loss"), key=lambda m: m.step)
    assert [m.step for m in epoch_loss] == [13 * e for e in range(1, EPOCHS + 1)]
    assert epoch_loss[-1].value == pytest.approx(summary["final_loss"], rel=1e-12)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "workers")][:1] == [2]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == EPOCHS


# Full-batch steps (one per epoch), so a run of S epochs is a run of S steps: the weights
# at a stop after step S are those of an undisturbed run with train.epochs=S. So many
# epochs that no run ends before its Ctrl-C, which is sent once a checkpoint exists.
# Plain gradient descent: over thousands of steps Adam magnifies the last bits of the
# sums' order of addition (seen: 2e-4 apart after 8,930 steps), GD does not.
LONG = ("experiment: rc\ndata: {source: spirals, validation_fraction: 0}\n"
        "model: {layers: [2, 16, 3], dtype: float64}\n"
        "train: {optimizer: gd, learning_rate: 0.05, batch_size: full, epochs: 1000000, seed: 4, "
        "checkpoint_seconds: 0.5}\n")


def interrupt_after_a_checkpoint(args, env, cwd, out: Path, after_step: int = 0) -> tuple[int, str]:
    """Run `rayprop train ARGS`, Ctrl-C it once a checkpoint past `after_step` is in
    out/checkpoints (the client wrote it from the coordinator's event); (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "train", *map(str, args)], cwd=cwd,
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            ckpt = newest_checkpoint(out)
            if ckpt is not None and ckpt.position.global_step > after_step:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def stopped_at(code: int, err: str) -> int:
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "stopped after step" in err and "--resume" in err, err[-3000:]
    return int(err.split("stopped after step ")[1].split()[0].rstrip(";:,"))


def local_theta(cfg, steps: int, tmp_path, template_db, env) -> np.ndarray:
    out = tmp_path / f"local-{steps}"
    # Two in-process workers over the same rows as the Ray pool's two: the sums add in the same order.
    proc = rayprop("train", cfg, "--local", "--workers", "2", "--quiet", "--output", out,
                   "--set", f"train.epochs={steps}",
                   "--tracking-uri", store(template_db, tmp_path / f"store-{steps}"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return newest_checkpoint(out).theta  # the last epoch always gets one


def test_ctrl_c_stops_a_ray_client_job_after_its_step_and_it_resumes(head, tmp_path, template_db):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(LONG)
    env = client_env(tmp_path, head.token)
    uri = store(template_db, tmp_path / "store")
    out = tmp_path / "out"
    args = [cfg, "--address", head.client_address, "--workers", "2", "--output", out, "--tracking-uri", uri]
    first = stopped_at(*interrupt_after_a_checkpoint(args, env, tmp_path, out))
    ckpt = newest_checkpoint(out)
    assert ckpt.position.global_step == first and int(ckpt.optimizer["t"]) == first  # the stop's own
    assert not (out / "summary.json").exists()
    client, run = the_run(uri, ckpt.meta["run_id"])
    assert run.info.status == "KILLED"
    loss_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert loss_steps == list(range(1, first + 1))  # each step up to the stop, once
    assert rel_diff(ckpt.theta, local_theta(cfg, first, tmp_path, template_db, env)) <= 1e-9

    # Resumed through ray:// from that checkpoint (theta, the optimizer's step count, the position),
    # then stopped again: still on the undisturbed run's path.
    second = stopped_at(*interrupt_after_a_checkpoint([*args, "--resume", run.info.run_id], env, tmp_path,
                                                      out, after_step=first))
    assert second > first
    ckpt = newest_checkpoint(out)
    assert ckpt.position.global_step == second and ckpt.meta["run_id"] == run.info.run_id
    assert rel_diff(ckpt.theta, local_theta(cfg, second, tmp_path, template_db, env)) <= 1e-9
    loss_steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert loss_steps == list(range(1, second + 1))


def test_errors_in_the_cluster_are_the_same_kinds(head, tmp_path, template_db):
    """A diverging loss is exit 1 and its one line; bad rows, found by the workers while
    the coordinator in the cluster opens the pool, are exit 2 and one line before any run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    env = client_env(tmp_path, head.token)
    uri = store(template_db, tmp_path / "store")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG % EPOCHS)
    proc = rayprop("train", cfg, "--address", head.client_address, "--workers", "2", "--output",
                   tmp_path / "diverged", "--tracking-uri", uri, "--set", "model.cost=mse",
                   "--set", "model.output_activation=linear", "--set", "model.layers=[2, 8, 1]",
                   "--set", "train.optimizer=sgd", "--set", "train.learning_rate=1e6", env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and lines[-1].startswith("rayprop train: diverged: loss became"), lines[-3:]
    from mlflow import MlflowClient

    (run,) = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("rc").experiment_id])
    assert run.info.status == "FAILED" and "DivergedError" in run.data.tags["rayprop.error"]

    x = np.arange(400, dtype=np.float64)
    x[350] = np.nan  # in the second worker's rows
    pq.write_table(pa.table({"a": x, "b": -x, "y": (np.arange(400) % 3).astype(np.int64)}), tmp_path / "bad.parquet")
    proc = rayprop("train", cfg, "--address", head.client_address, "--workers", "2", "--output",
                   tmp_path / "bad", "--tracking-uri", uri, "--set", f"data.source={tmp_path / 'bad.parquet'}",
                   env=env, cwd=tmp_path)
    one_line_error(proc, "NaN at row 350")
    assert not (tmp_path / "bad").exists()
    assert len(MlflowClient(uri).search_runs([run.info.experiment_id])) == 1  # no run for bad data
