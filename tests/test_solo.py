"""A one-worker Ray pool trains inside its worker (workers/solo.py), on a real local Ray:
the same weights, bit for bit, as the driver's own loop over the same worker; every
step and epoch handed to the listeners once and in order; a worker killed or stopped
(SIGSTOP) mid-run replaced, training going on from its last mark to the same bits;
a stop request ending with a checkpoint that resumes to the same bits; and a
`rayprop train --workers 1` job going this way."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.raydata import prepared, ray_pool, write_parquet
from trainer.checkpoint import Checkpointer, latest_checkpoint
from trainer.coordinator import TrainingStopped, train
from trainer.optimizers import make_optimizer

EPOCHS = 3


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    # batches of 16 over ~900 rows: 57 steps an epoch, so a kill lands mid-epoch
    return prepared(tmp_path_factory.mktemp("d"), optimizer="adam", batch_size=16, epochs=EPOCHS, dtype="float32")


def test_a_one_worker_job_trains_in_its_worker(tmp_path, monkeypatch, rayprop):
    """`rayprop train --workers 1` on Ray: the job's steps run in the worker (no step
    reaches the pool's driver-side gradient_sums). First in the module: the job starts
    its own local Ray, before the module's ray_session does."""
    import yaml

    from workers.ray_pool import RayPool

    calls = []
    real = RayPool.gradient_sums
    monkeypatch.setattr(RayPool, "gradient_sums", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    data = write_parquet(tmp_path / "d.parquet")
    from tests.raydata import config

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(data, "adam", 16, epochs=2, dtype="float32")))
    started = time.monotonic()
    result = rayprop("train", "c.yaml", "--workers", "1", "--quiet", "--output", "out",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert result.code == 0, result.err
    assert not calls, "the driver took steps itself"
    assert (tmp_path / "out" / "model.npz").exists() and time.monotonic() - started < 120


def test_an_early_stopping_sweep_decides_as_in_local_mode(tmp_path, monkeypatch, rayprop):
    """asha (grace 1, factor 2) over 4 learning rates, one worker a trial, two at a time
    on Ray: each trial's worker asks the sweep at its milestones (no step through the
    driver), and the sweep stops the same trials at the same epochs, with the same
    weights (float64, 1e-9), as the same sweep in local mode. Before the module's ray_session."""
    import yaml

    from tests.raydata import config
    from tests.test_sweep_parallel import children_of
    from trainer.model_io import load_model
    from workers.ray_pool import RayPool

    calls = []
    real = RayPool.gradient_sums
    monkeypatch.setattr(RayPool, "gradient_sums", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    raw = config(write_parquet(tmp_path / "d.parquet", m=400), "sgd", 32, epochs=4)
    raw["sweep"] = {"train.learning_rate": [0.1, 0.002, 0.001, 0.05]}
    raw.update(sweep_scheduler="asha", sweep_grace_epochs=1, sweep_reduction_factor=2)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    outcomes = {}
    for mode in ("ray", "local"):
        uri = f"sqlite:///{tmp_path / mode}.db"
        proc = rayprop("sweep", "sweep.yaml", *(["--local"] if mode == "local" else []), "--workers", "1",
                       "--concurrency", "2", "--tracking-uri", uri, "--output", tmp_path / mode, "--quiet")
        assert proc.code == 0, proc.stderr
        _, kids, _ = children_of(uri)
        outcomes[mode] = {float(r.data.params["train.learning_rate"]):
                          (r.data.tags.get("rayprop.stopped_at_epoch"), load_model(r.data.tags["rayprop.output"])[1])
                          for r in kids}
    assert not calls, "a trial's steps went through the driver"
    ray_side, local = outcomes["ray"], outcomes["local"]
    assert {lr: at for lr, (at, _) in ray_side.items()} == {lr: at for lr, (at, _) in local.items()}
    assert sum(at is not None for at, _ in local.values()) >= 2  # the slow rates stop early
    for lr, (_, theta) in ray_side.items():
        np.testing.assert_allclose(theta, local[lr][1], rtol=1e-9, atol=1e-12)


class Record:
    """A listener keeping every step's (step, epoch, loss, n) and every epoch's metrics."""

    def __init__(self, on_step=None):
        self.steps, self.epochs, self._on_step = [], [], on_step

    def on_step(self, step, epoch, loss, n):
        self.steps.append((step, epoch, loss, n))
        if self._on_step is not None:
            self._on_step(step)

    def on_epoch(self, epoch, metrics):
        self.epochs.append((epoch, metrics))


def optimizer_of(job):
    t = job.cfg.train
    return make_optimizer(t.optimizer, t.learning_rate)


def driver_loop(job):
    """The weights and the record of the driver's own loop over a one-worker pool."""
    pool = ray_pool(job, 1)
    try:
        theta, rec = job.theta0.copy(), Record()
        result = train(pool, theta, optimizer_of(job), job.plan, EPOCHS, [rec])
    finally:
        pool.close()
    return theta, rec, result


@pytest.fixture(scope="module")
def reference(ray_session, job):
    return driver_loop(job)


def solo(job, pool, listeners=(), checkpointer=None, should_stop=None, resume=None, theta=None, optimizer=None):
    theta = job.theta0.copy() if theta is None else theta
    optimizer = optimizer or optimizer_of(job)
    result = pool.coordinate(theta, optimizer, job.plan, EPOCHS, list(listeners), resume=resume,
                             checkpointer=checkpointer, should_stop=should_stop)
    return theta, result


def test_the_worker_trains_to_the_driver_loops_bits(ray_session, job, reference):
    ref_theta, ref_rec, ref_result = reference
    pool = ray_pool(job, 1)
    try:
        assert pool.solo
        rec = Record()
        theta, result = solo(job, pool, [rec])
    finally:
        pool.close()
    assert np.array_equal(theta, ref_theta)
    assert [s[:2] + s[3:] for s in rec.steps] == [s[:2] + s[3:] for s in ref_rec.steps]
    assert [s[2] for s in rec.steps] == [s[2] for s in ref_rec.steps]  # each step's loss, bitwise
    assert [e for e, _ in rec.epochs] == list(range(EPOCHS))
    assert [m["param_hash"] for _, m in rec.epochs] == [m["param_hash"] for _, m in ref_rec.epochs]
    assert (result.steps, result.epochs, result.param_hashes) == \
           (ref_result.steps, ref_result.epochs, ref_result.param_hashes)
    assert result.val_loss == ref_result.val_loss and result.final_loss == ref_result.final_loss


def test_a_pool_that_may_grow_or_has_two_workers_is_not_solo(ray_session, job):
    pool = ray_pool(job, 2)
    try:
        assert not pool.solo
    finally:
        pool.close()


def slow(pool):
    """The worker takes ~16 ms a step (1 ms a row; a replacement is not slowed): the
    driver hears of a step at the next mark, 1 s later, while the worker trains on."""
    import ray

    ray.get(pool.actors[0].slow_down.remote(0.001))


def kill_at(pool, step, sig):
    """on_step hook: send `sig` to the worker's process at `step` (once); the pid it hit."""
    hit = []

    def hook(s):
        if s == step and not hit:
            hit.append(pool.info[0]["pid"])
            os.kill(hit[0], sig)
    return hook, hit


def release(pid):
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_a_lost_worker_is_replaced_and_training_goes_on_from_its_last_mark(ray_session, job, reference, sig):
    """SIGKILL: the actor dies; SIGSTOP: it is silent past the hang bound (2 s here). Either
    way a new worker goes on from the last mark: every step reaches the listeners once."""
    ref_theta, ref_rec, ref_result = reference
    pool = ray_pool(job, 1, max_failures=1, hang_seconds=2.0)
    slow(pool)
    hook, hit = kill_at(pool, 60, sig)  # handed on at a mark ~1 s in: the worker is further on
    rec = Record(hook)
    try:
        theta, result = solo(job, pool, [rec])
        assert pool.failures == 1 and len(pool.events) == 1, pool.events
        assert "worker 0" in pool.events[0] and "goes on from its last mark" in pool.events[0], pool.events
        assert pool.info[0]["pid"] != hit[0]
    finally:
        pool.close()
        if hit:
            release(hit[0])
    assert np.array_equal(theta, ref_theta)
    assert [s[0] for s in rec.steps] == list(range(1, ref_result.steps + 1))  # each step once, in order
    assert [s[2] for s in rec.steps] == [s[2] for s in ref_rec.steps]
    assert [e for e, _ in rec.epochs] == list(range(EPOCHS))
    assert (result.epochs, result.param_hashes, result.val_loss) == \
           (ref_result.epochs, ref_result.param_hashes, ref_result.val_loss)


def test_a_worker_lost_past_max_worker_failures_ends_the_run(ray_session, job):
    from trainer.errors import WorkerLostError

    pool = ray_pool(job, 1, max_failures=0)
    slow(pool)
    hook, hit = kill_at(pool, 5, signal.SIGKILL)
    try:
        with pytest.raises(WorkerLostError):
            solo(job, pool, [Record(hook)])
    finally:
        pool.close()


def test_a_stop_checkpoints_and_resumes_to_the_same_bits(ray_session, job, reference, tmp_path):
    ref_theta = reference[0]
    stop = threading.Event()
    ckpts = Checkpointer(tmp_path / "ckpt", every_epochs=100, meta={"run_id": "solo"})
    pool = ray_pool(job, 1)
    slow(pool)
    rec = Record(lambda s: s == 70 and stop.set())
    try:
        with pytest.raises(TrainingStopped) as stopped:
            solo(job, pool, [rec], checkpointer=ckpts, should_stop=stop.is_set)
        position = stopped.value.position
        assert position.global_step >= 70 and rec.steps[-1][0] == position.global_step
        ckpt = latest_checkpoint(tmp_path / "ckpt")
        assert ckpt is not None and ckpt.position == position
        optimizer = optimizer_of(job)
        optimizer.load_state(ckpt.optimizer)
        theta, _ = solo(job, pool, resume=ckpt.position, theta=ckpt.theta.astype(np.float32), optimizer=optimizer)
    finally:
        pool.close()
    assert np.array_equal(theta, ref_theta)
