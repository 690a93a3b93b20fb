#!/usr/bin/env python
"""What MLflow tracking costs a training job: W-mnist in local mode, tracking on vs off.

    python benchmarks/tracking.py [--epochs 8] [--repeats 5] [--tracking-uri URI]

One process, one prepared job and one in-process pool; the repeats ALTERNATE off, on,
off, on, ... so that a drift in the machine's speed hits both alike. "on" is what
`rayprop train` does around the coordinator: a run with its params, tags and dataset,
the MetricLogger listener (every step's loss, each epoch's metrics, batched and sent
asynchronously), and at the end waiting until the store has every point. "off" is the
coordinator alone. The store is a fresh sqlite file in a temp folder unless
--tracking-uri names one; creating its tables is done before any timing.

Prints ONE JSON document on stdout (progress on stderr):
- `train_ratio_on_over_off`: median over pairs of (training loop with tracking) /
  (without): what logging costs while training runs. The target is <= 1.03.
- `train_ratio_best_on_over_best_off`: fastest "on" over fastest "off", which other
  load on the machine disturbs less than the median does.
- `job_ratio_on_over_off`: the same including starting the run and draining the
  metrics at the end (not the model artifacts, a fixed cost reported on its own).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from experiments import training  # noqa: E402
from experiments.configfile import load_config  # noqa: E402
from trainer.coordinator import train  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402

CONFIG = REPO / "experiments" / "configs" / "w-mnist.yaml"


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def train_once(job, pool, listeners) -> float:
    """Seconds of the coordinator's loop for the job's epochs, from the same start."""
    t = job.cfg.train
    theta = job.theta0.copy()
    optimizer = make_optimizer(t.optimizer, t.learning_rate, t.momentum, t.beta1, t.beta2, t.epsilon)
    start = time.perf_counter()
    train(pool, theta, optimizer, job.plan, t.epochs, listeners)
    return time.perf_counter() - start


def tracked_once(tracking, experiment_id, job, pool) -> tuple[float, float]:
    """(training loop seconds, whole tracked job seconds) with a real run around it."""
    start = time.perf_counter()
    with tracking.TrackedRun(experiment_id, run_name="benchmark") as run:
        run.log_job(job.resolved_cfg, job.source,
                    [*job.schema.features, *job.schema.targets], pool.num_workers, 1, "none")
        seconds = train_once(job, pool, [run.metrics])
    return seconds, time.perf_counter() - start  # __exit__ drained every metric point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8, help="long enough for a flush mid-run")
    ap.add_argument("--repeats", type=int, default=5, help="pairs of (off, on)")
    ap.add_argument("--tracking-uri", help="default: a fresh sqlite file in a temp folder")
    args = ap.parse_args()

    cfg = load_config(CONFIG, [f"train.epochs={args.epochs}"])
    job = training.prepare(cfg)
    log(f"W-mnist: {job.plan.m} examples, {job.plan.steps_per_epoch} steps per epoch, "
        f"{args.epochs} epochs, {args.repeats} pairs")
    pool = training.open_pool(job, 1, local=True)
    with tempfile.TemporaryDirectory(prefix="rayprop-bench-") as tmp:
        uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        t = time.perf_counter()
        from experiments import tracking

        import_seconds = time.perf_counter() - t
        import mlflow

        t = time.perf_counter()
        mlflow.set_tracking_uri(uri)
        if not args.tracking_uri:  # artifacts into the temp folder too, not ./mlruns
            mlflow.create_experiment("benchmark-tracking", artifact_location=f"{tmp}/artifacts")
        experiment_id = tracking.open_experiment(uri, "benchmark-tracking")
        open_seconds = time.perf_counter() - t
        train_once(job, pool, [])  # warm-up: caches, BLAS threads
        off, on, job_on = [], [], []
        for i in range(args.repeats):
            off.append(train_once(job, pool, []))
            seconds, whole = tracked_once(tracking, experiment_id, job, pool)
            on.append(seconds)
            job_on.append(whole)
            log(f"pair {i + 1}: off {off[-1]:.3f}s  on {on[-1]:.3f}s  (job {whole:.3f}s)")
        # The fixed cost after training: config, model files, the pyfunc model.
        out = Path(tmp) / "out"
        from experiments.run_artifacts import log_outputs

        with tracking.TrackedRun(experiment_id, run_name="benchmark-artifacts"):
            training.write_outputs(job, job.theta0, out, {"run_id": None})
            t = time.perf_counter()
            log_outputs(job, out, job.resolved_cfg)
            artifacts_seconds = time.perf_counter() - t
        steps = job.plan.steps_per_epoch * args.epochs
        points = steps + args.epochs * 6
        n_runs = len(mlflow.search_runs([experiment_id], output_format="list"))
    pool.close()
    train_ratios = [b / a for a, b in zip(off, on)]
    job_ratios = [b / a for a, b in zip(off, job_on)]
    print(json.dumps({
        "workload": "W-mnist", "mode": "local, 1 worker", "epochs": args.epochs, "steps": steps,
        "metric_points_per_run": points, "pairs": args.repeats, "store": "sqlite (temp)"
        if not args.tracking_uri else args.tracking_uri, "runs_logged": n_runs,
        "train_s_off_median": round(statistics.median(off), 4),
        "train_s_on_median": round(statistics.median(on), 4),
        "train_ratio_on_over_off": round(statistics.median(train_ratios), 4),
        # Less sensitive to other load on the machine: the best of each side.
        "train_ratio_best_on_over_best_off": round(min(on) / min(off), 4),
        "train_ratios": [round(r, 4) for r in train_ratios],
        "job_s_on_median": round(statistics.median(job_on), 4),
        "job_ratio_on_over_off": round(statistics.median(job_ratios), 4),
        "fixed_costs_s": {"import_mlflow": round(import_seconds, 3),
                          "open_store": round(open_seconds, 3),
                          "artifacts_and_pyfunc_model": round(artifacts_seconds, 3)},
        "numpy": np.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
