"""The Ray actor pool: one ShardWorker per actor, same interface as LocalPool.

Each actor opens the data source itself and reads only its own row range, so the
driver never loads or ships the data set. Actors are spread over the nodes (SPREAD)
and each limits its BLAS to the CPUs Ray gave it.

Ray Train's shape: policies decide, the pool executes.

- The rules are decisions, in workers/pool_policy.py (pure, tested without Ray): on a
  loss, replace, shrink or stop (FailurePolicy); on free CPUs, how many to add
  (ScalingPolicy); which worker takes which rows on a change of size (workers/reshard.py).
- The per-step data path is a transport, chosen once here from cluster.data_plane
  (workers/transports.py): shared-memory planes per node (`shm`), or Ray's object
  store (`object_store`).
- This class holds the workers and carries the decisions out: starting and resharding
  (workers/pool_launch.py), recovering from lost workers (workers/pool_recovery.py),
  growing on free CPUs (workers/pool_growth.py). Every wait has a bound and looks at
  the caller's stop request (workers/pool_waits.py, workers/hang.py).

Hangs (workers/hang.py). Every wait for workers has a bound, cluster.hang_seconds
(auto: from the run's own step times); a worker silent past it is lost like a dead
one: killed and replaced. Every wait also looks at the stop request passed with the
call (`should_stop`), and gives up the step in flight (StepAbandoned) rather than
wait out a hung worker.

Size (README: Faults and elasticity). A lost worker is replaced over the same rows;
when no replacement can start within cluster.replace_seconds the pool goes on with
the workers left, over all the rows, down to cluster.min_workers. With
`cluster.workers: auto` the pool starts with as many workers as the cluster has free
CPUs and, at most every GROW_CHECK_SECONDS, asks Ray for free CPUs again: new workers
start (and read their rows) while training goes on, and join at the first step
boundary after they are ready. Each change of size is one `reshard`: new row ranges
for the new count, workers keep or move to ranges as workers/reshard.py decides, and
the transport is wired anew. A step depends only on (theta, epoch, k), so the weights
do not change; only the order of additions does. Rows read again must be the rows
the job started with: a new or moving worker that finds a file changed since the
job's fingerprint (workers/data/fingerprint.py) stops the job (DataChangedError, exit 2).
"""

from __future__ import annotations

import time

import numpy as np
import ray

# The pool reads seven keys of the config's cluster section (cpus_per_worker, data_plane,
# min_workers, max_workers, replace_seconds, hang_seconds, rebalance_seconds), so it takes
# the section, typed by the one definition of those keys and their ranges. That type sits
# in trainer/config.py, the one layer both the pool and the config's readers may import
# (trainer <- workers); a copy of it here would be a second place to keep in step.
from trainer.config import MAX_WORKERS, ClusterConfig
from trainer.pool import EvalSums, ShardSums
from workers.pool_growth import Growth
from workers.pool_policy import FailurePolicy, ScalingPolicy, start_size
from workers.pool_recovery import Recovery
from workers.pool_waits import Waits
from workers.rebalance import PoolBalance, keeps_weights, rows_to_read
from workers.shard import ShardTask
from workers.shard_actor import ShardActor
from workers.solo import SoloTraining
from workers.transports import make_transport

GROW_CHECK_SECONDS = 5.0  # how often a pool that may grow asks Ray for free CPUs (never per step)


