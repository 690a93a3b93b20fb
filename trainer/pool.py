"""The worker-pool protocol: what the coordinator needs from its shard workers.

The coordinator drives this interface and nothing else, so it runs the same over
the in-process pool (local mode, and the tests' double) and over Ray actors.
Results come back in rank order (worker 0 first), which fixes the order of the
floating-point additions in the reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from trainer.errors import Stopped, WorkerLostError  # noqa: F401 (raised by pools, part of the protocol)


class StepAbandoned(Stopped):
    """The job's stop request (Ctrl-C, SIGTERM) came while the pool waited for its
    workers: the step (or evaluation) in flight did not happen, and the parameters
    are those after the last completed step. A pool raises it from gradient_sums or
    evaluate_sums rather than wait out a worker that does not answer."""


@dataclass
class ShardSums:
    """Eq. 12 sums over the batch members in one worker's range."""

    # flat, theta's layout: GW[l] and Gb[l] summed over the shard's columns. float32
    # runs: float64 integers, the exact sum of the blocks' sums at the step's scales.
    grad: np.ndarray
    loss_sum: float  # sum of per-example losses
    n: int  # examples summed (may be 0 when no batch member falls in the range)
    compute_seconds: float = 0.0  # time spent in the worker on this step
    # A node's sums (several workers added on their node): each worker's (compute_seconds,
    # n), by its slot on the node; None for one worker's sums.
    per_worker: list[tuple[float, int]] | None = None
    # float32: per tensor (W1, b1, W2, ...), the largest |block sum| before scaling
    # (trainer/exact_sum.py); None on the float64 path.
    block_max: np.ndarray | None = None


@dataclass
class EvalSums:
    """Forward-only sums over a worker's validation rows."""

    loss_sum: float
    correct: int  # correct predictions (classification), else 0
    count: int  # predictions made (examples, or examples x outputs for binary)
    n: int  # examples


class WorkerPool(Protocol):
    # One line per change of the pool's size ("2 -> 3 workers: why"). A pool may change
    # size only inside gradient_sums or evaluate_sums, i.e. at a step boundary, and only
    # in a way that leaves every call's result the same (the same rows, all of them).
    resizes: list[str]

    @property
    def num_workers(self) -> int: ...

    @property
    def spec(self):
        """The network's NetworkSpec (float32's exact sum needs its tensors)."""

    @property
    def num_nodes(self) -> int:
        """Machines the workers run on (1 in local mode)."""

    @property
    def n_train(self) -> int:
        """Training examples across all shards."""

    @property
    def n_val(self) -> int:
        """Validation examples across all shards."""

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int, should_stop=None,
                      scales=None) -> list[ShardSums]:
        """Each worker's sums for batch k of `epoch` at parameters theta, in rank order.
        `should_stop()`: the job's stop request (None: none), which a pool that waits
        for workers looks at while it waits (StepAbandoned). scales: float32's
        per-tensor exponents (trainer/exact_sum.py); None for float64."""

    def evaluate_sums(self, theta: np.ndarray, should_stop=None) -> list[EvalSums]:
        """Each worker's sums over its validation rows, in rank order."""

    def close(self) -> None: ...
