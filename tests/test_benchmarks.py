"""The benchmark harness works: its smoke run prints one JSON document of sane figures,
its rayprop modes, which train in turns, take the same steps as one undisturbed run, and
its numpy mode, timed by one thread's CPU time, trains as local mode does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

BENCH = REPO / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch):
    """benchmarks/ on sys.path, as when its scripts run (they import their siblings)."""
    monkeypatch.syspath_prepend(str(BENCH))
    yield
    for name in ("core", "modes", "peers", "numpy_step"):  # generic names: gone with the path
        sys.modules.pop(name, None)


def test_smoke_run_prints_one_json_document_of_sane_figures(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "steps.py"), "--smoke"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # the whole of stdout: progress went to stderr
    entry = report["workloads"]["W-tiny"]
    assert (entry["layers"], entry["parameters"], entry["steps_per_epoch"]) == ([2, 16, 16, 1], 337, 1)
    local = entry["modes"]["local"]
    parts = [local[k] for k in ("compute_ms", "transfer_ms", "optimizer_ms", "reduce_ms")]
    assert all(p >= 0 for p in parts) and local["compute_ms"] > 0
    # Medians of the parts need not add up to the median step, but none exceeds it by much.
    assert max(parts) <= local["step_ms"] * 1.5
    assert local["examples_per_second"] == pytest.approx(entry["batch_size"] / (local["step_ms"] / 1e3), rel=1e-3)
    assert "W-tiny local repeat 1/1" in proc.stderr


def test_a_mode_trained_in_turns_takes_one_runs_steps(bench_modules):
    """Each turn goes on at the epoch where the last one ended (the batches of a
    minibatch plan differ per epoch): 1 + 2 epochs in turns equal 3 epochs at once."""
    from modes import make_mode

    from experiments import configs
    from experiments.jobs import training
    from experiments.jobs.configfile import load_config
    from trainer.coordinator import train
    from trainer.optimizers import make_optimizer

    job = training.prepare(load_config(configs.resolve("spirals"), ["data.validation_fraction=0"]))
    assert job.plan.steps_per_epoch > 1
    mode = make_mode("local", job, None)
    try:
        mode.run(1, measure=False)
        mode.run(2)
    finally:
        mode.close()
    assert len(mode.steps) == 2 * job.plan.steps_per_epoch

    t = job.cfg.train
    ref = job.theta0.copy()
    pool = training.open_pool(job, 1, local=True)
    try:
        train(pool, ref, make_optimizer(t.optimizer, t.learning_rate), job.plan, 3)
    finally:
        pool.close()
    np.testing.assert_array_equal(mode.theta, ref)


def test_numpy_mode_trains_as_local_mode_both_timed_by_one_threads_cpu(bench_modules):
    """--cpu-clock's timing: the plain numpy step and local mode take the same SGD steps
    (float64: the same weights to rounding), each step stamped by the thread's CPU time;
    local's compute/transfer split, timed by the worker's wall clock, is left out."""
    from core import THREAD_CPU, prepare
    from modes import make_mode
    from numpy_step import NumpyStep
    from threadpoolctl import threadpool_limits

    job = prepare("W-mnist", "model.layers=[784,8,10]", "model.dtype=float64")  # small: ~1 s an epoch
    assert NumpyStep.fits(job)
    with threadpool_limits(1):
        runs = [make_mode(label, job, None, THREAD_CPU) for label in ("local", "numpy")]
        try:
            for run in runs:
                run.run(1)
        finally:
            for run in runs:
                run.close()
    local, numpy_mode = runs
    assert len(local.steps) == len(numpy_mode.steps) == job.plan.steps_per_epoch
    assert all(s >= 0 for s in local.steps + numpy_mode.steps) and sum(numpy_mode.steps) > 0
    theta = numpy_mode.step_fn.theta(job.spec)
    assert np.abs(theta - job.theta0).max() > 1e-3  # it trained
    np.testing.assert_allclose(theta, local.theta, rtol=0, atol=1e-12 * np.abs(local.theta).max())
    step = float(np.median(local.steps))
    report = local.report()
    assert report["step_ms"] > 0 and "compute_ms" not in report
    assert numpy_mode.report(step)["throughput_vs_local"] > 0


def test_cpu_clock_refuses_ray_modes(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "steps.py"), "--workloads", "W-tiny", "--modes", "local,ray2",
                           "--cpu-clock"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--modes ray2: --cpu-clock times only local, numpy and torch" in proc.stderr
    assert "Traceback" not in proc.stderr
