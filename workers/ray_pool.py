"""The Ray actor pool: one ShardWorker per actor, same interface as LocalPool.

Each actor opens the data source itself and reads only its own row range, so the
driver never loads or ships the data set. Actors are spread over the nodes (SPREAD)
and each limits its BLAS to the CPUs Ray gave it.

The per-step data path (cluster.data_plane):

- `shm` (default): per node, one shared-memory plane (workers/node_plane.py). On the
  coordinator's own node the coordinator hosts it: it writes theta into shared memory,
  wakes its workers with a 12-byte message each, and reads their sums from their
  slots; Ray is not on that path at all. On every other node the worker of lowest rank
  hosts its node's plane (the node's *leader*): the coordinator sends theta once per
  node (one `ray.put`, fetched once by each node's object store), and each leader
  returns its node's sums already added up. So per step the coordinator sends N and
  receives N parameter-sized arrays for N nodes, whatever the number of workers
  (`traffic` counts them). A Ray Client driver is on no node: every node has a leader.
- `object_store`: every worker through Ray's object store (one `ray.put` of theta,
  each worker's sums back through `ray.get`): W arrays back for W workers. The
  fallback where memfd or abstract Unix sockets are missing (not Linux).

Validation (once per epoch) takes the same path as the steps, so each worker computes
in one thread only.

Hangs (workers/hang.py). Every wait for workers has a bound, cluster.hang_seconds
(auto: from the run's own step times); a worker silent past it is lost like a dead
one: killed and replaced. Every wait also looks at the job's stop request, and gives
up the step in flight (StepAbandoned) rather than wait out a hung worker.

Size (README: Faults and elasticity). A lost worker is replaced over the same rows;
when no replacement can start within cluster.replace_seconds the pool goes on with
the workers left, over all the rows, down to cluster.min_workers. With
`cluster.workers: auto` the pool starts with as many workers as the cluster has free
CPUs and, at most every GROW_CHECK_SECONDS, asks Ray for free CPUs again: new workers
start (and read their rows) while training goes on, and join at the first step
boundary after they are ready. Each change of size is one `reshard`: new row ranges
for the new count, workers keep or move to ranges as workers/reshard.py decides, and
the planes are wired anew. A step depends only on (theta, epoch, k), so the weights
do not change; only the order of additions does. Rows read again must be the rows
the job started with: a new or moving worker that finds a file changed since the
job's fingerprint (workers/data/fingerprint.py) stops the job (DataChangedError, exit 2).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import defaultdict

import numpy as np
import ray

from trainer.config import MAX_WORKERS, ClusterConfig
from trainer.errors import InputError, RunError, one_line
from trainer.pool import EvalSums, ShardSums, StepAbandoned, WorkerLostError
from workers.data.fingerprint import raise_if_changed
from workers.data.storage_env import worker_error
from workers.hang import FACTOR, FIRST_S, SLICE_S, StopGrace, WaitBound
from workers.node_plane import OP_EVAL, OP_STEP, PeerLost, PlaneHost
from workers.reshard import reassign
from workers.shard import ShardTask
from workers.shard_actor import ATTACH_TIMEOUT_S, ShardActor, add_evals

log = logging.getLogger(__name__)

GROW_CHECK_SECONDS = 5.0  # how often a pool that may grow asks Ray for free CPUs (never per step)
GROW_TIMEOUT_S = 120  # for workers started on free CPUs to be ready; else that growth is dropped


class WorkersLost(Exception):
    """Workers `ranks` died or hang (no answer within the bound): lost, by name."""

    def __init__(self, ranks: list[int], why: str):
        super().__init__(sorted(set(ranks)), why)
        self.ranks = sorted(set(ranks))

    def __str__(self) -> str:
        return str(self.args[1])


# What a dead (or hung) worker process or node looks like to the driver.
LOST_WORKER_ERRORS = (ray.exceptions.RayActorError, PeerLost, WorkersLost)


class RayPool:
    def __init__(self, task: ShardTask, cluster: ClusterConfig, workers: int | str, max_failures: int,
                 strategy="SPREAD", placement_timeout: float | None = None):
        """cluster: the config's cluster section, whole (cpus_per_worker, data_plane,
        min_workers, max_workers, replace_seconds).
        workers: how many to start; or "auto": as many as the cluster's free CPUs allow
        (at least min_workers, at most max_workers), growing when CPUs become free. A
        fixed count never grows (a pool in a placement group must not outgrow it).
        max_failures: workers that may be lost over the pool's life (train.max_worker_failures).
        placement_timeout: for a lost worker's replacement to start (default cluster.replace_seconds)."""
        self._actor = ray.remote(ShardActor).options(num_cpus=cluster.cpus_per_worker,
                                                     scheduling_strategy=strategy)
        self._task, self._cpus = task, cluster.cpus_per_worker
        self.data_plane = cluster.data_plane
        self.min_workers = cluster.min_workers
        self.max_workers = None  # None: a fixed size, never grown
        if workers == "auto":
            self.max_workers = cluster.max_workers or MAX_WORKERS
            workers = max(self.min_workers, min(self._free_slots(), self.max_workers))
        self.max_failures = max_failures
        self.placement_timeout = cluster.replace_seconds if placement_timeout is None else placement_timeout
        # Set by the job to its stop request (Ctrl-C, SIGTERM): the wait for a lost
        # worker's replacement ends at once then, rather than after placement_timeout,
        # and a step that a worker holds up is given up (StepAbandoned).
        self.should_stop = lambda: False
        self.grow_check_seconds = GROW_CHECK_SECONDS
        self.failures = 0
        self.events: list[str] = []  # one line per worker lost and replaced
        self.resizes: list[str] = []  # one line per change of size ("2 -> 3 workers: why")
        self._joining = None  # workers starting on free CPUs: (ranges, takers, {rank: (actor, ready ref)}, deadline)
        self._last_look = time.monotonic()
        # Per-step parameter-sized arrays the coordinator sent and received, in bytes.
        self.traffic = {"steps": 0, "bytes_sent": 0, "bytes_received": 0}
        self._host: PlaneHost | None = None  # the plane of the coordinator's node
        self._host_ranks: list[int] = []  # the workers on it, by slot
        self._leaders: list = []  # the actors hosting the other nodes' planes
        self._leader_ranks: list[list[int]] = []  # each leader's node's workers, by slot (the leader first)
        # How long a step or an evaluation may wait for a worker before it counts as hung.
        self._step_bound = WaitBound(cluster.hang_seconds)
        self._eval_bound = WaitBound(cluster.hang_seconds)
        self.actors, self.info, self.ranges = [], [], []
        # The driver's node (None through Ray Client: on no node).
        self._here = None if ray.util.client.ray.is_connected() else ray.get_runtime_context().get_node_id()
        try:
            # Actors start (and read their rows) in parallel; one that dies meanwhile is a
            # lost worker like any other: started again, counted against max_failures.
            ranges = task.ranges(workers)
            started = self._launch(ranges, [None] * len(ranges), None, "while starting")
            self.actors = [started[j][0] for j in range(len(ranges))]
            self.info = [started[j][1] for j in range(len(ranges))]
            self.ranges = ranges
            self._m = sum(i["n_train"] for i in self.info)
            self._m_val = sum(i["n_val"] for i in self.info)
            self._with_recovery(self._wire)
        except BaseException:
            self.close()
            raise

    def _start(self, lo: int, hi: int):
        return self._actor.remote(self._task, lo, hi, self._cpus)

    def _wire(self) -> None:
        """Group the workers by node and give each node its plane (see the module doc).
        A worker that dies or does not attach within ATTACH_TIMEOUT_S is lost (WorkersLost)."""
        self._unwire()
        if self.data_plane != "shm":
            return
        try:
            self._wire_nodes()
        except LOST_WORKER_ERRORS:
            raise  # a worker died while attaching: recovery replaces it
        except (TimeoutError, OSError) as e:  # from the planes (here or in an actor), or Ray's wait
            cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) else e
            raise RunError(f"the shared-memory data plane could not be wired: {one_line(cause, 120)}; "
                           "cluster.data_plane: object_store does without it") from None

    def _wire_nodes(self) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for rank, info in enumerate(self.info):
            groups[info["node_id"]].append(rank)
        spec = self._task.spec
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        refs, owners = [], []
        for node, ranks in groups.items():
            if node == self._here:
                self._host, self._host_ranks = PlaneHost(spec.size, spec.dtype, len(ranks)), ranks
                attach = [self.actors[r].attach.remote(self._host.ticket, s) for s, r in enumerate(ranks)]
                self._accept(attach, ranks, deadline)
                refs += attach
                owners += [[r] for r in ranks]
            else:
                leader = self.actors[ranks[0]]
                (ticket,) = self._await([leader.host.remote(len(ranks))], [ranks], deadline)
                refs += [self.actors[r].attach.remote(ticket, s) for s, r in enumerate(ranks[1:], 1)]
                owners += [[r] for r in ranks[1:]]
                refs.append(leader.accept.remote(len(ranks) - 1))
                owners.append(ranks)
                self._leaders.append(leader)
                self._leader_ranks.append(ranks)
        self._await(refs, owners, deadline + 10)  # the leaders' accept times out first

    def _accept(self, attach: list, ranks: list[int], deadline: float) -> None:
        """The host's side of attaching: a second at a time, so that a worker that died
        before it attached is named at once rather than after ATTACH_TIMEOUT_S."""
        while True:
            try:
                self._host.accept(len(ranks), min(1.0, max(deadline - time.monotonic(), 0.001)))
                return
            except TimeoutError:
                done, _ = ray.wait(attach, num_returns=len(attach), timeout=0)
                for ref in done:
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        raise WorkersLost([ranks[attach.index(ref)]], f"died while attaching ({one_line(e, 80)})") from None
                if self._give_up():
                    raise StepAbandoned("stopped while the workers attached") from None
                if time.monotonic() >= deadline:
                    silent = [r for s, r in enumerate(ranks) if s not in self._host.peers]
                    raise WorkersLost(silent, f"did not attach within {ATTACH_TIMEOUT_S:g} s") from None

    def _await(self, refs: list, owners: list[list[int]], deadline: float) -> list:
        """ray.get(refs), the stop request looked at every SLICE_S. owners[i]: the ranks
        refs[i] answers for, by slot (one worker's call: [rank]; a leader's node: its
        ranks, the leader first). Raises WorkersLost naming the workers that died or did
        not answer by `deadline`, StepAbandoned on a stop."""
        within = deadline - time.monotonic()  # for the message of a worker that misses it
        try:  # the usual case: every answer in before the first look at the stop flag
            return ray.get(refs, timeout=min(SLICE_S, max(deadline - time.monotonic(), 0)))
        except ray.exceptions.GetTimeoutError:
            pass
        except (*LOST_WORKER_ERRORS, ray.exceptions.RayTaskError):
            pass  # named below, with the rank it came from
        results, pending = {}, dict(zip(refs, range(len(refs))))
        while True:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except (*LOST_WORKER_ERRORS, ray.exceptions.RayTaskError) as e:
                    raise self._named(e, owners[i]) from None
            if not pending:
                return [results[i] for i in range(len(refs))]
            if self._give_up():
                raise StepAbandoned("stopped while waiting for the workers")
            left = deadline - time.monotonic()
            if left <= 0:
                silent = [owners[i][0] for i in pending.values()]
                raise WorkersLost(silent, f"hung: no answer within {within:.0f} s (cluster.hang_seconds)")
            ray.wait(list(pending), num_returns=len(pending), timeout=min(SLICE_S, left))

    @staticmethod
    def _named(e: Exception, owners: list[int]) -> Exception:
        """The error of a call that answered for `owners`, as WorkersLost naming the
        workers it lost; other errors (a bug) as they are."""
        cause = getattr(e, "cause", None) or e  # a leader's RayTaskError carries its PeerLost
        if isinstance(cause, PeerLost):
            slots = getattr(cause, "slots", [cause.slot])
            return WorkersLost([owners[s] for s in slots if s < len(owners)], one_line(cause))
        if isinstance(cause, WorkersLost):
            return cause
        if isinstance(e, ray.exceptions.RayActorError):
            return WorkersLost([owners[0]], one_line(e))
        return e

    def _unwire(self) -> None:
        host, self._host, self._leaders = self._host, None, []
        self._host_ranks, self._leader_ranks = [], []
        if host is not None:
            host.close()

    @property
    def should_stop(self):
        return self._should_stop

    @should_stop.setter
    def should_stop(self, should_stop) -> None:
        self._should_stop = should_stop
        # What a wait for workers asks before it gives up the step in flight: the stop
        # request has come, and the step had STOP_GRACE_S to finish since (workers/hang.py).
        self._give_up = StopGrace(should_stop)

    @property
    def num_workers(self) -> int:
        return len(self.actors)

    @property
    def num_nodes(self) -> int:
        return len({i["node_id"] for i in self.info})

    @property
    def m(self) -> int:
        return self._m

    @property
    def m_val(self) -> int:
        return self._m_val

    @property
    def joining(self) -> list:
        """Ready-refs of the workers started on free CPUs and not yet in the pool."""
        return [ref for _, ref in self._joining[2].values()] if self._joining else []

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int) -> list[ShardSums]:
        # A step is a pure function of (theta, epoch, k) (README: Batches), so after a
        # worker is replaced, or the pool changed size, the same call gives the same sums.
        if self.max_workers is not None:
            self._with_recovery(self._grow)  # the step boundary: new workers join here
        call = self._plane_step if self.data_plane == "shm" else self._object_store_step
        parts = self._with_recovery(lambda: call(theta, epoch, k))
        self.traffic["steps"] += 1
        self.traffic["bytes_received"] += sum(p.grad.nbytes for p in parts)
        return parts

    def evaluate_sums(self, theta: np.ndarray) -> list[EvalSums]:
        call = self._plane_evaluate if self.data_plane == "shm" else self._object_store_evaluate
        return self._with_recovery(lambda: call(theta))

    # A leader waits `bound` for its node's peers; the driver waits for the leader a
    # little longer, so that a hung peer is named by its leader, not taken for the leader.
    @staticmethod
    def _leader_deadline(t0: float, bound: float) -> float:
        return t0 + 1.5 * bound + 2.0

    def _gather_host(self, bound: float) -> dict:
        try:
            return self._host.gather(bound, self._give_up)
        except PeerLost as e:
            raise self._named(e, self._host_ranks) from None

    def _evaluation_bound(self) -> float:
        # Forward passes over the validation rows, against a step's forward and backward
        # passes over a batch: the rows' ratio is a generous measure.
        return self._eval_bound.seconds(self._step_bound, max(1.0, self._m_val / self._task.plan.batch_size))

    def _plane_step(self, theta, epoch, k):
        bound, t0 = self._step_bound.seconds(), time.monotonic()
        refs = []
        if self._leaders:
            theta_ref = ray.put(theta)  # fetched once by each other node's object store
            refs = [leader.node_step.remote(theta_ref, epoch, k, bound) for leader in self._leaders]
        parts = []
        if self._host is not None:
            # The coordinator's node: theta into shared memory, sums read in place. The
            # sums array is slot 0 of the plane, valid until the next step: the
            # coordinator adds it into its own buffer right away.
            self._host.send(OP_STEP, theta, epoch, k)
            n, loss_sum, seconds = self._host.reduce(self._gather_host(bound))
            parts.append(ShardSums(self._host.sums[0], loss_sum, n, seconds))
        parts += self._await(refs, self._leader_ranks, self._leader_deadline(t0, bound))
        self._step_bound.record(time.monotonic() - t0)
        self.traffic["bytes_sent"] += theta.nbytes * (len(self._leaders) + (self._host is not None))
        return parts

    def _plane_evaluate(self, theta):
        bound, t0 = self._evaluation_bound(), time.monotonic()
        refs = []
        if self._leaders:
            theta_ref = ray.put(theta)
            refs = [leader.node_evaluate.remote(theta_ref, bound) for leader in self._leaders]
        parts = []
        if self._host is not None:
            self._host.send(OP_EVAL, theta)
            parts.append(add_evals(self._gather_host(bound).values()))
        parts += self._await(refs, self._leader_ranks, self._leader_deadline(t0, bound))
        self._eval_bound.record(time.monotonic() - t0)
        return parts

    def _object_store_step(self, theta, epoch, k):
        bound, t0 = self._step_bound.seconds(), time.monotonic()
        theta_ref = ray.put(theta)  # one copy in the object store, read by every actor
        self.traffic["bytes_sent"] += theta.nbytes * self.num_nodes
        refs = [a.gradient_sums.remote(theta_ref, epoch, k) for a in self.actors]
        parts = self._await(refs, [[r] for r in range(self.num_workers)], t0 + bound)
        self._step_bound.record(time.monotonic() - t0)
        return parts

    def _object_store_evaluate(self, theta):
        bound, t0 = self._evaluation_bound(), time.monotonic()
        theta_ref = ray.put(theta)
        refs = [a.evaluate_sums.remote(theta_ref) for a in self.actors]
        parts = self._await(refs, [[r] for r in range(self.num_workers)], t0 + bound)
        self._eval_bound.record(time.monotonic() - t0)
        return parts

    def _with_recovery(self, call):
        while True:
            try:
                return call()
            except (*LOST_WORKER_ERRORS, ray.exceptions.RayTaskError) as e:
                # A leader's step fails (RayTaskError) when one of its node's workers dies.
                cause = e
            while True:
                try:
                    self._replace_lost_workers(cause)
                    break
                except (*LOST_WORKER_ERRORS, ray.exceptions.RayTaskError) as again:
                    if again is cause:
                        raise  # not a lost worker after all
                    # Another worker died while the pool recovered: recover again
                    # (train.max_worker_failures bounds the rounds).
                    cause = again

    def _replace_lost_workers(self, cause: Exception) -> None:
        """Start a new actor over each lost worker's rows (Ray places it wherever a
        CPU is free, another node if its node is gone). If none can start within
        placement_timeout, go on with the workers left over all the rows, down to
        min_workers. Count the losses; wire the planes anew."""
        self._drop_joining()
        self._unwire()
        lost = self._find_lost(getattr(cause, "ranks", []))
        if not lost:
            raise cause  # nothing to replace: not a lost worker after all
        reason = one_line(cause)
        self._count_losses(len(lost), reason)
        for r in lost:
            self._kill(r)
        survivors = [r for r in range(self.num_workers) if r not in lost]
        ranges, takers = self._plan(self.num_workers, survivors)  # the same ranges; the lost ones to new actors
        started = self._launch(ranges, takers, self.placement_timeout, "while starting as a replacement")
        for r in started:
            event = (f"worker {r} (rows {ranges[r][0]}-{ranges[r][1]}) lost ({reason}); replaced on node "
                     f"{started[r][1]['node_id'][:8]}, the step is recomputed")
            self.events.append(event)
            log.warning("rayprop: %s", event)
        if len(started) == len(lost):
            self._reshard(ranges, takers, started)
            return
        # Some could not start in time: go on with the survivors and the replacements
        # that did start (each in its lost worker's place for now), over all the rows.
        for r, (actor, info) in started.items():
            self.actors[r], self.info[r] = actor, info
        left = sorted([*survivors, *started])
        gone = [r for r in lost if r not in started]
        within = "(stopping: no wait)" if self.should_stop() else f"within {self.placement_timeout:g} s"
        which = ", ".join(f"worker {r} (rows {ranges[r][0]}-{ranges[r][1]})" for r in gone)
        if len(left) < self.min_workers:
            raise WorkerLostError(f"{which} lost ({one_line(reason, 60)}); no CPU for a replacement {within}, "
                                  f"and {len(left)} left is fewer than "
                                  f"cluster.min_workers={self.min_workers}")
        self._resize(*self._plan(len(left), left), {},
                     f"{which} lost ({one_line(reason, 80)}) and no CPU for a replacement "
                     f"{within}; the rows are split over the workers left")

    def _kill(self, rank: int) -> None:
        """End worker `rank`'s actor, and its process now if it is on this node: Ray ends
        a process that does not answer (stopped, hung) only some seconds later."""
        ray.kill(self.actors[rank], no_restart=True)
        info = self.info[rank] if rank < len(self.info) else None
        if info is not None and info["node_id"] == self._here:
            try:
                os.kill(info["pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # already gone

    def _find_lost(self, known: list[int]) -> list[int]:
        """`known` (named lost by the failed call) and every other worker that is dead or
        does not answer a ping within the step's hang bound, all pinged at once."""
        others = [r for r in range(self.num_workers) if r not in known]
        refs = {self.actors[r].ready.remote(): r for r in others}
        lost, pending = set(known), list(refs)
        deadline = time.monotonic() + self._step_bound.seconds()
        while pending:
            if self._give_up():
                raise StepAbandoned("stopped while looking for lost workers")
            left = deadline - time.monotonic()
            if left <= 0:
                lost.update(refs[ref] for ref in pending)  # alive, perhaps, but silent: hung
                break
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=min(SLICE_S, left))
            for ref in done:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    lost.add(refs[ref])
        return sorted(lost)

    def _count_losses(self, n: int, reason: str) -> None:
        self.failures += n
        if self.failures > self.max_failures:
            raise WorkerLostError(f"{self.failures} worker loss{'es' if self.failures != 1 else ''}, more "
                                  f"than train.max_worker_failures={self.max_failures} allows "
                                  f"(last: {reason})")

    def _launch(self, ranges, takers, timeout: float | None, when: str) -> dict:
        """New actors for the ranges no current actor takes, ready (their rows read):
        {index: (actor, info)}. One that dies meanwhile is a lost worker: counted
        against max_failures and started again. Those not ready within `timeout` (None:
        no limit) or when the job is asked to stop are stopped and left out."""
        starting = self._start_missing(ranges, takers)
        if timeout is None:
            # The pool's start: no bound until a worker has read its rows, then the
            # others get FACTOR times as long (at least FIRST_S): the rows are split
            # evenly, so a worker far behind hangs (workers/hang.py).
            deadline = self._StragglerDeadline(time.monotonic())
        else:
            deadline = time.monotonic() + timeout
        ready = {}
        try:
            while starting:
                done, died = self._wait_ready(starting, deadline, self.should_stop)
                ready.update(done)
                if timeout is None and not self.should_stop():
                    hung = [j for j in starting if j not in done and j not in died]
                    died.update({j: f"hung: its rows not read within {deadline(1) - deadline.t0:.0f} s, "
                                    f"{FACTOR:g}x the first worker's time" for j in hung})
                    deadline = self._StragglerDeadline(time.monotonic(), deadline.first_seconds)
                starting = {}
                for j, why in sorted(died.items()):
                    reason = f"worker {j} (rows {ranges[j][0]}-{ranges[j][1]}) died {when} ({why})"
                    self._count_losses(1, reason)
                    self.events.append(f"{reason}; started again")
                    log.warning("rayprop: %s; started again", reason)
                    actor = self._start(*ranges[j])
                    starting[j] = (actor, actor.ready.remote())
        except BaseException:
            for actor, _ in [*starting.values(), *ready.values()]:
                ray.kill(actor)
            raise
        errors = [info for _, info in ready.values() if info["error"]]
        if errors:
            for actor, _ in ready.values():
                ray.kill(actor)
            for info in errors:  # a file other than the job's fingerprint says: exit 2, the run FAILED
                raise_if_changed(info)
            if timeout is None:  # the first reading of the rows: the user's data (which side fails)
                raise InputError(worker_error(self._task.source_spec, errors[0]))
            raise WorkerLostError(f"a new worker could not read its rows: {errors[0]['error']}")
        return dict(sorted(ready.items()))

    # --- changing the pool's size (workers/reshard.py) ---
    def _plan(self, n: int, keep: list[int]) -> tuple[list, list]:
        """(row ranges for n workers, for each range the rank in `keep` that takes it or
        None for a new actor)."""
        ranges = self._task.ranges(n)
        takers = reassign([self.ranges[r] for r in keep], ranges)
        return ranges, [None if i is None else keep[i] for i in takers]

    def _start_missing(self, ranges, takers) -> dict:
        """New actors for the ranges no current actor takes: {index: (actor, ready ref)}."""
        started = {}
        for j, taker in enumerate(takers):
            if taker is None:
                actor = self._start(*ranges[j])
                started[j] = (actor, actor.ready.remote())
        return started

    class _StragglerDeadline:
        """A deadline for starting workers: none until the first of them is ready
        (`first_seconds` after t0), then t0 + max(FIRST_S, FACTOR x first_seconds)."""

        def __init__(self, t0: float, first_seconds: float | None = None):
            self.t0, self.first_seconds = t0, first_seconds

        def __call__(self, n_ready: int) -> float | None:
            if self.first_seconds is None:
                if not n_ready:
                    return None
                self.first_seconds = time.monotonic() - self.t0
            return self.t0 + max(FIRST_S, FACTOR * self.first_seconds)

    @staticmethod
    def _wait_ready(started: dict, deadline, should_stop=lambda: False) -> tuple[dict, dict]:
        """({index: (actor, info)} of the new actors that have read their rows by
        `deadline` (None: no limit; a callable: the deadline given how many are ready)
        or until `should_stop()`, looked at every SLICE_S; {index: why} of those that
        died meanwhile). The others (not placed, still starting, or hung) are stopped."""
        index = {ref: j for j, (_, ref) in started.items()}
        done, pending = [], list(index)
        while pending:
            until = deadline(len(done)) if callable(deadline) else deadline
            left = SLICE_S if until is None else max(0.0, min(SLICE_S, until - time.monotonic()))
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=left)
            done += ready
            until = deadline(len(done)) if callable(deadline) else deadline
            if (until is not None and time.monotonic() >= until) or should_stop():
                break
        ready, died = {}, {}
        for ref in done:
            try:
                ready[index[ref]] = (started[index[ref]][0], ray.get(ref))
            except LOST_WORKER_ERRORS as e:
                died[index[ref]] = one_line(e, 80)
        for j, (actor, _) in started.items():
            if j not in ready:
                ray.kill(actor)
        return dict(sorted(ready.items())), died

    def _reshard(self, ranges, takers, started: dict) -> None:
        """Move to len(ranges) workers at a step boundary: takers[j] (a current rank)
        or started[j] (a new, ready actor) holds ranges[j]; current actors that take no
        range are stopped; the planes are wired anew."""
        self._unwire()
        for r, actor in enumerate(self.actors):
            if r not in takers:
                ray.kill(actor)
        moves = {j: self.actors[t].reshard.remote(*ranges[j]) for j, t in enumerate(takers)
                 if t is not None and tuple(self.ranges[t]) != tuple(ranges[j])}
        actors = [started[j][0] if t is None else self.actors[t] for j, t in enumerate(takers)]
        infos = [started[j][1] if t is None else self.info[t] for j, t in enumerate(takers)]
        # The new layout first: if a moving worker dies now, recovery replaces it over its new rows.
        self.actors, self.info, self.ranges = actors, infos, ranges
        # A mover that dies or hangs is named (WorkersLost) by its new rank.
        infos = self._await(list(moves.values()), [[j] for j in moves], time.monotonic() + FIRST_S)
        for j, info in zip(moves, infos):
            self.info[j] = info
            raise_if_changed(info)  # it read a file that changed: stop the job
        assert sum(i["n_train"] for i in self.info) == self._m, "a re-shard must cover every training row"
        self._wire()

    def _resize(self, ranges, takers, started: dict, why: str) -> None:
        """_reshard to another size, and the line that says so."""
        old = self.num_workers
        try:
            self._reshard(ranges, takers, started)
        finally:  # the new layout counts even if a moving worker died in it (then recovered)
            if len(self.actors) != old:
                self.resizes.append(f"{old} -> {len(self.actors)} workers: {why}")

    def _free_slots(self) -> int:
        """Workers the cluster's free CPUs would take now (one call to Ray)."""
        return int(ray.available_resources().get("CPU", 0) // self._cpus)

    def _grow(self) -> None:
        """At a step boundary: let ready new workers join; else, at most every
        grow_check_seconds, start new workers on free CPUs (they read their rows while
        the steps go on)."""
        now = time.monotonic()
        if self._joining is not None:
            ranges, takers, started, deadline = self._joining
            refs = [ref for _, ref in started.values()]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(done) < len(refs):
                if now > deadline:  # the CPUs went elsewhere: try again later
                    self._drop_joining()
                return
            self._joining = None
            ready, _ = self._wait_ready(started, now)
            if any(info["error"] for _, info in ready.values()):
                ready = {}  # its rows were read fine at the start: try again later
            if len(ready) == len(started):
                self._resize(ranges, takers, ready, "free CPUs in the cluster; the rows are split anew")
            else:  # one died starting (its node left again): look again later
                for actor, _ in ready.values():
                    ray.kill(actor)
            return
        if self.num_workers >= self.max_workers or now - self._last_look < self.grow_check_seconds:
            return
        self._last_look = now
        free = self._free_slots()
        if free < 1:
            return
        n = min(self.max_workers, self.num_workers + free)
        ranges, takers = self._plan(n, list(range(self.num_workers)))
        self._joining = (ranges, takers, self._start_missing(ranges, takers), now + GROW_TIMEOUT_S)

    def _drop_joining(self) -> None:
        if self._joining is not None:
            for actor, _ in self._joining[2].values():
                ray.kill(actor)
            self._joining = None

    def close(self) -> None:
        self._drop_joining()
        self._unwire()
        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)  # a hung worker's process too (Ray ends it with SIGKILL)
        self.actors = []
