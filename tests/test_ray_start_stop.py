"""A job's local Ray (cluster/connect.py): started without the API server and the
autoscaler monitor that `ray.init` would add (neither serves a job), and shut down
in the background once training is over (Connection.close_early), while the driver
logs the model: the pool first, then Ray, and `connect` waits for both on the way out."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cluster.connect import connect
from tests.test_listeners import process_tree


def commands_of(pids: set[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_a_local_ray_runs_actors_without_api_server_or_monitor():
    import ray
    from ray._private import node, services

    api_server, monitor = services.start_api_server, node.Node.start_monitor
    with connect(None, 2) as conn:
        @ray.remote(num_cpus=1)
        class Echo:
            def pid(self):
                return os.getpid()

        actors = [Echo.remote() for _ in range(2)]
        pids = ray.get([a.pid.remote() for a in actors], timeout=120)
        commands = commands_of(process_tree(os.getpid()))
        assert conn.kind == "local" and conn.nodes == 1 and conn.cpus >= 2
    assert len(set(pids)) == 2
    assert any("gcs_server" in c for c in commands) and any("raylet" in c for c in commands), commands
    assert not [c for c in commands if "dashboard/dashboard.py" in c or "autoscaler/_private/monitor.py" in c]
    # put back for anything else that starts Ray in this process
    assert (services.start_api_server, node.Node.start_monitor) == (api_server, monitor)
    assert not ray.is_initialized()


def test_close_early_closes_the_pool_then_ray_in_the_background():
    import ray

    seen = []
    with connect(None, 2) as conn:
        raylets = [c for c in commands_of(process_tree(os.getpid())) if "raylet/raylet" in c]
        main = threading.current_thread()
        conn.close_early(lambda: seen.append((ray.is_initialized(), threading.current_thread() is main)))
        conn.close_early(lambda: seen.append("twice"))  # one shutdown only
    assert seen == [(True, False)]  # the pool closed first, while Ray was up, off the main thread
    assert not ray.is_initialized()
    left = [c for c in commands_of(process_tree(os.getpid())) if c in raylets]
    assert not left, left


def test_an_error_closing_the_pool_comes_out_of_connect_and_ray_still_stops():
    import ray

    def broken():
        raise RuntimeError("the pool would not close")

    with pytest.raises(RuntimeError, match="would not close"), connect(None, 2) as conn:
        conn.close_early(broken)
    assert not ray.is_initialized()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_a_local_ray_registers_its_node_before_its_agents_are_up():
    """The raylet takes the dashboard agent's ports as not in use (-1, as Ray's minimal
    agent writes them) and the runtime env agent's from its command line, so the node
    registers without waiting for either agent; the agents still run (the raylet shares
    their fate), the dashboard agent minimal; actors and tasks run; Ray's own hooks are
    put back afterwards."""
    import ray
    from ray._private import node, utils

    from cluster.local_ray import AGENT_PORTS

    start_raylet, dependency_check = node.Node.start_raylet, utils.get_dashboard_dependency_error
    with connect(None, 2):
        @ray.remote(num_cpus=1)
        class Echo:
            def pid(self):
                return os.getpid()

        @ray.remote(num_cpus=0)
        def add(a, b):
            return a + b

        actors = [Echo.remote() for _ in range(2)]
        assert len(set(ray.get([a.pid.remote() for a in actors], timeout=120))) == 2
        assert ray.get(add.remote(1, 2), timeout=120) == 3
        # what the raylet registered: the ports it read, without waiting
        (info,) = ray.nodes()
        ports = {k: info[k] for k in ("MetricsAgentPort", "MetricsExportPort", "DashboardAgentListenPort")}
        env_port = info["RuntimeEnvAgentPort"]
        commands = commands_of(process_tree(os.getpid()))
    assert set(ports.values()) == {-1}, ports
    assert env_port in AGENT_PORTS
    agents = [c for c in commands if "dashboard/agent.py" in c]
    assert agents and all("--minimal" in c for c in agents), agents
    assert any(f"--runtime-env-agent-port={env_port}" in c for c in commands if "runtime_env/agent" in c)
    assert (node.Node.start_raylet, utils.get_dashboard_dependency_error) == (start_raylet, dependency_check)
    assert not ray.is_initialized()


def test_the_runtime_env_agents_port_is_free_and_below_the_ephemeral_range():
    import socket

    from cluster.local_ray import AGENT_PORTS, free_agent_port

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ephemeral = s.getsockname()[1]
    assert ephemeral not in AGENT_PORTS
    port = free_agent_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free: binds


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_ray_init_returns_before_any_worker_process_starts():
    """No workers are prestarted for the job's driver: with them, Ray holds the
    driver's registration (in a call that keeps the GIL, so every other thread of the
    job stops) until they have imported Ray. The job's actors start their own."""
    import ray

    with connect(None, 2):
        # a worker names itself ray::IDLE once it has started (default_worker.py before)
        workers = [c for c in commands_of(process_tree(os.getpid())) if c.startswith("ray::IDLE")
                   or "default_worker.py" in c and "raylet/raylet" not in c]

        @ray.remote(num_cpus=1)
        def pid():
            return os.getpid()

        assert ray.get(pid.remote(), timeout=120) != os.getpid()
    assert workers == []


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux)")
def test_a_local_rays_agents_and_log_monitor_yield_the_cpu_to_the_workers():
    """The helpers a job never waits for run at the lowest CPU priority, below the
    job's workers; Ray's GCS and raylet keep the driver's."""
    import psutil
    import ray

    from cluster.local_ray import HELPER_NICE, is_helper

    with connect(None, 2):
        @ray.remote(num_cpus=1)
        def pid():
            return os.getpid()

        worker = ray.get(pid.remote(), timeout=120)
        nice = {}
        for p in process_tree(os.getpid()):
            try:
                proc = psutil.Process(p)
                nice[tuple(proc.cmdline())] = proc.nice()
            except psutil.Error:
                pass
        worker_nice = psutil.Process(worker).nice()
    mine = os.nice(0)
    helpers = {c: n for c, n in nice.items() if is_helper(list(c))}
    assert len(helpers) == 3 and set(helpers.values()) == {HELPER_NICE}, helpers
    core = {c[0]: n for c, n in nice.items() if c[0].endswith(("gcs_server", "raylet/raylet"))}
    assert len(core) == 2 and set(core.values()) == {mine}, core
    assert worker_nice < HELPER_NICE  # Ray's own for its workers (15), below the raylet's


def test_a_helper_is_told_by_its_script_or_title_not_by_the_raylets_arguments():
    from cluster.local_ray import is_helper

    assert is_helper(["/venv/bin/python", "-u", "/venv/lib/ray/dashboard/agent.py", "--node-id=1"])
    assert is_helper(["/venv/bin/python", "-u", "/venv/lib/ray/_private/log_monitor.py", "--session-dir=/t"])
    assert is_helper(["ray::RuntimeEnvAgent"])
    assert not is_helper(["/venv/lib/ray/core/src/ray/raylet/raylet", "--dashboard_agent_command=/venv/bin/python "
                          "-u /venv/lib/ray/dashboard/agent.py", "--logging-filename=runtime_env_agent.log"])
    assert not is_helper(["/venv/bin/python", "/venv/lib/ray/_private/workers/default_worker.py", "--x=1"])
    assert not is_helper(["ray::IDLE"])
