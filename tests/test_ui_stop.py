"""`rayprop ui` stops on the first Ctrl-C in every state it can be in, and leaves no
process behind: while the server starts, while it serves, while a request is in flight
(the server then waits for it: STOP_SECONDS, then it is killed), and at once on a second
Ctrl-C. Real `rayprop ui`, real `mlflow server`, real signals; each rayprop is started
with SIGINT ignored, as a script's background job is, and must stop all the same.

Every wait is bounded by an event (a line printed, a process seen), with generous
limits for a loaded machine."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from experiments.cli.ui import STOP_SECONDS
from tests.raycluster import free_port

LOADED = 60  # seconds: a busy 2-CPU machine may take this long to start a server


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


class Ui:
    """`rayprop ui` in a session of its own, its output read line by line."""

    def __init__(self, uri: str, cwd: Path):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # As a shell starts a script's background job: SIGINT ignored (then exec: same pid).
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", 'trap "" INT; exec "$0" -m experiments.cli ui --tracking-uri "$1" --port "$2"',
             sys.executable, uri, str(self.port)],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.server: int | None = None  # the mlflow server's pid = its process group
        self.lines = {"out": queue.Queue(), "err": queue.Queue()}
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._read, args=(stream, self.lines[name]), daemon=True).start()

    @staticmethod
    def _read(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def line(self, name: str, containing: str, seconds: float = LOADED) -> str:
        deadline = time.monotonic() + seconds
        while True:
            line = self.lines[name].get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line is not None, f"rayprop ui ended (exit {self.proc.wait()}) before saying {containing!r}"
            if containing in line:
                return line

    def rest(self, name: str) -> list[str]:
        """The lines still to come, once rayprop has exited."""
        lines = []
        while (line := self.lines[name].get(timeout=LOADED)) is not None:
            lines.append(line)
        return lines

    def wait_for_server(self) -> int:
        deadline = time.monotonic() + LOADED
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"rayprop ui exited with {self.proc.returncode}"
            found = [p for p in children(self.proc.pid) if b"mlflow" in cmdline(p)]
            if found:
                self.server = found[0]
                return self.server
            time.sleep(0.01)
        raise AssertionError("rayprop ui started no server")

    def ctrl_c(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def exits_within(self, seconds: float) -> int:
        start = time.monotonic()
        code = self.proc.wait(timeout=seconds)
        assert time.monotonic() - start < seconds
        return code

    def nothing_left(self) -> None:
        assert not group_alive(self.proc.pid), "a process of rayprop's group is left"
        assert self.server is not None and not group_alive(self.server), "a process of the server is left"

    def kill(self) -> None:
        """After a failure: both groups, while their ids are surely still theirs (a test
        that failed before it looked for the server finds it now, so none is left)."""
        if self.server is None and self.proc.poll() is None:
            found = [p for p in children(self.proc.pid) if b"mlflow" in cmdline(p)]
            self.server = found[0] if found else None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.server is not None and group_alive(self.server) and self._server_running():
            os.killpg(self.server, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def _server_running(self) -> bool:
        return f"--port\0{self.port}".encode() in cmdline(self.server)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory):
    """A store with MLflow's tables and no runs, made once (creating tables takes seconds)."""
    import mlflow

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def ui(tmp_path, template_db):
    started = []
    shutil.copy(template_db, tmp_path / "mlflow.db")

    def start():
        started.append(Ui(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path))
        return started[-1]

    yield start
    for u in started:  # whatever a failed test left
        u.kill()


def serving(u: Ui) -> None:
    u.wait_for_server()
    u.line("out", f"http://127.0.0.1:{u.port}")
    u.line("out", "no runs yet")  # the last line it prints: it now only waits


def request_in_flight(port: int) -> socket.socket:
    """A POST whose body is not all sent: the server waits for the rest, and a stop
    waits for the server. A whole request after it on another connection shows that
    the server has taken the first one up."""
    s = socket.create_connection(("127.0.0.1", port), timeout=LOADED)
    s.sendall(b"POST /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"max_")
    with socket.create_connection(("127.0.0.1", port), timeout=LOADED) as other:
        other.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert other.recv(100).startswith(b"HTTP/1.1 200")
    return s


def test_ctrl_c_while_the_server_starts(ui):
    u = ui()
    u.wait_for_server()  # started, not answering yet: it takes seconds to import MLflow
    u.ctrl_c()
    assert u.exits_within(STOP_SECONDS + LOADED) == 0
    u.nothing_left()


def test_ctrl_c_while_serving(ui):
    u = ui()
    serving(u)
    u.ctrl_c()
    assert u.exits_within(STOP_SECONDS + LOADED) == 0
    u.nothing_left()
    assert "Traceback" not in "".join(u.rest("err"))


def test_ctrl_c_with_a_request_in_flight_stops_after_the_grace(ui):
    u = ui()
    serving(u)
    held = request_in_flight(u.port)
    start = time.monotonic()
    u.ctrl_c()
    u.line("err", "Ctrl-C again kills it")
    assert u.exits_within(STOP_SECONDS + LOADED) == 0
    assert time.monotonic() - start >= STOP_SECONDS - 1, "the server was not given its grace"
    u.nothing_left()
    held.close()


def test_a_second_ctrl_c_kills_the_server_at_once(ui):
    u = ui()
    serving(u)
    held = request_in_flight(u.port)
    u.ctrl_c()
    u.line("err", "Ctrl-C again kills it")  # the server is still finishing the request
    u.ctrl_c()
    assert u.exits_within(STOP_SECONDS / 2) == 0  # not the grace: at once
    u.nothing_left()
    held.close()
