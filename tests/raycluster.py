"""A real `ray start --head` for tests: own ports, own temp dir, own token; stopped
by its process group id (never by name)."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.5)
    return False


class Head:
    def __init__(self, log_dir: Path, num_cpus: int = 2, env: dict[str, str] | None = None,
                 venv_on_path: bool = True):
        self.token = secrets.token_hex(16)
        self.gcs_port, self.client_port, self.dashboard_port = free_port(), free_port(), free_port()
        # Worker ports: a range of our own, clear of the ports Ray Client's proxy hands
        # out from 23000 up and of the ephemeral range where free_port() finds ports.
        base = 24000 + secrets.randbelow(8000)
        # Ray's Unix sockets live under --temp-dir and their paths must stay under
        # 108 bytes: pytest's tmp_path is too long (the client server then fails).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
        self.log = open(log_dir / "head.log", "wb")
        bin_dir = Path(sys.executable).parent
        # venv_on_path=False: `ray start` run by its full path from a shell whose PATH
        # lacks the venv (not activated), so a bare `python` there is another Python.
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != bin_dir]
        if venv_on_path:
            path.insert(0, str(bin_dir))
        self.env = {**os.environ, "PATH": os.pathsep.join(path),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [str(bin_dir / "ray"), "start", "--head", "--block", "--disable-usage-stats",
             "--node-ip-address", "127.0.0.1", f"--port={self.gcs_port}",
             f"--ray-client-server-port={self.client_port}",
             f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
             f"--min-worker-port={base}", f"--max-worker-port={base + 999}",
             f"--temp-dir={self.temp_dir}", f"--num-cpus={num_cpus}",
             # Every other port of our own too: two heads on one machine must not share
             # (a busy dashboard-agent port leaves the Jobs API with "no available agent").
             *(f"--{name}={free_port()}" for name in (
                 "node-manager-port", "object-manager-port", "runtime-env-agent-port",
                 "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port"))],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        ok = wait_listening(self.dashboard_port, 90) and wait_listening(self.client_port, 60)
        if not ok:
            self.stop()
            raise RuntimeError(f"ray head did not come up; see {self.log.name}")
        time.sleep(2)  # the Jobs API answers a moment after the port opens

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def jobs_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def stop(self) -> None:
        """SIGTERM the head's process group (every process it started), then SIGKILL."""
        # Some of the head's processes outlive a SIGTERM by more than 15 s (seen here):
        # they get 5 s, then the group is killed; its temp dir is removed below anyway.
        stop_group(self.proc)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def stop_group(proc: subprocess.Popen, seconds: float = 5) -> None:
    """Stop a test server started with start_new_session (its process group's id is its
    pid) by that group, never by name: SIGTERM, then SIGKILL, each given `seconds` for the
    group to be gone; the leader is reaped."""
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + seconds
        while time.time() < deadline:
            # Reap the leader: while it is an unreaped zombie, signal 0 still finds the
            # group, and every stop would wait out both timeouts.
            proc.poll()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.3)
    proc.wait(timeout=5)


@contextmanager
def pinned_auth_mode(mode: str):
    """RAY_AUTH_MODE=`mode` for this process and the nodes it starts, restored after.

    Ray reads the mode into its C++ config once, and a local `ray.init` earlier in the
    process (another test module) turns it to "token" (and writes a token into
    ~/.ray/auth_token). Nodes of a `ray.cluster_utils.Cluster` started with "disabled"
    after that had every actor creation cancelled ("died while starting"), even with
    the config read again. So tests pin "token": the nodes and the driver then agree
    whatever ran before (the token file is made if missing). The config is read
    again on the way in and out, for the mode the process goes on with.
    """
    from ray._raylet import Config

    if mode == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
        # A Cluster's GCS does not make the token (a local ray.init does): in the
        # suite's own HOME (conftest) a module run alone had none, and the head died
        # at once ("couldn't find an authentication token").
        token = Path.home() / ".ray" / "auth_token"
        if not token.exists():
            token.parent.mkdir(parents=True, exist_ok=True)
            token.write_text(secrets.token_hex(32))
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = mode
    Config.initialize("")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        Config.initialize("")
