"""What the parts of RayPool share (workers/ray_pool.py makes it; pool_launch.py,
pool_recovery.py and pool_growth.py act on it): its workers, its policies, its
transport, its counts. Declared once here so that each part reads as what it is,
and a type checker knows what it touches."""

from __future__ import annotations

from typing import Any

from workers.pool_policy import FailurePolicy, ScalingPolicy
from workers.pool_waits import Waits
from workers.rebalance import PoolBalance
from workers.shard import ShardTask
from workers.transports import Transport

Rows = tuple[int, int]


class PoolState:
    _actor: Any  # ShardActor as a Ray actor class, with the pool's options
    _task: ShardTask
    _cpus: int
    _here: str | None  # the driver's node (None through Ray Client: on no node)
    _kept: list  # live actors of an earlier pool, taken before new ones are started
    _n_train: int  # training rows over all workers: the same after every reshard
    _n_val: int
    actors: list  # by rank
    info: list[dict]  # what each actor reported (ready, reshard), by rank
    ranges: list[Rows]  # the rows each holds, by rank
    failures: int  # workers lost over the pool's life
    events: list[str]  # one line per worker lost and replaced
    resizes: list[str]  # one line per change of size
    placement_timeout: float
    failure_policy: FailurePolicy
    scaling_policy: ScalingPolicy
    waits: Waits
    transport: Transport
    balance: PoolBalance | None  # stragglers' rows to faster workers (None: never)
    # Workers starting on free CPUs: (ranges, takers, {rank: (actor, ready ref)}, deadline).
    _joining: tuple[list[Rows], list[int | None], dict, float] | None
    _last_look: float
    in_worker: bool  # its one worker runs the coordinator loop now (workers/solo.py)

    @property
    def num_workers(self) -> int:
        return len(self.actors)

    def _drop_joining(self) -> None:
        """Stop the workers still joining (growth's: workers/pool_growth.py)."""
        raise NotImplementedError
