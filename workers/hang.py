"""How long the pool waits for a worker before it calls the worker hung.

A worker that is alive but does not answer (stopped, deadlocked, swapping) is a lost
worker, like a dead one: the pool kills its process and replaces it (README: Faults
and elasticity). The bound comes from the run's own times, `cluster.hang_seconds`:

- `auto` (default): FACTOR times the median of the last HISTORY waits of that kind
  (steps and evaluations apart: an evaluation covers other rows), at least FLOOR_S.
  An evaluation not yet timed twice goes by the steps' times, scaled by its rows
  (validation rows / batch size). Until MIN_HISTORY steps have been timed there is
  nothing to go by, and the bound is FIRST_S: generous, since a first full-batch
  step over many rows may take minutes.
- a number: that many seconds for every wait.

While the pool starts, a worker reading its rows has no bound until the first worker
has read its own; then the others get FACTOR times as long, at least FIRST_S (the
rows are split evenly). Attaching to a node's plane is bounded by ATTACH_TIMEOUT_S.

Every wait also looks at the job's stop request every SLICE_S: the step in flight
then gets STOP_GRACE_S more to finish (the job then stops after it, as usual), and is
given up after that, so a Ctrl-C is answered within seconds even while a worker hangs.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

FACTOR = 10.0
FLOOR_S = 10.0  # a healthy step on a busy 2-CPU machine has been seen to stall for seconds
FIRST_S = 300.0
MIN_HISTORY = 2
HISTORY = 50
SLICE_S = 0.25
STOP_GRACE_S = 2.0  # a step in flight when the stop request comes may finish within this


class WaitBound:
    """The seconds a wait of one kind may take before the silent workers count as hung."""

    def __init__(self, fixed: float | str = "auto"):
        self.fixed = None if fixed == "auto" else float(fixed)
        self._times: deque[float] = deque(maxlen=HISTORY)

    def record(self, seconds: float) -> None:
        """A wait of this kind that every worker answered, in `seconds`."""
        self._times.append(seconds)

    def seconds(self, like: WaitBound | None = None, scale: float = 1.0) -> float:
        """The bound; with no history of its own yet, `scale` times the bound of `like`
        (evaluations before any was timed: the steps' bound, scaled by rows)."""
        if self.fixed is not None:
            return self.fixed
        if len(self._times) >= MIN_HISTORY:
            return max(FLOOR_S, FACTOR * statistics.median(self._times))
        if like is not None and len(like._times) >= MIN_HISTORY:
            return max(FLOOR_S, FACTOR * scale * statistics.median(like._times))
        return FIRST_S


class StopGrace:
    """`should_stop`, True only once the stop request is STOP_GRACE_S old: what a wait
    for workers asks before it gives up the step in flight."""

    def __init__(self, should_stop):
        self.should_stop, self._since = should_stop, None

    def __call__(self) -> bool:
        if not self.should_stop():
            return False
        if self._since is None:
            self._since = time.monotonic()
        return time.monotonic() - self._since >= STOP_GRACE_S
