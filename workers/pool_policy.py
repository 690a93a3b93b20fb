"""The Ray pool's rules, as decisions: what to do on a loss, how many workers to add.

Pure functions and small policy objects, no Ray: the pool (workers/ray_pool.py) asks
them and carries out what they return, as workers/reshard.py decides which worker
takes which rows and the pool moves them. So the riskiest rules of the pool are
tested in milliseconds (tests/test_pool_policy.py), and the live-cluster tests only
check that the pool does what it was told.

The decisions (README: Faults and elasticity):

    Replace(ranks)  start new workers over the lost workers' rows; the others keep theirs
    Shrink(keep)    go on with the workers `keep` (ranks) over all the rows
    Stop(reason)    end the job: WorkerLostError(reason), exit 1
    Grow(to)        start workers on free CPUs, to `to` in all (None: nothing to add)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Replace:
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Shrink:
    keep: tuple[int, ...]

    @property
    def to(self) -> int:
        return len(self.keep)


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class Grow:
    to: int


def start_size(free_slots: int, min_workers: int, max_workers: int) -> int:
    """Workers a pool of `cluster.workers: auto` starts with: as many as the free CPUs
    take, at least min_workers (they wait for CPUs), at most max_workers."""
    return max(min_workers, min(free_slots, max_workers))


class FailurePolicy:
    """On a loss: replace, shrink or stop.

    max_failures: workers that may be lost over the pool's life (train.max_worker_failures);
    min_workers: fewest workers the pool goes on with (cluster.min_workers)."""

    def __init__(self, max_failures: int, min_workers: int):
        self.max_failures, self.min_workers = max_failures, min_workers

    def on_loss(self, failures: int, lost: list[int], reason: str) -> Replace | Stop | None:
        """Workers `lost` (ranks), making `failures` over the pool's life (these
        included): replace them while the count allows. None when nothing was lost:
        the error that looked like a loss is not one and stands as it is."""
        if not lost:
            return None
        if failures > self.max_failures:
            return Stop(f"{failures} worker loss{'es' if failures != 1 else ''}, more than "
                        f"train.max_worker_failures={self.max_failures} allows (last: {reason})")
        return Replace(tuple(sorted(set(lost))))

    def on_unplaced(self, left: list[int], what: str) -> Shrink | Stop:
        """Some replacements could not start in time (`what` says which and why): go on
        with the workers `left` (survivors and the replacements that did start) over
        all the rows, unless they are fewer than min_workers."""
        if len(left) < self.min_workers:
            return Stop(f"{what}, and {len(left)} left is fewer than cluster.min_workers={self.min_workers}")
        return Shrink(tuple(sorted(left)))


class ScalingPolicy:
    """On free capacity: how many workers to add.

    max_workers: None for a pool of a fixed size (it never grows: a pool in a placement
    group must not outgrow it); check_seconds: how seldom to ask Ray for free CPUs
    (never per step)."""

    def __init__(self, max_workers: int | None, check_seconds: float):
        self.max_workers, self.check_seconds = max_workers, check_seconds

    def should_look(self, workers: int, now: float, last_look: float) -> bool:
        """Whether to ask the cluster for free CPUs at this step boundary."""
        if self.max_workers is None or workers >= self.max_workers:
            return False
        return now - last_look >= self.check_seconds

    def on_free(self, workers: int, free_slots: int) -> Grow | None:
        """`free_slots` workers' worth of free CPUs: grow by as many, up to max_workers."""
        if self.max_workers is None or free_slots < 1 or workers >= self.max_workers:
            return None
        return Grow(min(self.max_workers, workers + free_slots))

    @staticmethod
    def joins(started: int, ready: int, failed_reading: bool) -> bool:
        """Whether workers started on free CPUs join now: all of them ready and none
        failed to read its rows (else they are stopped, and the pool looks again later:
        their node may have left, or a file is not reachable from it)."""
        return ready == started and not failed_reading
