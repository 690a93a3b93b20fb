"""What every benchmark shares: the workloads, rounding, how busy the machine was,
and one JSON document on stdout (progress goes to stderr)."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from experiments import configs
from experiments.jobs import training
from experiments.jobs.configfile import load_config

CPUS = 2
# workload -> (shipped config, epochs per repeat)
WORKLOADS = {"W-tiny": ("w-tiny", 50), "W-mnist": ("w-mnist", 1), "W-wide": ("w-wide", 1)}
# An idle gap at each switch between timed things: OpenBLAS's and OpenMP's threads spin
# for a while after their last call, and would take the next one's cores.
SWITCH_PAUSE_S = 0.5
# The `rayprop` command of this interpreter's environment, even when it is not on PATH.
_BESIDE = Path(sys.executable).with_name("rayprop")
RAYPROP = str(_BESIDE) if _BESIDE.exists() else "rayprop"


@dataclass(frozen=True)
class Timing:
    """How the in-process modes (local, numpy) and the torch child are timed: by the
    wall clock on all CPUs, or (--cpu-clock) by one thread's CPU time on one BLAS
    thread. On a machine loaded by other work, 2-thread wall times wander several-fold,
    one thread's CPU time by a few percent."""

    clock: Callable[[], float]
    threads: int  # BLAS / PyTorch threads of those modes
    name: str

    @property
    def wall(self) -> bool:
        return self.clock is time.perf_counter


WALL = Timing(time.perf_counter, CPUS, "wall")
THREAD_CPU = Timing(time.thread_time, 1, "thread CPU, 1 thread")


def use_timing(cpu_clock: bool) -> Timing:
    """The timing of --cpu-clock or not; with it, this process's BLAS keeps one thread."""
    if not cpu_clock:
        return WALL
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # for the rest of the process: the harness times nothing else in it
    # One CPU for this process, so that a local pool sizes itself to one thread too (an
    # exact-sums pool would otherwise run half its blocks in a second, untimed thread).
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    return THREAD_CPU


def gemm_info() -> dict:
    """Which BLAS numpy runs here, and the OpenBLAS kernel that it picked (an
    OPENBLAS_CORETYPE in the environment pins an older one)."""
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return {"blas": [f"{i['internal_api']} {i['version']} {i.get('architecture') or ''}".strip() for i in blas],
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def rnd(x, digits=4):
    return float(f"{x:.{digits}g}")


def med_ms(xs):
    return rnd(statistics.median(xs) * 1e3) if xs else None


def prepare(name, *overrides):
    """The workload's job (WORKLOADS) as the product prepares it, validation off."""
    return prepare_config(WORKLOADS[name][0], *overrides)


def prepare_config(config, *overrides):
    """A shipped config's job (experiments/configs: w-mnist, ...) as the product prepares it, validation off."""
    return training.prepare(load_config(configs.resolve(config), ["data.validation_fraction=0", *overrides]))


def sgemm_gflops(clock=time.perf_counter, n=2048) -> float:
    """numpy's float32 n^3 matmul in GFLOP/s by `clock` (median of 5 after a warm-up): what
    a step's GFLOP/s is compared with."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    x @ x
    times = []
    for _ in range(5):
        t = clock()
        x @ x
        times.append(clock() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class LoadMeter:
    """CPU that OTHER processes used while we measured, from /proc/stat: busy CPU
    seconds of the machine minus this process tree's, over wall x cores. Ray's actors
    are children of raylet, not of this process, so with Ray modes the fraction counts
    them too: read it as "the machine was this busy beyond the driver"."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()
        self.load0 = os.getloadavg()[0]

    @staticmethod
    def _busy():
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def report(self):
        wall = time.perf_counter() - self.t0
        other = (self._busy() - self.busy0) - (self._own() - self.own0)
        return {"wall_s": rnd(wall), "busy_beyond_driver_cpu_fraction": rnd(max(other, 0) / (wall * CPUS), 3),
                "loadavg_1min_start": rnd(self.load0, 3), "loadavg_1min_end": rnd(os.getloadavg()[0], 3)}


def with_load(measure, *args) -> dict:
    """measure(*args), a dict, with the machine's load while it ran under "load"."""
    meter = LoadMeter()
    out = measure(*args)
    out["load"] = meter.report()
    return out


def emit(report: dict) -> int:
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0
