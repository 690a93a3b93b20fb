"""The coordinator's listener that logs a run's metrics to MLflow without waiting for it."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from experiments.tracking.outbox import Outbox

FLUSH_SECONDS = 5.0   # how stale the UI's loss curve may get while a job runs
CLOSE_SECONDS = 15.0  # at the end, how long delivering the last points may take


class MetricLogger:
    """Coordinator listener: buffered, batched metric logging through an Outbox.

    `loss` gets exactly one point per step (step = global step). The epoch metrics
    are logged at step = the global step at the epoch's end, so they share the
    x axis of the loss curve. The training thread only appends to a list; every
    FLUSH_SECONDS the list goes to the outbox, whose thread calls `log_batch`, so
    a slow or dead store never stalls a step. (MLflow's own `synchronous=False` does
    the same but its worker polls once a second, which added ~1 s to every run, and
    it does not keep what a dead store refused.)
    """

    def __init__(self, client: MlflowClient, run_id: str, logged_through: tuple[int, int] = (0, 0),
                 spool: Path | None = None):
        """logged_through: (last `loss` step, last epoch-metric step) the run already
        holds; a resumed run recomputes those steps but does not log them twice.
        spool: the local file for points the store has not taken."""
        self.loss_through, self.epoch_through = logged_through
        self.step = 0
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self.outbox = Outbox(lambda points: client.log_batch(run_id, metrics=points), spool)

    def on_step(self, step: int, epoch: int, loss: float, n: int) -> None:
        self.step = step
        if step <= self.loss_through:
            return
        self._buffer.append(Metric("loss", float(loss), int(time.time() * 1000), step))
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.step <= self.epoch_through:
            return
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, self.step) for k, v in metrics.items()]
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def point(self, key: str, value: float, step: int) -> None:
        """One point of another metric at `step` (not again for a step a resumed run logged)."""
        if step > self.loss_through:
            self._buffer.append(Metric(key, float(value), int(time.time() * 1000), step))

    def flush(self) -> None:
        self.outbox.put(self._buffer)
        self._buffer = []
        self._last_flush = time.monotonic()

    def before_checkpoint(self) -> None:
        """Every point a checkpoint covers is in the store or in the spool file, so a
        run resumed from it (even after kill -9) logs each step once. Never waits."""
        self.flush()
        self.outbox.keep_locally()

    def close(self, seconds: float = CLOSE_SECONDS) -> int:
        """Deliver what is left within `seconds`; returns the points kept locally."""
        self.flush()
        return self.outbox.close(seconds)
