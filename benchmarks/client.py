#!/usr/bin/env python
"""Ray Client against joining the cluster and Ray Jobs: the training seconds of one job.

    python benchmarks/client.py [--repeats 3] [--epochs 30] [--workers 2] [--no-jobs]

Starts a `ray start --head` of its own on loopback (tests/raycluster.py: own ports,
temp dir and token; stopped by its process group), then runs `rayprop train spirals`
(--workers 2, --epochs 30: 360 steps) as a user would, the three ways, alternating so
that a drift in the machine's speed hits them alike:

- `client`: `--address ray://127.0.0.1:PORT` (the coordinator runs in the cluster,
  experiments/jobs/remote_pool.py),
- `driver`: `--address 127.0.0.1:GCS_PORT` (this process joins the cluster and
  coordinates),
- `jobs`: `rayprop submit --address http://127.0.0.1:DASHBOARD_PORT` (the job's driver
  runs on the head).

The figure is each job's `wall_seconds` from its summary.json: the training loop's
time (every step, validation and checkpoints), without Ray's start or MLflow. For
`client` it is the time the client waited, from handing the job to the coordinator
to having the final weights. `command_seconds`: each command from start to exit
(Python and Ray start, the workers reading their rows, MLflow; for `jobs` the
submission and the job's whole life), for scale. Prints ONE JSON document on stdout (progress on stderr):
per mode the seconds of every repeat and their median, and `client_vs_driver`,
`client_vs_jobs` (ratios of the medians).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.raycluster import Head  # noqa: E402


def rayprop(args, env, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"rayprop {' '.join(args[:1])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def jobs_summary(head: Head, since: float) -> dict:
    """The submitted job's summary.json: on this loopback head it is in the job's
    working dir under the head's temp dir."""
    found = [p for p in head.temp_dir.rglob("output-*/summary.json") if p.stat().st_mtime >= since]
    if len(found) != 1:
        raise SystemExit(f"expected one new summary.json of the submitted job, found {len(found)}")
    return json.loads(found[0].read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-jobs", action="store_true", help="skip Ray Jobs")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="rayprop-client-bench-"))
    head = Head(work, num_cpus=max(2, args.workers))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_TOKEN=head.token, PYTHONPATH=str(REPO), HOME=str(work))
        common = ["--workers", str(args.workers), "--set", f"train.epochs={args.epochs}"]
        tracking = ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
        modes = {"client": head.client_address, "driver": f"127.0.0.1:{head.gcs_port}"}
        if not args.no_jobs:
            modes["jobs"] = head.jobs_address
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        process: dict[str, list[float]] = {m: [] for m in modes}
        steps = None
        for i in range(args.repeats):
            for mode, address in modes.items():
                time.sleep(0.5)  # BLAS threads of the last job stop spinning
                out = work / f"{mode}-{i}"
                t0 = time.perf_counter()
                if mode == "jobs":
                    since = time.time()
                    rayprop(["submit", "spirals", "--address", address, *common], env, work)
                    summary = jobs_summary(head, since)
                else:
                    rayprop(["train", "spirals", "--address", address, "--output", str(out), *common,
                             *tracking], env, work)
                    summary = json.loads((out / "summary.json").read_text())
                process[mode].append(time.perf_counter() - t0)
                steps = summary["steps"]
                seconds[mode].append(summary["wall_seconds"])
                print(f"{mode} #{i + 1}: {summary['wall_seconds']:.3f} s for {steps} steps, "
                      f"{process[mode][-1]:.1f} s the whole command (ray: {summary.get('ray')})", file=sys.stderr)
    finally:
        head.stop()
    median = {m: statistics.median(s) for m, s in seconds.items()}
    report = {"workload": f"spirals, {args.workers} workers, {args.epochs} epochs ({steps} steps)",
              "what": "wall_seconds of summary.json: the training loop, Ray start and MLflow aside",
              "cpus": os.cpu_count(), "repeats": args.repeats,
              "seconds": {m: [round(x, 4) for x in s] for m, s in seconds.items()},
              "median_seconds": {m: round(x, 4) for m, x in median.items()},
              "client_vs_driver": round(median["client"] / median["driver"], 3),
              "command_seconds": {m: [round(x, 1) for x in s] for m, s in process.items()}}
    if "jobs" in median:
        report["client_vs_jobs"] = round(median["client"] / median["jobs"], 3)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
