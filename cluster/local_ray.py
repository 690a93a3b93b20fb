"""How a local Ray for one job starts: on loopback only, and without the services a
job never uses (cluster/connect.py starts it inside both)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def loopback_node(ray):
    """A local Ray for one job listens on 127.0.0.1 only. Ray 2.60's ray.init replaces
    a loopback _node_ip_address with the machine's address, and GCS, raylet, workers
    and agents then listen on every interface; its own single-machine mode (the
    default on macOS and Windows, ENABLE_RAY_CLUSTER off) keeps the node on loopback.
    Switched on for ray.init only; tests/test_listeners.py checks every socket."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextmanager
def without_head_services():
    """A local Ray for one job starts no API server and no autoscaler monitor.
    `ray.init(include_dashboard=False)` still starts both: the API server
    (dashboard.py, with only its usage-stats module) is on ray.init's critical path
    (ray.init polls until it has published its address, and only then starts the
    raylet and its agents), and the monitor autoscales, which a fixed local node never
    does. Each is a Python process importing Ray (0.4-0.7 s of CPU on a 2-core
    machine where the agents and workers are importing too), and each costs up to a
    second at shutdown (Ray stops its processes one after the other). A job uses
    neither (no Jobs or state API, no autoscaling); the dashboard agent's event module
    then notes once a second in Ray's session log (dashboard_agent.log) that it finds
    no dashboard to send events to, which reaches no console. Switched for ray.init
    only; a Ray without these hooks starts them as before."""
    try:
        from ray._private import node, services
    except ImportError:
        yield
        return
    api_server, monitor = getattr(services, "start_api_server", None), getattr(node.Node, "start_monitor", None)
    if api_server is None or monitor is None:
        yield
        return
    services.start_api_server = lambda *args, **kwargs: (None, None)  # (its URL, its process)
    node.Node.start_monitor = lambda self: None
    try:
        yield
    finally:
        services.start_api_server, node.Node.start_monitor = api_server, monitor
