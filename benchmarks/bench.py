#!/usr/bin/env python
"""rayprop's benchmarks in one command and ONE JSON document on stdout (progress on
stderr). Each job is its own small file and runs alone too:

    steps.py   step times of W-tiny, W-mnist, W-wide: local, N Ray workers, a plain numpy
               step, beside peers.py (PyTorch in a child process, Ray Train); --profile;
               --cpu-clock (one thread each, its CPU time); --smoke
    jobs.py    whole `rayprop train` jobs from process start, beside a Ray Train script
    resize.py  the steps at whose boundary a pool grows or shrinks
    sweeps.py  whole sweeps, trials one at a time against side by side; or against Ray
               Tune running the same trials (tune_sweep.py), alternating
    core.py    what they share: workloads, rounding, the machine's load, JSON out

    python benchmarks/bench.py [--workloads W-tiny,W-mnist] [--modes local,ray1,ray2,...]
                               [--repeats 6] [--job] [--resize] [--profile] [--cpu-clock]
    python benchmarks/bench.py --workloads W-mnist --modes local,numpy,torch --cpu-clock
    python benchmarks/bench.py --sweep [--sweep-concurrency 2]
    python benchmarks/bench.py --sweep-vs-tune [--repeats 3]       # = sweeps.py --against-tune
"""

from __future__ import annotations

import argparse
import sys

import jobs
import resize
import steps
import sweeps
from core import CPUS, emit, log, with_load


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps.add_arguments(ap)
    ap.add_argument("--job", action="store_true", help="also time whole W-mnist jobs (rayprop CLI, Ray Train)")
    ap.add_argument("--resize", action="store_true", help="also time a grow and a shrink at a step boundary")
    ap.add_argument("--sweep", action="store_true", help="only time a 6-trial sweep, sequential against parallel")
    ap.add_argument("--sweep-concurrency", type=int, default=CPUS, help="trials at once in the parallel sweep")
    ap.add_argument("--sweep-vs-tune", action="store_true",
                    help="only time the sweeps as `rayprop sweep` and as Ray Tune, alternating")
    args = ap.parse_args(argv)
    if args.sweep_vs_tune:
        return emit(sweeps.report_against_tune(args.sweep_concurrency, args.repeats, list(sweeps.SWEEPS)))
    if args.sweep:
        return emit(sweeps.report(args.sweep_concurrency, args.repeats))
    report = steps.workloads(ap, args)
    if args.resize:
        log("resize: W-mnist, 1 -> 2 -> 1 (-> 2) workers")
        report["resize"] = with_load(resize.bench_resize)
    if args.job:
        report["jobs"] = with_load(jobs.bench_jobs)
    return emit(report)


if __name__ == "__main__":
    sys.exit(main())
