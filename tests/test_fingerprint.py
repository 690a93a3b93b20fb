"""A job knows its data: a source that changes under a job, or between a killed job
and its `--resume`, stops it with exit 2 naming the file, instead of training on two
data sets. Real processes, real SIGKILLs, a real sqlite MLflow store; the Ray cases
on a real local Ray (the CLI's own, and one for the in-process pool).

The control in each case is an undisturbed job on the original data: restoring the
original bytes AND the modification time (what a fingerprint cannot see) lets the
resume finish with its weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import one_line_exit_2
from trainer.checkpoint import latest_checkpoint

ROWS = 600


def cli(*args):
    return [sys.executable, "-m", "experiments.cli", *map(str, args)]


def run_cli(*args, cwd, timeout=300):
    return subprocess.run(cli(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_csv(path: Path, seed: int) -> None:
    """ROWS rows, every value printed at a fixed width: another seed gives a file of
    the same size and row count with other values."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (ROWS, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int) + (X[:, 0] > 0.5)
    with open(path, "w") as f:  # in place: same path, same inode
        f.write("x0,x1,y\n" + "".join(f"{a:+.6f},{b:+.6f},{c}\n" for (a, b), c in zip(X, y)))


def weights(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return np.concatenate([z[k].ravel() for k in sorted(z.files)])


def relative(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def wait_for(proc, condition, what: str, seconds=180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"the job ended before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.02)


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


LOCAL_CONFIG = """\
experiment: fingerprint-local
model: {layers: [2, 16, 3], hidden_activation: tanh, dtype: float64}
data: {source: d.csv, target: y}
train: {optimizer: adam, learning_rate: 0.01, batch_size: 8, epochs: 20, seed: 1, checkpoint_seconds: 0}
"""


def test_resume_refuses_a_csv_rewritten_in_place_and_goes_on_with_the_original(tmp_path, rayprop):
    (tmp_path / "c.yaml").write_text(LOCAL_CONFIG)
    csv, uri = tmp_path / "d.csv", f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_csv(csv, seed=0)
    original, stat0 = csv.read_bytes(), csv.stat()
    args = ("train", "c.yaml", "--local", "--quiet", "--tracking-uri", uri)
    ref = rayprop(*args, "--output", "ref")  # in process: no start-up to wait for
    assert ref.returncode == 0, ref.stderr[-2000:]

    job = subprocess.Popen(cli(*args, "--output", "out"), cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        wait_for(job, lambda: len(list((tmp_path / "out/checkpoints").glob("ckpt-*.npz"))) >= 2,
                 "a second checkpoint")
    finally:
        kill_group(job)
    run_id = latest_checkpoint(tmp_path / "out/checkpoints").meta["run_id"]

    write_csv(csv, seed=1)  # other values, same path, size and row count
    assert csv.stat().st_size == stat0.st_size and csv.read_bytes() != original
    refused = rayprop(*args, "--resume", run_id)
    line = one_line_exit_2(refused, f"--resume {run_id}", str(csv), "changed since the run started")
    assert "modified" in line

    # The original bytes and modification time back: the fingerprint matches (it cannot
    # tell this from the original), and the run ends with the undisturbed run's weights.
    csv.write_bytes(original)
    os.utime(csv, ns=(stat0.st_atime_ns, stat0.st_mtime_ns))
    resumed = rayprop(*args, "--resume", run_id)
    from mlflow import MlflowClient

    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert relative(weights(tmp_path / "out/model.npz"), weights(tmp_path / "ref/model.npz")) <= 1e-9

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tag = run.data.tags["rayprop.data_fingerprint"]
    recorded = json.loads(Path(client.download_artifacts(run_id, "data_fingerprint.json", str(tmp_path)))
                          .read_text())
    assert recorded["hash"] == tag and recorded["files"][0]["file"] == str(csv)
    assert recorded["files"][0]["size"] == stat0.st_size and recorded["files"][0]["rows"] == ROWS


def write_parquet(path: Path, seed: int, m: int = 4000) -> None:
    """m rows of 4 features and 3 classes, written plainly (no dictionary, no
    compression): another seed gives a file of the same size, schema and row groups."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 4))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] * X[:, 2] > 0.3)
    table = pa.table({**{f"x{j}": X[:, j] for j in range(4)}, "y": y})
    pq.write_table(table, path, row_group_size=500, compression="none", use_dictionary=False)


RAY_CONFIG = """\
experiment: fingerprint-ray
model: {layers: [4, 12, 3], hidden_activation: tanh, dtype: float64}
data: {source: d.parquet, validation_fraction: 0.1}
train: {optimizer: adam, learning_rate: 0.01, batch_size: 64, epochs: 400, seed: 2, checkpoint_seconds: 0}
"""


def test_a_replaced_ray_worker_that_finds_the_parquet_file_replaced_stops_the_job(tmp_path):
    from benchmarks.memory import shard_actors

    (tmp_path / "c.yaml").write_text(RAY_CONFIG)
    data, uri = tmp_path / "d.parquet", f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_parquet(data, seed=0)
    size = data.stat().st_size
    job = subprocess.Popen(cli("train", "c.yaml", "--workers", 2, "--quiet", "--output", "out",
                               "--tracking-uri", uri), cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        wait_for(job, lambda: any((tmp_path / "out/checkpoints").glob("ckpt-*.npz")), "a checkpoint")
        workers = shard_actors(job.pid)
        assert len(workers) == 2, workers
        # Replaced atomically (a new file renamed over the old), then a worker killed:
        # its replacement opens the new file.
        write_parquet(tmp_path / "new.parquet", seed=1)
        os.replace(tmp_path / "new.parquet", data)
        assert data.stat().st_size == size
        os.kill(workers[0], signal.SIGKILL)
        err = job.communicate(timeout=240)[1]
    finally:
        kill_group(job)
    assert job.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert f"{data} changed since the job started (modified" in last, last
    assert "last good checkpoint" in last, last
    assert latest_checkpoint(tmp_path / "out/checkpoints").path.name in last  # kept, and named

    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(latest_checkpoint(tmp_path / "out/checkpoints").meta["run_id"])
    assert run.info.status == "FAILED"
    assert "changed since the job started" in run.data.tags["rayprop.error"]


class ReplaceAndKill:
    """A coordinator listener: after step `at`, replaces the data file atomically and
    SIGKILLs worker `rank`'s process while the next step is computed."""

    def __init__(self, pool, data: Path, rank: int, at: int):
        self.pool, self.data, self.rank, self.at = pool, data, rank, at

    def on_step(self, step, epoch, loss, n):
        if step == self.at:
            write_parquet(self.data.with_suffix(".new"), seed=1, m=1000)
            os.replace(self.data.with_suffix(".new"), self.data)
            pid = self.pool.info[self.rank]["pid"]
            threading.Timer(0.002, lambda: os.kill(pid, signal.SIGKILL)).start()

    def on_epoch(self, epoch, metrics):
        pass


def test_a_reshard_that_reaches_a_replaced_file_stops_the_job(tmp_path):
    """No CPU for a replacement in time (cluster.replace_seconds: 0): the survivor takes
    the lost worker's rows, reading them from the file, which has been replaced."""
    from cluster.connect import connect
    from experiments.jobs import training
    from trainer.config import from_dict
    from trainer.coordinator import train
    from trainer.errors import DataError  # DataChangedError is one; named so the test runs on older code
    from trainer.optimizers import make_optimizer
    from workers.ray_pool import RayPool

    data = tmp_path / "d.parquet"
    write_parquet(data, seed=0, m=1000)
    job = training.prepare(from_dict({
        "experiment": "fingerprint-reshard", "model": {"layers": [4, 8, 3], "dtype": "float64"},
        "data": {"source": str(data)}, "cluster": {"replace_seconds": 0},
        "train": {"optimizer": "sgd", "learning_rate": 0.05, "batch_size": 100, "epochs": 3}}))
    with connect(None, 2):
        pool = RayPool(job.task, job.cfg.cluster, 2, max_failures=3)
        try:
            with pytest.raises(DataError, match=f"{data} changed since the job started"):
                train(pool, job.theta0.copy(), make_optimizer("sgd", 0.05), job.plan, 3,
                      [ReplaceAndKill(pool, data, rank=1, at=2)])
            assert pool.events == [] and len(pool.resizes) == 1  # no replacement: the reshard read it
            assert pool.resizes[0].startswith("2 -> 1 workers: worker 1 (rows 500-1000) lost")
        finally:
            pool.close()


def test_a_folder_resumed_names_a_file_gone_new_or_changed(tmp_path):
    from trainer.errors import DataChangedError
    from workers.data.fingerprint import compare, take
    from workers.data.sources import open_source

    folder = tmp_path / "d"
    (folder / "k=1").mkdir(parents=True)
    for name, seed in (("a", 0), ("b", 1)):
        write_parquet(folder / "k=1" / f"{name}.parquet", seed, m=50)
    was = take(open_source(str(folder)))
    compare("R", was, take(open_source(str(folder))))  # unchanged: passes
    (folder / "k=1/c.parquet").write_bytes((folder / "k=1/a.parquet").read_bytes())
    with pytest.raises(DataChangedError, match=f"--resume R: data.source: {folder}/k=1/c.parquet is new"):
        compare("R", was, take(open_source(str(folder))))
    os.replace(folder / "k=1/c.parquet", folder / "k=1/b.parquet")
    with pytest.raises(DataChangedError, match=r"k=1/b.parquet changed since the run started \(modified"):
        compare("R", was, take(open_source(str(folder))))
    (folder / "k=1/b.parquet").unlink()
    with pytest.raises(DataChangedError, match=f"{folder}/k=1/b.parquet is gone"):
        compare("R", was, take(open_source(str(folder))))


def test_what_a_fingerprint_compares():
    from workers.data.fingerprint import difference, file_entry

    was = file_entry("f", 100, 5_000_000_000, 10, [5, 5])
    assert difference(was, file_entry("f", 100, 5_000_000_000, 10, [5, 5]), remote=False) is None
    assert difference(was, file_entry("f", 101, 5_000_000_000, 10, [5, 5]), False) == "size 100 -> 101 bytes"
    assert difference(was, file_entry("f", 100, 5_000_000_001, 10, [5, 5]), False).startswith("modified 1970")
    # An object store's listing and HEAD report the time at other precisions: seconds count there.
    assert difference(was, file_entry("f", 100, 5_400_000_000, 10, [5, 5]), remote=True) is None
    assert difference(was, file_entry("f", 100, 6_000_000_000, 10, [5, 5]), remote=True) is not None
    assert difference(was, file_entry("f", 100, 5_000_000_000, 10, [4, 6]), False) == \
        "row groups of [5, 5] (2) -> [4, 6] (2) rows"
