"""The body of one Ray shard worker: a ShardWorker over its rows, and its side of its
node's shared-memory plane (workers/node_plane.py).

workers/ray_pool.py starts these actors and gives them their rows, and its transport
(workers/transports.py) wires the planes and drives the steps; this module is what
runs inside each actor process (named `ray::ShardActor`, which benchmarks/memory.py
looks for).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray

from trainer.errors import DataChangedError, InputError
from trainer.pool import EvalSums, ShardSums
from workers.data.storage_env import storage_variables
from workers.node_plane import OP_EVAL, OP_STEP
from workers.plane_host import PlaneHost
from workers.plane_peer import PlanePeer
from workers.shard import ShardTask
from workers.solo_run import SoloRun

ATTACH_TIMEOUT_S = 60  # for the workers of a node to attach to its shared memory
# A diverging step overflows in the worker: the coordinator sees the NaN and ends the
# job with its one line (as experiments/jobs/fit.py does in local mode); numpy's warnings
# would reach the console besides it through Ray's log forwarding.
def quiet():
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def plane_layout(spec, exact: bool) -> tuple[int, object]:
    """(extra, sums dtype) of a node's plane for this network: float32 jobs with exact
    sums (train.exact_sums) carry the step's scale exponents after theta and each slot's
    per-tensor maxima after its float64 integer sums (trainer/exact_sum.py); others nothing."""
    if exact and np.dtype(spec.dtype) == np.float32:
        return 2 * spec.L, np.float64
    return 0, None


def add_evals(replies) -> EvalSums:
    """One EvalSums from a node's (n, loss_sum, correct, count) replies."""
    total = EvalSums(0.0, 0, 0, 0)
    for n, loss_sum, correct, count in replies:
        total.n, total.loss_sum = total.n + n, total.loss_sum + loss_sum
        total.correct, total.count = total.correct + correct, total.count + count
    return total


def node_sums(plane: PlaneHost, n: int, loss_sum: float, seconds: float,
              per_worker: list[tuple[float, int]] | None = None) -> ShardSums:
    """A node's reduced slot 0 as ShardSums: the sums, and float32's maxima after them."""
    P, row = plane.size, plane.sums[0]
    return ShardSums(row[:P], loss_sum, n, seconds, per_worker=per_worker,
                     block_max=row[P:].copy() if plane.extra else None)


