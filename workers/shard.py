"""The shard worker: Eq. 12 sums over the batch members in its own example range.

A plain class; the Ray pool wraps it as an actor and the local pool calls it in
process. It holds the training examples with indices [lo, hi) of the batch plan
(rows of X, target columns of Y) and its part of the validation set. Per step it
gets theta and (epoch, k), works out the batch members in its range from the plan
itself, and returns their SUMS; it never divides by m, never updates weights,
never logs (docs/design.md section 3).

In float32 the sums are taken block by block and come back as an exact float64 sum of
integers (workers/block_sums.py, trainer/exact_sum.py), so that they do not depend on
how the blocks are split over workers; float64 keeps one pass over all the members.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainer.batches import BatchPlan, even_blocks
from trainer.costs import COSTS
from trainer.errors import ConfigError
from trainer.exact_sum import DEFAULT_SCALE
from trainer.network import NetworkSpec, Workspace, backward_sums, forward
from workers.block_sums import BlockSums
from trainer.pool import EvalSums, ShardSums

if TYPE_CHECKING:
    from workers.data.examples import Schema

EVAL_CHUNK = 4096  # evaluation forward passes (validation, `rayprop evaluate` and `predict`) run
# in chunks of this many examples


class ShardWorker:
    def __init__(self, spec: NetworkSpec, plan: BatchPlan, lo: int, X: np.ndarray,
                 Y: np.ndarray, X_val: np.ndarray | None = None,
                 Y_val: np.ndarray | None = None, encoding: str = "one_hot", threads: int = 1):
        """X: (n, n_0) training rows lo..lo+n-1; Y: (n, n_L) their targets as rows.

        Targets are stored as columns (n_L, n) once here, since the network wants
        them so and a batch gather then copies n_L short rows. threads: CPUs the worker
        may use for its blocks (float32).
        """
        dt = np.dtype(spec.dtype)
        self.spec, self.plan, self.lo, self.encoding = spec, plan, lo, encoding
        self.X = np.ascontiguousarray(X, dtype=dt)
        self.Y = np.ascontiguousarray(Y.T, dtype=dt)
        self.hi = lo + self.X.shape[0]
        empty = np.zeros((0, spec.layers[0]), dt), np.zeros((0, spec.layers[-1]), dt)
        self.X_val = np.ascontiguousarray(X_val if X_val is not None else empty[0], dtype=dt)
        self.Y_val = np.ascontiguousarray((Y_val if Y_val is not None else empty[1]).T, dtype=dt)
        self._grad = np.empty(spec.size, dt)
        cap = min(plan.batch_size, max(self.X.shape[0], 1))
        self.threads = threads  # a worker opened over other rows (a rebalance) keeps them
        self.exact = dt == np.float32 and plan.exact  # train.exact_sums
        self._blocks = None
        if self.exact:
            runs = plan.block_runs(lo, self.hi, slice(0, self.hi - lo))
            self._blocks = BlockSums(spec, self.X, self.Y, cap, max(len(runs), 1), threads)
            self._grad = np.empty(spec.size, np.float64)
            cap = 1  # the block path has its own buffers
        self._ws = Workspace(spec, cap)
        # Gather buffers for mini-batches; the full batch uses X and Y as they are.
        self._xb = np.empty(cap * spec.layers[0], dt)
        self._yb = np.empty(cap * spec.layers[-1], dt)
        # A test and benchmark hook: a slower CPU, made by sleeping this long per row
        # computed, inside the timed compute (tests/test_rebalance.py forces a straggler).
        self.delay_per_row = 0.0

    def close(self) -> None:
        """Stop the block threads (float32 on several CPUs); the arrays go with the object."""
        if self._blocks is not None:
            self._blocks.close()

    @property
    def n_train(self) -> int:
        return self.X.shape[0]

    @property
    def n_val(self) -> int:
        return self.X_val.shape[0]

    def gradient_sums(self, theta: np.ndarray, epoch: int, k: int,
                      out: np.ndarray | None = None, scales=None) -> ShardSums:
        """Eq. 12 sums over the members of batch k of `epoch` in this worker's range,
        written into `out` (flat, theta's layout) or the worker's own buffer.

        float32: `out` is float64 and receives the blocks' integer sums at `scales`
        (one power-of-two exponent per tensor, trainer/exact_sum.py)."""
        t0 = time.perf_counter()
        grad = self._grad if out is None else out
        members = self.plan.shard_batch(epoch, k, self.lo, self.hi)
        if self._blocks is not None:  # float32: per block, summed exactly
            runs = self.plan.block_runs(self.lo, self.hi, members)
            if scales is None:
                scales = np.full(2 * self.spec.L, DEFAULT_SCALE)
            loss_sum, block_max = self._blocks.compute(theta, members, runs, scales, grad)
            n = sum(b - a for _, a, b in runs)
            return ShardSums(grad, loss_sum, n, time.perf_counter() - t0, block_max=block_max)
        if isinstance(members, slice):
            X, Y = self.X[members], self.Y[:, members]
        else:
            nb = members.size
            if nb == 0:
                return ShardSums(grad, 0.0, 0, time.perf_counter() - t0)  # n = 0: grad is not read
            # mode="clip": with the default "raise" and `out=`, numpy gathers into a
            # temporary and copies it again (2.8x slower); the plan's offsets are in range.
            X = np.take(self.X, members, axis=0, out=self._xb[: nb * self.X.shape[1]].reshape(nb, -1), mode="clip")
            Y = np.take(self.Y, members, axis=1, out=self._yb[: nb * self.Y.shape[0]].reshape(-1, nb), mode="clip")
        loss_sum = backward_sums(self.spec, theta, X, Y, grad, self._ws)
        if self.delay_per_row:
            time.sleep(self.delay_per_row * X.shape[0])
        # The gradient buffer is reused next step; the caller gets its own copy only
        # when it crosses a process boundary, so hand out the buffer itself here.
        return ShardSums(grad, loss_sum, X.shape[0], time.perf_counter() - t0)

    def evaluate_sums(self, theta: np.ndarray) -> EvalSums:
        """Loss and correct-prediction sums over this worker's validation rows."""
        chunks = ((self.X_val[a : a + EVAL_CHUNK], self.Y_val[:, a : a + EVAL_CHUNK])
                  for a in range(0, self.n_val, EVAL_CHUNK))
        loss_sum, correct, count = eval_sums(self.spec, theta, self.encoding, chunks, min(EVAL_CHUNK, self.n_val))
        return EvalSums(loss_sum, correct, count, self.n_val)


def eval_sums(spec: NetworkSpec, theta: np.ndarray, encoding: str, chunks, width: int) -> tuple[float, int, int]:
    """(loss sum, correct predictions, predictions) over `chunks` of examples, each
    (X rows, Y columns) of at most `width` examples: a worker's validation rows, and
    `rayprop evaluate`'s whole source (experiments/cli/commands.py)."""
    cost = COSTS[spec.cost]
    loss_sum, correct, count = 0.0, 0, 0
    ws = Workspace(spec, max(width, 1))
    for X, Y in chunks:
        ZL, AL = forward(spec, theta, X, ws)
        loss_sum += cost.loss_sum(Y, AL, ZL)
        c, n = count_correct(AL, Y, encoding)
        correct, count = correct + c, count + n
    return loss_sum, correct, count


def count_correct(AL: np.ndarray, Y: np.ndarray, encoding: str) -> tuple[int, int]:
    """(correct, predictions) for classification outputs; (0, 0) for regression."""
    if encoding == "one_hot":
        return int((AL.argmax(axis=0) == Y.argmax(axis=0)).sum()), AL.shape[1]
    if encoding == "binary":
        return int(((AL > 0.5) == (Y > 0.5)).sum()), AL.size
    return 0, 0


def shard_ranges(num_rows: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous source-row ranges, as even as integers allow, one per worker."""
    cuts = [num_rows * r // workers for r in range(workers + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


@dataclass(frozen=True)
class ShardTask:
    """What a shard worker needs besides its row range: one value that the local pool
    opens in process and the Ray pool ships to each actor (small: the source's spec
    string, never its rows).

    split is (validation_fraction, split_seed): each worker recomputes the same
    train/validation split from the source's row count instead of receiving it.
    """

    spec: NetworkSpec
    plan: BatchPlan
    source_spec: str  # what `open_source` takes: a path or a built-in set's name
    num_rows: int  # rows in the source, train and validation alike
    schema: Schema
    split: tuple[float, int]
    # The driver's source.handoff(): a CSV's row count and types, a folder's files and
    # their row counts, so that no worker counts or lists again (metadata, never rows).
    source_known: dict | None = None
    # The job's data fingerprint (workers/data/fingerprint.py): a worker checks every file it
    # reads against it, so a replaced or re-sharded worker never reads changed data.
    fingerprint: dict | None = None

    def open_source(self):
        """The source as this task's worker opens it: by its spec, with what the driver knew."""
        from workers.data.sources import open_source

        return open_source(self.source_spec, self.source_known, self.fingerprint)

    def ranges(self, workers: int) -> list[tuple[int, int]]:
        """Source-row ranges for `workers` workers, each a union of whole blocks, as even
        as the blocks allow (more workers than train.blocks: ValueError)."""
        if workers > self.plan.blocks:
            raise ConfigError(f"train.blocks: {workers} workers need at least {workers} blocks, got "
                              f"{self.plan.blocks} (a worker holds whole blocks)")
        return self.block_ranges(even_blocks(self.plan.blocks, workers))

    def block_ranges(self, counts: list[int]) -> list[tuple[int, int]]:
        """Source-row ranges for workers taking counts[r] consecutive blocks each (in
        rank order, all blocks in all): worker r's training indices are whole blocks.

        The cut before training index t is source row train_rows[t]: the validation
        rows between two training rows go to the later worker."""
        from workers.data.examples import split_rows

        assert sum(counts) == self.plan.blocks and min(counts) >= 1, f"block counts {counts}"
        train_rows, _ = split_rows(self.num_rows, *self.split)
        bounds = self.plan.bounds
        cuts, j = [0], 0
        for c in counts[:-1]:
            j += c
            t = int(bounds[j])
            cuts.append(int(train_rows[t]) if t < len(train_rows) else self.num_rows)
        cuts.append(self.num_rows)
        return list(zip(cuts[:-1], cuts[1:]))

    def open(self, lo: int, hi: int, source=None, held: tuple[int, int, ShardWorker] | None = None,
             threads: int = 1) -> ShardWorker:
        """A worker over source rows [lo, hi): it reads those rows only, once.

        Its training indices are the contiguous run of the training rows inside
        [lo, hi) (they are sorted), and its validation rows are those there.
        `source` is an already opened source to reuse (local mode); else it is opened here.
        `held` = (old_lo, old_hi, worker): a worker over rows [old_lo, old_hi) whose rows
        are taken from memory where the ranges overlap, so only the rest is read (the
        pool changed size: workers/reshard.py).
        """
        from workers.data.examples import load_split_examples, split_rows, train_index_range

        source = source or self.open_source()
        train_rows, val_rows = split_rows(self.num_rows, *self.split)

        def read(a, b):
            return load_split_examples(source, self.schema, a, b, train_rows, val_rows, self.spec.dtype)

        a, b = (max(lo, held[0]), min(hi, held[1])) if held else (hi, hi)
        if held is None or a >= b:  # nothing held in [lo, hi)
            parts = [read(lo, hi)]
        else:
            old_lo, _, worker = held
            # Rows [a, b) as the held worker stores them: its training and validation
            # rows are the runs of train_rows and val_rows inside its range, in order.
            t0, v0 = (int(np.searchsorted(rows, old_lo)) for rows in (train_rows, val_rows))
            (tlo, thi), (vlo, vhi) = (train_index_range(rows, a, b) for rows in (train_rows, val_rows))
            # Copies: a view would keep the held worker's whole arrays alive.
            kept = (worker.X[tlo - t0:thi - t0].copy(), worker.Y[:, tlo - t0:thi - t0].T.copy(),
                    worker.X_val[vlo - v0:vhi - v0].copy(), worker.Y_val[:, vlo - v0:vhi - v0].T.copy())
            parts = [*([read(lo, a)] if lo < a else []), kept, *([read(b, hi)] if b < hi else [])]
        X, Y, X_val, Y_val = (np.concatenate(arrays) if len(parts) > 1 else arrays[0] for arrays in zip(*parts))
        tlo, _ = train_index_range(train_rows, lo, hi)
        return ShardWorker(self.spec, self.plan, tlo, X, Y, X_val, Y_val, self.schema.encoding, threads)
