"""The processes a sweep's trials share on Ray instead of each starting its own: the
shard workers of a trial that ended, kept for the next trial of their shape
(workers/actor_keeper.py), and the nodes' system-metrics samplers
(experiments/tracking/system_metrics.py). Both end with the sweep, before its Ray
connection does.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def keeping():
    """The sweep's ActorKeeper; every worker it still holds is stopped at the end."""
    from workers.actor_keeper import ActorKeeper

    keeper = ActorKeeper()
    try:
        yield keeper
    finally:
        keeper.release_all()


@contextmanager
def sampling():
    """The nodes' system-metrics actors, shared by the sweep's runs, stopped at its end."""
    from experiments.tracking.system_metrics import NodeSamplers

    samplers = NodeSamplers()
    try:
        yield samplers
    finally:
        samplers.close()
