"""Sweeps side by side: trials at once on a real local Ray of 4 CPUs, a worker lost and
replaced inside its trial's reservation, early stopping, seeded random search.

The weights of every trial are compared with the same config trained alone by the
coordinator on an in-process pool (no Ray, no threads, no MLflow): the batches depend
on the config only, so they must agree to float64 rounding.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from experiments.jobs import pools, training
from experiments.sweeps.early_stopping import milestones
from tests.raydata import config, write_parquet
from trainer.config import from_dict
from trainer.coordinator import train as coordinate
from trainer.model_io import load_model
from trainer.optimizers import make_optimizer
from workers.local_pool import LocalPool


def children_of(uri, experiment="raytest"):
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = [r for r in runs if r.data.tags.get("rayprop.sweep") == "parent"]
    assert len(parent) == 1
    kids = [r for r in runs if r.data.tags.get("rayprop.sweep") == "child"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in kids)
    return parent[0], kids, client


def trained_alone(raw: dict, workers: int) -> np.ndarray:
    """theta of `raw` trained by the coordinator on an in-process pool of `workers`."""
    job = training.prepare(from_dict(raw).without_sweep())
    t = job.cfg.train
    pool = LocalPool.open(job.task, workers, job.source)
    theta = job.theta0.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        coordinate(pool, theta, make_optimizer(t.optimizer, t.learning_rate, t.momentum, t.beta1, t.beta2,
                                               t.epsilon), job.plan, t.epochs)
    pool.close()
    return theta


def with_combo(raw: dict, combo: dict) -> dict:
    out = yaml.safe_load(yaml.safe_dump(raw))
    out.pop("sweep", None)
    for key, value in combo.items():
        section, name = key.split(".")
        out.setdefault(section, {})[name] = value
    return out


class Watcher:
    """A progress-bar stand-in (a coordinator listener) in every trial's thread. Trial 1
    waits at its first step until another trial has taken a step (so, on a sweep that
    ran trials one after the other, never: it gives up after WAIT_S and says so).
    In trial 3 it SIGKILLs worker 0 of that trial's own pool at step 3, once."""

    WAIT_S = 60
    KILL_IN = "rayprop-trial-3"
    pools: dict = {}
    killed: list = []
    others_stepped = threading.Event()
    waited_in_vain: list = []

    def __init__(self, *args, **kwargs):
        self.thread = threading.current_thread().name

    def on_step(self, step, epoch, loss, n):
        if self.thread == "rayprop-trial-1":
            if step == 1 and not self.others_stepped.wait(self.WAIT_S):
                self.waited_in_vain.append(step)
        else:
            self.others_stepped.set()
        if self.thread == self.KILL_IN and step == 3 and not self.killed:
            pid = self.pools[self.thread].info[0]["pid"]
            self.killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    def on_epoch(self, epoch, metrics):
        pass

    def close(self):
        pass


