"""What the tracking store has not taken yet: a bounded outbox, a sender thread that
retries, and a local file for whatever the store could not take.

A training job never waits on its store. The training thread only puts batches of
metric points here; a sender thread delivers them in order, and when the store
fails it keeps them and tries again with growing pauses. At most MAX_PENDING points
wait in memory; beyond that new batches go straight to the spool file.

The spool file (DIR/mlflow-undelivered/metrics.jsonl, one point per line) is the
local copy of points the store may not have: before every checkpoint the points
waiting are appended to it (so a kill -9 after the checkpoint loses none of what it
covers), and it is deleted once everything is delivered. It may hold points the
store got after all: `replay` sends only the (key, step) pairs the run lacks, so a
resumed run (`--resume`) delivers it exactly once.

`replay` reads the run's history and then sends what it lacks: a second writer between
the two (the sender thread, still in a slow call when `close` stops waiting) delivers
the same points again, which a sqlite store refuses. So `close` tells a sender it gave
up on to stop after its current call, and the spool is replayed only once
`wait_stopped` says the thread has ended: one writer of a run's metrics at a time.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path

from mlflow.entities import Metric

MAX_PENDING = 200_000  # points held in memory while the store is away (~40 MB)
MAX_POINTS_PER_CALL = 1000  # MLflow's log_batch limit
RETRY_SECONDS = (1, 2, 5, 10, 20, 30)  # pauses after successive failures
SPOOL_DIR, SPOOL_FILE = "mlflow-undelivered", "metrics.jsonl"


class Batch:
    def __init__(self, points: list[Metric]):
        self.points, self.spooled = points, False


def _line(m: Metric) -> str:
    return json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step})


def read_spool(path: Path) -> list[Metric]:
    """The points in a spool file (a line cut short by a crash is skipped)."""
    points = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return points
    for line in lines:
        try:
            d = json.loads(line)
            points.append(Metric(str(d["key"]), float(d["value"]), int(d["timestamp"]), int(d["step"])))
        except (ValueError, KeyError, TypeError):
            continue
    return points


def replay(client, run_id: str, path: Path) -> int:
    """Send the spool file's points that run `run_id` lacks, then delete the file.
    Returns how many were sent; raises (keeping the file) if the store refuses."""
    points = read_spool(path)
    missing, have = [], {}
    for m in points:
        if m.key not in have:
            have[m.key] = {h.step for h in client.get_metric_history(run_id, m.key)}
        if m.step not in have[m.key]:
            have[m.key].add(m.step)
            missing.append(m)
    for i in range(0, len(missing), MAX_POINTS_PER_CALL):
        client.log_batch(run_id, metrics=missing[i:i + MAX_POINTS_PER_CALL])
    drop_spool(path)
    return len(missing)


def drop_spool(path: Path | None) -> None:
    """Delete the spool file, and its folder once empty (a healthy run leaves neither)."""
    if path is None:
        return
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:  # not empty, or already gone
        pass


class Outbox:
    def __init__(self, send, spool: Path | None):
        """send(points) delivers a list of Metric to the store or raises;
        spool: the file for what the store has not taken (None: nowhere)."""
        self._send, self.spool = send, spool
        self._pending: deque = deque()  # Batch of points, or a task (a callable)
        self._pending_points = 0
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False  # close() stopped waiting: no call after the current one
        # Some points are in the spool file only (sent there when memory was full, or
        # left by an earlier process): the file then stays until it is replayed.
        self._overflow = spool is not None and spool.exists()
        self.failures = 0  # consecutive failed deliveries (0: the store is answering)
        self.error: BaseException | None = None  # the last one
        self._thread = threading.Thread(target=self._run, name="rayprop-metrics", daemon=True)
        self._thread.start()

    @property
    def store_ok(self) -> bool:
        return self.failures == 0

    def put(self, points: list[Metric]) -> None:
        if not points:
            return
        with self._cond:
            if self._pending_points + len(points) > MAX_PENDING:
                self._append_to_spool([Batch(points)])
                self._overflow = True
                return
            self._pending.append(Batch(points))
            self._pending_points += len(points)
            self._cond.notify_all()

    def put_task(self, task) -> bool:
        """Run task() on the sender thread, in order with the metrics; tried once (a
        checkpoint copy that fails is dropped: the file is local, a newer one follows).
        Not queued while the store is failing; returns whether it was queued."""
        with self._cond:
            if self.failures:
                return False
            self._pending.append(task)
            self._cond.notify_all()
            return True

    def keep_locally(self) -> None:
        """Before a checkpoint: every point not yet delivered is in the spool file too
        (no waiting on the store); with nothing waiting, the file goes."""
        with self._cond:
            if not self._pending and not self._overflow:
                drop_spool(self.spool)
                return
            self._append_to_spool([b for b in self._pending if isinstance(b, Batch) and not b.spooled])

    def _append_to_spool(self, batches: list[Batch]) -> None:
        if self.spool is None or not batches:
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "a") as f:
            for b in batches:
                f.write("".join(_line(m) + "\n" for m in b.points))
                b.spooled = True
            f.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending or self._abandoned:
                    return
                item = self._pending[0]
            try:
                if isinstance(item, Batch):
                    for i in range(0, len(item.points), MAX_POINTS_PER_CALL):
                        self._send(item.points[i:i + MAX_POINTS_PER_CALL])
                else:
                    item()
            except Exception as e:  # any way a store can fail: keep the points, try later
                with self._cond:
                    self.error = e
                    self.failures += 1
                    if not isinstance(item, Batch):
                        self._pending.popleft()
                    if self._closing:
                        return  # close() keeps what is left
                    self._cond.wait(RETRY_SECONDS[min(self.failures, len(RETRY_SECONDS)) - 1])
                continue
            with self._cond:
                self._pending.popleft()
                if isinstance(item, Batch):
                    self._pending_points -= len(item.points)
                self.failures = 0
                self._cond.notify_all()

    def close(self, seconds: float) -> int:
        """Deliver what is waiting within `seconds` (one more try if the store was
        failing; 0: none), keep the rest in the spool file, and return how many points
        the spool file holds (0: the store has everything)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if seconds > 0:
            self._thread.join(seconds)
        with self._cond:
            self._abandoned = self._thread.is_alive()  # what is left goes to the spool, not to it
            batches = [b for b in self._pending if isinstance(b, Batch)]
            if batches:
                self._append_to_spool([b for b in batches if not b.spooled])
            elif not self._overflow and self.spool is not None and self.spool.exists() \
                    and not self._thread.is_alive():
                drop_spool(self.spool)  # everything it held was delivered
        if self.spool is None or not self.spool.exists():
            return 0
        return len({(m.key, m.step) for m in read_spool(self.spool)})

    def wait_stopped(self, seconds: float) -> bool:
        """Whether the sender thread has ended, waiting up to `seconds` for the call it
        has under way (after close() it starts no other). Only then may the spool be
        replayed: that call may be delivering points the spool holds."""
        self._thread.join(max(seconds, 0))
        return not self._thread.is_alive()
