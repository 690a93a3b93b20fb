"""Whole sweeps as a user runs them: two 6-trial sweeps (3 learning rates x 2
activations, 1 worker a trial) with trials one at a time (--concurrency 1) and side by
side (--concurrency N), alternating, each from process start (Ray start, pools, MLflow
runs included) to exit. `spirals`' small steps are mostly the coordinator's Python;
`digits` with two 512-unit layers has steps that are the worker's BLAS.

    python benchmarks/sweeps.py [--repeats 6] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import CPUS, RAYPROP, SWITCH_PAUSE_S, emit, log, rnd, with_load

SWEEP_GRID = ["--grid", "train.learning_rate=0.003,0.01,0.03", "--grid", "model.hidden_activation=relu,tanh"]
# A trial trains for seconds in each, so a sweep is more than starting pools.
SWEEPS = {"spirals": ["spirals", "--set", "train.epochs=300"],
          "digits-512": ["digits", "--set", "model.layers=[64, 512, 512, 10]", "--set", "train.epochs=40"]}


def bench_sweeps(concurrency: int, repeats: int) -> dict:
    """Each of SWEEPS timed by bench_sweep."""
    return {name: bench_sweep(args, concurrency, repeats) for name, args in SWEEPS.items()}


def bench_sweep(sweep_args: list[str], concurrency: int, repeats: int) -> dict:
    """Wall seconds of one sweep command per repeat, concurrency 1 against `concurrency`."""
    walls: dict[int, list[float]] = {1: [], concurrency: []}
    trial_s: dict[int, list[float]] = {1: [], concurrency: []}
    for r in range(repeats):
        for n in (1, concurrency) if r % 2 == 0 else (concurrency, 1):  # alternate: drift hits both
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [RAYPROP, "sweep", *sweep_args, *SWEEP_GRID, "--workers", "1", "--concurrency", str(n),
                       "--quiet", "--output", f"{tmp}/out", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
                log(f"  sweep, concurrency {n}")
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
                walls[n].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    return {"error": proc.stderr[-500:]}
                runs = json.loads(Path(f"{tmp}/out/sweep.json").read_text())["runs"]
                trial_s[n].append(sum(json.loads(Path(f"{tmp}/out/run-{i + 1:02d}/summary.json").read_text())
                                      ["wall_seconds"] for i in range(len(runs))))
                time.sleep(SWITCH_PAUSE_S)
    return {"command": f"rayprop sweep {' '.join(sweep_args)} {' '.join(SWEEP_GRID)} --workers 1 --concurrency N",
            "trials": 6, **{f"concurrency_{n}": {"wall_s": [rnd(w) for w in walls[n]],
                                                 "median_wall_s": rnd(statistics.median(walls[n])),
                                                 "training_s_summed_over_trials": [rnd(t) for t in trial_s[n]]}
                            for n in walls},
            "speedup": rnd(statistics.median(walls[1]) / statistics.median(walls[concurrency]), 3)}


def report(concurrency: int, repeats: int) -> dict:
    """The JSON document of a sweep run (bench.py --sweep prints the same)."""
    meter = with_load(lambda: {"sweep": bench_sweeps(concurrency, repeats)})
    return {"benchmark": "rayprop sweeps (benchmarks/sweeps.py)", "cpus": os.cpu_count(), "repeats": repeats,
            "sweep": meter["sweep"], "load": meter["load"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=CPUS, help="trials at once in the parallel sweep")
    args = ap.parse_args()
    sys.exit(emit(report(args.concurrency, args.repeats)))
