"""Whole sweeps as a user runs them: two 6-trial sweeps (3 learning rates x 2
activations, 1 worker a trial) with trials one at a time (--concurrency 1) and side by
side (--concurrency N), alternating, each from process start (Ray start, pools, MLflow
runs included) to exit. `spirals`' small steps are mostly the coordinator's Python;
`digits` with two 512-unit layers has steps that are the worker's BLAS.

    python benchmarks/sweeps.py [--repeats 6] [--concurrency 2]

With --against-tune, each sweep instead runs as `rayprop sweep` (trials side by side,
--concurrency N) and as Ray Tune would run it (benchmarks/tune_sweep.py: a PyTorch
trainable of the same network on the same rows, 1 CPU a trial, N at once), the two
alternating round by round, each timed from process start to exit; `ratio` is
rayprop's median wall over Tune's, `round_ratios` each round's. Every rayprop trial
is checked to be a FINISHED MLflow run with its logged model:

    python benchmarks/sweeps.py --against-tune [--repeats 3] [--sweeps digits-512,spirals]
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


def rayprop_sweep(sweep_args: list[str], concurrency: int, tmp: str, checkout: str | None = None) -> float:
    """Wall seconds of `rayprop sweep` from process start to exit, in folder `tmp`,
    after checking that every trial is a FINISHED run with its model in the store.
    checkout: another tree of rayprop to run (on PYTHONPATH), e.g. the code before a change."""
    cmd = [RAYPROP, "sweep", *sweep_args, *SWEEP_GRID, "--workers", "1", "--concurrency", str(concurrency),
           "--quiet", "--output", f"{tmp}/out", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": checkout} if checkout else None
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"rayprop sweep failed: {proc.stderr[-800:]}")
    import sqlite3

    db = sqlite3.connect(f"{tmp}/mlflow.db")
    try:
        finished = db.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]
        models = db.execute("SELECT count(*) FROM logged_models WHERE name = 'model'").fetchone()[0]
    finally:
        db.close()
    if finished != 7 or models != 6:  # six children and the parent; a final model each child
        raise RuntimeError(f"rayprop sweep: {finished} finished runs, {models} models (expected 7 and 6)")
    return wall


def against_tune(sweep_args: list[str], concurrency: int, repeats: int, before: str | None = None) -> dict:
    """`rayprop sweep` and Tune's sweep of the same trials, alternating (module doc);
    before: also rayprop from that checkout ("rayprop_before"), in the same rounds."""
    from tune_sweep import run_tune

    walls: dict[str, list[float]] = {"rayprop": [], "tune": [], **({"rayprop_before": []} if before else {})}
    val_losses = None
    for r in range(repeats):
        for side in list(walls) if r % 2 == 0 else list(walls)[::-1]:
            log(f"  {side}, round {r + 1}")
            with tempfile.TemporaryDirectory() as tmp:
                if side.startswith("rayprop"):
                    checkout = before if side == "rayprop_before" else None
                    walls[side].append(rayprop_sweep(sweep_args, concurrency, tmp, checkout))
                else:
                    wall, out = run_tune(sweep_args, concurrency, Path(tmp))
                    walls[side].append(wall)
                    val_losses = out["val_losses"]
            time.sleep(SWITCH_PAUSE_S)
    med = {side: statistics.median(w) for side, w in walls.items()}
    return {"command": f"rayprop sweep {' '.join(sweep_args)} {' '.join(SWEEP_GRID)} --workers 1 "
                       f"--concurrency {concurrency}",
            "tune": f"benchmarks/tune_sweep.py: Tuner, PyTorch function trainable, {{'cpu': 1}} a trial, "
                    f"max_concurrent_trials={concurrency}, val_loss reported each epoch",
            "trials": 6, **{f"{side}_wall_s": [rnd(w) for w in ws] for side, ws in walls.items()},
            **{f"{side}_median_wall_s": rnd(m) for side, m in med.items()},
            "ratio": rnd(med["rayprop"] / med["tune"], 3),
            **({"ratio_before": rnd(med["rayprop_before"] / med["tune"], 3)} if before else {}),
            "round_ratios": [rnd(a / b, 3) for a, b in zip(walls["rayprop"], walls["tune"])],
            "tune_last_val_losses": [rnd(v) for v in val_losses or []]}


def report_against_tune(concurrency: int, repeats: int, names: list[str], before: str | None = None) -> dict:
    """The JSON document of --against-tune: per sweep, both walls, the ratio, the load."""
    out = {}
    for name in names:
        log(f"{name}: rayprop sweep against Ray Tune")
        out[name] = with_load(against_tune, SWEEPS[name], concurrency, repeats, before)
    return {"benchmark": "rayprop sweep against Ray Tune (benchmarks/sweeps.py --against-tune)",
            "cpus": os.cpu_count(), "repeats": repeats, "concurrency": concurrency, "sweeps": out}


def report(concurrency: int, repeats: int) -> dict:
    """The JSON document of a sweep run (bench.py --sweep prints the same)."""
    meter = with_load(lambda: {"sweep": bench_sweeps(concurrency, repeats)})
    return {"benchmark": "rayprop sweeps (benchmarks/sweeps.py)", "cpus": os.cpu_count(), "repeats": repeats,
            "sweep": meter["sweep"], "load": meter["load"]}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=CPUS, help="trials at once in the parallel sweep")
    ap.add_argument("--against-tune", action="store_true", help="rayprop sweep against Ray Tune, alternating")
    ap.add_argument("--sweeps", default=",".join(SWEEPS), help="with --against-tune: which sweeps")
    ap.add_argument("--before", help="with --against-tune: also time rayprop from this checkout")
    args = ap.parse_args()
    if args.against_tune:
        sys.exit(emit(report_against_tune(args.concurrency, args.repeats, args.sweeps.split(","), args.before)))
    sys.exit(emit(report(args.concurrency, args.repeats)))
