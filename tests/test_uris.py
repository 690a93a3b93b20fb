"""Data behind URIs: a real S3-compatible server (moto) on loopback, read through pyarrow.fs.

One Parquet file of several row groups, a hive-partitioned folder and a CSV are put
in a bucket; training on them (local mode, 2 and 3 Ray workers) ends with the weights
of training on the same rows from local files, each Ray worker reports that it read
only its own row groups, and every way a URI can fail is exit 2 with one line that
names it and no secret.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.conftest import one_line_exit_2
from trainer.errors import InputError
from tests.raycluster import free_port, wait_listening
from tests.raydata import config, write_parquet
from trainer.model_io import load_model

BUCKET = "data"
SECRET = "s3cr3t-never-shown"
ROWS, GROUP = 1003, 100           # the Parquet file: 11 row groups, the last of 3 rows
PARTS, PART_GROUP = 4, 60         # the hive folder: part=0..3, row groups of 60


def start_moto(**env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_listening(port, 30):
        proc.kill()
        raise RuntimeError("moto server did not start")
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # by its own pid
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def hive_table(table: pa.Table) -> pa.Table:
    """The table's rows in partition order, with the partition key as column `part`."""
    part = np.arange(ROWS) % PARTS
    order = np.argsort(part, kind="stable")
    return table.take(order).append_column("part", pa.array(part[order], pa.int64()))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto server with the bucket filled, and the environment a user would set."""
    local = tmp_path_factory.mktemp("local")
    proc, endpoint = start_moto()
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY=SECRET, AWS_ENDPOINT_URL=endpoint,
                      AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    try:
        fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                               access_key="testing", secret_key=SECRET, allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        one = write_parquet(local / "d.parquet", ROWS, GROUP)
        pafs.copy_files(str(one), f"{BUCKET}/one/d.parquet", destination_filesystem=fs)
        hive = hive_table(pq.read_table(one))
        pq.write_table(hive, local / "hive-ref.parquet", row_group_size=PART_GROUP)
        for k in range(PARTS):
            rows = hive.filter(pc.equal(hive["part"], k)).drop_columns(["part"])
            with fs.open_output_stream(f"{BUCKET}/hive/part={k}/part-0.parquet") as out:
                pq.write_table(rows, out, row_group_size=PART_GROUP)
        with fs.open_output_stream(f"{BUCKET}/hive/_tmp/part-0.parquet") as out:
            out.write(b"not Parquet: a writer's leftover, skipped as pyarrow skips _ and . names")
        pacsv.write_csv(pq.read_table(one), local / "d.csv")
        pafs.copy_files(str(local / "d.csv"), f"{BUCKET}/d.csv", destination_filesystem=fs)
        yield {"endpoint": endpoint, "local": local}
    finally:
        os.environ.clear()
        os.environ.update(saved)
        stop(proc)


@pytest.fixture(scope="module")
def strict_s3():
    """A second server that checks every request's signature against its (empty) IAM."""
    proc, endpoint = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="0")
    yield endpoint
    stop(proc)


