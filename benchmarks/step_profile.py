#!/usr/bin/env python
"""Where one local-mode training step's time goes, operation by operation.

    python benchmarks/step_profile.py [--workload w-mnist] [--steps 200] [--cpu] [--cprofile]

Runs the product's own step (ShardWorker.gradient_sums, the coordinator's reduce and
division, the optimizer) on the workload's data, with every `np.<function>` call made
by trainer/ and workers/shard.py timed: the modules' `np` is swapped for a proxy that
wraps each function, so no copy of the hot path lives here. What the proxy cannot see
(in-place operators such as `Z += b`, array methods such as `Z.max()`, Python) is the
"rest" row: the step's wall time less the timed calls. Each row is keyed by function
and operand shapes (with ".T" for a transposed operand), its time the median over
steps. `--cpu` reads this thread's CPU time instead of the wall clock: with
OPENBLAS_NUM_THREADS=1 every operation runs on this thread, and the table no longer
moves with what else the machine runs (a loaded 2-core machine makes wall times of
multi-threaded BLAS calls wander several-fold). Prints a markdown table (docs/speed-log.md
keeps them) and one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import io
import json
import pstats
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core import prepare_config, sgemm_gflops  # noqa: E402
from experiments.jobs import training  # noqa: E402
from trainer import activations, costs, coordinator, network, optimizers  # noqa: E402
from trainer.coordinator import reduce_sums  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402
from workers import shard  # noqa: E402

MODULES = (network, activations, costs, optimizers, coordinator, shard)


def describe(a) -> str:
    if isinstance(a, np.ndarray):
        s = "x".join(map(str, a.shape)) or "()"
        return s + (".T" if a.ndim == 2 and not a.flags.c_contiguous and a.flags.f_contiguous else "")
    return type(a).__name__


clock = time.perf_counter


class Timed(types.ModuleType):
    """A stand-in for numpy whose functions record (name, operand shapes) -> seconds."""

    def __init__(self, record):
        super().__init__("numpy")
        self._record = record

    def __getattr__(self, name):
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f
        record = self._record

        def timed(*args, **kw):
            t = clock()
            r = f(*args, **kw)
            record[(name, " ".join(describe(a) for a in args[:2]))] += clock() - t
            return r
        return timed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="w-mnist")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--cpu", action="store_true",
                   help="time by this thread's CPU time (use with OPENBLAS_NUM_THREADS=1)")
    p.add_argument("--cprofile", action="store_true", help="also print cProfile's top functions")
    a = p.parse_args(argv)
    global clock
    clock = time.thread_time if a.cpu else time.perf_counter
    job = prepare_config(a.workload)
    pool = training.open_pool(job, 1, local=True)
    worker = pool.workers[0]
    theta = job.theta0.copy()
    grad = np.empty_like(theta)
    t = job.cfg.train
    opt = make_optimizer(t.optimizer, t.learning_rate)
    plan = job.plan

    def step(i):
        # Full batches only (a partial last batch would add rows of other shapes).
        full = plan.steps_per_epoch - (plan.n_train % plan.batch_size != 0)
        sums = [worker.gradient_sums(theta, i // full, i % full)]
        n, _ = reduce_sums(sums, grad)
        np.divide(grad, n, out=grad)
        opt.step(theta, grad)

    warm = min(20, a.steps)
    for i in range(warm):  # warm-up: allocations, BLAS threads
        step(i)
    walls, per_step = [], collections.defaultdict(list)
    record = collections.defaultdict(float)
    originals = {m: m.np for m in MODULES}
    try:
        for m in MODULES:
            m.np = Timed(record)
        for i in range(a.steps):
            record.clear()
            t0 = clock()
            step(warm + i)
            walls.append(clock() - t0)
            for key, s in record.items():
                per_step[key].append(s)
            per_step[("rest", "operators, methods, Python")].append(walls[-1] - sum(record.values()))
    finally:
        for m, real in originals.items():
            m.np = real
    # Untimed steps for the real step time (the proxy adds its own overhead).
    plain = []
    for i in range(a.steps):
        t0 = clock()
        step(warm + a.steps + i)
        plain.append(clock() - t0)
    step_ms = statistics.median(plain) * 1e3
    rows = sorted(((statistics.median(v) * 1e3, k) for k, v in per_step.items()), reverse=True)
    print("| operation | operands | ms/step | share |\n| --- | --- | ---: | ---: |")
    total = statistics.median(walls) * 1e3
    for ms, (name, shapes) in rows:
        print(f"| {name} | {shapes} | {ms:.3f} | {ms / total:.0%} |")
    print(f"| step (timed / untimed) | batch {plan.batch_size} | {total:.3f} / {step_ms:.3f} | |")
    if a.cprofile:
        prof = cProfile.Profile()
        prof.enable()
        for i in range(a.steps):
            step(i)
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
        print(s.getvalue())
    gflops = job.spec.flops_per_example() * plan.batch_size / step_ms / 1e6
    print(json.dumps({"workload": a.workload, "clock": "thread CPU" if a.cpu else "wall", "step_ms": round(step_ms, 4),
                      "examples_per_second": round(plan.batch_size / step_ms * 1e3),
                      "gflop_per_s": round(gflops, 1), "sgemm_gflop_per_s": round(sgemm_gflops(clock), 1)}))
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
