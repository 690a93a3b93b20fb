"""The batch plan (docs/design.md section 2): which training examples make up each step.

The batches of an epoch depend only on (seed, epoch, m, batch_size): a permutation
of 0..n_train-1 drawn from default_rng([seed, epoch]) is cut into consecutive batches of
`batch_size`; the last one is partial when batch_size does not divide m (it is
used, not dropped). Full-batch GD uses all m examples in order every step.

A shard worker that owns the contiguous training-index range [lo, hi) computes the
same plan and keeps the batch members that fall in its range, so any number of
workers, uneven shards, or a re-sharding, train exactly the same batches.

Blocks (train.blocks, README: The math): the training indices 0..n_train-1 are cut into
`blocks` contiguous runs that depend on m alone. A worker's range is always a union of
whole consecutive blocks, and in float32 the sums are taken per block (the same
arithmetic whoever computes the block) and combined exactly (trainer/exact_sum.py).
"""

from __future__ import annotations

import numpy as np


DEFAULT_BLOCKS = 8  # train.blocks: also the largest worker count a job can use
# train.exact_sums "auto" turns them on when a step's blocks hold this many examples on
# average (and the network keeps examples as rows: trainer/exact_sum.exact_by_default).
# Each block's products and sums then cost about what they cost over all the rows at
# once: measured on one thread (docs/speed-log.md), the exact step is 1.24x the plain
# one at 128 examples a block (W-mnist's batch of 1024), 1.10x at 256, 1.03x at 512 and
# 1.00x at 1024.
EXACT_AUTO_MIN_EXAMPLES = 512


def block_bounds(m: int, blocks: int) -> np.ndarray:
    """Training index where each block starts, and m: blocks + 1 values."""
    return np.array([m * j // blocks for j in range(blocks + 1)], dtype=np.int64)


def even_blocks(blocks: int, workers: int) -> list[int]:
    """Blocks per worker for `workers` workers, as even as integers allow."""
    assert 1 <= workers <= blocks, f"{workers} workers for {blocks} blocks"
    cuts = [blocks * r // workers for r in range(workers + 1)]
    return [b - a for a, b in zip(cuts[:-1], cuts[1:])]


class BatchPlan:
    def __init__(self, n_train: int, batch_size: int | None, seed: int, blocks: int = DEFAULT_BLOCKS,
                 exact: bool = True):
        """batch_size None (or >= m) means the full batch, in index order.
        exact: float32 sums per block, added exactly (train.exact_sums, resolved)."""
        assert n_train > 0, "a batch plan needs at least one example"
        assert blocks >= 1, "a batch plan needs at least one block"
        self.n_train, self.seed, self.blocks = n_train, seed, blocks
        self.bounds = block_bounds(n_train, blocks)
        self.batch_size = n_train if batch_size is None else min(int(batch_size), n_train)
        self.exact = exact
        self.full = self.batch_size == n_train
        self._epoch: int | None = None
        self._perm = np.empty(0, dtype=np.int64)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_train // self.batch_size)  # ceil: the partial last batch counts

    def batch_size_of(self, k: int) -> int:
        """Number of examples in batch k of any epoch (the batch's m)."""
        return min(self.batch_size, self.n_train - k * self.batch_size)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:  # one permutation per epoch, cached
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_train)
            self._epoch = epoch
        return self._perm

    def batch(self, epoch: int, k: int) -> np.ndarray | slice:
        """Training indices of batch k in `epoch`; a slice for the full batch."""
        assert 0 <= k < self.steps_per_epoch, f"batch {k} of {self.steps_per_epoch}"
        if self.full:
            return slice(0, self.n_train)
        return self.permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def shard_batch(self, epoch: int, k: int, lo: int, hi: int) -> np.ndarray | slice:
        """The members of batch k that fall in [lo, hi), as offsets from lo.

        A slice when the shard's members are a contiguous run (full batch), else a
        sorted index array (sorted, so the worker's gather reads memory in order).
        """
        idx = self.batch(epoch, k)
        if isinstance(idx, slice):
            return slice(0, hi - lo)
        mine = idx[(idx >= lo) & (idx < hi)]
        mine.sort()
        mine -= lo
        return mine

    def block_runs(self, lo: int, hi: int, members: np.ndarray | slice) -> list[tuple[int, int, int]]:
        """(block j, start, stop) of each block in [lo, hi) that has members of the batch:
        members[start:stop] (offsets from lo, sorted) are block j's. [lo, hi) must be
        a union of whole blocks."""
        j0, j1 = (int(np.searchsorted(self.bounds, x)) for x in (lo, hi))
        assert self.bounds[j0] == lo and self.bounds[j1] == hi, f"[{lo}, {hi}) is not a union of blocks"
        inner = self.bounds[j0:j1 + 1] - lo
        if isinstance(members, slice):
            cuts = inner
        else:
            cuts = np.searchsorted(members, inner)
        return [(j0 + i, int(a), int(b)) for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])) if b > a]
