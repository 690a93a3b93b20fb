"""A pool's side of rebalancing: its row ranges as runs of units, the policy's move
(workers/balance.py) as new row ranges, and the console line that says so.

The units are the batch plan's blocks where it has them (train.blocks: a worker's
rows must be whole blocks, so that its sums are the same whoever computes them), else
UNITS runs of consecutive source rows holding equal shares of the training rows; the
validation rows between them go along. A pool's ranges need not lie on unit bounds
(an even split by rows does not): each is taken at its nearest bound, and the first
move puts them on bounds.
"""

from __future__ import annotations

import bisect
import time

from workers.balance import Balancer, Move

Rows = tuple[int, int]
UNITS = 256  # units of the training rows: a move is exact to 1/UNITS of them


def row_units(task) -> tuple[list[int], list[int]]:
    """(bounds, sizes): the units' source-row bounds (one more than the units, from 0 to
    the source's row count) and the training rows in each."""
    from workers.data.examples import split_rows

    train_rows, _ = split_rows(task.num_rows, *task.split)
    m = len(train_rows)
    blocks = getattr(task.plan, "bounds", None)  # the plan's blocks' first training indices, and m
    if blocks is not None:
        first = [int(t) for t in blocks]
    else:
        units = max(1, min(UNITS, m))
        first = [m * u // units for u in range(units + 1)]  # unit u: training indices first[u]..first[u+1]-1
    # The cut before training index t is source row train_rows[t] (as ShardTask's ranges cut).
    bounds = [0, *(int(train_rows[t]) if t < m else task.num_rows for t in first[1:-1]), task.num_rows]
    return bounds, [b - a for a, b in zip(first, first[1:])]


def keeps_weights(task) -> bool:
    """Whether moving rows leaves the training as it is: float32 with exact sums (bit for
    bit), or float64 (1e-9). A float32 run without exact sums would change in its last
    bits with each move, so its rows stay where they are."""
    return task.spec.dtype == "float64" or bool(getattr(task.plan, "exact", False))


class PoolBalance:
    def __init__(self, task, every_seconds: float, clock=time.monotonic):
        """every_seconds: cluster.rebalance_seconds (> 0)."""
        self.bounds, self.sizes = row_units(task)
        self.balancer = Balancer(every_seconds, clock=clock)
        self.lines: list[str] = []  # one per move, for the console
        self.rows_read: list[int] = []  # per move: rows the workers read from the source

    def record(self, seconds: list[float], rows: list[int]) -> None:
        """One step: each worker's compute seconds and batch rows, by rank."""
        for rank, (t, n) in enumerate(zip(seconds, rows)):
            self.balancer.record(rank, t, n)

    def workers_changed(self) -> None:
        """A resize or a replacement: other workers in the ranks, to be measured anew."""
        self.balancer.changed(keep_rates=False)

    def propose(self, ranges: list[Rows]) -> tuple[list[Rows], Move] | None:
        """New row ranges (one per worker, in rank order) and the move, or None."""
        units = len(self.sizes)
        cuts = [0, *(self._nearest(hi) for _, hi in ranges[:-1]), units]
        if any(b <= a for a, b in zip(cuts, cuts[1:])):
            return None  # more workers than units hold apart: nothing to move
        move = self.balancer.propose(cuts, self.sizes)
        if move is None:
            return None
        return [(self.bounds[a], self.bounds[b]) for a, b in zip(move.new, move.new[1:])], move

    def moved(self, move: Move, old: list[Rows], new: list[Rows], rows_read: int) -> str:
        """The move is made: its line (kept in `lines`)."""
        self.balancer.changed(keep_rates=True)  # the same workers: their rates stand
        self.rows_read.append(rows_read)
        shorter = 1 - move.after / move.before
        line = (f"rebalanced: worker {move.slowest} was {move.ratio:.1f}x slower per row than the fastest; "
                f"rows {_ranges(old)} -> {_ranges(new)} (slowest step predicted {shorter:.0%} shorter; "
                f"{rows_read:,} rows read)")
        self.lines.append(line)
        return line

    def _nearest(self, row: int) -> int:
        u = bisect.bisect_left(self.bounds, row)
        if u < len(self.bounds) and (u == 0 or self.bounds[u] - row <= row - self.bounds[u - 1]):
            return u
        return u - 1


def _ranges(ranges: list[Rows]) -> str:
    return " ".join(f"{lo}-{hi}" for lo, hi in ranges)


def rows_to_read(old: list[Rows], new: list[Rows]) -> int:
    """Rows each worker reads to move from old[r] to new[r] (what it holds stays)."""
    return sum((hi - lo) - max(min(hi, ohi) - max(lo, olo), 0) for (olo, ohi), (lo, hi) in zip(old, new))
