"""Worker processes kept from one job for the next: a sweep's trials reuse them.

Starting a ShardActor is a new Ray worker process, with its imports (numpy, pyarrow,
rayprop's workers), before it reads a row: a second or more per trial, paid again for
every trial of a sweep although the processes of the trial before are idle by then.
The keeper holds the workers of a trial that ended well, with the CPUs they sit in (a
trial's reservation: removing it would end them), for the next trial of the same
shape to take. That trial's pool renews each one (ShardActor.renew): the trial's rows
read fresh from its own source, and nothing of the last trial kept (rows, plane,
exact-sum buffers, test hooks); the pool's side (transport, hang bounds, rebalancing)
is the new pool's own. So a trial trains exactly as its config trained alone.

What must match is what a worker process was started with: the number of workers
(the reservation's bundles) and the CPUs of each (its Ray resources and BLAS threads).
The keeper never hands over a worker that does not answer: each is asked for its
state first, within ALIVE_S, and one that died or does not answer is stopped and left
out (the pool starts a new one in its place). Workers of a trial that failed or was
stopped are never kept (their pool stops them). Everything kept is stopped by
`release_all`, at the sweep's end and before a trial of another shape reserves CPUs.
"""

from __future__ import annotations

import threading
from typing import Any
from dataclasses import dataclass, field

import ray

ALIVE_S = 10.0  # for a kept worker to answer before it is taken: an idle process answers in ms


@dataclass
class Kept:
    """The workers of one ended pool, in the reservation (`slot`: .strategy, .release())
    that holds their CPUs."""

    shape: tuple
    slot: Any  # a placement reservation (cluster/placement.py, which workers/ may not import)
    actors: list = field(default_factory=list)

    @property
    def strategy(self):
        return self.slot.strategy

    def release(self) -> None:
        """Free the CPUs; workers still in the reservation end with it."""
        self.slot.release()


def alive(actors: list, within: float = ALIVE_S) -> list:
    """The actors that answer within `within` seconds; the others are stopped."""
    if not actors:
        return []
    refs = [a.ready.remote() for a in actors]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=within)
    answered = set(done)
    live = []
    for actor, ref in zip(actors, refs):
        try:
            if ref in answered and ray.get(ref)["error"] is None:
                live.append(actor)
                continue
        except ray.exceptions.RayError:  # died since its trial ended
            pass
        ray.kill(actor, no_restart=True)
    return live


class ActorKeeper:
    """Ended pools' workers, by shape, for the next pool of that shape (module doc)."""

    def __init__(self):
        self._kept: list[Kept] = []
        self._lock = threading.Lock()  # trials end in threads of their own
        self.reused = 0  # workers handed to a later trial, for the record

    def keep(self, shape: tuple, slot, actors: list) -> None:
        with self._lock:
            self._kept.append(Kept(shape, slot, list(actors)))

    def take(self, shape: tuple) -> Kept | None:
        """The kept workers of a pool of `shape` with their reservation, those alive (may be
        fewer than were kept: the pool starts the others); None when none of that shape."""
        with self._lock:
            kept = next((k for k in self._kept if k.shape == shape), None)
            if kept is None:
                return None
            self._kept.remove(kept)
        kept.actors = alive(kept.actors)
        self.reused += len(kept.actors)
        return kept

    def release_all(self) -> None:
        """Stop every kept worker and free its CPUs."""
        with self._lock:
            kept, self._kept = self._kept, []
        for k in kept:
            for actor in k.actors:
                ray.kill(actor, no_restart=True)
            k.slot.release()
