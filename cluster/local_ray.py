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


@contextmanager
def without_agent_waits():
    """A local Ray for one job registers its node without waiting for its agents.

    Ray 2.60's raylet, before it registers the node (and so before ray.init can
    return), waits for a port file from each agent: three from the dashboard agent
    (its metrics gRPC port, metrics export port, HTTP port) and one from the runtime
    env agent, unless its command line names the port. Each agent is a Python process
    importing Ray and its modules: 1.5-2.5 s on a quiet 2-core machine, much more under
    load. The dashboard agent's HTTP server also binds a fixed port (52365): when
    another Ray on the machine holds it, the agent retries for 3.4 s before it gives
    up and writes its files (seen here, with other jobs' Rays running).

    A job uses no agent service: no metrics export (nothing scrapes it), no Jobs or
    log API (no dashboard), no runtime env (the job's code is on this machine). So:
    - the dashboard agent runs as in Ray's minimal install (`--minimal`: no gRPC or
      HTTP server), which writes -1 ("not in use") to its three files; they are
      written here first, so the raylet reads them at once and publishes -1 (the
      agent's reporter module still serves Prometheus metrics on a loopback port of
      its own, and rewrites that file later; nothing is told of it);
    - the runtime env agent's port is chosen here (AGENT_PORTS), free on loopback,
      and given to the raylet, the agent and the workers on their command lines, as
      `ray start --runtime-env-agent-port` would.
    The driver also skips Ray's check for the dashboard's packages (an import of
    aiohttp, opentelemetry, prometheus_client, ...: 0.2-0.5 s), which only decides
    that flag. Switched for ray.init only; a Ray without these hooks starts as before."""
    try:
        from ray import _raylet
        from ray._private import node, utils
    except ImportError:
        yield
        return
    names = [getattr(_raylet, n, None) for n in ("METRICS_AGENT_PORT_NAME", "METRICS_EXPORT_PORT_NAME",
                                                  "DASHBOARD_AGENT_LISTEN_PORT_NAME")]
    persist = getattr(_raylet, "persist_port", None)
    dependency_check = getattr(utils, "get_dashboard_dependency_error", None)
    start_raylet = getattr(node.Node, "start_raylet", None)
    if None in names or persist is None or dependency_check is None or start_raylet is None:
        yield
        return

    def start_raylet_at_once(self, *args, **kwargs):
        for name in names:
            persist(self._session_dir, self._node_id, name, -1)
        if not self._ray_params.runtime_env_agent_port:
            self._ray_params.runtime_env_agent_port = free_agent_port()
        return start_raylet(self, *args, **kwargs)

    utils.get_dashboard_dependency_error = lambda: ImportError("a job's Ray runs its dashboard agent minimal")
    node.Node.start_raylet = start_raylet_at_once
    try:
        yield
    finally:
        utils.get_dashboard_dependency_error, node.Node.start_raylet = dependency_check, start_raylet


# The runtime env agent's port is picked here and bound by the agent a second or two
# later. A port from the kernel's ephemeral range (where bind(0) and every outgoing
# connection take theirs) could be taken meanwhile, and an agent that cannot bind
# exits and takes the raylet with it; so one below that range and above Ray's worker
# ports (10002-19999 by default), free when checked.
AGENT_PORTS = range(20000, 32768)


def free_agent_port(tries: int = 50) -> int:
    import random
    import socket

    for port in random.sample(AGENT_PORTS, tries):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the agent binds it
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port for Ray's runtime env agent in {tries} tries")


# What a job's local Ray runs beside it that the job never waits for: its agents and
# the log monitor, Python processes importing Ray just as the job's workers import it
# (by their script, or the title an agent gives itself once started).
HELPER_SCRIPTS = ("/dashboard/agent.py", "/runtime_env/agent/main.py", "/log_monitor.py")
HELPER_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
HELPER_NICE = 19


def is_helper(cmdline: list[str]) -> bool:
    """Whether a process's command line is one of a local Ray's helpers (not the raylet,
    whose own arguments name the agents' commands)."""
    if cmdline and cmdline[0].startswith(HELPER_TITLES):
        return True
    script = next((arg for arg in cmdline[1:] if not arg.startswith("-")), "")
    return script.endswith(HELPER_SCRIPTS)


def yield_cpu_to_workers(ray) -> list[int]:
    """Lower the CPU priority of a local Ray's helper processes (is_helper) to the
    least. Ray starts its workers at nice 15 (its worker_niceness, below the raylet)
    and the helpers at the driver's 0, so on a 2-core machine, where they and the
    job's two workers all start at once, each helper's second of CPU came before the
    workers'. At 19 they get what the workers leave. Returns the pids lowered; a
    helper that is gone, or a Ray without these internals, is skipped."""
    import psutil

    node = getattr(getattr(ray, "_private", None) and ray._private.worker, "_global_node", None)
    roots = [info.process.pid for infos in getattr(node, "all_processes", {}).values()
             for info in infos if getattr(info, "process", None) is not None]
    lowered = []
    for root in roots:
        try:
            procs = [psutil.Process(root), *psutil.Process(root).children()]
        except psutil.Error:
            continue
        for proc in procs:
            try:
                if is_helper(proc.cmdline()):
                    proc.nice(HELPER_NICE)
                    lowered.append(proc.pid)
            except psutil.Error:
                continue
    return lowered
