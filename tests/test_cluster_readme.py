"""The README's "Run on a cluster" section, run as written on one machine.

Every indented command of the section is taken from README.md and run in a new
process, in order, in a folder of the test's own where `.venv` is this venv, with
HEAD = 127.0.0.1, a HOME of the test's own (so `~/.ray/auth_token` is this test's),
and a PATH without the venv's bin (the venv is not activated, as for a new user).

What the test adds, because the head, the joining nodes and the tracking server
share one machine with whatever else runs on it, and nothing else:
- each `ray start` gets ports and a temp dir of its own (`_isolation`), and the
  README's default ports (6379, 8265, 10001, 5000) are replaced by free ones;
- `JOB_ID` is replaced by the id the `--no-wait` submit printed;
- step 7's job runs in the background while the test joins one more node;
- `ray stop` is not run: it stops every Ray process of the user on the machine. The
  cluster's processes are found by a marker in their environment and killed by
  process id instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.conftest import REPO
from tests.raycluster import free_port, wait_listening

SECTION = "## Run on a cluster"
MARKER = "RAYPROP_TEST_CLUSTER"


def readme_commands() -> list[str]:
    """The section's commands: its indented lines, in order."""
    text = (REPO / "README.md").read_text()
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [line[4:].strip() for line in body.splitlines() if line.startswith("    ") and line.strip()]


def test_the_section_has_the_steps_in_order():
    commands = readme_commands()
    kinds = [c.split()[0] if not c.startswith("RAY_AUTH_MODE") else c.split()[1] for c in commands]
    assert kinds[0] == ".venv/bin/ray" and "get-auth-token" in commands[0]
    assert "start --head" in commands[1] and commands[1].startswith("RAY_AUTH_MODE=token ")
    assert "--address=HEAD:6379" in commands[2] and commands[2].startswith("RAY_AUTH_MODE=token ")
    assert any("mlflow server" in c for c in commands)
    assert any(c.startswith(".venv/bin/rayprop submit") and "--output" in c for c in commands)
    assert any(c.startswith(".venv/bin/rayprop fetch") for c in commands)
    assert any("ray://HEAD:10001" in c for c in commands)
    assert any("--workers auto" in c for c in commands)
    assert commands[-1] == ".venv/bin/ray stop"


