"""Carrying out the scaling policy (workers/pool_policy.py) in the Ray pool.

With `cluster.workers: auto`, at most every GROW_CHECK_SECONDS (workers/ray_pool.py),
the pool asks Ray for free CPUs; the policy says how many workers to add; they start
(and read their rows) while training goes on, and join at the first step boundary
after they are ready, in one reshard.
"""

from __future__ import annotations

import time

import ray

from workers.pool_launch import Launching
from workers.pool_waits import wait_ready

GROW_TIMEOUT_S = 120  # for workers started on free CPUs to be ready; else that growth is dropped


class Growth(Launching):
    """The part of RayPool that grows it on free CPUs."""

    def _free_slots(self) -> int:
        """Workers the cluster's free CPUs would take now (one call to Ray)."""
        return int(ray.available_resources().get("CPU", 0) // self._cpus)

    @property
    def joining(self) -> list:
        """Ready-refs of the workers started on free CPUs and not yet in the pool."""
        return [ref for _, ref in self._joining[2].values()] if self._joining else []

    def _grow(self) -> None:
        """At a step boundary: let ready new workers join; else, when the policy says
        to look, start new workers on free CPUs (they read their rows while the steps
        go on)."""
        now = time.monotonic()
        if self._joining is not None:
            ranges, takers, started, deadline = self._joining
            refs = [ref for _, ref in started.values()]
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(done) < len(refs):
                if now > deadline:  # the CPUs went elsewhere: try again later
                    self._drop_joining()
                return
            self._joining = None
            ready, _ = wait_ready(started, now)
            if self.scaling_policy.joins(len(started), len(ready), any(i["error"] for _, i in ready.values())):
                self._resize(ranges, takers, ready, "free CPUs in the cluster; the rows are split anew")
            else:  # one died starting (its node left again), or read no rows: look again later
                for actor, _ in ready.values():
                    ray.kill(actor)
            return
        if not self.scaling_policy.should_look(self.num_workers, now, self._last_look):
            return
        self._last_look = now
        grow = self.scaling_policy.on_free(self.num_workers, self._free_slots())
        if grow is None:
            return
        ranges, takers = self._plan(grow.to, list(range(self.num_workers)))
        self._joining = (ranges, takers, self._start_missing(ranges, takers), now + GROW_TIMEOUT_S)

    def _drop_joining(self) -> None:
        if self._joining is not None:
            for actor, _ in self._joining[2].values():
                ray.kill(actor)
            self._joining = None
