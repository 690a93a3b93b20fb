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
from contextlib import contextmanager

from experiments.jobs.signal_handlers import SignalHandlers
from experiments.tracking.stores import (experiment_page, experiments_with_runs, is_server, redact, sqlite_path,
                                         start_from_template)
from trainer.errors import InputError

START_SECONDS = 120  # a first start on a new sqlite file creates its tables (several seconds)
STOP_SECONDS = 10  # after SIGTERM, what the server gets to finish its requests before SIGKILL
SLOW_STOP_SECONDS = 2  # past this, say why the stop takes long, and how to cut it short
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


class _Signals:
    """Ctrl-C, SIGTERM and SIGHUP for as long as a server of ours may run.

    Installed whatever this process inherited: a script's background job starts with
    SIGINT ignored, and the server (in a session of its own, so that it can be stopped
    whole) hears no Ctrl-C itself. The first signal raises (KeyboardInterrupt for
    Ctrl-C, SystemExit otherwise) -- except while the server is being started, when it
    waits until the server has a pid to be stopped by. Later ones are only counted: the
    stop under way watches the count and kills the server at once."""

    def __init__(self):
        self.count = 0
        self._raising = True
        self._first: int | None = None
        self._handlers = SignalHandlers(STOP_SIGNALS, self._on_signal)

    def __enter__(self) -> _Signals:
        self._handlers.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return self._handlers.__exit__(*exc)

    def _on_signal(self, signum, frame) -> None:
        self.count += 1
        if self._first is None:
            self._first = signum
            if self._raising:
                self._raise()

    def _raise(self) -> None:
        self._raising = False
        if self._first == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + self._first)

    def only_count(self) -> None:
        """From now on (the server is being stopped) signals only count."""
        self._raising = False

    @contextmanager
    def held(self):
        self._raising = False
        try:
            yield
        finally:
            self._raising = True
        if self._first is not None:
            self._raise()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of that id exists, not ours to signal
        return True


def _stop(proc: subprocess.Popen, signals: _Signals) -> None:
    """Stop the server's process group whole (mlflow server and its uvicorn, which
    finishes the requests in flight): SIGTERM, then SIGKILL after STOP_SECONDS or at
    once on another signal. Returns once no process of the group is left."""
    signals.only_count()
    pgid, seen, sig = proc.pid, signals.count, signal.SIGTERM
    start = time.monotonic()
    said = False
    while True:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            proc.poll()  # reaps the leader, so that it no longer counts
            if not _group_alive(pgid):
                return
            if sig == signal.SIGTERM and signals.count > seen:
                break  # asked again: no more waiting
            if sig == signal.SIGTERM and not said and time.monotonic() - start > SLOW_STOP_SECONDS:
                said = True
                print("rayprop ui: stopping the MLflow server (Ctrl-C again kills it "
                      "now)", file=sys.stderr, flush=True)
            time.sleep(0.05)
        if sig == signal.SIGKILL:
            return  # nothing more can be done
        sig = signal.SIGKILL


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
        # Made whole now, as a job makes it: a server making it migrates it for seconds, and
        # a job started meanwhile would migrate the same file too (MLflow then fails the job).
        start_from_template(uri)
    # One worker: the UI serves one person, and the machine is busy training.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    # MLflow 3's server also starts job-runner processes (for its GenAI judges);
    # browsing training runs needs none of them.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    with _Signals() as signals:
        # The server's own log (uvicorn's access lines, MLflow's table creation and
        # deprecation warnings) goes to a file: the console says where to look, not how.
        fd, log_path = tempfile.mkstemp(prefix=f"rayprop-ui-{port}-", suffix=".log")
        proc = None
        try:
            with signals.held():  # a server started is a server with a pid to stop
                proc = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
            return _serve(proc, uri, address, log_path)
        except KeyboardInterrupt:
            return 0
        finally:
            if proc is not None:
                _stop(proc, signals)
            os.close(fd)


def _serve(proc: subprocess.Popen, uri: str, address: str, log_path: str) -> int:
    """Wait for the server to answer, say where it is, and wait for it to end."""
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