class Cluster:
    """The processes the README's commands start, found and stopped by MARKER."""

    def __init__(self, root: Path):
        self.root = root
        self.marker = secrets.token_hex(8)
        self.home = root / "home"
        self.home.mkdir()
        (root / ".venv").symlink_to(Path(sys.prefix))
        venv_bin = str(Path(sys.executable).parent)
        path = ":".join(p for p in os.environ.get("PATH", "").split(":") if p and p != venv_bin)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_", "MLFLOW_")) and k != "VIRTUAL_ENV"}
        self.env.update({"HOME": str(self.home), "PATH": path, MARKER: self.marker,
                         "PYTHONUNBUFFERED": "1"})
        self.ports = {"6379": free_port(), "8265": free_port(), "10001": free_port(), "5000": free_port()}
        self.temp_dirs: list[Path] = []
        self.background: list[subprocess.Popen] = []
        self.log = open(root / "commands.log", "a")

    def substitute(self, command: str, run_id: str | None = None) -> str:
        command = command.replace("HEAD", "127.0.0.1")
        for default, port in self.ports.items():
            command = re.sub(rf"(?<=[:=\s]){default}\b", str(port), command)
        if run_id:
            command = command.replace("JOB_ID", run_id)
        if re.search(r"\bray start\b", command):
            command += " " + " ".join(self._isolation("--head" in command))
        return command

    def _isolation(self, head: bool) -> list[str]:
        base = 24000 + secrets.randbelow(8000)
        # A temp dir per node, as on separate machines: a node's runtime-env agent deletes
        # the unpacked working_dirs it does not use, under its own temp dir; sharing one
        # with the head, it deleted the running job's folder. Short: Ray's socket paths.
        temp_dir = Path(f"/tmp/rc{self.marker[:6]}-{len(self.temp_dirs)}")
        self.temp_dirs.append(temp_dir)
        flags = ["--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                 f"--min-worker-port={base}", f"--max-worker-port={base + 499}",
                 *(f"--{name}={free_port()}" for name in (
                     "node-manager-port", "object-manager-port", "runtime-env-agent-port",
                     "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port"))]
        if head:
            flags += [f"--dashboard-port={self.ports['8265']}",
                      f"--ray-client-server-port={self.ports['10001']}"]
        return flags

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        self.log.write(f"$ {command}\n")
        self.log.flush()
        t0 = time.monotonic()
        proc = subprocess.run(command, shell=True, cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        self.log.write(f"# exit {proc.returncode} after {time.monotonic() - t0:.1f} s\n"
                       f"{proc.stdout}{proc.stderr}\n")
        self.log.flush()
        return proc

    def start(self, command: str) -> subprocess.Popen:
        """A command that runs on (a server, a long job): output into a list, read by a thread."""
        self.log.write(f"$ {command} &\n")
        proc = subprocess.Popen(command, shell=True, cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        proc.lines = []

        def read():
            for line in proc.stdout:
                proc.lines.append(line)

        proc.reader = threading.Thread(target=read, daemon=True)
        proc.reader.start()
        self.background.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _ in range(2):  # Ray's processes, by the marker in their environment
            for pid in self._marked():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        for proc in self.background:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", *map(str, self.temp_dirs)])
        self.log.close()

    def _marked(self) -> list[int]:
        needle = f"{MARKER}={self.marker}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids


def _ok(proc, what: str) -> str:
    out = (proc.stdout or "") + (proc.stderr or "")
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, f"{what}:\n{out[-3000:]}"
    return out


def _wait_for(proc, pattern: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(re.search(pattern, line) for line in proc.lines):
            return True
        if proc.poll() is not None:
            proc.reader.join(5)
            return any(re.search(pattern, line) for line in proc.lines)
        time.sleep(0.2)
    return False


def test_run_on_a_cluster_as_written(tmp_path):
    commands = readme_commands()
    cluster = Cluster(tmp_path)
    timings = {}
    try:
        it = iter(commands)
        token, head, join, server = next(it), next(it), next(it), next(it)
        t0 = time.monotonic()
        _ok(cluster.run(cluster.substitute(token)), token)
        assert (cluster.home / ".ray" / "auth_token").is_file()
        _ok(cluster.run(cluster.substitute(head)), head)
        _ok(cluster.run(cluster.substitute(join)), join)
        mlflow = cluster.start(cluster.substitute(server))
        assert wait_listening(cluster.ports["5000"], 120), "".join(mlflow.lines)[-2000:]

        submit = next(it)
        out = _ok(cluster.run(cluster.substitute(submit)), submit)
        timings["head_start_to_model_on_laptop_s"] = round(time.monotonic() - t0, 1)
        model_dir = tmp_path / "runs" / "spirals-cluster"
        assert {"model.npz", "model.json", "summary.json"} <= {p.name for p in model_dir.iterdir()}, out
        summary = json.loads((model_dir / "summary.json").read_text())
        assert summary["ray"] == "job" and summary["workers"] == 2, summary

        no_wait, fetch = next(it), next(it)
        out = _ok(cluster.run(cluster.substitute(no_wait)), no_wait)
        printed = [l for l in out.splitlines() if "rayprop fetch" in l]
        assert printed, out
        job_or_run = re.search(r"rayprop fetch (\S+)", printed[-1]).group(1)
        fetched = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the job runs on while we wait
            fetched = cluster.run(cluster.substitute(fetch, run_id=job_or_run))
            if fetched.returncode == 0:
                break
            time.sleep(2)
        _ok(fetched, fetch)
        assert (tmp_path / "runs" / "xor-cluster" / "model.npz").is_file()

        client = next(it)
        out = _ok(cluster.run(cluster.substitute(client)), client)
        client_summary = json.loads((tmp_path / "runs" / "spirals-client" / "summary.json").read_text())
        assert client_summary["ray"] == "client", client_summary
        a = np.load(model_dir / "model.npz")
        b = np.load(tmp_path / "runs" / "spirals-client" / "model.npz")
        # The same config on the same 2 workers: the same additions in the same order.
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)

        grow = next(it)
        job = cluster.start(cluster.substitute(grow))
        assert _wait_for(job, r"rayprop: training .* 2 workers", 240), "".join(job.lines)[-3000:]
        _ok(cluster.run(cluster.substitute(join)), "another node joins: " + join)
        assert _wait_for(job, r"2 -> 3 workers", 120), "".join(job.lines)[-3000:]
        assert job.wait(timeout=600) == 0, "".join(job.lines)[-3000:]
        grown = json.loads((tmp_path / "runs" / "w-tiny-auto" / "summary.json").read_text())
        assert grown["resizes"] >= 1 and grown["workers"] == 3, grown
        assert next(it) == ".venv/bin/ray stop"  # not run: see the module docstring
    finally:
        cluster.stop()
    print(json.dumps(timings))