def test_a_grid_runs_trials_at_once_each_as_trained_alone(tmp_path, monkeypatch, rayprop):
    """3x2 grid, 2 workers a trial, a local Ray of 4 CPUs: at least two child runs
    overlap in time; each child's weights are those of its config trained alone, also
    the trial whose worker was killed (replaced in its own placement group: its pool
    places actors there only)."""
    data = write_parquet(tmp_path / "d.parquet", m=600)
    raw = config(data, "sgd", 32, epochs=2, max_worker_failures=1)
    raw["sweep"] = {"train.learning_rate": [0.05, 0.02, 0.01], "model.hidden_activation": ["tanh", "relu"]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    open_pool = pools.open_pool

    def recording_open_pool(*args, **kwargs):
        pool = open_pool(*args, **kwargs)
        Watcher.pools[threading.current_thread().name] = pool
        return pool

    monkeypatch.setattr(pools, "open_pool", recording_open_pool)
    monkeypatch.setattr("experiments.sweeps.sweep.ProgressBar", Watcher)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = rayprop("sweep", path, "--workers", "2", "--concurrency", "2", "--tracking-uri", uri,
                   "--output", tmp_path / "out", "--quiet")
    assert proc.code == 0, proc.stderr
    assert "6 runs, 2 at a time" in proc.stderr
    assert not Watcher.waited_in_vain, "no other trial stepped while trial 1 was running"
    assert len(Watcher.killed) == 1
    lost = Watcher.pools[Watcher.KILL_IN]
    assert lost.failures == 1 and lost.info[0]["pid"] != Watcher.killed[0]

    parent, kids, _ = children_of(uri)
    assert len(kids) == 6 and {r.info.status for r in kids} == {"FINISHED"}
    spans = sorted((r.info.start_time, r.info.end_time) for r in kids)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    assert overlapping, f"no two child runs overlapped: {spans}"
    assert parent.data.tags["rayprop.sweep.concurrency"] == "2"

    for r in kids:  # the child's saved weights against the same config trained alone
        combo = {"train.learning_rate": float(r.data.params["train.learning_rate"]),
                 "model.hidden_activation": r.data.params["model.hidden_activation"]}
        _, theta, _ = load_model(r.data.tags["rayprop.output"])
        np.testing.assert_allclose(theta, trained_alone(with_combo(raw, combo), 2), rtol=1e-12, atol=1e-14)


def test_early_stopping_stops_the_worst_trials_at_the_first_milestone(tmp_path, rayprop):
    """asha, grace 1 epoch, factor 2, trials in threads (--local, 3 at once): at epoch 1
    a trial goes on only if it ranks in the best half of those before it in the sweep;
    the stopped ones end FINISHED, tagged, and one of them goes on with --resume."""
    data = write_parquet(tmp_path / "d.parquet", m=400)
    raw = config(data, "sgd", 32, epochs=4)
    raw["sweep"] = {"train.learning_rate": [0.1, 0.002, 0.001, 0.05]}
    raw.update(sweep_scheduler="asha", sweep_grace_epochs=1, sweep_reduction_factor=2)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = rayprop("sweep", path, "--local", "--workers", "2", "--concurrency", "3", "--tracking-uri", uri,
                   "--output", tmp_path / "out", "--quiet")
    assert proc.code == 0, proc.stderr
    assert milestones(1, 2, 4) == [1, 2]
    _, kids, client = children_of(uri)
    by_lr = {float(r.data.params["train.learning_rate"]): r for r in kids}
    assert {r.info.status for r in kids} == {"FINISHED"}

    # The rule, from the val_loss each child logged at the end of epoch 1 (its first epoch_loss step).
    def at_epoch_1(r):
        step = min(m.step for m in client.get_metric_history(r.info.run_id, "epoch_loss"))
        return next(m.value for m in client.get_metric_history(r.info.run_id, "val_loss") if m.step == step)

    order = [0.1, 0.002, 0.001, 0.05]
    scores = [at_epoch_1(by_lr[lr]) for lr in order]
    expected_stopped = set()
    for i, lr in enumerate(order):
        earlier = sorted(scores[:i + 1])
        if earlier.index(scores[i]) >= -(-(i + 1) // 2):
            expected_stopped.add(lr)
    assert expected_stopped >= {0.002, 0.001}  # the two slow learning rates are the worst
    for lr, r in by_lr.items():
        stopped = r.data.tags.get("rayprop.stopped_early") == "true"
        if lr in expected_stopped:
            assert stopped and r.data.tags["rayprop.stopped_at_epoch"] == "1", lr
            assert len(client.get_metric_history(r.info.run_id, "epoch_loss")) == 1
        else:
            assert not stopped or r.data.tags["rayprop.stopped_at_epoch"] == "2", lr
    best = by_lr[0.1]
    assert "rayprop.stopped_early" not in best.data.tags
    assert len(client.get_metric_history(best.info.run_id, "epoch_loss")) == 4

    # A stopped trial keeps its checkpoint: --resume trains it to its last epoch.
    slow = by_lr[0.002]
    cont = rayprop("train", path, "--local", "--workers", "2", "--set", "train.learning_rate=0.002",
                   "--tracking-uri", uri, "--resume", slow.info.run_id, "--quiet")
    assert cont.code == 0, cont.stderr
    again = client.get_run(slow.info.run_id)
    assert again.info.status == "FINISHED" and again.data.tags["rayprop.stopped_early"] == "resumed"
    assert len(client.get_metric_history(slow.info.run_id, "epoch_loss")) == 4
    _, theta, _ = load_model(slow.data.tags["rayprop.output"])
    np.testing.assert_allclose(theta, trained_alone(with_combo(raw, {"train.learning_rate": 0.002}), 2),
                               rtol=1e-12, atol=1e-14)


def test_a_seeded_random_search_gives_the_same_trials_twice(tmp_path, rayprop):
    """Distributions drawn sweep_samples times from sweep_seed: two sweeps of one config
    train the same trials (names and params of the child runs); another seed, others."""
    yaml_text = ("experiment: drawn\ndata: {source: xor}\nmodel: {layers: [2, 4, 1], cost: binary_cross_entropy}\n"
                 "train: {optimizer: gd, epochs: 1}\nsweep_samples: 2\nsweep_seed: 7\n"
                 "sweep:\n  train.learning_rate: {loguniform: [0.01, 1.0]}\n"
                 "  model.hidden_activation: {choice: [tanh, relu, sigmoid]}\n  train.seed: [0, 1]\n")
    path = tmp_path / "drawn.yaml"
    path.write_text(yaml_text)

    def drawn(uri, out):
        proc = rayprop("sweep", path, "--local", "--concurrency", "3", "--tracking-uri", uri, "--output", out,
                       "--quiet")
        assert proc.code == 0, proc.stderr
        _, kids, _ = children_of(uri, "drawn")
        assert len(kids) == 4
        keys = ("train.learning_rate", "model.hidden_activation", "train.seed")
        return sorted((r.info.run_name, tuple(r.data.params[k] for k in keys)) for r in kids)

    first = drawn(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a")
    second = drawn(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b")
    assert first == second
    assert len({lr for _, (lr, _, _) in first}) == 4  # every trial drew its own learning rate
    assert all(0.01 <= float(lr) <= 1.0 for _, (lr, _, _) in first)
    other = from_dict({**yaml.safe_load(yaml_text), "sweep_seed": 8})
    from experiments.sweeps.sweep import trials
    assert trials(other) != trials(from_dict(yaml.safe_load(yaml_text)))


@pytest.mark.parametrize("sweep, words", [
    ({"train.learning_rate": {"uniform": [0.1]}}, ["sweep.train.learning_rate", "uniform", "[low, high]"]),
    ({"train.learning_rate": {"loguniform": [0, 1]}}, ["sweep.train.learning_rate", "loguniform", "> 0"]),
    ({"train.learning_rate": {"uniform": [0.5, 0.1]}}, ["sweep.train.learning_rate", "below"]),
    ({"train.learning_rate": {"uniform": [-1, 1]}}, ["sweep.train.learning_rate", "must be > 0"]),
    ({"train.learning_rate": {"normal": [0, 1]}}, ["sweep.train.learning_rate", "uniform", "choice"]),
    ({"train.epochs": {"uniform": [1, 5]}}, ["sweep.train.epochs", "whole numbers"]),
    ({"model.cost": {"choice": ["mse", "hinge"]}}, ["sweep.model.cost", "'hinge'"]),
    ({"model.cost": {"choice": []}}, ["sweep.model.cost", "non-empty"]),
])
def test_a_bad_distribution_is_one_line_naming_the_key(tmp_path, rayprop, sweep, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "xor"}, "sweep": sweep}))
    proc = rayprop("sweep", path, "--local", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert proc.code == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "runs").exists()


class InterruptInTrial2:
    """A progress-bar stand-in: at step 3 of trial 2, a SIGINT to this process (as a
    Ctrl-C would be), once; the main thread's handler takes it. Trial 1 waits at its
    step 3 for it, so that both trials are running when it comes."""

    sent: list = []

    def __init__(self, *args, **kwargs):
        self.thread = threading.current_thread().name

    def on_step(self, step, epoch, loss, n):
        if self.thread == "rayprop-trial-2" and step == 3 and not self.sent:
            self.sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        elif self.thread == "rayprop-trial-1" and step == 3:
            # Trial 1 waits here until the signal is sent: else a tiny trial may finish
            # before trial 2 reaches its step 3 (seen: "1 trial stopped").
            deadline = time.monotonic() + 60
            while not self.sent and time.monotonic() < deadline:
                time.sleep(0.01)

    def on_epoch(self, epoch, metrics):
        pass

    def close(self):
        pass


def test_ctrl_c_stops_every_running_trial_after_its_step(tmp_path, monkeypatch, rayprop):
    """Trials side by side in threads (--local, 2 at once), Ctrl-C during the second: both
    running trials stop after a step with a checkpoint and end KILLED, the third never
    starts, the parent ends KILLED, sweep.json says so, and the exit code is 130."""
    data = write_parquet(tmp_path / "d.parquet", m=300)
    raw = config(data, "sgd", 16, epochs=500)
    raw["sweep"] = {"train.learning_rate": [0.05, 0.02, 0.01]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setattr(InterruptInTrial2, "sent", [])  # once per test, whatever ran before
    monkeypatch.setattr("experiments.sweeps.sweep.ProgressBar", InterruptInTrial2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = rayprop("sweep", path, "--local", "--concurrency", "2", "--tracking-uri", uri,
                   "--output", tmp_path / "out", "--quiet")
    assert proc.code == 130, proc.stderr
    assert "sweep stopped: 2 trials stopped after a step" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    parent, kids, _ = children_of(uri)
    assert parent.info.status == "KILLED"
    assert sorted(r.info.status for r in kids) == ["KILLED", "KILLED"]
    for r in kids:
        assert list((Path(r.data.tags["rayprop.output"]) / "checkpoints").glob("ckpt-*.npz"))
    runs = json.loads((tmp_path / "out" / "sweep.json").read_text())["runs"]
    assert sorted(r["status"] for r in runs) == ["KILLED", "KILLED", "NOT STARTED"]
