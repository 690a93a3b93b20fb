"""Where a whole job's seconds go: `rayprop train w-mnist --workers 2` for 5 epochs (the
command of `bench.py --job`) in a new folder with a new store, phase by phase.

    python benchmarks/job_phases.py [--repeats 5] [--checkout DIR ...] [-- EXTRA TRAIN ARGS]

Each repeat runs the command in a fresh process, under this script's `--child` mode:
it runs `rayprop` (experiments.cli) in that process with a timestamp taken on entry to
and exit from the functions that start each phase, wrapped when their module is
imported (no import moves; a function a checkout lacks is skipped). Wall time is from
just before the process starts to its exit, as `time` gives it. With several
`--checkout`s (other trees of rayprop, e.g. main's), the repeats alternate between
them, so that the machine's drift hits each alike. Prints one JSON document: per
checkout, each phase's median seconds and the wall times.

Phases (wall seconds, one after the other on the main thread):
    start        the interpreter and rayprop's imports, to the config checks
    checks       config, data source, output folder, store URI (prepare ...)
    ray_init     importing Ray, ray.init, the cluster's size
    pool         the actors and each worker reading its rows (the data check)
    run          the MLflow store and experiment, the run, its params, tags and data set
    training     the coordinator's epochs
    model        model.npz, summary.json, the pyfunc model, config and files to the run
    end          the run's end, then waiting for Ray's shutdown (or doing it)
    exit         the interpreter's exit
and `ray_shutdown`: ray.shutdown's own seconds, on whichever thread ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phase_hooks import wrap_on_import

EPOCHS = 5
# module -> attribute paths wrapped as "<name> >" / "<name> <" marks
WRAPS = {
    "experiments.jobs.training": ["prepare", "connect_ray", "open_pool", "coordinate"],
    "experiments.jobs.pools": ["connect_ray", "open_pool"],  # since layout phase 2
    "experiments.jobs.fit": ["coordinate"],
    "workers.ray_pool": ["RayPool.coordinate"],  # a one-worker pool's run (workers/solo.py)
    "experiments.training": ["prepare", "connect_ray", "open_pool", "coordinate"],  # before LAYOUT
    "experiments.tracking.run_artifacts": ["log_outputs"],
    "experiments.run_artifacts": ["log_outputs"],
    "ray": ["init", "shutdown"],
}
PHASES = [("start", "T0", "prepare >"), ("checks", "prepare >", "connect_ray >"),
          ("ray_init", "connect_ray >", "connect_ray <"), ("pool", "open_pool >", "open_pool <"),
          ("run", "open_pool <", "coordinate >"), ("training", "coordinate >", "coordinate <"),
          ("model", "coordinate <", "log_outputs <"), ("end", "log_outputs <", "main returned"),
          ("exit", "main returned", "EXIT"), ("ray_shutdown", "shutdown >", "shutdown <")]


# ---- the child: one job with marks ------------------------------------------------------

def child(argv: list[str], t0: float, out: str) -> None:
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # this folder's modules (memory.py, client.py, ...) are not rayprop's
    marks: list[tuple[str, float]] = []

    def mark(name):
        marks.append((name, time.time() - t0))

    wrap_on_import(WRAPS, mark)
    try:
        from experiments.cli.rayprop import main
    except ImportError:  # a checkout before LAYOUT
        from experiments.cli import main
    code = main(argv)
    mark("main returned")
    Path(out).write_text(json.dumps({"code": code, "marks": marks}))
    import gc

    gc.freeze()  # as experiments.cli's entry does
    sys.exit(code)


# ---- the parent: repeats, phases, medians ------------------------------------------------

def one_job(checkout: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "w-mnist", "--workers", "2", "--set", f"train.epochs={EPOCHS}", "--output", f"{tmp}/out",
                "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", *extra]
        env = {**os.environ, "PYTHONPATH": checkout}
        out = f"{tmp}/marks.json"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", repr(t0), out, *argv],
                              cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.time() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds of the job's process tree, as far as its processes were waited for
        # (Ray's processes are its children; a worker its raylet left behind is not counted)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if proc.returncode != 0 or not Path(out).exists():
            return {"error": proc.stderr[-600:]}
        got = json.loads(Path(out).read_text())
    at = {"T0": 0.0, "EXIT": wall}
    for name, t in got["marks"]:
        if name.endswith(">"):
            at.setdefault(name, t)  # the first entry
        else:
            at[name] = t  # the last exit
    phases = {p: round(at[b] - at[a], 3) for p, a, b in PHASES if a in at and b in at}
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "phases_s": phases,
            "load_1min": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkout", action="append", default=[],
                    help="a rayprop tree to run (repeatable; default: this one)")
    ap.add_argument("extra", nargs="*", help="more `rayprop train` arguments, after --")
    args = ap.parse_args()
    checkouts = args.checkout or [str(Path(__file__).resolve().parents[1])]
    runs: dict[str, list[dict]] = {c: [] for c in checkouts}
    for r in range(args.repeats):
        for c in checkouts if r % 2 == 0 else checkouts[::-1]:
            res = one_job(c, args.extra)
            print(f"{c} repeat {r + 1}: {res.get('wall_s', res.get('error'))}", file=sys.stderr)
            runs[c].append(res)
    report = {"command": f"rayprop train w-mnist --workers 2 --set train.epochs={EPOCHS} --output NEW "
                         f"--tracking-uri sqlite:///NEW/mlflow.db {' '.join(args.extra)}".rstrip(),
              "cpus": os.cpu_count(), "checkouts": {}}
    for c, results in runs.items():
        ok = [x for x in results if "wall_s" in x]
        names = [p for p, _, _ in PHASES if any(p in x["phases_s"] for x in ok)]
        report["checkouts"][c] = {
            "median_wall_s": round(statistics.median(x["wall_s"] for x in ok), 2) if ok else None,
            "median_cpu_s": round(statistics.median(x["cpu_s"] for x in ok), 2) if ok else None,
            "median_phases_s": {p: round(statistics.median(x["phases_s"][p] for x in ok if p in x["phases_s"]), 2)
                                for p in names},
            "runs": results}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[4:], float(sys.argv[2]), sys.argv[3])
    else:
        main()
