"""Worker processes reused from one sweep trial to the next (workers/actor_keeper.py), on a
real local Ray: the next trial's pool takes the same processes (the same PIDs), reads
its own rows into them, and trains exactly as its config trained alone by the
coordinator on an in-process pool (float64 to 1e-9; float32 with exact sums bitwise).
A trial that failed hands nothing on; a kept worker that died is replaced; and what
the keeper still holds at the end is stopped.
"""

import dataclasses
import os
import threading
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from cluster.connect import connect
from cluster.placement import Reservation
from experiments.jobs import pools, training
from tests.raydata import config, write_parquet
from tests.test_sweep_parallel import children_of, trained_alone, with_combo
from trainer.config import from_dict
from trainer.coordinator import train as coordinate
from trainer.model_io import load_model
from trainer.network import forward
from trainer.optimizers import make_optimizer
from workers.actor_keeper import ActorKeeper
from workers.ray_pool import RayPool

GONE_S = 60  # for a stopped worker's process to be gone (Ray ends it at once; a loaded machine is slow)


def pids(pool) -> list[int]:
    return [i["pid"] for i in pool.info]


def wait_gone(pid_list: list[int]) -> list[int]:
    """The processes of `pid_list` still there after GONE_S (none, when they all ended)."""
    until = time.monotonic() + GONE_S
    left = list(pid_list)
    while left and time.monotonic() < until:
        left = [p for p in left if _exists(p)]
        if left:
            time.sleep(0.2)
    return left


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


class Recorder:
    """The pools the sweep opened, in order, and the thread that opened each."""

    def __init__(self, monkeypatch):
        self.pools: list = []
        open_pool = pools.open_pool

        def recording_open_pool(*args, **kwargs):
            pool = open_pool(*args, **kwargs)
            self.pools.append((threading.current_thread().name, pool))
            return pool

        monkeypatch.setattr(pools, "open_pool", recording_open_pool)


def sweep(rayprop, tmp_path, raw, *extra):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = rayprop("sweep", path, "--workers", "2", "--tracking-uri", uri, "--output", tmp_path / "out",
                   "--quiet", *extra)
    return proc, uri


def test_trials_one_after_another_reuse_the_processes_and_train_as_alone(tmp_path, monkeypatch, rayprop):
    """float32 with exact sums, 2 workers a trial, one at a time: trials 2 and 3 run in
    trial 1's processes; each trial's weights are bitwise those of its config alone;
    the processes are gone after the sweep."""
    data = write_parquet(tmp_path / "d.parquet", m=500)
    raw = config(data, "adam", 32, epochs=2, dtype="float32", exact_sums=True)
    raw["sweep"] = {"model.hidden_activation": ["tanh", "relu", "sigmoid"]}
    rec = Recorder(monkeypatch)
    proc, uri = sweep(rayprop, tmp_path, raw, "--concurrency", "1")
    assert proc.code == 0, proc.stderr
    assert len(rec.pools) == 3
    first = pids(rec.pools[0][1])
    assert len(set(first)) == 2
    for _, pool in rec.pools[1:]:
        assert pids(pool) == first, "a later trial started new worker processes"
    assert not wait_gone(first), "workers left running after the sweep"

    _, kids, _ = children_of(uri)
    assert len(kids) == 3 and {r.info.status for r in kids} == {"FINISHED"}
    for r in kids:
        combo = {"model.hidden_activation": r.data.params["model.hidden_activation"]}
        _, theta, _ = load_model(r.data.tags["rayprop.output"])
        alone = trained_alone(with_combo(raw, combo), 1)
        assert theta.dtype == alone.dtype == np.float32
        assert np.array_equal(theta, alone), combo


def test_a_failed_trial_hands_on_nothing_and_the_next_trains_as_alone(tmp_path, monkeypatch, rayprop):
    """float64, one at a time: trial 2 (a learning rate that diverges) runs in trial 1's
    processes and fails; trial 3 gets new processes, and its weights and trial 1's are
    those of their configs alone."""
    data = write_parquet(tmp_path / "d.parquet", m=500)
    raw = config(data, "sgd", 32, epochs=2)
    raw["model"].update(layers=[4, 12, 1], cost="mse", output_activation="linear")  # overflows at 1e6
    raw["sweep"] = {"train.learning_rate": [0.05, 1e6, 0.02]}
    rec = Recorder(monkeypatch)
    proc, uri = sweep(rayprop, tmp_path, raw, "--concurrency", "1")
    assert proc.code == 0, proc.stderr
    assert "diverged" in proc.stderr
    one, two, three = (pids(pool) for _, pool in rec.pools)
    assert two == one, "trial 2 did not take trial 1's processes"
    assert not set(three) & set(two), "a failed trial's processes went on to the next trial"
    assert not wait_gone(one + three)

    _, kids, _ = children_of(uri)
    status = {float(r.data.params["train.learning_rate"]): r.info.status for r in kids}
    assert status == {0.05: "FINISHED", 1e6: "FAILED", 0.02: "FINISHED"}
    for r in kids:
        lr = float(r.data.params["train.learning_rate"])
        if lr == 1e6:
            continue
        _, theta, _ = load_model(r.data.tags["rayprop.output"])
        np.testing.assert_allclose(theta, trained_alone(with_combo(raw, {"train.learning_rate": lr}), 2),
                                   rtol=1e-9, atol=1e-12)


