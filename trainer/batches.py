"""The batch plan (docs/design.md section 2): which training examples make up each step.

The batches of an epoch depend only on (seed, epoch, m, batch_size): a permutation
of 0..m-1 drawn from default_rng([seed, epoch]) is cut into consecutive batches of
`batch_size`; the last one is partial when batch_size does not divide m (it is
used, not dropped). Full-batch GD uses all m examples in order every step.

A shard worker that owns the contiguous training-index range [lo, hi) computes the
same plan and keeps the batch members that fall in its range, so any number of
workers, uneven shards, or a re-sharding, train exactly the same batches.
"""

from __future__ import annotations

import numpy as np


class BatchPlan:
    def __init__(self, m: int, batch_size: int | None, seed: int):
        """batch_size None (or >= m) means the full batch, in index order."""
        assert m > 0, "a batch plan needs at least one example"
        self.m, self.seed = m, seed
        self.batch_size = m if batch_size is None else min(int(batch_size), m)
        self.full = self.batch_size == m
        self._epoch: int | None = None
        self._perm = np.empty(0, dtype=np.int64)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.m // self.batch_size)  # ceil: the partial last batch counts

    def batch_size_of(self, k: int) -> int:
        """Number of examples in batch k of any epoch (the batch's m)."""
        return min(self.batch_size, self.m - k * self.batch_size)

    def permutation(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:  # one permutation per epoch, cached
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.m)
            self._epoch = epoch
        return self._perm

    def batch(self, epoch: int, k: int) -> np.ndarray | slice:
        """Training indices of batch k in `epoch`; a slice for the full batch."""
        assert 0 <= k < self.steps_per_epoch, f"batch {k} of {self.steps_per_epoch}"
        if self.full:
            return slice(0, self.m)
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
