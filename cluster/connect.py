"""Connecting to Ray: a fresh local instance, a running cluster, or Ray Client.

    address None (and no RAY_ADDRESS)  start a local Ray sized for the job (no dashboard),
                                       shut down at the end
    "auto" or "HOST:PORT"              join a running cluster (as its driver)
    "ray://HOST:PORT"                  Ray Client

A bare `ray.init()` is never used: it silently joins whatever cluster `ray start`
last recorded on this machine, even a dead one. Connection problems a user can fix
(nothing listening, missing or wrong token, too few CPUs) become one-line
InputErrors instead of tracebacks or 30-second time-outs: before `ray.init`, one
PING to the Ray Client server (ray://) or the GCS (auto, HOST:PORT) with the token.

SIGTERM while connected is Ctrl-C: KeyboardInterrupt, so the CLI says so in one line
and exits 130, and Ray is shut down on the way out (Ray's own handler, set inside
`ray.init`, would exit with code 15 and no word). While `ray.init` runs, a first
SIGINT or SIGTERM waits for it to return: interrupted half-way, it left Ray's
dashboard and runtime-env agents running with no parent.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlparse

from cluster.auth import TOKEN_HINT, enable_token_mode, redact
from cluster.local_ray import loopback_node, without_agent_waits, without_head_services, yield_cpu_to_workers
from trainer.errors import InputError, one_line

PREFLIGHT_SECONDS = 5
# A local Ray for one job does not prestart workers for its first driver: Ray's raylet
# then holds the driver's registration until those workers have started (imported
# Ray), and the driver's ray.init waits in a call that keeps the GIL, so the job's
# other thread (the MLflow imports, jobs/overlap.py) stood still for those seconds.
# The job asks for its actors right after ray.init; their workers start then.
LOCAL_SYSTEM_CONFIG = {"prestart_worker_first_driver": False}
# Ray warns at every start of a local instance that it enabled token auth (its default,
# which we keep: the instance listens on loopback for this job only). Not the user's concern.
logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


class _NotTheUsersConcern(logging.Filter):
    """Ray Client's server calls ray.init off its main thread for every client and says
    so; the line reaches the client's console through the log stream."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


logging.getLogger("ray.util.client.logsclient").addFilter(_NotTheUsersConcern())


@dataclass
class Connection:
    kind: str  # "local" (started for this job), "cluster" (joined), "client" (ray://), "job"
    address: str
    cpus: float
    nodes: int
    _closing: threading.Thread | None = field(default=None, repr=False)
    _close_error: list = field(default_factory=list, repr=False)

    def close_early(self, first=None) -> None:
        """Start shutting Ray down now, in a thread of its own, after `first()` (the
        pool's close): what is left of a job (writing and logging the model) needs no
        Ray, and Ray's shutdown is mostly waiting for its processes to exit, so the two
        overlap. `connect` waits for it on the way out (and raises what it raised);
        Ray is not used after this call."""
        if self._closing is not None:
            return
        import ray

        def close():
            try:
                if first is not None:
                    first()
            except BaseException as e:  # raised again by `connect`, in the caller's thread
                self._close_error.append(e)
            finally:
                ray.shutdown()

        self._closing = threading.Thread(target=close, name="rayprop-ray-shutdown", daemon=True)
        self._closing.start()

    def _finish_close(self, ray) -> None:
        if self._closing is None:
            ray.shutdown()
            return
        self._closing.join()
        if self._close_error:
            raise self._close_error[0]


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise InputError(f"--address {redact(address)}: expected HOST:PORT (e.g. ray://10.0.0.5:10001)")
    return parsed.hostname, parsed.port


def _check_listening(address: str) -> None:
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=PREFLIGHT_SECONDS):
            pass
    except OSError:
        raise InputError(f"--address {redact(address)}: nothing listens at {host}:{port}") from None


def _ask_with_token(address: str, what: str, ask) -> None:
    """Ask the server at `address` one question the way Ray will (Ray's channel helper
    adds the token), so a missing or wrong token, or the wrong kind of server, is one
    line in a second rather than after Ray's half a minute of retries. `ask(channel)`
    makes the call; skipped if this Ray lacks the helpers."""
    try:
        import grpc
        from ray._private.grpc_utils import init_grpc_channel
    except ImportError:  # another Ray version: let ray.init report what it finds
        return
    host, port = _host_port(address)
    channel = init_grpc_channel(f"{host}:{port}", options=[], asynchronous=False)
    try:
        ask(channel)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise InputError(f"--address {redact(address)}: the cluster refused the auth token "
                             f"(missing or wrong); {TOKEN_HINT}") from None
        raise InputError(f"--address {redact(address)}: no {what} answers there "
                         f"({e.code().name})") from None
    finally:
        channel.close()


def _check_client_auth(address: str) -> None:
    """A PING to the Ray Client server at ray://HOST:PORT."""
    try:
        from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc
    except ImportError:
        return

    def ping(channel):
        ray_client_pb2_grpc.RayletDriverStub(channel).ClusterInfo(
            ray_client_pb2.ClusterInfoRequest(type=ray_client_pb2.ClusterInfoType.PING),
            timeout=PREFLIGHT_SECONDS)

    _ask_with_token(address, "Ray Client server", ping)


def _check_gcs(address: str) -> None:
    """The cluster id from the GCS at HOST:PORT, as Ray's driver asks first."""
    try:
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:
        return

    def cluster_id(channel):
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            gcs_service_pb2.GetClusterIdRequest(), timeout=PREFLIGHT_SECONDS)

    _ask_with_token(address, "Ray cluster (GCS)", cluster_id)


