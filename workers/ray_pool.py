"""The Ray actor pool: one ShardWorker per actor, same interface as LocalPool.

Each actor opens the data source itself and reads only its own row range, so the
driver never loads or ships the data set. Per step the parameters go out once
(`ray.put`, one object shared by every actor) and the shard sums come back in
rank order. Actors are spread over the nodes (SPREAD) and each limits its BLAS
to the CPUs Ray gave it, so two actors on one node do not fight over cores.
"""

from __future__ import annotations

import os

import numpy as np
import ray

from trainer.batches import BatchPlan
from trainer.errors import InputError
from trainer.network import NetworkSpec
from trainer.pool import EvalSums, ShardSums
from workers.examples import Schema, split_rows
from workers.shard import open_shard, shard_ranges
from workers.sources import open_source


class ShardActor:
    """The actor body: builds a ShardWorker over rows [lo, hi) of the source."""

    def __init__(self, spec: NetworkSpec, plan: BatchPlan, source_spec: str, schema: Schema,
                 lo: int, hi: int, split: tuple[float, int], cpus: int):
        from threadpoolctl import threadpool_limits

        threadpool_limits(cpus)  # BLAS threads = the CPUs Ray reserved for this actor
        self.lo, self.hi, self.error = lo, hi, None
        try:
            self.source = source = open_source(source_spec)
            train_rows, val_rows = split_rows(source.num_rows, *split)
            self.worker = open_shard(spec, plan, source, schema, lo, hi, train_rows, val_rows)
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
    def __init__(self, spec: NetworkSpec, plan: BatchPlan, source_spec: str, num_rows: int,
                 schema: Schema, split: tuple[float, int], workers: int, cpus_per_worker: int = 1,
                 strategy: str = "SPREAD"):
        actor = ray.remote(ShardActor).options(num_cpus=cpus_per_worker, scheduling_strategy=strategy)
        self.actors = [actor.remote(spec, plan, source_spec, schema, lo, hi, split, cpus_per_worker)
                       for lo, hi in shard_ranges(num_rows, workers)]
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
        theta_ref = ray.put(theta)  # one copy in the object store, read by every actor
        return ray.get([a.gradient_sums.remote(theta_ref, epoch, k) for a in self.actors])

    def evaluate_sums(self, theta: np.ndarray) -> list[EvalSums]:
        theta_ref = ray.put(theta)
        return ray.get([a.evaluate_sums.remote(theta_ref) for a in self.actors])

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            ray.kill(a)
        self.actors = []
