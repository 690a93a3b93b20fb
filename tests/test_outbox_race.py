"""The end of a run whose metric sender is still in a call to the store: the points the
spool keeps are sent only once that call has returned, never beside it, and each point
reaches the store once. A real `mlflow server` on loopback behind an HTTP gate of the
test's own (tests/httpgate.py) that holds the `log-batch` calls: to the job, a store
slow to take its metrics. The gate counts the points that reach the server and the
metric calls made while a log-batch was under way.
"""

from __future__ import annotations

import threading
import time

import pytest

from experiments.tracking import run as tracking
from experiments.tracking.outbox import SPOOL_DIR, SPOOL_FILE, replay
from tests.httpgate import HttpGate

STEPS = 50
EVENT_SECONDS = 300  # bounds on events that come in well under a second on an idle machine


@pytest.fixture
def gate(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(EVENT_SECONDS))  # held, not lost
    monkeypatch.setattr(tracking, "CLOSE_SECONDS", 1.0)  # the sender outlasts close's wait
    gate = HttpGate(mlflow_server.port)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", gate.uri)  # restored after the test
    yield gate
    gate.close()


def run_with_held_metrics(gate: HttpGate, out_dir, release) -> tracking.TrackedRun:
    """A run whose STEPS loss points all go to the store at its end, through the shut
    gate; release(spool) runs beside the run's end once close gave up waiting."""
    spool = out_dir / SPOOL_DIR / SPOOL_FILE

    def watch():
        deadline = time.time() + EVENT_SECONDS
        while not spool.exists() and time.time() < deadline:
            time.sleep(0.02)
        release(spool)

    experiment_id = tracking.open_experiment(gate.uri, "outbox-race")
    with tracking.TrackedRun(experiment_id, out_dir=out_dir) as run:
        gate.shut()
        for step in range(1, STEPS + 1):
            run.metrics.on_step(step, 0, 1.0 / step, 1)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
    watcher.join(EVENT_SECONDS)
    return run


def loss_steps(gate: HttpGate, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(gate.uri).get_metric_history(run_id, "loss"))


def test_kept_points_wait_for_the_call_under_way_and_go_in_once(gate, tmp_path):
    def release(spool):
        # A replay beside the held call shows at once as a history read; none comes.
        gate.wait(lambda g: g.overlaps, 5)
        gate.open()

    run = run_with_held_metrics(gate, tmp_path, release)
    assert gate.overlaps == [], "the spool was replayed while the sender's call was under way"
    assert run.report is None, run.report
    assert run.client.get_run(run.run_id).info.status == "FINISHED"
    assert {k: n for k, n in gate.points.items() if n != 1} == {}, "a point went to the store twice"
    assert sorted(s for k, s in gate.points if k == "loss") == list(range(1, STEPS + 1))
    assert loss_steps(gate, run.run_id) == list(range(1, STEPS + 1))
    assert not (tmp_path / SPOOL_DIR).exists()


def test_a_call_that_never_returns_leaves_the_points_kept_and_the_run_ended(gate, tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "IN_FLIGHT_SECONDS", 1.0)
    safety = threading.Timer(120, gate.open)  # a replay beside the held call would wait here
    safety.start()
    try:
        run = run_with_held_metrics(gate, tmp_path, lambda spool: None)
        assert gate.held == 1 and gate.overlaps == [], gate.seen
        spool = tmp_path / SPOOL_DIR / SPOOL_FILE
        assert run.report == (f"rayprop: the tracking store did not get everything: {STEPS} metric points "
                              f"kept in {spool} (a call sending them was still under way)")
        assert run.client.get_run(run.run_id).info.status == "FINISHED"
        sender = run.metrics.outbox
        gate.open()  # the store answers at last; the sender stops after that call
        assert sender.wait_stopped(EVENT_SECONDS)
    finally:
        safety.cancel()
    assert gate.overlaps == []
    assert sorted(s for k, s in gate.points if k == "loss") == list(range(1, STEPS + 1))
    # What `--resume` does with the spool: sends what the store lacks (nothing here).
    assert replay(run.client, run.run_id, spool) == 0
    assert not spool.exists()
    assert loss_steps(gate, run.run_id) == list(range(1, STEPS + 1))
    assert max(gate.points.values()) == 1
