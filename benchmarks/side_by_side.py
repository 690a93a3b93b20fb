#!/usr/bin/env python
"""Two checkouts of rayprop side by side on one workload, in ONE run: each in a process
of its own (its checkout on PYTHONPATH), repeats alternating so that a drift in the
machine's speed hits both alike; prints one JSON line.

    python benchmarks/side_by_side.py OLD_CHECKOUT NEW_CHECKOUT w-mnist 1 7 local
    python benchmarks/side_by_side.py OLD_CHECKOUT NEW_CHECKOUT w-mnist 1 7 ray2
    python benchmarks/side_by_side.py OLD_CHECKOUT NEW_CHECKOUT w-tiny 50 7 local
    python benchmarks/side_by_side.py OLD_CHECKOUT NEW_CHECKOUT w-tiny 50 24 local cpu
    python benchmarks/side_by_side.py OLD NEW w-mnist 1 7 local train.exact_sums=true

(workload config, epochs per repeat, repeats, mode: local or rayN with 2/N CPUs each;
`cpu`: local mode on one BLAS thread, each step timed by the thread's CPU time, which a
machine loaded by other work moves far less than the wall clock; then optional config
overrides KEY=VALUE: with them a third side, "new_set", runs NEW with them).
Reports each side's median step, its best repeat's median, and the ratios to OLD.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time


def child(name: str, epochs: int, mode: str, clock_name: str = "wall", overrides: tuple[str, ...] = ()) -> None:
    """Serve timed repeats over stdin/stdout with the checkout on sys.path."""
    import numpy as np

    clock = time.thread_time if clock_name == "cpu" else time.perf_counter

    from experiments import configs
    import importlib
    import inspect

    # A checkout of either layout: experiments/jobs/ (since 2026-12-06), or flat before it.
    for package in ("experiments.jobs", "experiments"):
        try:
            training = importlib.import_module(package + ".training")
            load_config = importlib.import_module(package + ".configfile").load_config
            break
        except ImportError:
            continue

    from trainer.checkpoint import Position
    from trainer.coordinator import train
    from trainer.optimizers import make_optimizer

    job = training.prepare(load_config(configs.resolve(name), ["data.validation_fraction=0", *overrides]))
    if mode == "local":
        pool = training.open_pool(job, 1, local=True)
    else:
        from cluster.connect import connect
        from workers.ray_pool import RayPool

        n = int(mode[3:])
        connect(None, 2 * n + 2).__enter__()
        cluster = dataclasses.replace(job.cfg.cluster, data_plane="shm", cpus_per_worker=max(2 // n, 1))
        pool = RayPool(job.task, cluster, n, 3)
    theta, t = job.theta0.copy(), job.cfg.train
    optimizer = make_optimizer(t.optimizer, t.learning_rate)
    epoch = 0

    class Clock:
        def __init__(self):
            self.stamps = []

        def on_step(self, *args):
            self.stamps.append(clock())

        def on_epoch(self, *args):
            pass

    def run(n):
        nonlocal epoch
        stamps, t0 = Clock(), clock()
        if "start_epoch" in inspect.signature(train).parameters:  # a checkout from before its removal
            train(pool, theta, optimizer, job.plan, n, [stamps], start_epoch=epoch)
        else:  # epochs counts to the end; going on from an epoch is a resume
            train(pool, theta, optimizer, job.plan, epoch + n, [stamps], resume=Position(epoch, 0, 0))
        epoch += n
        return list(np.diff([t0, *stamps.stamps]))

    run(1)  # warm-up
    print(json.dumps({"ready": 1}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"steps": run(epochs)}), flush=True)
    pool.close()


def main(old: str, new: str, name: str, epochs: str, repeats: str, mode: str, *extra: str) -> None:
    clock = extra[0] if extra and "=" not in extra[0] else "wall"
    overrides = [x for x in extra if "=" in x]
    if clock not in ("wall", "cpu") or (clock == "cpu" and mode != "local"):
        sys.exit(f"clock: `wall`, or `cpu` with mode local (a Ray mode's work is in other processes), not {clock!r}")
    sides = {"old": (old, []), "new": (new, [])}
    if overrides:
        sides["new_set"] = (new, overrides)
    trees = {side: path for side, (path, _) in sides.items()}
    procs = {}
    for side, (path, sets) in sides.items():
        env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1",
                   **({"OPENBLAS_NUM_THREADS": "1"} if clock == "cpu" else {}))
        procs[side] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", name, epochs, mode,
                                        clock, *sets],
                                       env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        json.loads(procs[side].stdout.readline())
    steps = {side: [] for side in trees}
    medians = {side: [] for side in trees}
    load0 = os.getloadavg()
    for _ in range(int(repeats)):
        for side, proc in procs.items():
            time.sleep(0.5)  # BLAS threads of the other side stop spinning
            proc.stdin.write("go\n")
            proc.stdin.flush()
            s = json.loads(proc.stdout.readline())["steps"]
            steps[side] += s
            medians[side].append(statistics.median(s))
    out = {side: {"checkout": trees[side], "median_step_ms": round(statistics.median(steps[side]) * 1e3, 4),
                  "best_repeat_ms": round(min(medians[side]) * 1e3, 4),
                  "per_repeat_ms": [round(x * 1e3, 3) for x in medians[side]]} for side in trees}
    for side in list(trees)[1:]:
        suffix = "" if side == "new" else "_" + side
        out["ratio_median" + suffix] = round(statistics.median(steps[side]) / statistics.median(steps["old"]), 4)
        out["ratio_best_repeat" + suffix] = round(min(medians[side]) / min(medians["old"]), 4)
    if overrides:
        out["new_set"]["overrides"] = overrides
    out["loadavg_start_end"] = [load0, os.getloadavg()]
    out["clock"] = "thread CPU, 1 BLAS thread" if clock == "cpu" else "wall"
    print(json.dumps({f"{name} {mode}": out}))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], tuple(sys.argv[6:]))
    else:
        main(*sys.argv[1:])