def test_trials_side_by_side_reuse_the_processes_of_those_that_ended(tmp_path, monkeypatch, rayprop):
    """Two at a time, 1 worker a trial: 4 trials run in 2 processes in all, each trial
    as trained alone (float64)."""
    data = write_parquet(tmp_path / "d.parquet", m=400)
    raw = config(data, "momentum", 32, epochs=2)
    raw["sweep"] = {"train.learning_rate": [0.05, 0.02], "model.hidden_activation": ["tanh", "relu"]}
    rec = Recorder(monkeypatch)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = rayprop("sweep", path, "--workers", "1", "--concurrency", "2", "--tracking-uri", uri, "--output",
                   tmp_path / "out", "--quiet")
    assert proc.code == 0, proc.stderr
    seen = {p for _, pool in rec.pools for p in pids(pool)}
    assert len(rec.pools) == 4 and len(seen) == 2, seen
    assert not wait_gone(sorted(seen))
    _, kids, _ = children_of(uri)
    assert {r.info.status for r in kids} == {"FINISHED"}
    for r in kids:
        combo = {"train.learning_rate": float(r.data.params["train.learning_rate"]),
                 "model.hidden_activation": r.data.params["model.hidden_activation"]}
        spec, theta, _ = load_model(r.data.tags["rayprop.output"])
        np.testing.assert_allclose(theta, trained_alone(with_combo(raw, combo), 1), rtol=1e-9, atol=1e-12)
        # Its node's system metrics, from the sampler actor the sweep's runs share.
        assert any(k.startswith("system/node-") and k.endswith("/cpu_utilization_percentage")
                   for k in r.data.metrics), sorted(r.data.metrics)
        # Its logged model (a copy of the process's one saved pyfunc: model_templates.py)
        # predicts with its own network, tanh or relu.
        X = np.random.default_rng(0).standard_normal((5, 4))
        model = final_model(uri, r)
        np.testing.assert_allclose(model.predict(pd.DataFrame(X, columns=[f"x{j}" for j in range(4)])).to_numpy(),
                                   forward(spec, theta, X)[1].T, rtol=1e-12)


def final_model(uri: str, run):
    mlflow.set_tracking_uri(uri)
    (found,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                           filter_string=f"source_run_id = '{run.info.run_id}' AND name = 'model'")
    return mlflow.pyfunc.load_model(f"models:/{found.model_id}")


# ---- the keeper and the pool, without a sweep ---------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    with connect(None, 2) as conn:
        yield conn


def run(job, pool) -> np.ndarray:
    theta, t = job.theta0.copy(), job.cfg.train
    coordinate(pool, theta, make_optimizer(t.optimizer, t.learning_rate, t.momentum, t.beta1, t.beta2, t.epsilon),
               job.plan, t.epochs)
    return theta


def alone(job, workers: int) -> np.ndarray:
    pool = training.open_pool(job, workers, local=True)
    try:
        return run(job, pool)
    finally:
        pool.close()


def test_a_kept_worker_that_died_is_replaced_and_the_rest_are_stopped_at_the_end(tmp_path, ray_session):
    """Pool 1 (float64, tanh) hands its 2 processes on; pool 2 (another source, other
    rows, relu) takes both; one of them is killed while kept, so pool 3 (float32,
    exact sums) takes the other and starts one new; each trains as alone; release_all
    stops what is kept."""
    a = write_parquet(tmp_path / "a.parquet", m=300, seed=0)
    b = write_parquet(tmp_path / "b.parquet", m=450, seed=1)
    jobs = [training.prepare(from_dict(c)) for c in (
        config(a, "adam", 32, epochs=2),
        {**config(b, "sgd", 16, epochs=2), "model": {"layers": [4, 12, 3], "hidden_activation": "relu",
                                                      "dtype": "float64"}},
        config(b, "adam", 64, epochs=2, dtype="float32", exact_sums=True))]
    keeper, shape = ActorKeeper(), (2, 1)
    slot = Reservation(2, 1)
    assert slot.wait(lambda: False)
    seen = []
    try:
        for k, job in enumerate(jobs):
            kept = keeper.take(shape)
            if k == 2:  # one of the kept processes died since
                assert kept is not None and len(kept.actors) == 1
            strategy = (kept or slot).strategy
            cluster = dataclasses.replace(job.cfg.cluster, data_plane="shm")
            pool = RayPool(job.task, cluster, 2, 0, strategy=strategy, kept=kept.actors if kept else None)
            seen.append(pids(pool))
            theta = run(job, pool)
            if job.spec.dtype == "float32":
                assert np.array_equal(theta, alone(job, 1))
            else:
                np.testing.assert_allclose(theta, alone(job, 2), rtol=1e-9, atol=1e-12)
            keeper.keep(shape, kept.slot if kept else slot, pool.hand_over())
            if k == 1:
                os.kill(seen[1][1], 9)
                assert not wait_gone([seen[1][1]])
        assert seen[1] == seen[0]
        assert seen[2][0] == seen[1][0] and seen[2][1] not in seen[1]
    finally:
        keeper.release_all()
    assert not wait_gone(sorted({p for ps in seen for p in ps})), "release_all left workers running"
    assert keeper.take(shape) is None and slot.group is None  # the CPUs freed too
