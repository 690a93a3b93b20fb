"""A TCP proxy on loopback for tests (not a test module): a process of its own that
forwards a free port of its own to a server's port, so a test can kill "the server" its
client sees, with SIGKILL, while the server itself lives on for the next test. Killed,
the proxy's sockets close as a killed server's do, and its port refuses connections.

    proxy = TcpProxy(server_port); ... proxy.uri ...; proxy.kill()

Run as `python -m tests.tcpproxy TARGET_PORT`: it prints the port it listens on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class TcpProxy:
    def __init__(self, target_port: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.tcpproxy", str(target_port)], cwd=REPO,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline()  # printed once it listens
        if not line.strip().isdigit():
            self.kill()
            raise RuntimeError(f"the proxy did not start (exit {self.proc.returncode})")
        self.port = int(line)
        self.uri = f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL, as a server dies: no goodbye on its connections."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)  # pass the half-close on: HTTP clients may use it
    except OSError:
        pass  # the other side went away: the other pump ends too


def _serve(target_port: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
