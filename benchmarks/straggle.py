#!/usr/bin/env python
"""Stragglers on real heterogeneity: three Ray workers on two cores, worker 0 alone on
core 0 and workers 1 and 2 sharing core 1 (CPU affinity of every thread of their
processes), so workers 1 and 2 compute at half speed. Prints ONE JSON document.

    python benchmarks/straggle.py [--workload W-mnist] [--repeats 5] [--steps 40]

Two pools of three workers, pinned alike, trained side by side in alternating
windows of `--steps` steps (so that a drift in the machine's load hits both):
`even` never rebalances (the even split, as before rebalancing existed); `rebalanced`
has cluster.rebalance_seconds = 1 and moves rows at step boundaries (its first window
is a warm-up in which it moves; the windows measured come after). Reported, as medians
over the measured windows: the step time of each; the balanced optimum, the step
time if the total compute were divided so that all finish together (from each worker's
measured seconds per row in the even pool: batch rows / sum of rows per second, plus
the even pool's time outside compute); since workers 1 and 2 share a core, also the
machine's optimum, every row at worker 0's rate over the two cores (capacity_optimum);
each rebalance line and the rows each move read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import LoadMeter, log, prepare, rnd  # noqa: E402
from modes import StepClock  # noqa: E402

from trainer.checkpoint import Position  # noqa: E402
from trainer.coordinator import train  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402

CORES = {0: {0}, 1: {1}, 2: {1}}  # worker rank -> the CPUs its process may run on


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` (BLAS, the plane's reader) onto `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


class Window:
    """A pool and its weights, trained `steps` steps at a time; per step: the wall time,
    the slowest worker's compute, and each worker's compute seconds and batch rows."""

    def __init__(self, job, pool):
        self.job, self.pool = job, pool
        t = job.cfg.train
        self.theta, self.opt = job.theta0.copy(), make_optimizer(t.optimizer, t.learning_rate)
        self.epoch, self.k = 0, 0
        self.walls, self.computes, self.rates = [], [], []

    def run(self, steps: int, measure: bool) -> None:
        plan, pool = self.job.plan, self.pool
        clock = StepClock()
        per_worker = []

        class Seconds:  # each worker's compute, read after each step
            def on_step(self, *a):
                per_worker.append(list(pool.worker_seconds))

            def on_epoch(self, *a):
                pass

        # Whole epochs keep the coordinator's bookkeeping simple: one at a time, and
        # stop counting after `steps` of them.
        done = 0
        t0 = time.perf_counter()
        while done < steps:
            train(pool, self.theta, self.opt, plan, self.epoch + 1, [clock, Seconds()],
                  resume=Position(self.epoch, 0, 0))
            self.epoch += 1
            done += plan.steps_per_epoch
        if measure:
            walls = np.diff([t0, *clock.stamps])[1:]  # the first step waited for the call to start
            self.walls += list(walls)
            self.computes += [max(s) for s in per_worker[1:]]
            rows = [hi - lo for lo, hi in pool.ranges]
            self.rates += [[s / r for s, r in zip(step, rows)] for step in per_worker[1:]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="W-mnist")
    ap.add_argument("--repeats", type=int, default=5, help="measured windows per pool")
    ap.add_argument("--steps", type=int, default=40, help="steps per window (whole epochs)")
    ap.add_argument("--set", action="append", default=["train.exact_sums=true"], metavar="KEY=VALUE",
                    help="config overrides (default: exact sums on, so that rows may move in float32)")
    args = ap.parse_args(argv)

    from cluster.connect import connect
    from workers.ray_pool import RayPool

    meter = LoadMeter()
    job = prepare(args.workload, *args.set)
    pools = {}
    with connect(None, 6):  # two pools of three, one CPU each (logical: affinity decides)
        try:
            for label, every in (("even", 0), ("rebalanced", 1.0)):
                cluster = dataclasses.replace(job.cfg.cluster, cpus_per_worker=1, rebalance_seconds=every)
                pool = RayPool(job.task, cluster, 3, 0)
                for rank, cpus in CORES.items():
                    pin(pool.info[rank]["pid"], cpus)
                pools[label] = Window(job, pool)
            log(f"{args.workload}: 3 workers, worker 0 on core 0, workers 1 and 2 sharing core 1")
            for w in pools.values():  # warm-up: caches, and the rebalanced pool's moves
                w.run(3 * args.steps, measure=False)
            for i in range(args.repeats):
                for label, w in pools.items():
                    w.run(args.steps, measure=True)
                    log(f"  window {i + 1}/{args.repeats} {label}: median step "
                        f"{statistics.median(w.walls[-args.steps:]) * 1e3:.2f} ms")
            even, moved = pools["even"], pools["rebalanced"]
            rate = np.median(np.array(even.rates), axis=0)  # seconds per row held, per worker
            rows = sum(hi - lo for lo, hi in even.pool.ranges)
            optimum_compute = rows / float(np.sum(1 / rate))  # all finish together
            outside = statistics.median(even.walls) - statistics.median(even.computes)
            report = {
                "benchmark": "stragglers (benchmarks/straggle.py)", "workload": args.workload,
                "cpus": os.cpu_count(), "pinning": {f"worker {r}": sorted(c) for r, c in CORES.items()},
                "overrides": args.set, "windows": args.repeats, "steps_per_window": args.steps,
                "even_step_ms": rnd(statistics.median(even.walls) * 1e3),
                "rebalanced_step_ms": rnd(statistics.median(moved.walls) * 1e3),
                "optimum_step_ms": rnd((optimum_compute + outside) * 1e3),
                "even_compute_ms": rnd(statistics.median(even.computes) * 1e3),
                "rebalanced_compute_ms": rnd(statistics.median(moved.computes) * 1e3),
                "optimum_compute_ms": rnd(optimum_compute * 1e3),
                "even_seconds_per_row_us": [rnd(r * 1e6) for r in rate],
                "even_ranges": even.pool.ranges, "rebalanced_ranges": moved.pool.ranges,
                "rebalances": moved.pool.balance.lines, "rows_read_per_move": moved.pool.balance.rows_read,
            }
            report["rebalanced_vs_optimum"] = rnd(report["rebalanced_step_ms"] / report["optimum_step_ms"], 3)
            report["even_vs_optimum"] = rnd(report["even_step_ms"] / report["optimum_step_ms"], 3)
            # The optimum above takes each worker's measured rate as its own, but workers 1
            # and 2 share a core: each runs at half speed only while the other runs too.
            # What the machine can do is its cores' work divided evenly: every row at the
            # rate of worker 0 (alone on its core), over the cores in use.
            cores = len(set().union(*CORES.values()))
            capacity = rows * rate[0] / cores
            best_ms = (capacity + outside) * 1e3
            report["capacity_optimum_step_ms"] = rnd(best_ms)
            report["rebalanced_vs_capacity_optimum"] = rnd(report["rebalanced_step_ms"] / best_ms, 3)
            report["even_vs_capacity_optimum"] = rnd(report["even_step_ms"] / best_ms, 3)
        finally:
            for w in pools.values():
                w.pool.close()
    report["load"] = meter.report()
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
