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
    # Started as `/path/to/venv/bin/ray start --head` from a shell whose PATH lacks the
    # venv (not activated): a bare `python` there is another Python, without rayprop's
    # dependencies; submitted jobs must still run with the Python of the cluster's Ray.
    h = Head(tmp_path_factory.mktemp("rayhead"), venv_on_path=False)
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


def ray_job_status(head, env, job_id, seconds=180) -> str:
    """Follow a job to its end with Ray's own CLI, in a process of its own (Ray reads the
    auth mode once per process, at import)."""
    ray_cli = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "status", job_id,
               "--address", head.jobs_address]
    deadline = time.time() + seconds
    while time.time() < deadline:
        status = subprocess.run(ray_cli, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True,
                                text=True, timeout=60).stdout.lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            return status
        time.sleep(1)
    return status


def no_ray_lines(text):
    """Ray's own log lines (its INFO logging, the entrypoint line, raylet forwards) are not
    rayprop's console."""
    for marker in ("INFO packaging.py", "INFO sdk.py", "INFO job_manager.py", "INFO worker.py",
                   "Running entrypoint for job", "(raylet)"):
        assert marker not in text, text


def test_submit_through_ray_jobs(head, mlflow_server, tmp_path):
    """A local data file shipped with the job, the job run by the cluster's Python (not
    the PATH's), its log followed, and the model back here in --output DIR from the run
    on the tracking server."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import numpy as np
    from mlflow import MlflowClient

    rng = np.random.default_rng(0)
    X = rng.standard_normal((301, 2))
    pq.write_table(pa.table({"a": X[:, 0], "b": X[:, 1], "y": (X.sum(1) > 0).astype(np.int64)}),
                   tmp_path / "local.parquet")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{source: {tmp_path / 'local.parquet'}}}\nmodel: {{layers: [2, 8, 2]}}\n"
                   "train: {epochs: 3, optimizer: adam, learning_rate: 0.05, batch_size: 32}\n")
    env = client_env(tmp_path, head.token)
    got = tmp_path / "got"
    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--workers", "2",
                   "--tracking-uri", mlflow_server.uri, "--output", got, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the job's own log, followed to the end: it trained on the shipped file with 2 workers
    assert "in a Ray job: 2 workers" in proc.stdout and "done: 3 epochs" in proc.stdout, proc.stdout
    no_ray_lines(proc.stdout + proc.stderr)
    summary = json.loads((got / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["epochs"] == 3
    run = MlflowClient(mlflow_server.uri).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and f"run {summary['run_id']} in {got}" in proc.stderr
    # the files here are the run's, byte for byte as the server stored them
    for name in ("model.npz", "model.json", "summary.json"):
        stored = [p for p in (mlflow_server.root / "artifacts").rglob(name) if summary["run_id"] in str(p)]
        assert len(stored) == 1 and stored[0].read_bytes() == (got / name).read_bytes(), name

    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--no-wait", "--tracking-uri", mlflow_server.uri,
                   "--set", "train.learning_rate=oops", env=env, cwd=tmp_path)
    one_line_error(proc, "train.learning_rate")  # checked before anything reaches the cluster

    proc_nowait = rayprop("submit", cfg, "--address", head.jobs_address, "--no-wait",
                          "--tracking-uri", mlflow_server.uri, env=env, cwd=tmp_path)
    assert proc_nowait.returncode == 0, proc_nowait.stderr
    job_id = proc_nowait.stdout.strip()
    assert job_id.startswith("raysubmit_")
    printed = [line for line in proc_nowait.stderr.splitlines() if "rayprop fetch" in line]
    assert printed and f"rayprop fetch {job_id} --output DIR --tracking-uri {mlflow_server.uri}" in printed[0], \
        proc_nowait.stderr
    # its run appears on the server and finishes (asked in-process: cheaper than Ray's CLI)
    client = MlflowClient(mlflow_server.uri)
    deadline, done = time.time() + 240, []
    while not done and time.time() < deadline:
        done = [r for r in client.search_runs([run.info.experiment_id], "attributes.status = 'FINISHED'")
                if r.info.run_id != summary["run_id"]]
        time.sleep(1)
    assert len(done) == 1, done
    status = ray_job_status(head, env, job_id)
    assert f"job '{job_id.lower()}' succeeded" in status, status
    # the one command printed fetches it later, by the job's id; and by the run's id
    for name, which in (("later", job_id), ("by-run", done[0].info.run_id)):
        proc = rayprop("fetch", which, "--output", tmp_path / name, "--tracking-uri", mlflow_server.uri,
                       env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert json.loads((tmp_path / name / "summary.json").read_text())["run_id"] == done[0].info.run_id
    assert (tmp_path / "later" / "model.npz").read_bytes() == (tmp_path / "by-run" / "model.npz").read_bytes()


def test_submit_a_job_that_fails_on_the_cluster_is_one_line(head, mlflow_server, tmp_path):
    """The job's own last line and its id; its exit code's kind (2: bad input there)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {source: /nonexistent/rows.parquet}\nmodel: {layers: [2, 4, 2]}\n")
    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--tracking-uri", mlflow_server.uri,
                   env=client_env(tmp_path, head.token), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rayprop submit: error: job raysubmit_") and "/nonexistent/rows.parquet" in last, \
        proc.stderr
    assert "Traceback" not in proc.stderr
    no_ray_lines(proc.stdout + proc.stderr)


