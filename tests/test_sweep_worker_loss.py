"""A shard worker lost during a sweep, past train.max_worker_failures, on a real local
Ray: that child run ends FAILED with one line (as `rayprop train` would), the next
child runs on a new pool and finishes, and the command exits 0 without a traceback."""

import os
import signal

import mlflow
import yaml

from experiments.cli import rayprop as cli
from experiments.jobs import pools
from tests.raydata import config, write_parquet


class KillFirstWorkerOnce:
    """A progress-bar stand-in (a coordinator listener) that SIGKILLs worker 0 of the
    newest pool at step 2 of the first child run only."""

    pools: list = []
    done = False

    def __init__(self, *args, **kwargs):
        pass

    def on_step(self, step, epoch, loss, n):
        if step == 2 and not KillFirstWorkerOnce.done:
            KillFirstWorkerOnce.done = True
            os.kill(self.pools[-1].info[0]["pid"], signal.SIGKILL)  # the worker reported its pid

    def on_epoch(self, epoch, metrics):
        pass

    def close(self):
        pass


def test_worker_lost_in_a_sweep_fails_that_run_only(tmp_path, monkeypatch, capsys):
    data = write_parquet(tmp_path / "d.parquet")
    raw = config(data, "sgd", 64, epochs=2, max_worker_failures=0)
    raw["sweep"] = {"train.learning_rate": [0.05, 0.02]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    open_pool = pools.open_pool

    def recording_open_pool(*args, **kwargs):  # the real pool, remembered for the listener
        pool = open_pool(*args, **kwargs)
        KillFirstWorkerOnce.pools.append(pool)
        return pool

    monkeypatch.chdir(tmp_path)  # the sqlite store keeps artifacts in ./mlruns
    monkeypatch.setattr(pools, "open_pool", recording_open_pool)
    monkeypatch.setattr("experiments.sweeps.sweep.ProgressBar", KillFirstWorkerOnce)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = cli.main(["sweep", str(path), "--workers", "2", "--concurrency", "1", "--tracking-uri", uri,
                     "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    lost = [line for line in err.splitlines() if "run 1/2" in line and "worker loss" in line]
    assert len(lost) == 1 and "train.max_worker_failures=0" in lost[0], err
    assert len(KillFirstWorkerOnce.pools) == 2  # the second run had a pool of its own

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("raytest").experiment_id])
    children = {r.data.tags["mlflow.runName"]: r.info.status for r in runs
                if r.data.tags.get("rayprop.sweep") == "child"}
    assert children == {"learning_rate=0.05": "FAILED", "learning_rate=0.02": "FINISHED"}