URI_CASES = [
    # (id, data.source, environment changes ("{s3}", "{strict}", "{dead}": endpoints), words);
    # a URI with credentials, options or an unknown scheme is in tests/test_bad_inputs.py
    ("no such key", f"s3://{BUCKET}/one/nope.parquet", {}, ["s3://data/one/nope.parquet", "no such file"]),
    ("no such bucket", "s3://nobucket/d.parquet", {}, ["s3://nobucket/d.parquet", "no such bucket"]),
    ("no bucket at all", "s3://", {}, ["s3://", "names no bucket"]),  # not the store's whole listing
    ("no credentials", f"s3://{BUCKET}/one/d.parquet",
     {"AWS_ENDPOINT_URL": "{strict}", "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
     ["s3://data/one/d.parquet", "no AWS credentials", "AWS_ACCESS_KEY_ID"]),
    ("access denied", f"s3://{BUCKET}/one/d.parquet", {"AWS_ENDPOINT_URL": "{strict}"},
     ["s3://data/one/d.parquet", "access denied"]),
    ("unreachable endpoint", f"s3://{BUCKET}/one/d.parquet", {"AWS_ENDPOINT_URL": "{dead}"},
     ["s3://data/one/d.parquet", "cannot reach the storage endpoint"]),
    # Not "cannot reach": pyarrow would try https:// on a live http server.
    ("endpoint without a scheme", f"s3://{BUCKET}/one/d.parquet", {"AWS_ENDPOINT_URL": "{bare}"},
     ["s3://data/one/d.parquet", "AWS_ENDPOINT_URL=127.0.0.1:", "has no scheme", "write http://127.0.0.1:",
      "or https://127.0.0.1:"]),
]


@pytest.mark.parametrize("source,changes,words", [c[1:] for c in URI_CASES], ids=[c[0] for c in URI_CASES])
def test_uri_errors_exit_2_with_one_line_before_any_worker(s3, strict_s3, rayprop, tmp_path, source,
                                                           changes, words):
    import yaml

    endpoints = {"{s3}": s3["endpoint"], "{strict}": strict_s3, "{dead}": f"http://127.0.0.1:{free_port()}",
                 "{bare}": s3["endpoint"].split("://", 1)[1]}
    cfg = config(source)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {k: endpoints.get(v, v) for k, v in changes.items() if v is not None}
    removed = [k for k, v in changes.items() if v is None]
    saved = {k: os.environ.pop(k) for k in removed if k in os.environ}
    try:
        # Without --local: the error comes from the driver's checks, before Ray starts.
        result = rayprop("train", "c.yaml", "--output", "out", env={
            **env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    finally:
        os.environ.update(saved)
    line = one_line_exit_2(result, *words)
    assert SECRET not in line and "testing" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    import ray

    assert not ray.is_initialized()  # (these run before this module's Ray starts)


def test_gcs_without_credentials_fails_within_seconds_naming_the_uri(monkeypatch, tmp_path):
    """pyarrow's GCS client retries a request it cannot authenticate for 15 minutes;
    the driver's check must end in seconds, with one line naming the URI."""
    import threading

    from trainer.errors import DataError
    from workers.data import locations
    from workers.data.sources import open_source

    monkeypatch.setattr(locations, "GCS_RETRY_SECONDS", 1.0)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                 # no gcloud credentials file
    monkeypatch.setenv("GCE_METADATA_ROOT", "127.0.0.1:1")    # no metadata server either
    outcome = []

    def check():
        try:
            open_source("gs://some-bucket/d.parquet")
        except DataError as e:
            outcome.append(str(e))

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(60)
    assert outcome, "no answer within 60 s"
    assert outcome[0].startswith("data.source: gs://some-bucket/d.parquet: ") and "\n" not in outcome[0], outcome
    assert "Google Cloud credentials" in outcome[0] or "cannot reach" in outcome[0], outcome


def test_azure_without_credentials_says_so_not_an_aws_hint(monkeypatch, tmp_path):
    from trainer.errors import DataError
    from workers.data.sources import open_source

    for name in [v for v in os.environ if v.startswith(("AZURE_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no az login, no ~/.aws
    uri = "abfs://box@account.dfs.core.windows.net/d.parquet"
    with pytest.raises(DataError) as e:
        open_source(uri)
    assert str(e.value).startswith(f"data.source: {uri}: ") and "Azure credentials" in str(e.value), e.value
    assert "AWS" not in str(e.value)


@pytest.fixture(scope="module")
def ray_session(s3):
    """One local Ray for the module, started after the environment is set: its workers
    inherit the raylet's environment, as workers on a cluster inherit the nodes'."""
    from cluster.connect import connect

    with connect(None, 3) as conn:
        yield conn


def train(path_or_uri, workers: int | None, **cfg):
    """Weights after 2 epochs of Adam (float64); workers None: local mode. Returns
    (theta, the pool's per-worker info or None)."""
    from experiments.jobs import training
    from trainer.config import from_dict
    from trainer.coordinator import train as coordinate
    from trainer.optimizers import make_optimizer

    raw = config(path_or_uri)
    raw["model"]["layers"] = cfg.get("layers", [4, 12, 3])
    job = training.prepare(from_dict(raw))
    pool = training.open_pool(job, workers or 1, local=workers is None)
    try:
        theta = job.theta0.copy()
        t = job.cfg.train
        coordinate(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs)
        return theta, getattr(pool, "info", None)
    finally:
        pool.close()


def assert_same(theta, ref):
    rel = np.max(np.abs(theta - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-9, f"relative difference {rel:.2e}"


def groups(lo: int, hi: int, size: int) -> list[int]:
    return list(range(lo // size, (hi - 1) // size + 1))


def test_parquet_file_local_mode_and_2_3_ray_workers(s3, ray_session):
    ref, _ = train(s3["local"] / "d.parquet", None)
    uri = f"s3://{BUCKET}/one/d.parquet"
    theta, _ = train(uri, None)
    assert_same(theta, ref)
    for workers in (2, 3):
        theta, info = train(uri, workers)
        assert_same(theta, ref)
        for i in info:  # reported by each worker from its own reader
            assert i["row_groups_read"] == groups(*i["rows"], GROUP), i


def test_hive_folder_partition_key_is_a_column(s3, ray_session):
    ref, _ = train(s3["local"] / "hive-ref.parquet", None, layers=[5, 12, 3])
    theta, info = train(f"s3://{BUCKET}/hive", 2, layers=[5, 12, 3])
    assert_same(theta, ref)
    sizes = np.bincount(np.arange(ROWS) % PARTS)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for i in info:
        lo, hi = i["rows"]
        want = [(f"part={k}/part-0.parquet", g) for k in range(PARTS)
                for g in groups(max(lo, starts[k]) - starts[k], min(hi, starts[k + 1]) - starts[k], PART_GROUP)
                if max(lo, starts[k]) < min(hi, starts[k + 1])]
        assert i["row_groups_read"] == want, i


def test_csv_is_counted_by_the_driver_only(s3, ray_session):
    from workers.data import csv_source, sources

    ref, _ = train(s3["local"] / "d.csv", None)
    theta, _ = train(f"s3://{BUCKET}/d.csv", 2)
    assert_same(theta, ref)
    # A worker opening the source with the driver's handoff reads no row to count them.
    driver = sources.open_source(f"s3://{BUCKET}/d.csv")
    counted = []
    real = csv_source._count_rows
    csv_source._count_rows = lambda reader: counted.append(1) or real(reader)
    try:
        again = sources.open_source(driver.spec, driver.handoff())
    finally:
        csv_source._count_rows = real
    assert (again.num_rows, counted) == (ROWS, [])


# ---- output to a URI ------------------------------------------------------------------

OUT_EPOCHS = 30
OUT_CONFIG = f"""\
experiment: uri-out
model: {{layers: [2, 16, 3], hidden_activation: tanh, dtype: float64}}
data: {{source: spirals, validation_fraction: 0.1}}
train: {{optimizer: adam, learning_rate: 0.01, batch_size: 8, epochs: {OUT_EPOCHS}, seed: 3,
        checkpoint_seconds: 0}}
"""
OUT_STEPS = OUT_EPOCHS * -(-810 // 8)  # 810 training rows


@pytest.fixture(scope="module")
def out_work(s3, tmp_path_factory):
    """A folder with the config, a tracking store, and the weights of an undisturbed
    run with a local --output (the reference); the bucket's file system."""
    d = tmp_path_factory.mktemp("uri-out")
    (d / "c.yaml").write_text(OUT_CONFIG)
    store = f"sqlite:///{d / 'mlflow.db'}"
    ref = subprocess.run([sys.executable, "-m", "experiments.cli", "train", "c.yaml", "--local", "--quiet",
                          "--output", "ref", "--tracking-uri", store], cwd=d, capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    fs = pafs.S3FileSystem(endpoint_override=s3["endpoint"], scheme="http", region="us-east-1",
                           access_key="testing", secret_key=SECRET)
    return d, store, load_model(d / "ref")[1], fs


def s3_files(fs, prefix: str) -> dict[str, bytes]:
    """Every object below BUCKET/prefix, by relative name (one a running job deletes
    between the listing and the read -- its write probe, an old checkpoint -- is left out)."""
    infos = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    out = {}
    for i in infos:
        if i.type == pafs.FileType.File:
            try:
                with fs.open_input_stream(i.path) as f:
                    out[i.path.removeprefix(f"{BUCKET}/{prefix}/")] = f.read()
            except FileNotFoundError:
                continue
    return out


def model_of(files: dict[str, bytes], tmp_path) -> np.ndarray:
    for name in ("model.npz", "model.json"):
        (tmp_path / name).write_bytes(files[name])
    return load_model(tmp_path)[1]


def output_tag(store: str, run_id: str) -> str:
    import mlflow

    return mlflow.MlflowClient(store).get_run(run_id).data.tags["rayprop.output"]


def test_train_to_s3_writes_the_files_there_and_a_second_run_beside_them(out_work, rayprop, tmp_path):
    d, store, ref, fs = out_work
    args = ("train", "c.yaml", "--local", "--quiet", "--output", f"s3://{BUCKET}/runs/a", "--tracking-uri", store)
    first = rayprop(*args, cwd=d)
    assert first.returncode == 0, first.stderr[-2000:]
    files = s3_files(fs, "runs/a")
    run_id = json.loads(files["summary.json"])["run_id"]
    assert json.loads(files["summary.json"])["steps"] == OUT_STEPS
    assert json.loads(files[".rayprop-run"])["run_id"] == run_id
    ckpts = sorted(n for n in files if n.startswith("checkpoints/"))
    assert 1 <= len(ckpts) <= 3 and ckpts[-1] == f"checkpoints/ckpt-{OUT_STEPS:09d}.npz", ckpts
    assert not [n for n in files if n.endswith(".tmp")]
    assert_same(model_of(files, tmp_path), ref)
    assert output_tag(store, run_id) == f"s3://{BUCKET}/runs/a"
    assert f"model written to s3://{BUCKET}/runs/a/model.npz" in first.stderr
    assert SECRET not in first.stderr + first.stdout
    # The same command again: the prefix is the first run's, so the second takes a-2.
    second = rayprop(*args, cwd=d)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (f"rayprop: s3://{BUCKET}/runs/a holds the files of run {run_id}; "
            f"this run writes to s3://{BUCKET}/runs/a-2") in second.stderr
    assert s3_files(fs, "runs/a") == files
    other = s3_files(fs, "runs/a-2")
    second_id = json.loads(other["summary.json"])["run_id"]
    assert second_id != run_id and json.loads(other[".rayprop-run"])["run_id"] == second_id
    assert output_tag(store, second_id) == f"s3://{BUCKET}/runs/a-2"


def test_killed_mid_run_resumes_from_the_checkpoints_at_the_uri(out_work, tmp_path):
    """SIGKILL once the bucket holds checkpoints; --resume takes the newest from the
    bucket (the run's artifacts have only an older one: they get one a minute) and
    ends with the undisturbed run's weights."""
    from trainer.checkpoint import read_checkpoint

    d, store, ref, fs = out_work
    uri = f"s3://{BUCKET}/runs/killed"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "train", "c.yaml", "--local", "--quiet",
                             "--output", uri, "--tracking-uri", store], cwd=d, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while len([n for n in s3_files(fs, "runs/killed") if n.startswith("checkpoints/")]) < 2:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoints reached the bucket"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    files, again = None, s3_files(fs, "runs/killed")
    while files != again:  # a request the server got whole before the kill may land just after
        files = again
        time.sleep(0.5)
        again = s3_files(fs, "runs/killed")
    assert "summary.json" not in files
    run_id = json.loads(files[".rayprop-run"])["run_id"]
    newest = sorted(n for n in files if n.startswith("checkpoints/"))[-1]
    (tmp_path / "newest.npz").write_bytes(files[newest])
    step = read_checkpoint(tmp_path / "newest.npz").position.global_step
    resumed = subprocess.run([sys.executable, "-m", "experiments.cli", "train", "c.yaml", "--local", "--quiet",
                              "--resume", run_id, "--tracking-uri", store], cwd=d, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {step}:" in resumed.stderr, resumed.stderr[-2000:]
    assert "writes to" not in resumed.stderr  # the run's own prefix
    files = s3_files(fs, "runs/killed")
    assert json.loads(files["summary.json"]) ["run_id"] == run_id
    assert json.loads(files["summary.json"])["steps"] == OUT_STEPS
    assert_same(model_of(files, tmp_path), ref)
    assert len([n for n in files if n.startswith("checkpoints/")]) <= 3  # the run's newest 3 are kept


def test_file_uri_output(out_work, rayprop, tmp_path):
    d, store, ref, _ = out_work
    out = tmp_path / "shared" / "run"
    result = rayprop("train", "c.yaml", "--local", "--quiet", "--output", f"file://{out}",
                     "--tracking-uri", store, "--set", "train.output=elsewhere", cwd=d)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same(load_model(out)[1], ref)
    run_id = json.loads((out / "summary.json").read_text())["run_id"]
    assert output_tag(store, run_id) == f"file://{out}"
    assert not (d / "elsewhere").exists(), "--output wins over train.output"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_train_output_in_the_config_is_used_without_the_flag(out_work, rayprop, tmp_path):
    d, store, _, _ = out_work
    out = tmp_path / "from-config"
    result = rayprop("train", "c.yaml", "--local", "--quiet", "--tracking-uri", store,
                     "--set", f"train.output=file://{out}", "--set", "train.epochs=1", cwd=d)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.npz").exists() and (out / "summary.json").exists()


def test_an_output_uri_that_cannot_be_written_is_exit_2_before_training(out_work, rayprop, strict_s3):
    d, store, _, _ = out_work
    result = rayprop("train", "c.yaml", "--local", "--quiet", "--output", "s3://nobucket/runs/x",
                     "--tracking-uri", store, cwd=d)
    one_line_exit_2(result, "--output", "s3://nobucket/runs/x", "no such bucket")


def test_a_uri_claim_moves_aside_from_a_claimed_prefix_and_notices_a_takeover(tmp_path, capsys):
    """Two claims of one prefix (file://, no training): the second writes the first free
    sibling; a claim whose owner object was overwritten by another job stops (RunError)
    before copying another file, so the other run's prefix gets nothing of it."""
    from experiments.jobs.output_uri import UriClaim
    from trainer.errors import RunError

    uri = f"file://{tmp_path / 'out'}"
    with UriClaim(uri, move_aside=True) as first:
        first.record("a" * 32)
        with UriClaim(uri, move_aside=True) as second:
            assert second.name == uri + "-2"
            assert f"{uri} holds the files of run {'a' * 32}; this run writes to {uri}-2" in capsys.readouterr().err
            ckpt = first.out_dir / "ckpt-000000001.npz"
            ckpt.write_bytes(b"whole")
            first.saved(ckpt)
            assert (tmp_path / "out" / "checkpoints" / ckpt.name).read_bytes() == b"whole"
            # Another job that found the prefix free at the same moment writes its owner object.
            (tmp_path / "out" / ".rayprop-run").write_text(json.dumps({"run_id": "b" * 32, "job": "other"}))
            late = first.out_dir / "ckpt-000000002.npz"
            late.write_bytes(b"late")
            with pytest.raises(RunError, match="another job claimed it"):
                first.saved(late)
            assert not (tmp_path / "out" / "checkpoints" / late.name).exists()
        assert not second.out_dir.exists(), "the staging folder goes at the end"
    # Without moving aside (--resume of another run), a taken prefix is refused.
    with pytest.raises(InputError, match="holds the files of run"):
        UriClaim(uri, resume_run_id="c" * 32).check()


def test_output_store_writes_whole_files_only(tmp_path):
    """On a file system a file appears under its name only complete: a failing write
    leaves neither the file nor its temporary."""
    from workers.data.output_store import OutputStore

    OutputStore(f"file://{tmp_path / 'checked' / 'out'}").check()
    assert list(tmp_path.iterdir()) == [], "a check leaves no folder behind"
    store = OutputStore(f"file://{tmp_path / 'o'}")

    def broken(out):
        out.write(b"half")
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store._put("checkpoints/ckpt-000000001.npz", broken)
    assert list((tmp_path / "o").rglob("*.npz")) == [] and list((tmp_path / "o").rglob("*.tmp")) == []
    store.write_bytes("checkpoints/ckpt-000000001.npz", b"whole")
    assert store.names("checkpoints") == ["ckpt-000000001.npz"]
    assert store.read_bytes("checkpoints/ckpt-000000001.npz") == b"whole"


def test_train_command_logs_the_uri_and_a_metadata_digest(s3, rayprop, tmp_path):
    import mlflow
    import yaml

    uri = f"s3://{BUCKET}/one/d.parquet"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(uri)))
    result = rayprop("train", cfg, "--local", "--output", "out", "--tracking-uri", store, "--quiet")
    assert result.code == 0, result.stderr[-2000:]
    assert SECRET not in result.stderr + result.stdout
    ref, _ = train(s3["local"] / "d.parquet", None)
    assert_same(load_model(tmp_path / "out")[1], ref)
    run = mlflow.MlflowClient(store).search_runs([mlflow.MlflowClient(store).get_experiment_by_name(
        "raytest").experiment_id])[0]
    (ds,) = run.inputs.dataset_inputs
    assert '"uri": "s3://data/one/d.parquet"' in ds.dataset.source
    assert "x0" in ds.dataset.schema and SECRET not in str(run.data.params)
    # The digest is a function of metadata: the same file under another name differs,
    # and it is the same as computed again from the footers.
    from experiments.tracking.dataset import digest_of
    from workers.data.sources import open_source

    columns = ["x0", "x1", "x2", "x3", "y"]
    assert ds.dataset.digest == digest_of(open_source(uri), columns)
    assert ds.dataset.digest != digest_of(open_source(str(s3["local"] / "d.parquet")), columns)


def test_submit_ships_nothing_but_the_config_for_a_uri(s3, tmp_path):
    from cluster.jobs import stage

    uri = f"s3://{BUCKET}/one/d.parquet"
    job = stage(config(uri), tmp_path, lambda s: False)
    assert job["data"]["source"] == uri and not (tmp_path / "data").exists()
    shipped = "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
    assert SECRET not in shipped and s3["endpoint"] not in shipped




# ---- a cluster whose nodes lack the shell's credentials -----------------------------------

@pytest.fixture(scope="module")
def s3_with_a_user(tmp_path_factory):
    """A moto server that checks signatures against its IAM: one user may read the
    bucket; a request without its key is refused. Its first requests (unchecked) set
    that up."""
    import json

    import boto3

    proc, endpoint = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="3")
    try:
        anyone = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                      aws_secret_access_key="setup")
        iam = boto3.client("iam", **anyone)
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket=BUCKET)
        local = write_parquet(tmp_path_factory.mktemp("users") / "d.parquet", 300, 100)
        s3.put_object(Bucket=BUCKET, Key="d.parquet", Body=local.read_bytes())
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        stop(proc)


def test_workers_that_cannot_read_what_the_driver_read_say_the_nodes_lack_the_shells_variables(
        s3_with_a_user, tmp_path, monkeypatch):
    """A real `ray start --head` whose environment (the node's) has the endpoint but
    not the credentials of the shell that runs `rayprop train --address`: the driver
    reads the metadata, the worker is refused, and the line says which side and what
    the nodes lack. Exit 2, one line, no secret."""
    import yaml

    from tests.conftest import installed_rayprop
    from tests.raycluster import Head

    endpoint, key_id, secret = s3_with_a_user
    node = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for name in [v for v in os.environ if v.startswith("AWS_") or v.startswith("RAY_")]:
        monkeypatch.delenv(name)  # the node's environment is this one's, without them
    monkeypatch.setenv("HOME", str(tmp_path))  # and no ~/.aws
    head = Head(tmp_path, num_cpus=1, env=node)
    try:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(f"s3://{BUCKET}/d.parquet")))
        shell = {**os.environ, **node, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
                 "RAY_AUTH_TOKEN": head.token, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        result = installed_rayprop("train", "c.yaml", "--address", f"127.0.0.1:{head.gcs_port}", "--workers", "1",
                                   "--output", "out", cwd=tmp_path, env=shell, timeout=240)
    finally:
        head.stop()
    line = one_line_exit_2(result, f"data.source: s3://{BUCKET}/d.parquet: read here but not by the workers "
                           "on node ", " (access denied): the nodes' environment lacks "
                           "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (set in this shell)")
    assert secret not in line and key_id not in line
    assert not (tmp_path / "out").exists()


def test_a_workers_error_names_its_side_only_when_the_environment_decides_it(monkeypatch):
    from workers.data.storage_env import worker_error

    for name in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_PROFILE", "")  # empty counts as unset, as the SDK takes it
    uri = "s3://b/d.parquet"
    denied = {"error": f"data.source: {uri}: access denied for the AWS credentials in the environment",
              "node_ip": "10.0.0.7", "storage_env": ["AWS_ACCESS_KEY_ID", "AWS_REGION"]}
    # The nodes have every variable this shell has: their values or files differ.
    assert worker_error(uri, denied) == (f"data.source: {uri}: read here but not by the workers on node 10.0.0.7 "
                                         "(access denied for the AWS credentials in the environment): the nodes' "
                                         "storage settings (environment, credentials files, role) differ from "
                                         "this shell's")
    # What decides first: a shell's cosmetic variables come after.
    for name in ("AWS_PAGER", "AWS_CA_BUNDLE", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(name, "v")
    assert worker_error(uri, denied).endswith("lacks AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_CA_BUNDLE, ... "
                                              "(set in this shell)")
    # The data's own faults, and local paths, stay as the worker said them.
    nan = {"error": f"data.source: {uri}: column 'x0' holds NaN at row 900", "storage_env": []}
    assert worker_error(uri, nan) == nan["error"]
    local = {"error": "data.source: cannot read /d.parquet: access denied", "storage_env": []}
    assert worker_error("/d.parquet", local) == local["error"]
