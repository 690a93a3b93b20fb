"""The in-process pool: local mode, and the coordinator's test double.

It calls its shard workers one after the other in this process. With one worker
it is rayprop's single-process mode; with several it shows, without Ray, that
uneven shards give the same training as one, and that moving rows between workers
(a rebalance, workers/rebalance.py) does not change it either.
"""

from __future__ import annotations

import os

import numpy as np

from trainer.pool import EvalSums, ShardSums
from workers.rebalance import PoolBalance, keeps_weights, rows_to_read
from workers.shard import ShardTask, ShardWorker


class LocalPool:
    solo = False  # its steps run in this process already (a RayPool of one worker: workers/solo.py)

    def __init__(self, workers: list[ShardWorker], task: ShardTask | None = None, source=None,
                 ranges: list[tuple[int, int]] | None = None, rebalance_seconds: float = 0):
        """task, source, ranges: what opens workers over other rows, and the source rows
        [lo, hi) each worker holds (needed to rebalance).
        rebalance_seconds: cluster.rebalance_seconds (0: never). Workers run one after the
        other here, so a rebalance does not shorten a step; it is the same move the Ray
        pool makes, for tests."""
        assert workers, "a pool needs at least one worker"
        self.workers = workers
        self.resizes: list[str] = []  # an in-process pool keeps its size
        self.events: list[str] = []  # ... and loses no worker
        self.worker_seconds: list[float] = [0.0] * len(workers)  # each worker's compute in the last step
        self._task, self._source, self.ranges = task, source, ranges
        rebalances = rebalance_seconds and len(workers) > 1 and task is not None and keeps_weights(task)
        self.balance = PoolBalance(task, rebalance_seconds) if rebalances else None

    @classmethod
    def open(cls, task: ShardTask, workers: int = 1, source=None, rebalance_seconds: float = 0) -> LocalPool:
        """`workers` shard workers over task's rows, in this process; reading their rows
        is where bad values surface (an InputError)."""
        source = source or task.open_source()
        ranges = task.ranges(workers)
        # The workers run one after the other: each may spread its blocks over every CPU.
        threads = len(os.sched_getaffinity(0))
        return cls([task.open(lo, hi, source, threads=threads) for lo, hi in ranges], task, source, ranges,
                   rebalance_seconds)

    @classmethod
    def open_blocks(cls, task: ShardTask, counts: list[int], source=None) -> LocalPool:
        """Workers taking counts[r] consecutive blocks each (uneven unions of blocks)."""
        threads = len(os.sched_getaffinity(0))
        return cls([task.open(lo, hi, source, threads=threads) for lo, hi in task.block_ranges(counts)])

    @property
    def spec(self):
        return self.workers[0].spec

    @property
    def num_nodes(self) -> int:
        return 1

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def n_train(self) -> int:
        return sum(w.n_train for w in self.workers)

    @property
    def n_val(self) -> int:
        return sum(w.n_val for w in self.workers)

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int, should_stop=None,
                      scales=None) -> list[ShardSums]:
        # In-process calls never wait for another process: nothing to give up on a stop.
        if self.balance is not None:
            self._rebalance()  # a step boundary
        parts = [w.gradient_sums(theta, epoch, k, scales=scales) for w in self.workers]
        self.worker_seconds = [p.compute_seconds for p in parts]
        if self.balance is not None:
            self.balance.record(self.worker_seconds, [p.n for p in parts])
        return parts

    def _rebalance(self) -> None:
        balance, old, task = self.balance, self.ranges, self._task
        assert balance is not None and old is not None and task is not None  # a pool that rebalances
        proposal = balance.propose(old)
        if proposal is None:
            return
        new, move = proposal
        for r, ((lo, hi), worker) in enumerate(zip(new, self.workers)):
            if (lo, hi) != old[r]:
                moved = task.open(lo, hi, self._source, (*old[r], worker), threads=worker.threads)
                moved.delay_per_row = worker.delay_per_row  # the same (slow) worker, other rows
                self.workers[r] = moved
        self.ranges = new
        balance.moved(move, old, new, rows_to_read(old, new))

    def evaluate_sums(self, theta: np.ndarray, should_stop=None) -> list[EvalSums]:
        return [w.evaluate_sums(theta) for w in self.workers]

    def close(self) -> None:
        self.workers = []
