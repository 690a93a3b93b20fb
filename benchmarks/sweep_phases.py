"""Where a sweep trial's seconds go: the 6-trial `digits` sweep of `bench.py --sweep`
(or `spirals`), in a new folder with a new store, phase by phase for each trial.

    python benchmarks/sweep_phases.py [--sweep digits-512|spirals] [--repeats 1] [--concurrency 2]
                                      [--checkout DIR ...]

As benchmarks/job_phases.py does for a job: each repeat runs `rayprop sweep` in a fresh
process under this script's `--child` mode, with a timestamp taken on entry to and exit
from the functions that start each phase, on the thread that runs them (a trial runs
in a thread of its own). With several `--checkout`s (trees of rayprop) the repeats
alternate between them. Prints one JSON document: per checkout, the sweep's wall
time, the time to the first trial's start, and per trial its phases (wall seconds,
one after the other on the trial's thread; the first trial's pool opens on the main
thread, before the parent run, as `first_pool_s`):

    pool       the trial's workers started and holding their rows (or taken from the keeper)
    run        the child MLflow run's start, its params, tags and data set
    training   the coordinator's epochs
    outputs    model files, the pyfunc model, config and files to the run
    end        the run's end (metrics flushed)
    close      the pool closed (its workers stopped)
    hand_over  or its workers handed to the keeper for the next trial
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from phase_hooks import wrap_on_import

# module -> attribute paths wrapped as "<name> >" / "<name> <" marks
WRAPS = {
    "experiments.jobs.pools": ["open_pool"],
    "experiments.jobs.fit": ["coordinate", "record", "fit"],
    "experiments.tracking.run_artifacts": ["log_outputs"],
    "experiments.tracking.run": ["TrackedRun.__enter__", "TrackedRun.__exit__"],
    "experiments.sweeps.sweep": ["_train_trial"],
    "workers.ray_pool": ["RayPool.close", "RayPool.hand_over", "RayPool.coordinate"],  # coordinate: workers/solo.py
    "cluster.placement": ["Reservation.wait"],
}
PHASES = [("pool", "open_pool >", "open_pool <"), ("run", "__enter__ >", "record <"),
          ("training", "coordinate >", "coordinate <"), ("outputs", "coordinate <", "log_outputs <"),
          ("end", "__exit__ >", "__exit__ <"), ("close", "close >", "close <"),
          ("hand_over", "hand_over >", "hand_over <")]


def child(argv: list[str], t0: float, out: str) -> None:
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # this folder's modules are not rayprop's
    marks: list[tuple[str, str, float]] = []

    def mark(name):
        marks.append((threading.current_thread().name, name, time.time() - t0))

    wrap_on_import(WRAPS, mark)
    from experiments.cli.rayprop import main

    code = main(argv)
    mark("main returned")
    Path(out).write_text(json.dumps({"code": code, "marks": marks}))
    import gc

    gc.freeze()  # as experiments.cli's entry does: no last pass of the collector at exit
    sys.exit(code)


def phases_of(marks: list, wall: float) -> dict:
    """Per trial thread, each phase's seconds (first entry to last exit on that thread)."""
    by_thread: dict[str, dict[str, float]] = {}
    for thread, name, t in marks:
        at = by_thread.setdefault(thread, {})
        if name.endswith(">"):
            at.setdefault(name, t)
        else:
            at[name] = t
    trials = {}
    for thread, at in sorted(by_thread.items()):
        if not thread.startswith("rayprop-trial-"):
            continue
        ph = {p: round(at[b] - at[a], 3) for p, a, b in PHASES if a in at and b in at}
        ph["span"] = round(max(at.values()) - min(at.values()), 3)
        trials[thread.removeprefix("rayprop-trial-")] = ph
    main = by_thread.get("MainThread", {})
    first = min((t for th, _, t in marks if th.startswith("rayprop-trial-")), default=None)
    return {"wall_s": round(wall, 3), "first_trial_start_s": round(first, 3) if first is not None else None,
            "first_pool_s": round(main["open_pool <"] - main["open_pool >"], 3) if "open_pool <" in main else None,
            "after_main_returned_s": round(wall - main.get("main returned", wall), 3), "trials": trials}


def one_sweep(name: str, concurrency: int, extra: list[str], checkout: str) -> dict:
    from sweeps import SWEEP_GRID, SWEEPS  # not in the child: it imports rayprop before the marks are set

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["sweep", *SWEEPS[name], *SWEEP_GRID, "--workers", "1", "--concurrency", str(concurrency), "--quiet",
                "--output", f"{tmp}/out", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", *extra]
        out = f"{tmp}/marks.json"
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", repr(t0), out, *argv],
                              cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": checkout})
        wall = time.time() - t0
        if proc.returncode != 0 or not Path(out).exists():
            return {"error": proc.stderr[-600:]}
        return {**phases_of(json.loads(Path(out).read_text())["marks"], wall), "load_1min": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", default="digits-512", choices=["digits-512", "spirals"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--checkout", action="append", default=[],
                    help="a rayprop tree to run (repeatable; default: this one)")
    ap.add_argument("extra", nargs="*", help="more `rayprop sweep` arguments, after --")
    args = ap.parse_args()
    checkouts = args.checkout or [str(Path(__file__).resolve().parents[1])]
    runs: dict[str, list[dict]] = {c: [] for c in checkouts}
    for r in range(args.repeats):
        for c in checkouts if r % 2 == 0 else checkouts[::-1]:
            runs[c].append(one_sweep(args.sweep, args.concurrency, args.extra, c))
            print(f"{c} repeat {r + 1}: {runs[c][-1].get('wall_s', runs[c][-1].get('error'))}", file=sys.stderr)
    report = {"sweep": args.sweep, "concurrency": args.concurrency, "extra": args.extra, "checkouts": {}}
    for c, results in runs.items():
        ok = [x for x in results if "wall_s" in x]
        medians = {}
        for p in [p for p, _, _ in PHASES] + ["span"]:
            values = [t[p] for x in ok for t in x["trials"].values() if p in t]
            if values:
                medians[p] = round(statistics.median(values), 3)
        report["checkouts"][c] = {"median_wall_s": round(statistics.median(x["wall_s"] for x in ok), 3) if ok else None,
                                  "median_trial_phases_s": medians, "runs": results}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[4:], float(sys.argv[2]), sys.argv[3])
    else:
        main()