class ShardActor:
    """The actor body: a ShardWorker over rows [lo, hi) of the task's source, and its
    side of its node's shared-memory plane (a peer, or the host when it leads the node)."""

    def __init__(self, task: ShardTask, lo: int, hi: int, cpus: int):
        from threadpoolctl import threadpool_limits

        threadpool_limits(cpus)  # BLAS threads = the CPUs Ray reserved for this actor
        self.cpus = cpus
        self._hold(task, lo, hi)

    def _hold(self, task: ShardTask, lo: int, hi: int) -> None:
        """Everything the actor holds for a job, made anew: its rows read from the
        task's source, no plane, no test hook."""
        self.task, self.lo, self.hi, self.error = task, lo, hi, None
        self.data_changed = False  # the error is a file that differs from the job's fingerprint
        self.rows_read = hi - lo  # by the last (re)opening of its range
        self.peer: PlanePeer | None = None  # this worker's side of its node's plane
        self.plane: PlaneHost | None = None  # the plane it hosts, when it leads its node
        self.delay_per_row = 0.0  # a test and benchmark hook (slow_down)
        self.solo: SoloRun | None = None  # a one-worker pool's run in this process (workers/solo.py)
        try:
            self.source = task.open_source()
            self.worker = task.open(lo, hi, self.source, threads=self.cpus)  # float32 blocks on its CPUs
        except InputError as e:  # reported by ready(), so the driver can exit 2 with it
            self.error, self.data_changed = str(e), isinstance(e, DataChangedError)

    def renew(self, task: ShardTask, lo: int, hi: int) -> dict:
        """Serve another job in this process (a sweep's next trial, workers/actor_keeper.py):
        its rows read fresh from its own source, and nothing of the last job kept (its
        rows, source, plane, exact-sum buffers, test hook); what ready() says after."""
        self.detach()
        if getattr(self, "worker", None) is not None:
            self.worker.close()
        for held in ("worker", "source"):  # the last job's arrays go before the new ones are read
            self.__dict__.pop(held, None)
        self._hold(task, lo, hi)
        return self.ready()

    def ready(self) -> dict:
        """What this actor holds, and where; or the input error it met."""
        ctx = ray.get_runtime_context()
        info: dict[str, Any] = {"error": self.error, "data_changed": self.data_changed, "node_id": ctx.get_node_id(),
                "pid": os.getpid(), "rows": (self.lo, self.hi)}
        if self.error is not None:  # which side fails, and why: workers/data/storage_env.py
            # The node's address as the cluster knows it (the one `ray status` shows).
            ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == info["node_id"]), None)
            info.update(node_ip=ip, storage_env=storage_variables(self.task.source_spec))
        else:
            # Counted here, in the worker, from what it holds and what its reader read.
            info.update(n_train=self.worker.n_train, n_val=self.worker.n_val,
                        rows_held=self.worker.n_train + self.worker.n_val, rows_read=self.rows_read,
                        row_groups_read=getattr(self.source, "last_row_groups_read", None))
        return info

    def reshard(self, lo: int, hi: int) -> dict:
        """Hold rows [lo, hi) instead (the pool changed size): the rows it holds already
        stay in memory; only the others are read. A file changed since the job's
        fingerprint is reported as ready() reports errors (the driver stops the job)."""
        self.detach()  # the pool wires the planes anew afterwards
        held = (self.lo, self.hi, self.worker)
        self.rows_read = (hi - lo) - max(min(hi, self.hi) - max(lo, self.lo), 0)
        self.lo, self.hi = lo, hi
        try:
            self.worker = self.task.open(lo, hi, self.source, held, threads=self.cpus)
            self.worker.delay_per_row = self.delay_per_row  # the same (slow) worker, other rows
        except DataChangedError as e:
            self.error, self.data_changed = str(e), True
        return self.ready()

    def slow_down(self, delay_per_row: float) -> None:
        """A test and benchmark hook: make this worker a straggler by sleeping this long
        per row it computes (ShardWorker.delay_per_row), from now on, whatever rows it holds."""
        self.delay_per_row = self.worker.delay_per_row = delay_per_row

    # --- the object-store path, and validation ---
    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int, scales=None) -> ShardSums:
        with quiet():
            return self.worker.gradient_sums(theta, epoch, k, scales=scales)

    def evaluate_sums(self, theta: np.ndarray) -> EvalSums:
        with quiet():
            return self.worker.evaluate_sums(theta)

    # --- a one-worker pool's run, in this process (workers/solo.py) ---
    def solo_start(self, theta: np.ndarray, optimizer, plan, epochs: int, resume, schedule, asks=None) -> None:
        """Train over this worker's rows in a thread of this actor, from `resume`; the
        driver takes the events with solo_poll (workers/solo_run.py)."""
        assert self.solo is None or not self.solo.running, "one run at a time"
        self.solo = SoloRun(self.worker, theta, optimizer, plan, epochs, resume, schedule, quiet, asks)

    def solo_poll(self, seconds: float, answer: tuple[int, bool] | None = None) -> list[tuple]:
        """The run's events after at most `seconds`; `answer`: (epoch, stop) for its last ask."""
        assert self.solo is not None, "solo_start comes first"
        if answer is not None:
            self.solo.answer(*answer)
        return self.solo.poll(seconds)

    def solo_stop(self) -> None:
        if self.solo is not None:
            self.solo.stop()

    # --- the shared-memory plane ---
    def _step(self, theta, epoch, k, out):
        """A step from the plane's buffers: theta (and after it a float32 step's scale
        exponents) in, the sums (and after them the per-tensor maxima) out."""
        P = self.worker.spec.size
        with quiet():  # in the plane's thread too: numpy's error state is per thread
            if self.worker.exact:
                s = self.worker.gradient_sums(theta[:P], epoch, k, out[:P], scales=theta[P:])
                out[P:] = s.block_max
            else:
                s = self.worker.gradient_sums(theta, epoch, k, out)
        return s.n, s.loss_sum, s.compute_seconds

    def _evaluate(self, theta):
        with quiet():
            e = self.worker.evaluate_sums(theta[:self.worker.spec.size])
        return e.n, e.loss_sum, e.correct, e.count

    def attach(self, ticket: tuple[str, str], slot: int) -> None:
        """Answer steps from the plane of `ticket` (its host's, see PlaneHost.ticket) in a
        thread of this actor from now on."""
        self.detach()
        self.peer = PlanePeer(ticket, slot, self._step, self._evaluate, ATTACH_TIMEOUT_S)

    def host(self, slots: int) -> tuple[str, str]:
        """Lead this node: host a plane with `slots` slots (slot 0 is this worker's own);
        returns its ticket for the node's other workers."""
        self.detach()
        spec = self.worker.spec
        self.plane = PlaneHost(spec.size, spec.dtype, slots, *plane_layout(spec, self.worker.exact))
        return self.plane.ticket

    def _hosted(self) -> PlaneHost:
        assert self.plane is not None, "the pool calls host() before the plane's other steps"
        return self.plane

    def accept(self, peers: int) -> None:
        self._hosted().accept(peers, ATTACH_TIMEOUT_S)

    def node_step(self, theta: np.ndarray, epoch: int, k: int, timeout: float, scales=None) -> ShardSums:
        """This node's sums for the step: the peers' and this worker's own, added. Peers
        silent for `timeout` seconds (the pool's hang bound) raise PeersSilent."""
        plane = self._hosted()
        plane.send(OP_STEP, theta, epoch, k, scales)  # the peers start at once
        t0 = time.monotonic()
        own = self._step(plane.theta, epoch, k, plane.sums[0])
        replies = {0: own, **plane.gather(max(timeout - (time.monotonic() - t0), 0.001))}
        n, loss_sum, seconds = plane.reduce(replies)
        # Each worker's time, so that the driver sees a straggler inside a node too.
        per_worker = [(replies[s][2], replies[s][0]) for s in sorted(replies)]
        return node_sums(plane, n, loss_sum, seconds, per_worker)

    def node_evaluate(self, theta: np.ndarray, timeout: float) -> EvalSums:
        """This node's validation sums: the peers' and this worker's own, added."""
        plane = self._hosted()
        plane.send(OP_EVAL, theta)
        t0 = time.monotonic()
        own = self._evaluate(plane.theta)
        replies = plane.gather(max(timeout - (time.monotonic() - t0), 0.001))
        return add_evals([own, *replies.values()])

    def detach(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None
        if self.plane is not None:
            self.plane.close()
            self.plane = None