class RayPool(Recovery, Growth):
    def __init__(self, task: ShardTask, cluster: ClusterConfig, workers: int | str, max_failures: int,
                 strategy="SPREAD", placement_timeout: float | None = None, kept: list | None = None):
        """cluster: the config's cluster section, whole (cpus_per_worker, data_plane,
        min_workers, max_workers, replace_seconds, hang_seconds).
        workers: how many to start; or "auto": as many as the cluster's free CPUs allow
        (at least min_workers, at most max_workers), growing when CPUs become free. A
        fixed count never grows (a pool in a placement group must not outgrow it).
        max_failures: workers that may be lost over the pool's life (train.max_worker_failures).
        placement_timeout: for a lost worker's replacement to start (default cluster.replace_seconds).
        kept: live ShardActors of an earlier pool (workers/actor_keeper.py) to take as workers
        before starting new ones: each is renewed over its rows (read fresh, nothing kept)."""
        self._actor = ray.remote(ShardActor).options(num_cpus=cluster.cpus_per_worker,
                                                     scheduling_strategy=strategy)
        self._task, self._cpus = task, cluster.cpus_per_worker
        self.data_plane = cluster.data_plane
        self.min_workers = cluster.min_workers
        self.max_workers = None  # None: a fixed size, never grown
        if workers == "auto":
            # A worker holds whole blocks: no more workers than train.blocks.
            self.max_workers = min(cluster.max_workers or MAX_WORKERS, task.plan.blocks)
            count = start_size(self._free_slots(), self.min_workers, self.max_workers)
        else:
            count = int(workers)
        self.max_failures = max_failures
        self.placement_timeout = cluster.replace_seconds if placement_timeout is None else placement_timeout
        self.failure_policy = FailurePolicy(max_failures, self.min_workers)
        self.scaling_policy = ScalingPolicy(self.max_workers, GROW_CHECK_SECONDS)
        self.failures = 0
        self.events: list[str] = []  # one line per worker lost and replaced
        self.resizes: list[str] = []  # one line per change of size ("2 -> 3 workers: why")
        self._joining = None  # workers starting on free CPUs: (ranges, takers, {rank: (actor, ready ref)}, deadline)
        self._last_look = time.monotonic()
        # Stragglers (workers/rebalance.py): each worker's compute seconds in the last step,
        # by rank, and what moves rows from slow workers to fast ones (None: never).
        self.worker_seconds: list[float] = []
        self.in_worker = False  # the coordinator loop runs in the one worker (workers/solo.py)
        rebalances = cluster.rebalance_seconds and keeps_weights(task)
        self.balance = PoolBalance(task, cluster.rebalance_seconds) if rebalances else None
        # Per-step parameter-sized arrays the coordinator sent and received, in bytes.
        self.traffic = {"steps": 0, "bytes_sent": 0, "bytes_received": 0}
        # The bounds of every wait, and the stop request of the call in progress (none
        # while the pool starts: a Ctrl-C then ends the job at once).
        self.waits = Waits(cluster.hang_seconds)
        self.actors, self.info, self.ranges = [], [], []
        # The driver's node (None through Ray Client: on no node).
        self._here = None if ray.util.client.ray.is_connected() else ray.get_runtime_context().get_node_id()
        self._kept = list(kept or [])
        self.transport = make_transport(cluster.data_plane, task.spec, self.waits, self.traffic, self._here,
                                        task.plan.exact)
        try:
            # Actors start (and read their rows) in parallel; one that dies meanwhile is a
            # lost worker like any other: started again, counted against max_failures.
            ranges = task.ranges(count)
            started = self._launch(ranges, [None] * len(ranges), None, "while starting")
            self.actors = [started[j][0] for j in range(len(ranges))]
            self.info = [started[j][1] for j in range(len(ranges))]
            self.ranges = ranges
            self._n_train = sum(i["n_train"] for i in self.info)
            self._n_val = sum(i["n_val"] for i in self.info)
            self._with_recovery(lambda: self.transport.wire(self.actors, self.info))
        except BaseException:
            self.close()
            raise
        finally:
            for actor in self._kept:  # more kept than this pool takes
                ray.kill(actor, no_restart=True)
            self._kept = []

    @property
    def num_nodes(self) -> int:
        return len({i["node_id"] for i in self.info})

    @property
    def n_train(self) -> int:
        return self._n_train

    @property
    def n_val(self) -> int:
        return self._n_val

    @property
    def spec(self):
        return self._task.spec

    @property
    def solo(self) -> bool:
        """One worker, never more: its steps run inside it (workers/solo.py, `coordinate`)."""
        return self.max_workers is None and self.num_workers == 1

    def coordinate(self, theta: np.ndarray, optimizer, plan, epochs: int, listeners=(), resume=None,
                   checkpointer=None, should_stop=None, end_early=None):
        """trainer.coordinator.train's loop, run inside the pool's one worker (workers/solo.py);
        theta and the optimizer end as there."""
        assert self.solo and (end_early is None or hasattr(end_early, "milestones")), \
            "the worker asks a sweep's scheduler at its milestones only"
        return SoloTraining(self, theta, optimizer, plan, epochs, listeners, resume, checkpointer,
                            should_stop, end_early).run(theta)

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int, should_stop=None,
                      scales=None) -> list[ShardSums]:
        """should_stop: the job's stop request (Ctrl-C, SIGTERM): a wait for a lost
        worker's replacement ends at once then, and a step that a worker holds up is
        given up (StepAbandoned) once the request is STOP_GRACE_S old. scales: float32's
        per-tensor exponents (trainer/exact_sum.py)."""
        # A step is a pure function of (theta, epoch, k) (README: Batches), so after a
        # worker is replaced, or the pool changed size, the same call gives the same sums.
        self.waits.stop_on(should_stop)
        if self.max_workers is not None:
            self._with_recovery(self._grow)  # the step boundary: new workers join here
        if self.balance is not None:
            self._with_recovery(self._rebalance)  # ... and slow workers give rows to fast ones
        parts = self._with_recovery(lambda: self._timed(self.waits.step_bound, self.waits.step_bound.seconds(),
                                                        lambda bound: self.transport.step(theta, epoch, k, bound,
                                                                                          scales)))
        self.worker_seconds = [seconds for seconds, _ in self.transport.timed]
        if self.balance is not None:
            self.balance.record(self.worker_seconds, [n for _, n in self.transport.timed])
        self.traffic["steps"] += 1
        self.traffic["bytes_received"] += sum(p.grad.nbytes for p in parts)
        return parts

    def evaluate_sums(self, theta: np.ndarray, should_stop=None) -> list[EvalSums]:
        self.waits.stop_on(should_stop)
        return self._with_recovery(lambda: self._timed(self.waits.eval_bound, self._evaluation_bound(),
                                                       lambda bound: self.transport.evaluate(theta, bound)))

    def _rebalance(self) -> None:
        """At a step boundary: move rows from slow workers to fast ones when the policy
        says so (workers/balance.py). Every worker keeps its rank (a slow one stays the
        one with fewer rows) and the rows it still holds; only the rest are read."""
        balance, old = self.balance, list(self.ranges)
        assert balance is not None  # asked only of a pool that rebalances
        proposal = balance.propose(old)
        if proposal is None:
            return
        new, move = proposal
        self._reshard(new, list(range(self.num_workers)), {}, same_workers=True)
        balance.moved(move, old, new, rows_to_read(old, new))

    @staticmethod
    def _timed(bound_of_kind, bound: float, call):
        """call(bound), its time recorded in the bound of its kind when every worker answered."""
        t0 = time.monotonic()
        parts = call(bound)
        bound_of_kind.record(time.monotonic() - t0)
        return parts

    def _evaluation_bound(self) -> float:
        # Forward passes over the validation rows, against a step's forward and backward
        # passes over a batch: the rows' ratio is a generous measure.
        return self.waits.eval_bound.seconds(self.waits.step_bound,
                                             max(1.0, self._n_val / self._task.plan.batch_size))

    def hand_over(self) -> list:
        """The workers, for another pool to take (workers/actor_keeper.py), not stopped:
        their planes unwired; this pool holds none after."""
        self._drop_joining()
        self.transport.unwire()
        actors, self.actors = self.actors, []
        return actors

    def close(self) -> None:
        self._drop_joining()
        transport = getattr(self, "transport", None)
        if transport is not None:
            transport.unwire()
        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)  # a hung worker's process too (Ray ends it with SIGKILL)
        self.actors = []
