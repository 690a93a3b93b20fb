"""Remote use against a real `ray start --head` with token auth: Ray Client and Ray Jobs."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.raycluster import Head, free_port

SPIRALS = "data: {source: spirals}\nmodel: {layers: [2, 16, 3]}\ntrain: {epochs: 2, batch_size: 128}\n"


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    h = Head(tmp_path_factory.mktemp("rayhead"))
    yield h
    h.stop()


def rayprop(*args, env, cwd, timeout=240):
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def client_env(tmp_path, token):
    """A user's environment: HOME of its own (no ~/.ray/auth_token), this token if any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_train_through_ray_client_with_token(head, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SPIRALS)
    proc = rayprop("train", cfg, "--address", head.client_address, "--workers", "2", "--output",
                   tmp_path / "out", env=client_env(tmp_path, head.token), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ray"] == "client" and summary["workers"] == 2 and summary["epochs"] == 2
    assert "Ray Client" in proc.stderr
    assert "SIGTERM handler" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("token", [None, "0123456789abcdef0123456789abcdef"])
def test_ray_client_without_the_right_token_is_one_line(head, tmp_path, token):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SPIRALS)
    proc = rayprop("train", cfg, "--address", head.client_address, "--output", tmp_path / "out",
                   env=client_env(tmp_path, token), cwd=tmp_path, timeout=60)
    one_line_error(proc, "token")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["auto", "HOST:PORT"])
@pytest.mark.parametrize("token", [None, "0123456789abcdef0123456789abcdef"])
def test_joining_without_the_right_token_is_one_line(head, tmp_path, how, token):
    """`--address auto` (the cluster `ray start` recorded) and the GCS address itself:
    a missing or wrong token is the preflight's one line, not Ray's retries and logs."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SPIRALS)
    env = client_env(tmp_path, token)
    # `auto` reads RAY_TMPDIR/ray/ray_current_cluster: point it at this head's record,
    # not at whatever another cluster on this machine wrote to /tmp/ray.
    (tmp_path / "rt").mkdir()
    (tmp_path / "rt" / "ray").symlink_to(head.temp_dir)
    deadline = time.time() + 60  # `ray start` records it a moment after its ports open
    while not (head.temp_dir / "ray_current_cluster").exists() and time.time() < deadline:
        time.sleep(0.5)
    env["RAY_TMPDIR"] = str(tmp_path / "rt")
    address = "auto" if how == "auto" else f"127.0.0.1:{head.gcs_port}"
    proc = rayprop("train", cfg, "--address", address, "--output", tmp_path / "out",
                   env=env, cwd=tmp_path, timeout=120)
    one_line_error(proc, "refused the auth token", "RAY_AUTH_TOKEN")
    assert not (tmp_path / "out").exists()


def test_nothing_listening_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SPIRALS)
    port = free_port()
    proc = rayprop("train", cfg, "--address", f"ray://127.0.0.1:{port}", env=client_env(tmp_path, None),
                   cwd=tmp_path, timeout=60)
    one_line_error(proc, "nothing listens", str(port))


def test_submit_through_ray_jobs(head, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((301, 2))
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "y": (X.sum(1) > 0).astype(np.int64)}),
                   tmp_path / "local.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{source: {tmp_path / 'local.parquet'}}}\nmodel: {{layers: [2, 8, 2]}}\n"
                   "train: {epochs: 3, optimizer: adam, learning_rate: 0.05, batch_size: 32}\n")
    env = client_env(tmp_path, head.token)
    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--workers", "2", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the job's own log, followed to the end: it trained on the shipped file with 2 workers
    assert "in a Ray job: 2 workers" in proc.stdout and "done: 3 epochs" in proc.stdout, proc.stdout

    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--no-wait",
                   "--set", "train.learning_rate=oops", env=env, cwd=tmp_path)
    one_line_error(proc, "train.learning_rate")  # checked before anything reaches the cluster

    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--no-wait", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.startswith("raysubmit_")
    # Follow it to its end with Ray's own CLI, in a process of its own (Ray reads the
    # auth mode once per process, at import).
    ray_cli = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "status", job_id,
               "--address", head.jobs_address]
    deadline = time.time() + 120
    while time.time() < deadline:
        status = subprocess.run(ray_cli, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True,
                                text=True, timeout=60).stdout.lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(1)
    assert f"job '{job_id.lower()}' succeeded" in status, status


def test_submit_with_a_wrong_token_is_one_line(head, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SPIRALS)
    proc = rayprop("submit", cfg, "--address", head.jobs_address,
                   env=client_env(tmp_path, "ffffffffffffffffffffffffffffffff"), cwd=tmp_path, timeout=60)
    one_line_error(proc, "authentication", "token")


def test_submit_refuses_a_large_local_file(head, tmp_path, monkeypatch):
    from cluster import jobs

    big = tmp_path / "big.csv"
    with open(big, "wb") as f:
        f.truncate(jobs.MAX_SHIPPED_BYTES + 1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{source: {big}}}\n")
    proc = rayprop("submit", cfg, "--address", head.jobs_address,
                   env=client_env(tmp_path, head.token), cwd=tmp_path, timeout=60)
    one_line_error(proc, "data.source", "too large to ship", "path or URI")
