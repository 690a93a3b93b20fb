"""Stragglers made visible: each worker's compute time per epoch as MLflow metrics,
and each rebalance (workers/rebalance.py) as one console line.

The metrics are `system/workers/worker_R_compute_seconds` (R the worker's rank), the mean
compute seconds per step of worker R over the epoch, logged at the epoch's last step:
MLflow's UI groups them in one section, where a slow worker is the line above the
others (and after a rebalance, the lines meet). Workers a resize added or removed
mid-epoch are averaged over the steps they took.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

METRIC = "system/workers/worker_{}_compute_seconds"


class WorkerSeconds:
    def __init__(self, pool, metrics):
        """pool: the run's WorkerPool (its `worker_seconds`, and `balance` lines if it
        rebalances); metrics: the run's MetricLogger."""
        self.pool, self.metrics = pool, metrics
        self.step = 0
        self.sums: dict[int, list[float]] = {}  # rank -> [seconds, steps] this epoch
        balance = getattr(pool, "balance", None)
        self.seen = len(balance.lines) if balance is not None else 0

    def on_step(self, step, epoch, loss, n):
        self.step = step
        for rank, seconds in enumerate(getattr(self.pool, "worker_seconds", ())):
            total = self.sums.setdefault(rank, [0.0, 0])
            total[0] += seconds
            total[1] += 1
        balance = getattr(self.pool, "balance", None)
        if balance is not None and len(balance.lines) > self.seen:
            for line in balance.lines[self.seen:]:
                tqdm.write(f"rayprop: step {step}: {line}", file=sys.stderr)
            self.seen = len(balance.lines)

    def on_epoch(self, epoch, metrics):
        for rank, (seconds, steps) in sorted(self.sums.items()):
            self.metrics.point(METRIC.format(rank), seconds / steps, self.step)
        self.sums = {}
