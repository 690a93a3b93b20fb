#!/usr/bin/env python
"""Ray shard workers next to local mode, on the workloads of WORKLOADS.md, in one run.

    python benchmarks/ray_workers.py [--workloads W-tiny,W-mnist] [--repeats N] [--workers 1,2]

For each workload it trains with the product's own pieces (the shipped config,
`experiments.training.prepare`, the local pool or `workers.ray_pool.RayPool` on a local Ray
started by `cluster.connect`), the modes' repeats ALTERNATING so that a drift in the
machine's speed hits all alike, and prints ONE JSON document:

- step ms, examples/s, and throughput as a fraction of local mode's in the same run;
- how a step splits: `compute_ms` (the slowest worker's time inside gradient_sums, as
  the worker measured it) and `coordination_ms` (the rest: putting theta in the object
  store, the actor calls, getting and adding the sums, the optimizer);
- `round_trip`: the floor under a plain Ray step, measured alone: an empty call to
  each actor, and a theta-sized array sent to each actor and a same-size one returned;
- each worker count steps through a Ray Compiled Graph (the pool's default on one
  node), and the largest count also through plain ray.put / ray.get, side by side.

A 1-worker pool gets both CPUs (its BLAS uses 2 threads, as local mode's does); a
2-worker pool gets one CPU per worker. Validation is off (validation_fraction 0), so
an epoch is training steps only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from experiments import configs  # noqa: E402
from experiments import training  # noqa: E402
from experiments.configfile import load_config  # noqa: E402
from trainer.coordinator import train  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402

CPUS = 2
# workload -> (shipped config, epochs per repeat)
WORKLOADS = {"W-tiny": ("w-tiny", 50), "W-mnist": ("w-mnist", 1), "W-wide": ("w-wide", 1)}


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def rnd(x, digits=4):
    return float(f"{x:.{digits}g}")


class Mode:
    """One way of running a workload (local, or N Ray workers) and its measurements."""

    def __init__(self, label, job, pool):
        self.label, self.job, self.pool = label, job, pool
        t = job.cfg.train
        self.theta = job.theta0.copy()
        self.optimizer = make_optimizer(t.optimizer, t.learning_rate)
        self.epoch, self.walls, self.compute, self.coordination = 0, [], [], []

    def run(self, epochs):
        t0 = time.perf_counter()
        res = train(self.pool, self.theta, self.optimizer, self.job.plan, epochs, start_epoch=self.epoch)
        wall = time.perf_counter() - t0
        self.epoch += epochs
        return wall, res

    def repeat(self, epochs):
        wall, res = self.run(epochs)
        self.walls.append(wall / (epochs * self.job.plan.steps_per_epoch))
        self.compute += [h["compute_seconds"] for h in res.history]
        self.coordination += [h["coordination_seconds"] for h in res.history]
        return self.walls[-1]

    def report(self, local_step_s=None):
        step = statistics.median(self.walls)
        plan = self.job.plan
        out = {"step_ms": rnd(step * 1e3), "step_ms_per_repeat": [rnd(w * 1e3) for w in self.walls],
               "examples_per_second": rnd(plan.m / (step * plan.steps_per_epoch)),
               "compute_ms": rnd(statistics.median(self.compute) * 1e3),
               "coordination_ms": rnd(statistics.median(self.coordination) * 1e3)}
        if local_step_s:
            out["throughput_vs_local"] = rnd(local_step_s / step, 3)
        return out


class Echo:
    """A bare actor: the Ray floor under a step, without any work."""

    def ping(self):
        return None

    def reply(self, theta):
        return np.empty_like(theta)  # a fresh array the size of theta, like a worker's sums


def round_trip(workers, size, dtype, calls=50):
    """Median ms of: an empty call to each of `workers` actors; a theta-sized array sent
    to each (one ray.put) and a same-size array returned by each."""
    import ray

    actors = [ray.remote(Echo).options(num_cpus=0).remote() for _ in range(workers)]
    try:
        ray.get([a.ping.remote() for a in actors])
        empty, echo = [], []
        theta = np.zeros(size, dtype)
        for _ in range(calls):
            t = time.perf_counter()
            ray.get([a.ping.remote() for a in actors])
            empty.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = ray.put(theta)
            ray.get([a.reply.remote(ref) for a in actors])
            echo.append(time.perf_counter() - t)
    finally:
        for a in actors:
            ray.kill(a)
    return {"actor_call_ms": rnd(statistics.median(empty) * 1e3),
            "theta_out_and_back_ms": rnd(statistics.median(echo) * 1e3),
            "theta_bytes": int(theta.nbytes)}


def bench_workload(name, repeats, worker_counts):
    from cluster.connect import connect
    from workers.ray_pool import RayPool

    config, epochs = WORKLOADS[name]
    cfg = load_config(configs.resolve(config), ["data.validation_fraction=0"])
    job = training.prepare(cfg)
    entry = {"layers": list(job.spec.layers), "m": job.plan.m, "batch_size": job.plan.batch_size,
             "steps_per_epoch": job.plan.steps_per_epoch, "parameters": job.spec.size,
             "epochs_per_repeat": epochs}
    # The pools live side by side (they run in turn), so Ray must have logical CPUs
    # for all of them at once; each pool still limits its BLAS to its own share.
    with connect(None, CPUS * (len(worker_counts) + 1)) as conn:
        modes = [Mode("local", job, training.open_pool(job, 1, local=True))]
        # Each worker count through the compiled graph (the default on one node), and
        # the largest also through plain ray.put / ray.get, to measure that lever.
        variants = [(w, None) for w in worker_counts] + [(max(worker_counts), False)]
        for w, compiled in variants:
            pool = RayPool(job.spec, job.plan, job.source.spec, job.source.num_rows, job.schema,
                           (0.0, cfg.data.split_seed), w, max(CPUS // w, 1), compiled=compiled)
            label = f"ray_{w}_worker{'s' if w > 1 else ''}" + ("_plain_put_get" if compiled is False else "")
            modes.append(Mode(label, job, pool))
        try:
            for mode in modes:
                mode.run(1)  # warm-up: first calls, allocations, BLAS threads
            for r in range(repeats):
                for mode in modes:
                    ms = mode.repeat(epochs) * 1e3
                    log(f"  {name} {mode.label} repeat {r + 1}/{repeats}: {ms:.3f} ms/step")
            local_step = statistics.median(modes[0].walls)
            for mode in modes:
                entry[mode.label] = mode.report(None if mode.label == "local" else local_step)
                if mode.label != "local":
                    entry[mode.label]["compiled_graph"] = mode.pool.compiled
                    entry[mode.label]["round_trip"] = round_trip(mode.pool.num_workers, job.spec.size,
                                                                  job.spec.dtype)
            # Same batches, same start: every mode must end with the same weights.
            ref = modes[0].theta
            entry["max_rel_weight_diff_vs_local"] = rnd(max(
                float(np.abs(m.theta - ref).max() / np.abs(ref).max()) for m in modes[1:]), 3) if modes[1:] else 0.0
        finally:
            for mode in modes:
                mode.pool.close()
        entry["nodes"] = conn.nodes
    return entry


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W-tiny,W-mnist")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = ap.parse_args(argv)
    names = [n for n in args.workloads.split(",") if n]
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]}; known: {', '.join(WORKLOADS)}")
    counts = [int(w) for w in args.workers.split(",")]
    report = {"benchmark": "rayprop Ray workers vs local mode (benchmarks/ray_workers.py)",
              "note": "compare only ratios from one run", "cpus": CPUS, "workloads": {}}
    for name in names:
        log(f"{name}: local, " + ", ".join(f"{w} Ray worker(s)" for w in counts) + f", {args.repeats} repeats")
        report["workloads"][name] = bench_workload(name, args.repeats, counts)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
