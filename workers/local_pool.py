"""The in-process pool: local mode, and the coordinator's test double.

It calls its shard workers one after the other in this process. With one worker
it is rayprop's single-process mode; with several it shows, without Ray, that
uneven shards give the same training as one.
"""

from __future__ import annotations

import numpy as np

from trainer.pool import EvalSums, ShardSums
from workers.shard import ShardTask, ShardWorker


class LocalPool:
    def __init__(self, workers: list[ShardWorker]):
        assert workers, "a pool needs at least one worker"
        self.workers = workers
        self.resizes: list[str] = []  # an in-process pool keeps its size

    @classmethod
    def open(cls, task: ShardTask, workers: int = 1, source=None) -> "LocalPool":
        """`workers` shard workers over task's rows, in this process; reading their rows
        is where bad values surface (an InputError)."""
        return cls([task.open(lo, hi, source) for lo, hi in task.ranges(workers)])

    @property
    def num_nodes(self) -> int:
        return 1

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def m(self) -> int:
        return sum(w.n_train for w in self.workers)

    @property
    def m_val(self) -> int:
        return sum(w.n_val for w in self.workers)

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int, should_stop=None) -> list[ShardSums]:
        # In-process calls never wait for another process: nothing to give up on a stop.
        return [w.gradient_sums(theta, epoch, k) for w in self.workers]

    def evaluate_sums(self, theta: np.ndarray, should_stop=None) -> list[EvalSums]:
        return [w.evaluate_sums(theta) for w in self.workers]

    def close(self) -> None:
        self.workers = []
