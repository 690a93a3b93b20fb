"""What the Ray pool's parts share: the state RayPool.__init__ sets, and the steps of
one part that another takes. The parts (pool_launch.Launching, pool_recovery.Recovery,
pool_growth.Growth) are classes of RayPool; declaring here, once, what each may use
lets a reader, and a type checker, follow a part without the whole pool.

Only annotations (and one property): nothing here holds a value or runs; RayPool and
the parts define every name (their definitions come first in RayPool's MRO).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.pool_policy import FailurePolicy, ScalingPolicy
    from workers.pool_waits import Waits
    from workers.shard import ShardTask
    from workers.transports import Transport


class PoolState:
    # Set by RayPool.__init__.
    _actor: Any  # the ShardActor class with its Ray options (CPUs, placement)
    _task: ShardTask
    _cpus: float  # per worker
    _here: str | None  # the driver's node (None through Ray Client)
    _m: int
    failures: int
    failure_policy: FailurePolicy
    scaling_policy: ScalingPolicy
    placement_timeout: float
    waits: Waits
    transport: Transport
    events: list[str]
    resizes: list[str]
    actors: list  # Ray actor handles, by rank
    info: list[dict]  # each actor's ready() facts, by rank
    ranges: list[tuple[int, int]]  # each actor's rows, by rank
    _joining: tuple[list, list, dict, float] | None  # workers starting on free CPUs (pool_growth)
    _last_look: float

    # Steps of Launching the others take.
    _plan: Callable[[int, list[int]], tuple[list, list]]
    _launch: Callable[[list, list, float | None, str], dict]
    _start_missing: Callable[[list, list], dict]
    _reshard: Callable[[list, list, dict], None]
    _resize: Callable[[list, list, dict, str], None]
    _count_losses: Callable[[list[int], str], Any]
    # ... and of Growth.
    _drop_joining: Callable[[], None]

    @property
    def num_workers(self) -> int:
        raise NotImplementedError  # RayPool's
