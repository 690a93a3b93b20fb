"""A sweep killed with `kill -9` goes on with `rayprop sweep CONFIG --output DIR --resume
PARENT_RUN_ID`: the finished trial is kept as it is, the killed one goes on from its
checkpoint in its own child run, the unstarted one runs, the parent ends FINISHED. Real
subprocesses of the installed command, a real sqlite MLflow store, local mode; each
trial's weights are compared with its config trained alone by the coordinator on an
in-process pool (no MLflow, no sweep)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import yaml

from experiments.jobs import training
from experiments.jobs.output_folder import OWNER_FILE, OutputClaim
from tests.conftest import RAYPROP, installed_rayprop, one_line_exit_2
from tests.raydata import config, write_parquet
from tests.test_sweep_parallel import InterruptInTrial2  # Ctrl-C at step 3 of trial 2
from trainer.config import from_dict
from trainer.coordinator import train as coordinate
from trainer.model_io import load_model
from trainer.optimizers import make_optimizer
from workers.local_pool import LocalPool

EPOCHS = [3, 400, 3]  # the second trial is long enough to be killed while it trains


def trained_alone(raw: dict) -> np.ndarray:
    job = training.prepare(from_dict(raw).without_sweep())
    t = job.cfg.train
    pool = LocalPool.open(job.task, 1, job.source)
    theta = job.theta0.copy()
    coordinate(pool, theta, make_optimizer(t.optimizer, t.learning_rate, t.momentum, t.beta1, t.beta2,
                                           t.epsilon), job.plan, t.epochs)
    pool.close()
    return theta


def runs_of(uri: str):
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("raytest").experiment_id])
    parents = [r for r in runs if r.data.tags.get("rayprop.sweep") == "parent"]
    assert len(parents) == 1
    kids = {r.data.tags.get("rayprop.output", ""): r for r in runs if r.data.tags.get("rayprop.sweep") == "child"}
    return parents[0], kids


def test_a_killed_sweep_goes_on_where_it_stopped(tmp_path, rayprop):
    data = write_parquet(tmp_path / "d.parquet", m=300)
    raw = config(data, "adam", 32, epochs=3, checkpoint_seconds=0, learning_rate=0.01)
    raw["sweep"] = {"train.epochs": EPOCHS}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    flags = ["--local", "--concurrency", "1", "--quiet", "--tracking-uri", uri, "--output", out]

    proc = subprocess.Popen([str(RAYPROP), "sweep", "sweep.yaml", *map(str, flags)], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not list((out / "run-02" / "checkpoints").glob("ckpt-*.npz")):  # trial 1 has ended by then
        assert proc.poll() is None and time.time() < deadline, "the second trial ended before the kill"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    parent, kids = runs_of(uri)
    parent_id = parent.info.run_id
    first = kids[str((out / "run-01").resolve())]
    second = kids[str((out / "run-02").resolve())]
    assert parent.info.status == "RUNNING" and first.info.status == "FINISHED"
    assert second.info.status == "RUNNING", "the second trial must have been killed while it trained"
    assert not (out / "run-03").exists()
    first_files = {p.name: p.read_bytes() for p in (out / "run-01").iterdir() if p.is_file()}

    # A sweep holds its DIR while it runs (the lock the kernel dropped at the kill): going
    # on with it while a process holds it is refused.
    assert json.loads((out / OWNER_FILE).read_text())["run_id"] == parent_id
    with OutputClaim(out):
        one_line_exit_2(rayprop("sweep", "sweep.yaml", *flags, "--resume", parent_id), "still running")

    # Another sweep than the one in the store: one line, nothing run.
    other = dict(raw, sweep={"train.epochs": [3, 400, 4]})
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    line = one_line_exit_2(rayprop("sweep", "other.yaml", *flags, "--resume", parent_id),
                           f"--resume {parent_id}", "sweep.train.epochs", "in the sweep")
    assert line.endswith("resume with the sweep's config"), line
    one_line_exit_2(rayprop("sweep", "sweep.yaml", *flags, "--set", "train.learning_rate=0.02",
                            "--resume", parent_id), "train.learning_rate is 0.02 here but 0.01 in the sweep")
    assert runs_of(uri)[0].info.status == "RUNNING"

    cont = installed_rayprop("sweep", "sweep.yaml", *flags, "--resume", parent_id, cwd=tmp_path)
    assert cont.returncode == 0, cont.stderr[-3000:]
    assert "1 kept, 1 going on, 1 to start" in cont.stderr, cont.stderr[-3000:]

    parent, kids = runs_of(uri)
    assert parent.info.run_id == parent_id and parent.info.status == "FINISHED"
    assert len(kids) == 3 and {r.info.status for r in kids.values()} == {"FINISHED"}, \
        ({k[-6:]: r.info.status for k, r in kids.items()}, cont.stderr[-3000:])
    again = kids[str((out / "run-01").resolve())]
    assert again.info.run_id == first.info.run_id and again.info.end_time == first.info.end_time
    assert {p.name: p.read_bytes() for p in (out / "run-01").iterdir() if p.is_file()} == first_files
    assert kids[str((out / "run-02").resolve())].info.run_id == second.info.run_id
    client = mlflow.MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(second.info.run_id, "loss")]
    assert len(steps) == len(set(steps)) == json.loads((out / "run-02" / "summary.json").read_text())["steps"]
    results = json.loads((out / "sweep.json").read_text())
    assert results["parent_run_id"] == parent_id and [r["status"] for r in results["runs"]] == ["FINISHED"] * 3

    for i, epochs in enumerate(EPOCHS):
        _, theta, _ = load_model(out / f"run-{i + 1:02d}")
        alone = trained_alone({**{k: v for k, v in raw.items() if k != "sweep"},
                               "train": {**raw["train"], "epochs": epochs}})
        rel = np.max(np.abs(theta - alone)) / np.max(np.abs(alone))
        assert rel <= 1e-9, f"trial {i + 1}: relative difference to the config trained alone {rel:.2e}"

    done = rayprop("sweep", "sweep.yaml", *flags, "--resume", parent_id)
    one_line_exit_2(done, "already FINISHED")


def test_the_hint_of_a_stopped_sweep_continues_it(tmp_path, monkeypatch, rayprop):
    """Ctrl-C during trial 2 of 3 (two at once, --set and --grid given): the line printed
    says how to go on, and that command, as printed, ends the sweep with every trial
    FINISHED in its first child run, each with its config's weights."""
    data = write_parquet(tmp_path / "d.parquet", m=300)
    raw = config(data, "sgd", 16, epochs=20, checkpoint_seconds=0)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setattr(InterruptInTrial2, "sent", [])  # once per test, whatever ran before
    monkeypatch.setattr("experiments.sweeps.sweep.ProgressBar", InterruptInTrial2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stopped = rayprop("sweep", "sweep.yaml", "--local", "--concurrency", "2", "--tracking-uri", uri, "--quiet",
                      "--set", "train.momentum=0.5", "--grid", "train.learning_rate=0.05,0.02,0.01")
    assert stopped.code == 130, stopped.stderr
    line = next(x for x in stopped.stderr.splitlines() if "continue the sweep with: " in x)
    words = shlex.split(line.split("continue the sweep with: ", 1)[1])
    assert words[:3] == ["rayprop", "sweep", "sweep.yaml"] and "--grid" in words and "--set" in words, line
    parent, before = runs_of(uri)
    assert parent.info.status == "KILLED"
    monkeypatch.undo()
    cont = rayprop(*words[1:])
    assert cont.code == 0, cont.stderr
    parent, kids = runs_of(uri)
    assert parent.info.status == "FINISHED" and len(kids) == 3
    assert {r.info.status for r in kids.values()} == {"FINISHED"}
    assert {r.info.run_id for r in before.values()} <= {r.info.run_id for r in kids.values()}
    for r in kids.values():
        lr = float(r.data.params["train.learning_rate"])
        _, theta, _ = load_model(r.data.tags["rayprop.output"])
        alone = trained_alone({**raw, "train": {**raw["train"], "learning_rate": lr, "momentum": 0.5}})
        rel = np.max(np.abs(theta - alone)) / np.max(np.abs(alone))
        assert rel <= 1e-9, f"learning_rate {lr}: relative difference {rel:.2e}"


def test_a_stopped_sweep_whose_data_changed_is_refused(tmp_path, monkeypatch, rayprop):
    """The data rewritten after a stop: going on would train the unfinished trials on
    other data than the finished ones. Refused, naming the file and the sweep's run,
    before any trial goes on."""
    data = write_parquet(tmp_path / "d.parquet", m=300)
    raw = config(data, "sgd", 16, epochs=20, checkpoint_seconds=0)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setattr(InterruptInTrial2, "sent", [])
    monkeypatch.setattr("experiments.sweeps.sweep.ProgressBar", InterruptInTrial2)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stopped = rayprop("sweep", "sweep.yaml", "--local", "--concurrency", "2", "--tracking-uri", uri, "--quiet",
                      "--grid", "train.learning_rate=0.05,0.02,0.01")
    assert stopped.code == 130, stopped.stderr
    line = next(x for x in stopped.stderr.splitlines() if "continue the sweep with: " in x)
    words = shlex.split(line.split("continue the sweep with: ", 1)[1])
    parent, before = runs_of(uri)
    monkeypatch.undo()
    write_parquet(tmp_path / "d.parquet", m=300, seed=7)  # the same rows' count, other values
    refused = rayprop(*words[1:])
    one_line_exit_2(refused, "d.parquet", "changed since", parent.info.run_id)
    _, after = runs_of(uri)
    assert {r.info.run_id: r.info.status for r in after.values()} == \
        {r.info.run_id: r.info.status for r in before.values()}  # nothing went on
