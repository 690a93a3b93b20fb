"""The coordinator's listener that logs a run's metrics to MLflow without waiting for it."""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from experiments.tracking.metric_names import logged_name
from experiments.tracking.outbox import Outbox

# The parameters' hash (trainer/param_hash.py) after the newest epoch, and at the end
# the final weights'; summary.json has every epoch's.
PARAM_HASH_TAG = "rayprop.param_hash"

FLUSH_SECONDS = 5.0   # how stale the UI's loss curve may get while a job runs
CLOSE_SECONDS = 15.0  # at the end, how long delivering the last points may take
# then how long the call the sender still has under way may take to return before the
# points it holds are left in the spool (they are replayed only after it: outbox.py)
IN_FLIGHT_SECONDS = 15.0
RECENT_EPOCHS = 8     # epoch ends whose points MetricLogger keeps for checkpoints' models


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
        # The points of the last few epoch ends, by step: a checkpoint's model links them
        # (experiments/tracking/logged_models.py) without reading the run's history back.
        self._recent: dict[int, list[Metric]] = {}
        self._last_loss: Metric | None = None
        self._last_flush = time.monotonic()
        self.outbox = Outbox(lambda points: client.log_batch(run_id, metrics=points), spool)
        self._set_tag = lambda key, value: client.set_tag(run_id, key, value)
        self._hash, self._hash_queued = None, False

    def on_step(self, step: int, epoch: int, loss: float, n: int) -> None:
        self.step = step
        if step <= self.loss_through:
            return
        self._last_loss = Metric("loss", float(loss), int(time.time() * 1000), step)
        self._buffer.append(self._last_loss)
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def on_epoch(self, epoch: int, metrics: dict[str, float | str]) -> None:
        if "param_hash" in metrics:  # a tag, kept current: the newest epoch's hash
            self._hash = metrics["param_hash"]
            # One store call in flight at most: 1 ms epochs must not queue a call each.
            if not self._hash_queued:
                self._hash_queued = self.outbox.put_task(self._send_hash)
        if self.step <= self.epoch_through:
            return
        now = int(time.time() * 1000)
        points = [Metric(logged_name(k), float(v), now, self.step) for k, v in metrics.items() if k != "param_hash"]
        self._buffer += points
        last = self._last_loss
        self._recent[self.step] = points + ([last] if last is not None and last.step == self.step else [])
        for old in sorted(self._recent)[:-RECENT_EPOCHS]:
            del self._recent[old]
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def _send_hash(self) -> None:  # on the outbox's thread: the newest hash when it gets there
        self._hash_queued = False
        self._set_tag(PARAM_HASH_TAG, self._hash)

    def points_at(self, step: int) -> list[Metric]:
        """The epoch-end points logged at `step` (none for a step that ended no epoch)."""
        return list(self._recent.get(step, ()))

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
