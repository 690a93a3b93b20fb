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
error); workers/run_events.py defines them. The client replays them to its own
listeners and checkpointer (experiments/jobs/remote_pool.py), so MLflow, the progress bar and the files stay where
they were. `stop` is Ctrl-C: the coordinator reads the flag after every step.

No MLflow here: this module runs in the cluster's Python.
"""

from __future__ import annotations

import copy
import logging
import threading

import numpy as np
import ray

from trainer.coordinator import train
from trainer.errors import InputError, RunError
from workers.ray_pool import RayPool
from workers.run_events import EventQueue, QueuedCheckpoints, outcome_of

HEAD_RESOURCE = "node:__internal_head__"  # a resource only the head node has


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

        def run():
            with np.errstate(over="ignore", invalid="ignore"):  # divergence: the coordinator says so
                result = train(self.pool, theta, optimizer, plan, epochs, [self.queue],
                               resume=resume, checkpointer=checkpointer,
                               should_stop=self._stop.is_set)
            return result, theta, optimizer

        outcome = outcome_of(run)
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
