"""A Ray Client job's pool, seen from the client: the coordinator runs in the cluster.

`RemotePool` stands where a RayPool stands in `fit` (num_workers, num_nodes, m,
n_val, resizes, worker_seconds, balance.lines), but its workers and its coordinator
live in the cluster (cluster/remote_coordinator.py); its `coordinate` takes
trainer.coordinator.train's arguments and runs that loop there. Across the client link
go, once, the initial theta and optimizer, and back, every POLL_SECONDS in one batch,
the run's events, which are replayed here to the same listeners (progress bar,
MLflow's MetricLogger, the pool-size lines, each worker's compute seconds and the
rebalance lines) and to the same Checkpointer (files in the local output folder), in
the order the coordinator made them. Ctrl-C asks the coordinator to stop after its
step; its errors are raised here as the same kinds (same exit codes).
"""

from __future__ import annotations

import re
import time

import numpy as np

from trainer.coordinator import TrainResult
from trainer.errors import WorkerLostError, one_line
from workers.run_events import POLL_SECONDS, end, replay, schedule_of

CLOSE_SECONDS = 10  # for the actor to close its pool before it is killed
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RemotePool:
    def __init__(self, task, cluster, workers, max_failures):
        import ray

        from cluster.remote_coordinator import start_coordinator

        self._ray = ray
        self.actor = start_coordinator()
        try:
            facts = self._get(self.actor.open.remote(task, cluster, workers, max_failures))
        except BaseException:
            self.close()
            raise
        if "error" in facts:
            self.close()
            raise facts["error"]  # bad data (exit 2) or workers lost while starting (exit 1)
        self.num_workers, self.num_nodes = facts["workers"], facts["nodes"]
        self.n_train, self.n_val, self.resizes = facts["n_train"], facts["n_val"], facts["resizes"]
        # The workers' compute seconds in the last step, and the rebalance lines: as a
        # RayPool's, for the WorkerSeconds listener (kept current by the "workers" events).
        self.worker_seconds: list[float] = []
        self.balance = Moves()

    def _get(self, ref):
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayActorError as e:
            why = one_line(ANSI.sub("", str(e)), 160)  # Ray colours the actor's name
            raise WorkerLostError(f"the job's coordinator in the cluster was lost ({why})") from None

    def gradient_sums(self, theta, epoch, k, should_stop=None):
        raise NotImplementedError("a Ray Client job's steps are taken in the cluster: use coordinate()")

    evaluate_sums = gradient_sums

    def coordinate(self, theta: np.ndarray, optimizer, plan, epochs: int, listeners=(),
                   resume=None, checkpointer=None, should_stop=None, end_early=None) -> TrainResult:
        """trainer.coordinator.train, run in the cluster; theta and optimizer end as there."""
        assert end_early is None, "a sweep's trials drive their pools from this machine"
        t0 = time.perf_counter()
        self._get(self.actor.start.remote(theta, optimizer, plan, epochs, resume, schedule_of(checkpointer)))
        stop_sent = False
        while True:
            if not stop_sent and should_stop is not None and should_stop():
                self.actor.stop.remote()
                stop_sent = True
            outcome = replay(self._get(self.actor.poll.remote(POLL_SECONDS)), self, listeners, optimizer,
                             checkpointer)
            if outcome is not None:
                return end(outcome, theta, optimizer, t0)

    def close(self) -> None:
        actor, self.actor = getattr(self, "actor", None), None
        if actor is None:
            return
        try:
            self._ray.get(actor.close.remote(), timeout=CLOSE_SECONDS)
        except Exception:  # gone already, or not closing in time: it goes anyway
            pass
        self._ray.kill(actor)


class Moves:
    """The rebalance lines of the pool in the cluster (a PoolBalance's `lines`, as seen here)."""

    def __init__(self):
        self.lines: list[str] = []
