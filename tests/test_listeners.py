"""A job's local Ray listens on loopback only: every TCP socket listening in the
job's process tree (driver, GCS, raylet, agents, workers), read from /proc while
the job trains on 2 Ray workers, is on 127.0.0.0/8 or ::1."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

LISTEN = "0A"  # TCP state in /proc/net/tcp


def listening_sockets() -> dict[str, tuple[str, int]]:
    """{socket inode: (ip, port)} of every listening TCP socket on the machine."""
    found = {}
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != LISTEN:
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found[fields[9]] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    return found


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def process_tree(root: int) -> set[int]:
    pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    tree = set()
    for pid in pids:
        p = pid
        while p > 1:
            if p == root:
                tree.add(pid)
                break
            p = parent_of(p)
    return tree


def sockets_of(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    return inodes


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")
def test_a_local_ray_job_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    cmd = [sys.executable, "-m", "experiments.cli", "train", "spirals", "--workers", "2", "--quiet",
           "--set", "train.epochs=100000", "--output", "out",
           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "out" / "checkpoints").exists():  # workers up, a step taken
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.time() < deadline, "the job took no step in 3 minutes"
            time.sleep(0.2)
        tree = process_tree(proc.pid)
        mine = sockets_of(tree)
        listeners = {ino: where for ino, where in listening_sockets().items() if ino in mine}
    finally:
        proc.send_signal(signal.SIGINT)  # stops after the step in flight
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert len(tree) >= 4, f"expected driver, GCS, raylet and workers, found {len(tree)} processes"
    assert len(listeners) >= 3, f"only {len(listeners)} listening sockets found: {listeners}"
    exposed = sorted(f"{ip}:{port}" for ip, port in listeners.values() if not is_loopback(ip))
    assert not exposed, f"listening beyond loopback: {exposed}"
