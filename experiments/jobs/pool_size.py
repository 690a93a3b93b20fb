"""The pool's size over a run: one console line per resize, and the `workers` metric.

A Ray pool may grow or shrink at a step boundary (README: Faults and elasticity). This
coordinator listener says so on the console, where the progress bar is, and logs the
`workers` metric at the run's first step, at each step where the size changed, and at
each epoch's end, so MLflow's UI shows the pool's size over the run.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class PoolSize:
    def __init__(self, pool, metrics):
        """pool: the run's WorkerPool (its `resizes` lines); metrics: the run's MetricLogger."""
        self.pool, self.metrics = pool, metrics
        self.seen = len(pool.resizes)
        self.step = 0
        self.logged_at = None  # the step of the last `workers` point

    def on_step(self, step, epoch, loss, n):
        self.step = step
        self._note(first=self.logged_at is None)

    def on_epoch(self, epoch, metrics):
        self._note(first=True)  # validation may have resized it too

    def _note(self, first: bool) -> None:
        lines = self.pool.resizes[self.seen:]
        self.seen += len(lines)
        for line in lines:
            tqdm.write(f"rayprop: step {self.step}: {line}", file=sys.stderr)
        if (first or lines) and self.logged_at != self.step:
            self.metrics.point("workers", self.pool.num_workers, self.step)
            self.logged_at = self.step
