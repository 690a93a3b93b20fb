"""Which rows each worker should hold so that the workers finish a step together.

A step's sums do not depend on how the rows are split (docs/design.md section 2), so
a slow worker may be given fewer rows and a fast one more at any step boundary
without changing the training. This module decides such a move; the pools carry it
out like a reshard (workers/reshard.py): every worker keeps its rank and the rows it
still owns, and reads only the new ones.

The rows are cut into *units* (consecutive, in row order; `sizes[u]` training rows
each), and each worker holds a run of consecutive units, in rank order: worker w
holds units cuts[w] .. cuts[w+1]-1. A worker's step time is modelled as its measured
seconds per row times its rows. The policy picks the cuts that minimize the largest
predicted time, and moves only when that beats the current cuts by more than
`threshold` (a move costs a read of the rows that change hands); the move itself goes
STEP_TOWARD of the way there.

`Balancer` holds the measurements: each worker's compute seconds and rows over its
last WINDOW steps (a worker's rate is its CPU's, so it carries over a move; the
median step counts, not a burst), and asks for a move at most every `every_seconds`,
once every worker has MIN_STEPS steps measured since the last change.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence

import numpy as np

THRESHOLD = 0.10  # move only when the predicted step time drops by more than this
WINDOW = 16  # steps per worker the rate is measured over
MIN_STEPS = 8  # steps measured at the current cuts before another move is weighed
# A move goes this far from the current cuts toward the best ones: the model (time
# proportional to rows, at the rates just measured) errs where rows are cached, shared
# or preempted differently, and a full move on a wrong estimate swings the load from
# one worker to another. Steady rates converge in a few moves; noise swings half as far.
STEP_TOWARD = 0.5
# No move while even the slowest worker computes less than this per step: there is
# little to gain, and timings that short are mostly noise (a busy machine, a wake-up).
MIN_STEP_SECONDS = 1e-3


def step_times(rates: Sequence[float], cuts: Sequence[int], prefix: Sequence[int]) -> list[float]:
    """Each worker's predicted step time: its seconds per row times its rows."""
    return [r * (prefix[cuts[w + 1]] - prefix[cuts[w]]) for w, r in enumerate(rates)]


def _fits(rates, prefix: np.ndarray, limit: float, late: bool = True) -> list[int] | None:
    """Cuts under which no worker's predicted time exceeds `limit`, each worker with at
    least one row; or None. Exact: which unit ends each worker can reach, worker by
    worker (taking as many units as fit for each in turn is not: a big unit can land on
    a slow worker). Among the cuts that fit, each worker from the last starts as late
    (`late`) or as early as it can."""
    units = len(prefix) - 1
    reach = np.zeros(units + 1, bool)
    reach[0] = True
    spans = []
    for r in rates:
        s = np.flatnonzero(reach)
        # From start s a worker ends at some e in [lo, hi]: a row at least, limit at most.
        lo = np.searchsorted(prefix, prefix[s] + 1, "left")
        hi = np.searchsorted(prefix, prefix[s] + limit / r, "right") - 1
        ok = lo <= hi
        edges = np.bincount(lo[ok], minlength=units + 2) - np.bincount(hi[ok] + 1, minlength=units + 2)
        reach = np.cumsum(edges[:-1]) > 0
        spans.append((s, lo, hi))
    if not reach[units]:
        return None
    cuts = [units]
    for s, lo, hi in reversed(spans):  # back from the end: a start that reaches this end
        e = cuts[-1]
        fits = s[(lo <= e) & (e <= hi)]
        cuts.append(int(fits[-1] if late else fits[0]))
    return cuts[::-1]


def balanced_cuts(rates: Sequence[float], cuts: Sequence[int], sizes: Sequence[int],
                  threshold: float = THRESHOLD) -> list[int] | None:
    """New cuts (len(rates) + 1 of them, cuts[0] = 0, cuts[-1] = len(sizes)) that
    minimize the largest predicted step time, if they beat `cuts` by more than
    `threshold` (as a fraction of the current largest); else None.

    rates: each worker's seconds per row (> 0), in rank order; sizes: rows per unit.
    """
    assert len(cuts) == len(rates) + 1 and cuts[0] == 0 and cuts[-1] == len(sizes), "cuts must span the units"
    if len(rates) < 2 or any(not (r > 0) for r in rates):
        return None  # nothing to balance, or a rate not measured
    prefix = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    now = max(step_times(rates, cuts, prefix))
    lo, hi = 0.0, now  # the current cuts fit `now`; find the least limit that fits
    best = list(cuts)
    for _ in range(60):  # halvings, to a millionth of the step: below a row's time
        mid = (lo + hi) / 2
        found = _fits(rates, prefix, mid)
        if found is None:
            lo = mid
        else:
            hi, best = mid, found
        if hi - lo <= 1e-6 * now:
            break
    best = _evenest(rates, prefix, hi, best)
    after = max(step_times(rates, best, prefix))
    return best if after < (1 - threshold) * now else None


