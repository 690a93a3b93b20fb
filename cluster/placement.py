"""A sweep trial's CPUs, reserved as a unit: one placement group per trial.

Two trials that each start their workers one actor at a time can each get half of
what they need and wait for the other forever. A placement group of one bundle per
worker is granted whole or not at all, so a trial starts only when all its workers
can, and the next trial waits for the CPUs to free up. The bundles are PACKed (on
as few nodes as there is room for): a trial's workers on one node add their sums in
shared memory. The pool places its actors in any bundle of the group (index -1), so
a worker lost and replaced takes the bundle its predecessor freed.
"""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

WAIT_STEP_S = 0.5  # how often a wait for CPUs looks at the stop flag


def cluster_cpus() -> float:
    return ray.cluster_resources().get("CPU", 0.0)


class Reservation:
    """The CPUs of one trial's `workers` shard workers of `cpus_per_worker` CPUs each."""

    def __init__(self, workers: int, cpus_per_worker: int, name: str = ""):
        self.group = placement_group([{"CPU": cpus_per_worker}] * workers, strategy="PACK", name=name)
        self._ready = self.group.ready()

    def wait(self, give_up) -> bool:
        """Block until granted (True), or until give_up() says so (False, released)."""
        while not give_up():
            done, _ = ray.wait([self._ready], timeout=WAIT_STEP_S)
            if done:
                return True
        self.release()
        return False

    @property
    def strategy(self) -> PlacementGroupSchedulingStrategy:
        """The scheduling strategy that places an actor in this reservation."""
        return PlacementGroupSchedulingStrategy(placement_group=self.group, placement_group_bundle_index=-1)

    def release(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None
