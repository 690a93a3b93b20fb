"""The events of a coordinator that runs away from the driver, and their replay there.

Two coordinators run where the driver is not: a Ray Client job's, in the cluster
(cluster/remote_coordinator.py), and a one-worker pool's, inside its worker
(workers/solo.py). Each runs trainer.coordinator.train with an `EventQueue` as its
listener and a `QueuedCheckpoints` as its checkpointer: each step's loss, each
epoch's metrics, the pool's changes of size and its lost-worker lines, each
checkpoint (theta, optimizer buffers, position) and, at the end, the outcome (the
final theta and optimizer state, the stop's position, or the error) become events
in a queue that the driver takes in batches. The driver hands them, in order, to
its own listeners (progress bar, MLflow's MetricLogger, the pool-size lines, each
worker's compute seconds) and its own Checkpointer (`replay`), so MLflow, the
progress bar and the files stay where they were, and raises the outcome's stop or
error as the same kinds (`end`).

No MLflow here, and no Ray: the events are plain tuples.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

import numpy as np

from trainer.checkpoint import Checkpointer, Position
from trainer.coordinator import TrainResult, TrainingStopped
from trainer.errors import InputError, RunError

# The logger RayPool says lost workers with, so the line reads the same from either place.
pool_log = logging.getLogger("workers.ray_pool")
POLL_SECONDS = 0.25  # how stale the driver's view may get; the end arrives at once


def schedule_of(checkpointer) -> dict | None:
    """The driver's Checkpointer's schedule, for QueuedCheckpoints to keep where the
    steps are (None: no checkpoints)."""
    if checkpointer is None:
        return None
    return {"every_epochs": checkpointer.every_epochs, "max_seconds": checkpointer.max_seconds,
            "min_seconds": checkpointer.min_seconds, "last_epoch": checkpointer.last_epoch}


def state_copy(optimizer) -> dict[str, np.ndarray]:
    """The optimizer's buffers, copied: the run goes on changing its own in place."""
    return {k: np.array(v, copy=True) for k, v in optimizer.state().items()}


class QueuedCheckpoints(Checkpointer):
    """The client's Checkpointer's schedule (every_epochs, min_seconds, max_seconds,
    last_epoch), kept here where the steps are; a checkpoint that falls due becomes an
    event, and the client's Checkpointer writes it."""

    def __init__(self, schedule: dict, put):
        # Not Checkpointer.__init__: it would look for files in the client's folder.
        self.every_epochs, self.max_seconds = schedule["every_epochs"], schedule["max_seconds"]
        self.min_seconds, self.last_epoch = schedule["min_seconds"], schedule["last_epoch"]
        self.clock = time.monotonic
        self.last_time = self.clock()
        self.written = []
        self._put = put

    def save(self, theta, optimizer, position: Position):
        self._put(("checkpoint", theta.copy(), state_copy(optimizer), position))
        self.last_time = self.clock()
        return None


class EventQueue:
    """Coordinator listener: each step and epoch, and the pool's news before them."""

    def __init__(self, pool):
        """pool: the coordinator's (a RayPool or a LocalPool): its size and lost-worker lines."""
        self.pool = pool
        self._items: list[tuple] = []
        self._lock = threading.Lock()
        self._seen = self._now()  # resizes, lost-worker lines, workers, nodes: the client has these
        self._moves_seen = 0  # rebalance lines the client has

    def _now(self) -> tuple:
        p = self.pool
        return len(p.resizes), len(p.events), p.num_workers, p.num_nodes

    def put(self, item: tuple) -> None:
        with self._lock:
            self._items.append(item)

    def take(self) -> list[tuple]:
        with self._lock:
            items, self._items = self._items, []
        return items

    def pool_news(self) -> None:
        """The pool changes size (and loses workers) only inside the coordinator's
        calls to it, i.e. before the step or epoch event that follows."""
        p = self.pool
        resizes, events = self._seen[:2]
        now = self._now()
        if now != self._seen:
            self.put(("pool", p.num_workers, p.num_nodes, p.resizes[resizes:], p.events[events:]))
            self._seen = now

    def on_step(self, step, epoch, loss, n):
        self.pool_news()
        self.workers_news()
        self.put(("step", step, epoch, loss, n))

    def workers_news(self) -> None:
        """Each worker's compute seconds in the step just taken and the rebalance lines
        since the last step: the client's WorkerSeconds listener makes them MLflow
        metrics and console lines (experiments/jobs/worker_seconds.py)."""
        balance = getattr(self.pool, "balance", None)
        lines = balance.lines[self._moves_seen:] if balance is not None else []
        self._moves_seen += len(lines)
        self.put(("workers", list(getattr(self.pool, "worker_seconds", ())), list(lines)))

    def on_epoch(self, epoch, metrics):
        self.pool_news()
        self.put(("epoch", epoch, metrics))


def outcome_of(train_call) -> tuple:
    """How `train_call()` ended, as the end event's outcome: ("done", result, theta,
    optimizer state) from its (result, theta, optimizer); ("stopped", position);
    ("error", e) for the kinds the driver raises as its own; ("bug", traceback text)
    for anything else (its class may not unpickle on the driver)."""
    try:
        result, theta, optimizer = train_call()
        return ("done", result, theta, optimizer.state())
    except TrainingStopped as e:
        return ("stopped", e.position)
    except (InputError, RunError) as e:  # plain classes: they pickle with their hint
        return ("error", e)
    except BaseException:
        return ("bug", traceback.format_exc())


def replay(events: list[tuple], pool, listeners, optimizer, checkpointer):
    """Hand the coordinator's events to this machine's listeners and checkpointer, in
    order, and keep `pool`'s size and resize lines current; the outcome when the batch
    holds the end (cluster/remote_coordinator.py), else None."""
    for event in events:
        kind = event[0]
        if kind == "step":
            for lst in listeners:
                lst.on_step(*event[1:])
        elif kind == "epoch":
            for lst in listeners:
                lst.on_epoch(*event[1:])
        elif kind == "pool":
            pool.num_workers, pool.num_nodes = event[1], event[2]
            pool.resizes += event[3]  # PoolSize reads the new lines at the next step
            for line in event[4]:
                pool_log.warning("rayprop: %s", line)
        elif kind == "workers":  # before its step event: the listeners read it there
            pool.worker_seconds = event[1]
            if event[2]:  # rebalance lines: a pool of one worker (workers/solo.py) has none
                pool.balance.lines += event[2]
        elif kind == "checkpoint":
            _, theta, state, position = event
            optimizer.load_state(state)
            checkpointer.save(theta, optimizer, position)
        elif kind == "end":
            return event[1]
    return None


def end(outcome, theta, optimizer, t0) -> TrainResult:
    """The result, with theta and the optimizer as the coordinator left them; or its
    stop or error, raised here."""
    kind = outcome[0]
    if kind == "done":
        _, result, final, state = outcome
        theta[...] = final
        optimizer.load_state(state)
        result.wall_seconds = time.perf_counter() - t0  # as this machine waited for it
        return result
    if kind == "stopped":
        raise TrainingStopped(outcome[1])
    if kind == "error":
        raise outcome[1]
    raise RuntimeError(f"the job's coordinator in the cluster failed:\n{outcome[1]}")
