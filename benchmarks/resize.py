"""What a change of the pool's size costs the step at whose boundary it happens (README:
Faults and elasticity): W-mnist in float64, 1 -> 2 -> 1 (-> 2) workers on a local Ray.

    python benchmarks/resize.py
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from core import CPUS, emit, log, med_ms, prepare, rnd, with_load
from experiments.jobs import training
from trainer.coordinator import train
from trainer.optimizers import make_optimizer


class Stamps:
    """Each step's end time and the pool's size after it."""

    def __init__(self, pool):
        self.pool, self.stamps, self.sizes = pool, [], []

    def on_step(self, step, epoch, loss, n):
        self.stamps.append(time.perf_counter())
        self.sizes.append(self.pool.num_workers)

    def on_epoch(self, epoch, metrics):
        pass


class Script:
    """Frees a CPU a third of the way in, kills a worker at two thirds. Its waits come
    before the stamps (listeners run in order): they count in the step before the
    boundary, not in the boundary step."""

    def __init__(self, pool, holder, third):
        self.pool, self.holder, self.third = pool, holder, third

    def on_step(self, step, epoch, loss, n):
        import ray

        if step == self.third:
            ray.kill(self.holder)  # a CPU comes free
            while ray.available_resources().get("CPU", 0) < 1:
                time.sleep(0.05)
        if self.pool.joining:  # let the new worker be ready at the next boundary
            ray.wait(self.pool.joining, num_returns=len(self.pool.joining), timeout=120)
        if step == 2 * self.third:  # a worker lost (ray.kill: a SIGKILL would get a raylet line on stdout)
            ray.kill(self.pool.actors[-1])

    def on_epoch(self, epoch, metrics):
        pass


def bench_resize(name="W-mnist", epochs=2):
    """One `workers: auto` pool on a local Ray of CPUS CPUs, one of them held by another
    actor at the start: it starts with 1 worker, grows to 2 when that actor goes (the new
    worker reads its rows while the steps go on; the boundary step re-splits the rows),
    then shrinks to 1 when a worker is killed (replace_seconds 0: no wait for a
    replacement), and grows again once Ray sees that worker's CPU free. In float64, so
    that the weights' difference to local mode shows the order of additions only.
    Reported: each boundary step's wall time beside the median step."""
    import ray

    from cluster.connect import connect
    from workers import ray_pool

    job = prepare(name, "model.dtype=float64")
    t = job.cfg.train
    ref = job.theta0.copy()
    train(training.open_pool(job, 1, local=True), ref, make_optimizer(t.optimizer, t.learning_rate), job.plan, epochs)
    with connect(None, CPUS):
        holder = ray.remote(num_cpus=1)(Stamps).remote(None)
        ray.get(holder.on_epoch.remote(0, {}))
        cluster = dataclasses.replace(job.cfg.cluster, workers="auto", max_workers=CPUS, replace_seconds=0)
        ray_pool.GROW_CHECK_SECONDS = 0.0  # look for free CPUs at every boundary (else every 5 s)
        pool = ray_pool.RayPool(job.task, cluster, "auto", 3)
        clock = Stamps(pool)
        theta = job.theta0.copy()
        try:
            t0 = time.perf_counter()
            train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, epochs,
                  [Script(pool, holder, job.plan.steps_per_epoch * epochs // 3), clock])
        finally:
            pool.close()
    walls = np.diff([t0, *clock.stamps])
    sizes = clock.sizes
    changes = [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]]
    return {"workload": name, "steps": len(walls), "pool_sizes": [sizes[0], *(sizes[i] for i in changes)],
            "resizes": pool.resizes, "median_step_ms": med_ms(list(walls)),
            "boundary_step_ms": [rnd(walls[i] * 1e3) for i in changes],
            "max_rel_weight_diff_vs_local": rnd(float(np.abs(theta - ref).max() / np.abs(ref).max()), 3)}


if __name__ == "__main__":
    log("resize: W-mnist, 1 -> 2 -> 1 (-> 2) workers")
    sys.exit(emit({"benchmark": "rayprop resizes (benchmarks/resize.py)", "resize": with_load(bench_resize)}))