def test_fetch_refuses_what_has_no_model(mlflow_server, tmp_path):
    """Unknown run, a run still RUNNING, a finished run without model files: one line each."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    env = client_env(tmp_path, None)
    running = client.create_run("0").info.run_id
    proc = rayprop("fetch", running, "--output", tmp_path / "a", "--tracking-uri", mlflow_server.uri,
                   env=env, cwd=tmp_path, timeout=60)
    one_line_error(proc, running, "RUNNING")
    client.set_terminated(running)
    proc = rayprop("fetch", running, "--output", tmp_path / "a", "--tracking-uri", mlflow_server.uri,
                   env=env, cwd=tmp_path, timeout=60)
    one_line_error(proc, running, "no model files")
    proc = rayprop("fetch", "0" * 32, "--output", tmp_path / "a", "--tracking-uri", mlflow_server.uri,
                   env=env, cwd=tmp_path, timeout=60)
    one_line_error(proc, "0" * 32, "no such run")
    proc = rayprop("fetch", "raysubmit_unknown", "--output", tmp_path / "a", "--tracking-uri", mlflow_server.uri,
                   env=env, cwd=tmp_path, timeout=60)
    one_line_error(proc, "raysubmit_unknown", "no run of that id, nor of a job of that id")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.npz").write_bytes(b"another model's")
    proc = rayprop("fetch", running, "--output", tmp_path / "b", "--tracking-uri", mlflow_server.uri,
                   env=env, cwd=tmp_path, timeout=60)
    one_line_error(proc, "already holds model.npz")  # never over another model's files
    assert (tmp_path / "b" / "model.npz").read_bytes() == b"another model's"
    # nor beside another run's checkpoints (a stopped run's folder: one run per folder)
    (tmp_path / "c" / "checkpoints").mkdir(parents=True)
    (tmp_path / "c" / "checkpoints" / "ckpt-000000007.npz").write_bytes(b"x")
    (tmp_path / "c" / ".rayprop-run").write_text('{"run_id": "' + "a" * 32 + '"}')
    proc = rayprop("fetch", running, "--output", tmp_path / "c", "--tracking-uri", mlflow_server.uri,
                   env=env, cwd=tmp_path, timeout=60)
    one_line_error(proc, "holds the files of run " + "a" * 32)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".rayprop-run", "checkpoints"]


def test_submit_refuses_a_job_whose_results_stay_on_the_head(tmp_path):
    """No tracking server and no output URI: refused before anything is sent (no cluster here)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SPIRALS)
    env = {k: v for k, v in client_env(tmp_path, None).items() if not k.startswith("MLFLOW_")}
    proc = rayprop("submit", cfg, "--address", f"http://127.0.0.1:{free_port()}", env=env, cwd=tmp_path,
                   timeout=60)
    one_line_error(proc, "--tracking-uri", "deleted with Ray's session", "--output URI")


def test_submit_with_a_wrong_token_is_one_line(head, mlflow_server, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SPIRALS)
    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--tracking-uri", mlflow_server.uri,
                   env=client_env(tmp_path, "ffffffffffffffffffffffffffffffff"), cwd=tmp_path, timeout=60)
    one_line_error(proc, "authentication", "token")


def test_submit_refuses_a_large_local_file(head, mlflow_server, tmp_path, monkeypatch):
    from cluster import jobs

    big = tmp_path / "big.csv"
    with open(big, "wb") as f:
        f.truncate(jobs.MAX_SHIPPED_BYTES + 1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{source: {big}}}\n")
    proc = rayprop("submit", cfg, "--address", head.jobs_address, "--tracking-uri", mlflow_server.uri,
                   env=client_env(tmp_path, head.token), cwd=tmp_path, timeout=60)
    one_line_error(proc, "data.source", "too large to ship", "path or URI")
