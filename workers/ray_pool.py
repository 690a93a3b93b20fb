"""The Ray actor pool: one ShardWorker per actor, same interface as LocalPool.

Each actor opens the data source itself and reads only its own row range, so the
driver never loads or ships the data set. Per step the parameters go out once
(`ray.put`, one object shared by every actor) and the shard sums come back in
rank order. Actors are spread over the nodes (SPREAD) and each limits its BLAS
to the CPUs Ray gave it, so two actors on one node do not fight over cores.

Training steps can go through a Ray Compiled Graph (cluster.compiled_graph, opt-in): the
coordinator writes (theta, epoch, k) into shared-memory channels that the actors
read in a loop, and reads their sums back the same way, with no task submission,
no object-store put and no scheduler on the path. Measured here
(benchmarks/ray_workers.py) that cuts the per-step overhead to a fraction of the
put/get path's. Ray Client drivers cannot run compiled graphs, and a Ray without
them falls back to the plain path, and so do workers on other nodes than the
driver's (across nodes the graph's first step hung on this Ray; tests/test_multinode.py
runs that case); validation (once per epoch) always uses the plain path.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import ray

from trainer.config import ClusterConfig
from trainer.errors import InputError
from trainer.network import NetworkSpec
from trainer.pool import EvalSums, ShardSums, WorkerLostError
from workers.shard import ShardTask
from workers.sources import open_source

log = logging.getLogger(__name__)

# How long the coordinator waits for one step's sums through the compiled graph.
# Ray's default (10 s) is shorter than a wide network's step on a slow node.
STEP_TIMEOUT_S = 600
PLACEMENT_TIMEOUT_S = 120  # for a replacement worker to start and read its rows
ALIVE_TIMEOUT_S = 30  # a worker that cannot answer a ping in this long counts as lost
# What a dead worker process or node looks like to the driver.
LOST_WORKER_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.RayChannelError)


def _no_torch_in_channels() -> None:
    """Keep Ray's compiled-graph channels from importing torch in this actor.

    Where torch is installed, the actor's compiled-graph loop imports it (seen: 4-6 s
    before the first step) only to check for accelerator tensors; rayprop sends numpy
    arrays. The flag is a private field of Ray's channel context, so any change to it
    in another Ray version is ignored: it only costs the seconds back.
    """
    try:
        from ray.experimental.channel.common import ChannelContext

        ChannelContext.get_current()._torch_available = False
    except Exception:
        pass


class ShardActor:
    """The actor body: builds a ShardWorker over rows [lo, hi) of the task's source."""

    def __init__(self, task: ShardTask, lo: int, hi: int, cpus: int):
        from threadpoolctl import threadpool_limits

        threadpool_limits(cpus)  # BLAS threads = the CPUs Ray reserved for this actor
        _no_torch_in_channels()
        self.lo, self.hi, self.error = lo, hi, None
        try:
            self.source = open_source(task.source_spec)
            self.worker = task.open(lo, hi, self.source)
        except InputError as e:  # reported by ready(), so the driver can exit 2 with it
            self.error = str(e)

    def ready(self) -> dict:
        """What this actor holds, and where; or the input error it met."""
        ctx = ray.get_runtime_context()
        info = {"error": self.error, "node_id": ctx.get_node_id(), "pid": os.getpid(),
                "rows": (self.lo, self.hi)}
        if self.error is None:
            # Counted here, in the worker, from what it holds and what its reader read.
            info.update(n_train=self.worker.n_train, n_val=self.worker.n_val,
                        rows_held=self.worker.n_train + self.worker.n_val,
                        row_groups_read=getattr(self.source, "last_row_groups_read", None))
        return info

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int) -> ShardSums:
        return self.worker.gradient_sums(theta, epoch, k)

    def evaluate_sums(self, theta: np.ndarray) -> EvalSums:
        return self.worker.evaluate_sums(theta)


