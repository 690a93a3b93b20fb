"""Which worker takes which rows when the pool changes size at a step boundary.

A step's sums are a function of (theta, epoch, k) over ALL the rows, however they
are split (docs/design.md section 2), so the pool may move to any number of workers
between two steps: only the order of the floating-point additions changes. This
module decides the move; the Ray pool carries it out.

The rule, chosen so that as few rows as possible are read again:
- a worker whose row range is one of the new ranges keeps it (and its rows in memory);
- the other workers take the remaining new ranges in order, reading those rows only;
- new workers are started only for the ranges left after that, and workers left
  without a range (a shrink) are stopped.
"""

from __future__ import annotations

Rows = tuple[int, int]


def reassign(held: list[Rows], ranges: list[Rows]) -> list[int | None]:
    """For each new range (in order), the index into `held` of the worker that takes it,
    or None where a new worker must be started. Workers not named are left over."""
    takers: list[int | None] = [None] * len(ranges)
    free = list(range(len(held)))
    where: dict[tuple[int, ...], int] = {rows: j for j, rows in enumerate(ranges)}
    for i, rows in enumerate(held):
        j = where.pop(tuple(rows), None)
        if j is not None:  # the same rows: nothing to read
            takers[j] = i
            free.remove(i)
    for j in range(len(ranges)):
        if takers[j] is None and free:
            takers[j] = free.pop(0)  # moves to rows it does not hold yet
    return takers