def _running_cluster() -> str:
    """The GCS address `auto` stands for: the cluster `ray start` last recorded here
    (Ray's own lookup would also log a warning when other clusters run here)."""
    from ray._private.services import find_bootstrap_address

    recorded = find_bootstrap_address(None)
    if not recorded:
        raise InputError("--address auto: no running Ray cluster recorded on this machine "
                         "(start one with `ray start --head`, or give HOST:PORT)")
    return recorded


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C (see the module docstring)


@contextmanager
def _sigterm_is_ctrl_c():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


@contextmanager
def _stop_deferred(ray):
    """Hold a first SIGINT/SIGTERM until the block ends, then raise KeyboardInterrupt;
    a second one interrupts at once. ray.init would set a SIGTERM handler of its own
    (sys.exit(15), whenever it comes): that is skipped for the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []

    def hold(signum, frame):
        if pending:
            raise KeyboardInterrupt
        pending.append(signum)

    saved = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    utils = ray._private.utils
    ray_sets_handler = getattr(utils, "set_sigterm_handler", None)
    if ray_sets_handler is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if ray_sets_handler is not None:
            utils.set_sigterm_handler = ray_sets_handler
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if pending:
        raise KeyboardInterrupt


# A Ray Client proxy sometimes fails to start or initialize the per-client server on
# a first connection just after the head came up ("Starting Ray client server
# failed", or "Initialization failure from server:" with an empty reason); a later
# try succeeds. Auth and "nothing listens" were ruled out by the preflight checks.
TRANSIENT_CLIENT_ERRORS = ("Starting Ray client server failed", "Initialization failure from server")
CLIENT_ATTEMPTS = 3


# What a Ray Client job's actors (its coordinator and shard workers) import in the
# cluster. They travel with the connection as the job's py_modules, as `rayprop submit`
# ships them in its working_dir: the nodes need only Ray and rayprop's dependencies, and
# run this machine's version of the code.
CLUSTER_PACKAGES = ("trainer", "workers", "cluster")


def _client_runtime_env() -> dict:
    import importlib
    from pathlib import Path

    folders = [str(Path(importlib.import_module(name).__file__).parent) for name in CLUSTER_PACKAGES]
    return {"py_modules": folders, "excludes": ["__pycache__", "*.pyc"]}


def _init_with_retries(ray, address: str, log_level: int) -> None:
    runtime_env = _client_runtime_env() if address.startswith("ray://") else None
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, logging_level=log_level, runtime_env=runtime_env)
            return
        except ConnectionError as e:
            if attempt == CLIENT_ATTEMPTS or not any(t in str(e) for t in TRANSIENT_CLIENT_ERRORS):
                raise
            ray.shutdown()
            time.sleep(2 * attempt)


@contextmanager
def connect(address: str | None, cpus_needed: int, quiet: bool = True):
    """Yield a Connection with Ray initialized; shut down what we started."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    source = enable_token_mode() if address else None  # before Ray is imported: it reads the mode once
    import ray

    conn = None
    with _sigterm_is_ctrl_c():
        try:
            with _stop_deferred(ray):
                kind = _start(ray, address, source, logging.WARNING if quiet else logging.INFO, cpus_needed)
            if kind == "cluster":  # "auto" or RAY_ADDRESS: say which cluster it turned out to be
                address = ray.get_runtime_context().gcs_address
            resources = ray.cluster_resources()
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            cpus = resources.get("CPU", 0)
            if cpus < cpus_needed:
                raise InputError(f"the cluster at {redact(address)} has {cpus:g} CPUs, the job needs "
                                 f"{cpus_needed} (lower --workers or cluster.cpus_per_worker)")
            conn = Connection(kind, redact(address) if address else "local", cpus, nodes)
            yield conn
        finally:
            if conn is None:
                ray.shutdown()  # also after an interrupted start
            else:
                conn._finish_close(ray)


def _start(ray, address: str | None, source: str | None, log_level: int, cpus_needed: int) -> str:
    """ray.init for `address` after the preflight checks; returns the Connection kind."""
    if address is None:
        # Logical CPUs = what the job asks for, so actors never wait on a small machine.
        # No dashboard: its server and modules cost ~2.5 s of CPU at start-up, which
        # on a small machine is most of a short job's start (README: Speed); nor the
        # API server and monitor that Ray starts without it (cluster/local_ray.py).
        with loopback_node(ray), without_head_services(), without_agent_waits():
            ray.init(address="local", num_cpus=max(cpus_needed, os.cpu_count() or 1),
                     include_dashboard=False, _node_ip_address="127.0.0.1",
                     logging_level=log_level, configure_logging=True, _system_config=LOCAL_SYSTEM_CONFIG)
        yield_cpu_to_workers(ray)
        return "local"
    if address.startswith("ray://"):
        _check_listening(address)
        _check_client_auth(address)
        kind = "client"
    else:
        if address == "auto":
            address = _running_cluster()  # ray.init gets it resolved: one lookup, no warnings
        _check_listening(address)
        _check_gcs(address)
        kind = "cluster"
    try:
        _init_with_retries(ray, address, log_level)
    except ConnectionError as e:
        hint = TOKEN_HINT if source is None else f"token from {source}"
        raise InputError(f"--address {redact(address)}: cannot connect ({redact(one_line(e))}); {hint}") from None
    if os.environ.get("RAY_JOB_ID") or os.environ.get("RAYPROP_IN_JOB"):
        kind = "job"
    return kind
