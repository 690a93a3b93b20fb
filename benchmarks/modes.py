"""rayprop's modes of steps.py: a pool (local, or N Ray workers through the
shared-memory plane or the object store) trained on in turns by the product's own
coordinator, each step split as measured around the pool and the optimizer (no copy
of the hot path here): `compute_ms` (the slowest worker, timed by the worker),
`transfer_ms` (the rest of the pool's call: theta out, waking workers, the sums back),
`optimizer_ms`, and `reduce_ms` (the rest of the step: adding the sums, dividing by m,
the loss check). Beside them, `numpy`: benchmarks/numpy_step.py's plain numpy step of
the same network, in this process. Every mode stamps its steps with the clock of the
run's core.Timing (the wall clock, or one thread's CPU time under --cpu-clock)."""

from __future__ import annotations

import cProfile
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np

from core import CPUS, WALL, Timing, rnd
from experiments.jobs import training
from trainer.checkpoint import Position
from trainer.coordinator import train
from trainer.optimizers import make_optimizer


class TimedPool:
    """The pool, with the wall time of each gradient_sums call and its slowest worker."""

    def __init__(self, pool, clock: Callable[[], float]):
        self.pool, self.calls, self.clock = pool, [], clock

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def gradient_sums(self, theta, epoch, k, *args, **kwargs):  # and whatever else the coordinator passes
        t = self.clock()
        sums = self.pool.gradient_sums(theta, epoch, k, *args, **kwargs)
        self.calls.append((self.clock() - t, max(s.compute_seconds for s in sums)))
        return sums


class TimedOptimizer:
    def __init__(self, optimizer, clock: Callable[[], float]):
        self.optimizer, self.seconds, self.clock = optimizer, [], clock

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def step(self, theta, grad):
        t = self.clock()
        self.optimizer.step(theta, grad)
        self.seconds.append(self.clock() - t)


class StepClock:
    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.stamps, self.clock = [], clock

    def on_step(self, step, epoch, loss, n):
        self.stamps.append(self.clock())

    def on_epoch(self, epoch, metrics):
        pass


class RaypropMode:
    """One rayprop pool trained on in turns; each turn goes on from the last one's epoch."""

    def __init__(self, label, job, pool, profile_dir=None, timing: Timing = WALL):
        self.label, self.job, self.timing = label, job, timing
        self.pool = TimedPool(pool, timing.clock)
        t = job.cfg.train
        self.theta = job.theta0.copy()
        self.optimizer = TimedOptimizer(make_optimizer(t.optimizer, t.learning_rate), timing.clock)
        self.epoch, self.steps, self.split = 0, [], []
        self.profiler = cProfile.Profile() if profile_dir else None
        self.profile_dir = profile_dir

    def run(self, epochs, measure=True):
        clock = StepClock(self.timing.clock)
        self.pool.calls, self.optimizer.seconds = [], []
        if self.profiler:
            self.profiler.enable()
        t0 = self.timing.clock()
        # Epochs self.epoch .. self.epoch + epochs - 1, as a resumed run takes them.
        train(self.pool, self.theta, self.optimizer, self.job.plan, self.epoch + epochs, [clock],
              resume=Position(self.epoch, 0, 0))
        if self.profiler:
            self.profiler.disable()
        self.epoch += epochs
        if measure:
            walls = np.diff([t0, *clock.stamps])
            self.steps += list(walls)
            for wall, (call, compute), opt in zip(walls, self.pool.calls, self.optimizer.seconds):
                self.split.append((compute, call - compute, opt, wall - call - opt))

    def report(self, local=None):
        step = statistics.median(self.steps)
        split = np.median(np.array(self.split), axis=0)
        out = {"step_ms": rnd(step * 1e3), "examples_per_second": rnd(self.job.plan.batch_size / step)}
        if self.timing.wall:  # the workers time their compute by the wall clock: no split by another clock
            out.update({"compute_ms": rnd(split[0] * 1e3), "transfer_ms": rnd(split[1] * 1e3),
                        "optimizer_ms": rnd(split[2] * 1e3), "reduce_ms": rnd(split[3] * 1e3)})
        if local is not None:
            out["throughput_vs_local"] = rnd(local / step, 3)
        traffic = getattr(self.pool.pool, "traffic", None)
        if traffic and traffic["steps"]:
            out["bytes_received_per_step"] = traffic["bytes_received"] // traffic["steps"]
            out["bytes_sent_per_step"] = traffic["bytes_sent"] // traffic["steps"]
        if self.profiler:
            self.profile_dir.mkdir(exist_ok=True)
            self.profiler.dump_stats(self.profile_dir / f"{self.job.cfg.experiment}-{self.label}.prof")
        return out

    def close(self):
        self.pool.close()


class NumpyMode:
    """benchmarks/numpy_step.py's plain numpy step, in this process (the same BLAS)."""

    label = "numpy"

    def __init__(self, job, timing: Timing = WALL):
        from numpy_step import NumpyStep

        self.step_fn, self.steps, self.batch = NumpyStep(job, timing.clock), [], job.plan.batch_size

    def run(self, epochs, measure=True):
        steps = self.step_fn.run(epochs)
        if measure:
            self.steps += steps

    def report(self, local=None):
        step = statistics.median(self.steps)
        out = {"step_ms": rnd(step * 1e3), "examples_per_second": rnd(self.batch / step)}
        if local is not None:
            out["throughput_vs_local"] = rnd(local / step, 3)
        return out

    def close(self):
        pass


def make_mode(label, job, profile_dir, timing: Timing = WALL):
    """A mode of steps.py run in this process: `local`, `rayN[-object-store]`, `numpy`; a
    rayprop mode may end in `-exact` or `-plain` (the job's train.exact_sums, steps.SUMS)."""
    base = label.removesuffix("-exact").removesuffix("-plain")
    if base == "local":
        return RaypropMode(label, job, training.open_pool(job, 1, local=True), profile_dir, timing)
    if label == "numpy":
        return NumpyMode(job, timing)
    from workers.ray_pool import RayPool

    workers = int(base[3:].split("-")[0])
    plane = "object_store" if base.endswith("-object-store") else "shm"
    cluster = dataclasses.replace(job.cfg.cluster, data_plane=plane, cpus_per_worker=max(CPUS // workers, 1))
    return RaypropMode(label, job, RayPool(job.task, cluster, workers, job.cfg.train.max_worker_failures),
                       profile_dir)
