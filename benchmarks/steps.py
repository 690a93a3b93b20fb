"""Step times of the shipped workloads (W-tiny, W-mnist, W-wide) every way rayprop runs
them, beside PyTorch and Ray Train (peers.py) when they import, in ONE run.

    python benchmarks/steps.py [--workloads W-tiny,W-mnist] [--modes local,ray2,...] [--repeats 6] [--profile]
    python benchmarks/steps.py --workloads W-mnist --modes local,numpy,torch --cpu-clock
    python benchmarks/steps.py --smoke     # W-tiny, local mode, 3 steps: the harness works (CI)

Modes: `local`; `rayN` (N workers, shared-memory plane; a 1-worker pool gets both
CPUs); `rayN-object-store` (every worker through ray.put/ray.get): modes.py, whose
steps split into compute, transfer, optimizer and reduce; `numpy` (numpy_step.py's
plain numpy step of a ReLU/softmax network, in this process): modes.py too; `torch` and
`ray-train`: peers.py. All modes' repeats ALTERNATE, so that a drift in the machine's speed hits
them alike; Ray Train runs between the first and second half of the repeats.
`--profile` writes a cProfile of the coordinator's process per rayprop mode to
benchmarks/profiles/. `--cpu-clock` runs local, numpy and torch on ONE BLAS / PyTorch
thread each and times their steps by the thread's CPU time (core.Timing); the Ray
modes, whose work is in other processes, do not run under it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import peers
from core import (CPUS, SWITCH_PAUSE_S, WALL, WORKLOADS, emit, gemm_info, log, med_ms, prepare, rnd, sgemm_gflops,
                  use_timing, with_load)
from modes import make_mode
from numpy_step import NumpyStep

MODES = "local,ray1,ray2,ray2-object-store,torch,ray-train"  # also: numpy; local and rayN[-object-store] + SUMS
SUMS = {"-exact": "true", "-plain": "false"}  # a rayprop mode's suffix: its train.exact_sums


def sums_suffix(mode: str) -> str:
    return next((suffix for suffix in SUMS if mode.endswith(suffix)), "")


def bench_workload(name, modes, repeats, profile_dir=None, epochs=None, timing=WALL):
    from cluster.connect import connect

    epochs = epochs or WORKLOADS[name][1]
    job = prepare(name)
    entry = {"layers": list(job.spec.layers), "m": job.plan.n_train, "batch_size": job.plan.batch_size,
             "steps_per_epoch": job.plan.steps_per_epoch, "parameters": job.spec.size,
             "epochs_per_repeat": epochs, "modes": {}}
    ray_modes = [m for m in modes if m.startswith("ray") and m != "ray-train"]
    # Logical CPUs for every pool at once (they run in turn); each limits its BLAS threads.
    ray = connect(None, CPUS * (len(ray_modes) + 2)) if ray_modes or "ray-train" in modes else _NoRay()
    with ray as conn, tempfile.TemporaryDirectory() as storage:
        # A mode ending in "-exact" or "-plain" trains with train.exact_sums true or false
        # (README: Bit for bit) beside the default ("auto").
        jobs = {suffix: prepare(name, f"train.exact_sums={value}") for suffix, value in SUMS.items()
                if any(m.endswith(suffix) for m in modes)}
        runs = [make_mode(m, jobs.get(sums_suffix(m), job), profile_dir, timing)
                for m in modes if m.removesuffix(sums_suffix(m)) == "local" or m in ray_modes]
        if "numpy" in modes:
            if NumpyStep.fits(job):
                runs.append(make_mode("numpy", job, None, timing))
            else:
                log(f"  {name} numpy: left out, numpy_step.py is written for ReLU, softmax, SGD")
        if "torch" in modes and peers.torch_importable():
            runs.append(peers.TorchMode(name, epochs, timing))
        try:
            for run in runs:
                run.run(1, measure=False)  # warm-up: first calls, allocations, BLAS threads
            rt = None
            for r in range(repeats):
                if r == repeats // 2 and "ray-train" in modes and peers.ray_train_importable():
                    log(f"  {name} ray-train")
                    steps, _ = peers.ray_train(name, epochs * max(repeats // 2, 1), 1, storage)
                    rt = {"workers": 2, "step_ms": med_ms(steps),
                          "examples_per_second": rnd(job.plan.batch_size / statistics.median(steps))}
                for run in runs:
                    time.sleep(SWITCH_PAUSE_S)
                    run.run(epochs)
                    last = run.steps[-job.plan.steps_per_epoch * epochs:]
                    log(f"  {name} {run.label} repeat {r + 1}/{repeats}: {statistics.median(last) * 1e3:.3f} ms/step")
            local = statistics.median(runs[0].steps) if runs and runs[0].label == "local" else None
            for run in runs:
                entry["modes"][run.label] = run.report(None if run.label == "local" else local)
            if rt is not None:
                rt["throughput_vs_local"] = rnd(local / (rt["step_ms"] / 1e3), 3) if local else None
                entry["modes"]["ray-train"] = rt
            thetas = [run.theta for run in runs if hasattr(run, "theta")]
            numpy_run = next((run for run in runs if run.label == "numpy"), None)
            if numpy_run and local:  # the same epochs on the same batches: is it the same training?
                ref, theta = runs[0].theta, numpy_run.step_fn.theta(job.spec)
                entry["max_rel_weight_diff_numpy_vs_local"] = rnd(
                    float(np.abs(theta - ref).max() / np.abs(ref).max()), 3)
            entry["max_rel_weight_diff_between_rayprop_modes"] = rnd(max(
                (float(np.abs(t - thetas[0]).max() / np.abs(thetas[0]).max()) for t in thetas[1:]), default=0.0), 3)
        finally:
            for run in runs:
                run.close()
        entry["nodes"] = conn.nodes
    if name == "W-wide":  # each local mode's executed rate beside numpy's sgemm, measured after it
        for run in runs:
            if run.label.startswith("local"):
                entry["modes"][run.label].update(wide_flops(job, statistics.median(run.steps), timing.clock))
    return entry


class _NoRay:
    """connect()'s stand-in when no mode needs Ray: local mode alone starts none."""

    nodes = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def wide_flops(job, step_seconds, clock=time.perf_counter):
    """GFLOP/s executed (2 forward + 4 backward per weight per example, less the first
    layer's input gradient) beside numpy's float32 matmul measured now, by the steps' clock."""
    layers, m = job.spec.layers, job.plan.batch_size
    weights = sum(a * b for a, b in zip(layers[:-1], layers[1:]))
    flops = 6 * weights * m - 2 * layers[0] * layers[1] * m
    sgemm = sgemm_gflops(clock)
    gflops = flops / step_seconds / 1e9
    return {"gflop_per_s": rnd(gflops), "sgemm_gflop_per_s": rnd(sgemm), "fraction_of_sgemm": rnd(gflops / sgemm, 3)}