def _evenest(rates, prefix, limit: float, found: list[int]) -> list[int]:
    """Among cuts whose largest time is `limit` (the least possible), the ones whose times
    are most alike: cuts that fit may leave one worker what is left over (4, 4, 1 rows
    where 3, 3, 3 would do as well), so try each worker starting as late and as early
    as it can, and the cuts nearest to rows in proportion to speed."""
    units = len(prefix) - 1
    candidates = [found]
    early = _fits(rates, prefix, limit, late=False)
    if early is not None:
        candidates.append(early)
    speed = [1 / r for r in rates]
    share = list(accumulate(s * prefix[-1] / sum(speed) for s in speed))
    ideal = [0, *(_nearest_cut(prefix, x) for x in share[:-1]), units]
    if ideal == sorted(ideal) and all(prefix[b] - prefix[a] >= 1 for a, b in zip(ideal, ideal[1:])):
        candidates.append(ideal)

    def key(cuts):  # the least largest time first, then the greatest least time
        times = step_times(rates, cuts, prefix)
        return max(times), -min(times)

    return min(candidates, key=key)


def _nearest_cut(prefix, rows: float) -> int:
    """The unit boundary whose rows before it are nearest to `rows`."""
    e = int(np.searchsorted(prefix, rows, "right"))  # prefix[e - 1] <= rows < prefix[e]
    if e >= len(prefix):
        return len(prefix) - 1
    return e if prefix[e] - rows < rows - prefix[e - 1] else e - 1


def partway(old: list[int], best: list[int], prefix: np.ndarray, fraction: float) -> list[int]:
    """Cuts `fraction` of the way from `old` to `best` in rows (each at its nearest unit
    bound), each worker keeping a row at least; `best` itself where that fails."""
    if fraction >= 1:
        return best
    cuts = [0, *(_nearest_cut(prefix, prefix[a] + fraction * (prefix[b] - prefix[a]))
                 for a, b in zip(old[1:-1], best[1:-1])), old[-1]]
    if all(prefix[b] - prefix[a] >= 1 for a, b in zip(cuts, cuts[1:])) and cuts != old:
        return cuts
    return best


@dataclass(frozen=True)
class Move:
    """A rebalance: new cuts, and why."""

    old: list[int]
    new: list[int]
    slowest: int  # the rank with the highest seconds per row
    ratio: float  # its seconds per row over the fastest worker's
    before: float  # predicted step seconds (the slowest worker's) at the old cuts
    after: float  # ... and at the new


class Balancer:
    def __init__(self, every_seconds: float, threshold: float = THRESHOLD, window: int = WINDOW,
                 min_steps: int = MIN_STEPS, clock=time.monotonic, min_step_seconds: float = MIN_STEP_SECONDS,
                 step_toward: float = STEP_TOWARD):
        """every_seconds: least time between two moves (and from the start to the first)."""
        self.every_seconds, self.threshold, self.min_step_seconds = every_seconds, threshold, min_step_seconds
        self.step_toward = step_toward
        self.window, self.min_steps, self.clock = window, min_steps, clock
        self._samples: dict[int, deque] = {}
        self._fresh: dict[int, int] = {}  # steps measured per worker since the last change
        self._last = clock()

    def record(self, rank: int, seconds: float, rows: int) -> None:
        """Worker `rank` spent `seconds` computing over `rows` batch rows in one step."""
        if rows <= 0:
            return  # no batch member in its range: nothing measured
        self._samples.setdefault(rank, deque(maxlen=self.window)).append((seconds, rows))
        self._fresh[rank] = self._fresh.get(rank, 0) + 1

    def rates(self, workers: int) -> list[float]:
        """Each worker's seconds per row: the median of its window's steps (a step that
        another process's burst slowed does not move rows; a worker slow for most of
        the window does). 0.0: not measured."""
        out = []
        for r in range(workers):
            s = sorted(t / n for t, n in self._samples.get(r, ()))
            out.append((s[len(s) // 2] + s[(len(s) - 1) // 2]) / 2 if s else 0.0)
        return out

    def changed(self, keep_rates: bool) -> None:
        """The rows moved (keep_rates: the same workers in the same ranks, so their
        rates stand) or the workers changed (a resize or a replacement: measure anew)."""
        if not keep_rates:
            self._samples.clear()
        self._fresh.clear()
        self._last = self.clock()

    def propose(self, cuts: Sequence[int], sizes: Sequence[int]) -> Move | None:
        """A move to make at this step boundary, or None (too soon, too few steps
        measured, or not worth it)."""
        workers = len(cuts) - 1
        if workers < 2 or self.clock() - self._last < self.every_seconds:
            return None
        if any(self._fresh.get(r, 0) < self.min_steps for r in range(workers)):
            return None
        rates = self.rates(workers)
        slowest_step = max(sum(t for t, _ in s) / len(s) for s in self._samples.values())
        new = balanced_cuts(rates, cuts, sizes, self.threshold) if slowest_step >= self.min_step_seconds else None
        self._last = self.clock()  # weighed: not again before every_seconds
        if new is None:
            return None
        prefix = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        new = partway(list(cuts), new, prefix, self.step_toward)
        slowest = max(range(workers), key=lambda r: rates[r])
        return Move(list(cuts), new, slowest, rates[slowest] / min(rates),
                    max(step_times(rates, cuts, prefix)), max(step_times(rates, new, prefix)))
