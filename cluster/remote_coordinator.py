"""The coordinator of a Ray Client job, run inside the cluster.

Through Ray Client (`--address ray://...`) every Ray call of the driver crosses the
client link: a coordinator on the client pays that round trip for every step's
parameters and sums (a 360-step job took 3.53 s against 0.18 s for the same job
joined as HOST:PORT). So the coordinator goes where the workers are: one actor
(`CoordinatorActor`, no CPU of its own, on the head node) opens the RayPool there
(its node's workers share memory with it, other nodes get leaders, as for any driver
on a node) and runs trainer.coordinator.train in a thread of its own. What the client
needs of the run becomes events in a queue that the client takes in batches
(`poll`): each step's loss, each epoch's metrics, the pool's changes of size and its
lost-worker lines, each checkpoint (theta, optimizer buffers, position) and, at the
end, the outcome (the final theta and optimizer state, the stop's position, or the
error). The client replays them to its own listeners and checkpointer
(experiments/jobs/remote_pool.py), so MLflow, the progress bar and the files stay where
they were. `stop` is Ctrl-C: the coordinator reads the flag after every step.

No MLflow here: this module runs in the cluster's Python.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import traceback

import numpy as np
import ray

from trainer.checkpoint import Checkpointer, Position
from trainer.coordinator import TrainingStopped, train
from trainer.errors import InputError, RunError
from workers.ray_pool import RayPool

HEAD_RESOURCE = "node:__internal_head__"  # a resource only the head node has


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
        state = {k: np.array(v, copy=True) for k, v in optimizer.state().items()}
        self._put(("checkpoint", theta.copy(), state, position))
        self.last_time = self.clock()
        return None


class EventQueue:
    """Coordinator listener: each step and epoch, and the pool's news before them."""

    def __init__(self, pool: RayPool):
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


class CoordinatorActor:
    """Ray actor (threaded: `poll`, `stop` and `close` answer while training runs)."""

    def __init__(self):
        # Lost-worker lines travel to the client as events and are logged there.
        logging.getLogger("workers.ray_pool").setLevel(logging.ERROR)
        self.pool: RayPool | None = None
        self.queue: EventQueue | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self, task, cluster, workers, max_failures) -> dict:
        """Start the pool (its workers read and check their rows): the pool's facts, or
        {"error": InputError or RunError} for the client to raise as its own."""
        try:
            self.pool = RayPool(task, cluster, workers, max_failures)
        except (InputError, RunError) as e:
            return {"error": e}
        self.queue = EventQueue(self.pool)
        return {"workers": self.pool.num_workers, "nodes": self.pool.num_nodes, "n_train": self.pool.n_train,
                "n_val": self.pool.n_val, "resizes": list(self.pool.resizes)}

    def start(self, theta, optimizer, plan, epochs, resume, schedule) -> None:
        """Train in a thread of this actor; the outcome is the last event."""
        checkpointer = None if schedule is None else QueuedCheckpoints(schedule, self.queue.put)
        self._thread = threading.Thread(
            target=self._train, daemon=True,
            args=(theta, optimizer, plan, epochs, resume, checkpointer))
        self._thread.start()

    def _train(self, theta, optimizer, plan, epochs, resume, checkpointer) -> None:
        # Arrays that arrive through Ray are read-only views of the object store; the
        # coordinator updates theta and the optimizer's buffers in place.
        theta, optimizer = theta.copy(), copy.deepcopy(optimizer)
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # divergence: the coordinator says so
                result = train(self.pool, theta, optimizer, plan, epochs, [self.queue],
                               resume=resume, checkpointer=checkpointer,
                               should_stop=self._stop.is_set)
            outcome = ("done", result, theta, optimizer.state())
        except TrainingStopped as e:
            outcome = ("stopped", e.position)
        except (InputError, RunError) as e:  # plain classes: they pickle with their hint
            outcome = ("error", e)
        except BaseException:  # a bug: its traceback, as text (its class may not unpickle)
            outcome = ("bug", traceback.format_exc())
        self.queue.pool_news()
        self.queue.put(("end", outcome))
        self._done.set()

    def poll(self, seconds: float) -> list[tuple]:
        """The events since the last poll, after at most `seconds` (at once when training ended)."""
        self._done.wait(seconds)
        return self.queue.take()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)  # the step in flight, then its checkpoint event
        if self.pool is not None:
            self.pool.close()


def head_node_id() -> str | None:
    for node in ray.nodes():
        if node.get("Alive") and HEAD_RESOURCE in node.get("Resources", {}):
            return node["NodeID"]
    return None


def start_coordinator():
    """The actor, on the head node (anywhere if Ray does not say which node is the head)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = head_node_id()
    strategy = "DEFAULT" if head is None else NodeAffinitySchedulingStrategy(head, soft=True)
    return ray.remote(CoordinatorActor).options(num_cpus=0, max_concurrency=4,
                                                scheduling_strategy=strategy).remote()
