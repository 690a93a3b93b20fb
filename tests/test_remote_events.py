"""The events a Ray Client job's coordinator sends (cluster/remote_coordinator.py) and
their replay on the client (experiments/jobs/remote_pool.py), in one process without Ray:
the actor's class driven directly over an in-process pool, its events replayed to
listeners and a Checkpointer, compared with the same coordinator run directly."""

import time

import numpy as np
import pytest

from cluster.remote_coordinator import CoordinatorActor
from experiments.jobs.configfile import load_config
from experiments.jobs.remote_pool import Moves
from experiments.jobs.worker_seconds import METRIC, WorkerSeconds
from experiments.jobs.job import prepare
from tests.raydata import MetricPoints
from trainer.checkpoint import Checkpointer, checkpoint_files, read_checkpoint
from trainer.coordinator import TrainingStopped, train
from trainer.errors import DivergedError
from trainer.optimizers import make_optimizer
from workers.local_pool import LocalPool
from workers.run_events import EventQueue, end, replay

EPOCHS = 3


class Recorder:
    def __init__(self):
        self.calls = []

    def on_step(self, step, epoch, loss, n):
        self.calls.append(("step", step, epoch, loss, n))

    def on_epoch(self, epoch, metrics):
        self.calls.append(("epoch", epoch, {k: v for k, v in metrics.items() if "seconds" not in k
                                            and k != "examples_per_second"}))


@pytest.fixture
def job(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: spirals}\nmodel: {layers: [2, 8, 3], dtype: float64}\n"
                   f"train: {{optimizer: adam, batch_size: 64, epochs: {EPOCHS}}}\n")
    return prepare(load_config(cfg))


def checkpointer(folder):
    return Checkpointer(folder, 1, {"run_id": "r"}, last_epoch=EPOCHS)


def client_view():
    """What replay keeps current on the client (a RemotePool's attributes)."""
    return type("View", (), {"resizes": [], "worker_seconds": [], "balance": Moves()})()


def in_the_actor(job, pool, ckpt: Checkpointer, stop_at_once=False, view=None, listeners=()):
    """Train as the actor does, poll it as the client does: (outcome, listener calls,
    theta, optimizer) on the client's side; `listeners` get the events too, after the
    recorder."""
    actor = CoordinatorActor()
    pool.events = []  # a RayPool's lost-worker lines; an in-process pool loses none
    actor.pool, actor.queue = pool, EventQueue(pool)
    theta, opt = job.theta0.copy(), make_optimizer("adam", 0.1)
    schedule = {"every_epochs": ckpt.every_epochs, "max_seconds": ckpt.max_seconds,
                "min_seconds": ckpt.min_seconds, "last_epoch": ckpt.last_epoch}
    if stop_at_once:
        actor.stop()
    actor.start(theta, opt, job.plan, EPOCHS, None, schedule)
    rec = Recorder()
    view = view or client_view()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outcome = replay(actor.poll(0.05), view, [rec, *listeners], opt, ckpt)
        if outcome is not None:
            actor.close()
            return outcome, rec.calls, theta, opt
    raise AssertionError("no end event within 60 s")


def test_replayed_events_give_the_direct_run(job, tmp_path):
    pool = LocalPool.open(job.task, 2, job.source)
    direct, ckpt_a = Recorder(), checkpointer(tmp_path / "a")
    theta_a, opt_a = job.theta0.copy(), make_optimizer("adam", 0.1)
    result_a = train(pool, theta_a, opt_a, job.plan, EPOCHS, [direct], checkpointer=ckpt_a)

    ckpt_b = checkpointer(tmp_path / "b")
    outcome, calls, theta_b, opt_b = in_the_actor(job, pool, ckpt_b)
    result_b = end(outcome, theta_b, opt_b, time.perf_counter())
    # The same pool in the same order: bitwise the same run.
    assert np.array_equal(theta_a, theta_b)
    assert calls == direct.calls and len(calls) == EPOCHS * (13 + 1)
    assert result_b.steps == result_a.steps and result_b.final_loss == result_a.final_loss
    assert opt_b.state().keys() == opt_a.state().keys()
    assert all(np.array_equal(opt_b.state()[k], v) for k, v in opt_a.state().items())
    # The same checkpoints, written here by the client's Checkpointer.
    files_a, files_b = checkpoint_files(tmp_path / "a"), checkpoint_files(tmp_path / "b")
    assert [p.name for p in files_a] == [p.name for p in files_b] and len(files_b) == EPOCHS
    for pa, pb in zip(files_a, files_b):
        a, b = read_checkpoint(pa), read_checkpoint(pb)
        assert np.array_equal(a.theta, b.theta) and a.position.global_step == b.position.global_step
        assert all(np.array_equal(a.optimizer[k], b.optimizer[k]) for k in a.optimizer)


def test_a_stop_ends_after_a_step_with_its_checkpoint(job, tmp_path):
    pool = LocalPool.open(job.task, 2, job.source)
    ckpt = checkpointer(tmp_path / "c")
    outcome, calls, theta, opt = in_the_actor(job, pool, ckpt, stop_at_once=True)
    with pytest.raises(TrainingStopped) as stopped:
        end(outcome, theta, opt, time.perf_counter())
    assert stopped.value.position.global_step == 1 and [c[0] for c in calls] == ["step"]
    (path,) = checkpoint_files(tmp_path / "c")
    assert read_checkpoint(path).position.global_step == 1


def test_an_error_in_the_coordinator_is_raised_as_its_kind(job, tmp_path):
    pool = LocalPool.open(job.task, 2, job.source)
    job.theta0[:] = np.inf  # the first step's loss is not finite
    outcome, calls, theta, opt = in_the_actor(job, pool, checkpointer(tmp_path / "d"))
    with pytest.raises(DivergedError, match="loss became"):
        end(outcome, theta, opt, time.perf_counter())


def test_each_workers_seconds_and_each_rebalance_line_reach_the_client(job, tmp_path, capsys):
    """A straggler in the cluster: its move is a console line here, at its step, and
    each worker's compute seconds are this machine's MLflow metrics, as in a job whose
    pool is on this machine (a slow worker: ShardWorker.delay_per_row, a real sleep)."""

    pool = LocalPool.open(job.task, 3, job.source, rebalance_seconds=1e-6)
    pool.workers[2].delay_per_row = 2e-4  # about 4 ms a step on its rows: past MIN_STEP_SECONDS
    view, points = client_view(), MetricPoints()
    outcome, calls, theta, opt = in_the_actor(job, pool, checkpointer(tmp_path / "e"), view=view,
                                              listeners=[WorkerSeconds(view, points)])
    end(outcome, theta, opt, time.perf_counter())
    assert pool.balance.lines, "the straggler was not rebalanced"
    assert view.balance.lines == pool.balance.lines
    printed = [line for line in capsys.readouterr().err.splitlines() if "rebalanced:" in line]
    assert [line.split(": ", 2)[2] for line in printed] == pool.balance.lines
    steps = job.plan.steps_per_epoch
    assert [(k, s) for k, _, s in points.got] == [(METRIC.format(r), e * steps)
                                                   for e in range(1, EPOCHS + 1) for r in range(3)]
    last = {k: v for k, v, s in points.got if s == steps}
    assert last[METRIC.format(2)] > max(last[METRIC.format(r)] for r in (0, 1))
