"""`rayprop ui`: the MLflow UI on the store rayprop logs to.

For a local store (sqlite, a directory) this runs `mlflow server` on it, bound to
127.0.0.1 unless told otherwise, prints the address once it answers, and waits;
Ctrl-C stops it. The server's own log goes to a file (its path is printed), so the
console shows only where to look: the UI, and the runs page of each experiment that
holds runs (MLflow 3 opens an experiment on its GenAI overview otherwise). A tracking
URI that is a server already (http://...) has its own UI: rayprop prints its address
and pages and is done.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from experiments.stores import experiment_page, experiments_with_runs, is_server, redact, sqlite_path
from trainer.errors import InputError

START_SECONDS = 120  # a first start on a new sqlite file creates its tables (several seconds)
STOP_SECONDS = 10


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise InputError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e})") from None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it runs uvicorn workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _exit_on(signum, frame):
    raise SystemExit(128 + signum)


def _print_pages(address: str) -> None:
    try:
        found = experiments_with_runs(address)
    except (OSError, ValueError) as e:  # the UI still works; only the list is missing
        print(f"rayprop ui: could not list the experiments ({e})", file=sys.stderr)
        return
    if not found:
        print("  no runs yet", flush=True)
    for experiment_id, name in found:
        print(f"  experiment {name!r}: {experiment_page(address, experiment_id)}", flush=True)


def ui(uri: str, host: str, port: int) -> int:
    if is_server(uri):
        print(f"rayprop ui: {redact(uri)} is an MLflow tracking server; its UI is at that address")
        _print_pages(uri)
        return 0
    _check_port_free(host, port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    address = f"http://{shown}:{port}"
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        print(f"rayprop ui: {db} does not exist yet: no runs were logged here", file=sys.stderr)
    # One worker: the UI serves one person, and the machine is busy training.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    # MLflow 3's server also starts job-runner processes (for its GenAI judges);
    # browsing training runs needs none of them.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # The server's own log (uvicorn's access lines, MLflow's table creation and
    # deprecation warnings) goes to a file: the console says where to look, not how.
    fd, log_path = tempfile.mkstemp(prefix=f"rayprop-ui-{port}-", suffix=".log")
    log = os.fdopen(fd, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    # The server has a session of its own (so it can be stopped whole): whatever stops
    # this process must stop it too, not only Ctrl-C.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(f"{address}/health"):
            if proc.poll() is not None:
                print(f"rayprop ui: mlflow server exited with code {proc.returncode}; its log: "
                      f"{log_path}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"rayprop ui: mlflow server did not answer at {address} in {START_SECONDS}s; "
                      f"its log: {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"rayprop ui: MLflow UI for {redact(uri)} at {address} (Ctrl-C stops it; "
              f"server log: {log_path})", flush=True)
        _print_pages(address)
        return 0 if proc.wait() == 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
        log.close()