class RayPool:
    def __init__(self, task: ShardTask, cluster: ClusterConfig, workers: int, max_failures: int,
                 strategy: str = "SPREAD", placement_timeout: float = PLACEMENT_TIMEOUT_S):
        """cluster: the config's cluster section, whole (cpus_per_worker, compiled_graph).
        max_failures: workers that may be lost (and replaced) over the pool's life
        (train.max_worker_failures)."""
        spec = task.spec
        self._actor = ray.remote(ShardActor).options(num_cpus=cluster.cpus_per_worker,
                                                     scheduling_strategy=strategy)
        self._task, self._cpus = task, cluster.cpus_per_worker
        self.ranges = task.ranges(workers)
        self.max_failures, self.placement_timeout = max_failures, placement_timeout
        self.failures = 0
        self.events: list[str] = []  # one line per worker lost and replaced
        self._dag = None
        self.actors = [self._start(lo, hi) for lo, hi in self.ranges]
        try:
            self.info = ray.get([a.ready.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise
        errors = [i["error"] for i in self.info if i["error"]]
        if errors:
            self.close()
            raise InputError(errors[0])
        self._m = sum(i["n_train"] for i in self.info)
        self._m_val = sum(i["n_val"] for i in self.info)
        if cluster.compiled_graph:
            self._dag = self._compile(spec, required=False)

    def _start(self, lo: int, hi: int):
        return self._actor.remote(self._task, lo, hi, self._cpus)

    def _compile(self, spec: NetworkSpec, required: bool):
        why_not = None
        if ray.util.client.ray.is_connected():
            why_not = "a Ray Client driver is not on the cluster"
        elif {i["node_id"] for i in self.info} != {ray.get_runtime_context().get_node_id()}:
            why_not = "workers on other nodes than the driver's"
        if why_not:
            if required:
                raise RuntimeError(f"no compiled graph: {why_not}")
            return None
        _no_torch_in_channels()  # the driver reads channels too
        try:
            from ray.dag import InputNode, MultiOutputNode

            with InputNode() as inp:  # execute(theta, epoch, k)
                dag = MultiOutputNode([a.gradient_sums.bind(inp[0], inp[1], inp[2]) for a in self.actors])
            # Channels sized for theta and the sums up front, so they never resize.
            nbytes = spec.size * np.dtype(spec.dtype).itemsize
            return dag.experimental_compile(_buffer_size_bytes=max(int(1.1 * nbytes) + (1 << 16), 1 << 20))
        except Exception as e:  # an older Ray, or a cluster that cannot make channels
            if required:
                raise
            log.warning("rayprop: Ray compiled graph unavailable (%s); using ray.put/ray.get", e)
            return None

    @property
    def compiled(self) -> bool:
        return self._dag is not None

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

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int) -> list[ShardSums]:
        # A step is a pure function of (theta, epoch, k) (DESIGN section 2), so after
        # a worker is replaced the same call gives exactly the sums it would have.
        return self._with_recovery(lambda: self._gradient_sums(theta, epoch, k))

    def evaluate_sums(self, theta: np.ndarray) -> list[EvalSums]:
        return self._with_recovery(lambda: self._evaluate_sums(theta))

    def _gradient_sums(self, theta, epoch, k):
        if self._dag is not None:
            # The sums' arrays are views of the channels' buffers, valid until the next
            # step: the coordinator adds them into its own buffer right away.
            return [ref.get(timeout=STEP_TIMEOUT_S) for ref in self._dag.execute(theta, epoch, k)]
        theta_ref = ray.put(theta)  # one copy in the object store, read by every actor
        return ray.get([a.gradient_sums.remote(theta_ref, epoch, k) for a in self.actors])

    def _evaluate_sums(self, theta):
        theta_ref = ray.put(theta)
        return ray.get([a.evaluate_sums.remote(theta_ref) for a in self.actors])

    def _with_recovery(self, call):
        while True:
            try:
                return call()
            except LOST_WORKER_ERRORS as e:
                self._replace_lost_workers(e)

    def _replace_lost_workers(self, cause: Exception) -> None:
        """Start a new actor over each lost worker's rows (Ray places it wherever a
        CPU is free, another node if its node is gone); count the losses."""
        self._teardown_dag()  # a graph with a dead actor in it cannot run again
        lost = [r for r, a in enumerate(self.actors) if not self._alive(a)]
        if not lost:
            raise cause  # nothing to replace: not a lost worker after all
        self.failures += len(lost)
        reason = (str(cause).splitlines() or [type(cause).__name__])[0]
        if self.failures > self.max_failures:
            raise WorkerLostError(f"{self.failures} worker loss{'es' if self.failures != 1 else ''}, more "
                                  f"than train.max_worker_failures={self.max_failures} allows "
                                  f"(last: {reason})")
        for r in lost:
            lo, hi = self.ranges[r]
            ray.kill(self.actors[r])
            actor = self._start(lo, hi)
            try:
                info = ray.get(actor.ready.remote(), timeout=self.placement_timeout)
            except (ray.exceptions.GetTimeoutError, *LOST_WORKER_ERRORS):
                ray.kill(actor)
                raise WorkerLostError(f"worker {r} (rows {lo}-{hi}) was lost and no node could take "
                                      f"its place within {self.placement_timeout:g} s ({reason})") from None
            self.actors[r], self.info[r] = actor, info
            event = (f"worker {r} (rows {lo}-{hi}) lost ({reason}); replaced on node "
                     f"{info['node_id'][:8]}, the step is recomputed")
            self.events.append(event)
            log.warning("rayprop: %s", event)
        # No new compiled graph after a loss: the put/get path from here on. (A graph
        # torn down with a dead actor in it has crashed the driver at exit on Ray
        # 2.60; building another only adds to what must be torn down.)

    @staticmethod
    def _alive(actor) -> bool:
        try:
            ray.get(actor.ready.remote(), timeout=ALIVE_TIMEOUT_S)
            return True
        except (ray.exceptions.GetTimeoutError, *LOST_WORKER_ERRORS):
            return False

    def _teardown_dag(self) -> None:
        dag, self._dag = self._dag, None
        if dag is None:
            return
        quiet = logging.getLogger("ray.dag.compiled_dag_node")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # Ray logs a traceback for each dead actor here
        try:
            dag.teardown()
        except Exception as e:  # an actor already gone; killing them still frees all
            log.debug("compiled graph teardown: %s", e)
        finally:
            quiet.setLevel(level)

    def close(self) -> None:
        self._teardown_dag()
        for a in getattr(self, "actors", []):
            ray.kill(a)
        self.actors = []