def add_arguments(ap):
    ap.add_argument("--workloads", default="W-tiny,W-mnist")
    ap.add_argument("--modes", default=MODES)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--profile", action="store_true", help="cProfile each rayprop mode into benchmarks/profiles/")
    ap.add_argument("--cpu-clock", action="store_true",
                    help="local, numpy and torch on one BLAS thread each, timed by the thread's CPU time")


def workloads(ap, args, smoke=False) -> dict:
    """{"benchmark", ..., "workloads": {name: entry}} for the command line's workloads."""
    names = [n for n in args.workloads.split(",") if n]
    modes = [m for m in args.modes.split(",") if m]
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]}; known: {', '.join(WORKLOADS)}")
    remote = [m for m in modes if m.startswith("ray")]
    if args.cpu_clock and remote:
        ap.error(f"--modes {remote[0]}: --cpu-clock times only local, numpy and torch (a Ray mode's work is "
                 "in other processes)")
    timing = use_timing(args.cpu_clock)
    report = {"benchmark": f"rayprop ({' '.join(['benchmarks/' + Path(sys.argv[0]).name, *sys.argv[1:]])})",
              "note": "compare only ratios from one run", "cpus": os.cpu_count(), "modes": modes,
              "clock": timing.name, "gemm": gemm_info(), "repeats": args.repeats, "workloads": {}}
    profile_dir = Path(__file__).resolve().parent / "profiles" if args.profile else None
    for name in names:
        log(f"{name}: {', '.join(modes)}; {args.repeats} repeats")
        report["workloads"][name] = with_load(bench_workload, name, modes, args.repeats, profile_dir,
                                              2 if smoke else None, timing)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    ap.add_argument("--smoke", action="store_true", help="W-tiny, local mode, 1 repeat of 2 steps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.workloads, args.modes, args.repeats, args.profile = "W-tiny", "local", 1, False
    return emit(workloads(ap, args, smoke=args.smoke))


if __name__ == "__main__":
    sys.exit(main())
