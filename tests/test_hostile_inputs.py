"""Hostile input, as an adversary would try it: data files that are not what their
name says, model files and checkpoints edited by hand. Each case is exit 2 and ONE
short line naming the file (and the column, field or array), no traceback, and
nothing written in the working directory: no output, no `mlflow.db`, no run.

The cases run in-process through `experiments.cli.rayprop.main` (tests/conftest.py), except
where a process of its own is the point (a closed pipe, SIGTERM, Ray's auth mode read
once per process); the files, the Ray heads and the MLflow server are real.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import RAYPROP, installed_rayprop, one_line_exit_2
from trainer.model_io import save_model
from trainer.network import NetworkSpec, init_theta

CSV = "x0,x1,y\n" + "".join(f"{i * 0.1:.1f},{(i % 3) * 0.5:.1f},{i % 3}\n" for i in range(12))
CONFIG = """\
experiment: hostile
model: {layers: [2, 8, 3], hidden_activation: tanh, cost: cross_entropy, dtype: float64}
data: {source: data.csv, target: y, validation_fraction: 0.2}
train: {optimizer: adam, learning_rate: 0.1, batch_size: 4, epochs: 2}
"""
SPEC = NetworkSpec((2, 8, 3), "tanh", "softmax", "cross_entropy", "float64")
COLUMNS = {"features": ["x0", "x1"], "targets": ["y"], "encoding": "one_hot"}


# ---- the files ----------------------------------------------------------------------------

def _parquet(path: Path, columns: dict, names: list[str] | None = None) -> None:
    arrays = [pa.array(v) for v in columns.values()]
    pq.write_table(pa.Table.from_arrays(arrays, names=names or list(columns)), path)


def _tampered_model(root: Path, name: str, edit_json=None, arrays=None) -> None:
    """A copy of the good model with model.json edited (edit_json(meta) -> meta or a
    string) and/or model.npz replaced by `arrays`."""
    d = root / name
    shutil.copytree(root / "good_model", d)
    if edit_json is not None:
        meta = edit_json(json.loads((d / "model.json").read_text()))
        (d / "model.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if arrays is not None:
        (d / "model.npz").unlink()
        np.savez(d / "model.npz", **arrays)


def _make_files(d: Path) -> None:
    (d / "good.yaml").write_text(CONFIG)
    (d / "data.csv").write_text(CSV)
    (d / "dup.csv").write_text(CSV.replace("x0,x1,y", "x0,x0,y", 1))
    (d / "latin1.csv").write_bytes(CSV.replace("x0,x1,y", "x\xe9,x1,y", 1).encode("latin-1"))
    (d / "gzipped.csv").write_bytes(gzip.compress(CSV.encode()))
    (d / "zipped.csv").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    os.mkfifo(d / "fifo.csv")
    os.mkfifo(d / "fifo.parquet")
    (d / "zero.csv").symlink_to("/dev/zero")
    _parquet(d / "dup.parquet", {"a": [1.0, 2.0], "b": [1.0, 2.0], "y": [0, 1]}, names=["x0", "x0", "y"])
    (d / "mixed").mkdir()
    _parquet(d / "mixed" / "a.parquet", {"x0": [1.0, 2.0], "x1": [1.0, 2.0], "y": [0, 1]})
    _parquet(d / "mixed" / "b.parquet", {"x0": ["1", "2"], "x1": [1.0, 2.0], "y": [0, 1]})
    (d / "fifodir").mkdir()
    _parquet(d / "fifodir" / "a.parquet", {"x0": [1.0, 2.0], "x1": [1.0, 2.0], "y": [0, 1]})
    os.mkfifo(d / "fifodir" / "b.parquet")
    _parquet(d / "struct.parquet", {"x0": [{f"field{i:03d}": 1.0 for i in range(300)}] * 2,
                                    "x1": [1.0, 2.0], "y": [0, 1]})

    theta = init_theta(SPEC, "he", 0)
    save_model(d / "good_model", SPEC, theta, COLUMNS)
    W = {k: v for k, v in np.load(d / "good_model" / "model.npz").items()}
    _tampered_model(d, "layers_text", lambda m: {**m, "layers": "2,8,3"})
    _tampered_model(d, "layers_float", lambda m: {**m, "layers": [2, 8.5, 3]})
    _tampered_model(d, "layers_huge", lambda m: {**m, "layers": [2, 10**9, 3]})
    _tampered_model(d, "layers_bool", lambda m: {**m, "layers": [True, 8, 3]})
    _tampered_model(d, "activation_list", lambda m: {**m, "hidden_activation": ["tanh"]})
    _tampered_model(d, "dtype_number", lambda m: {**m, "dtype": 64})
    _tampered_model(d, "features_short", lambda m: {**m, "features": ["x0"]})
    _tampered_model(d, "features_text", lambda m: {**m, "features": "x0"})
    _tampered_model(d, "targets_empty", lambda m: {**m, "targets": []})
    _tampered_model(d, "encoding_unknown", lambda m: {**m, "encoding": "ordinal"})
    _tampered_model(d, "json_deep", lambda m: "[" * 100_000 + "]" * 100_000)
    _tampered_model(d, "array_missing", arrays={k: v for k, v in W.items() if k != "b2"})
    _tampered_model(d, "array_ints", arrays={**W, "W1": W["W1"].astype(np.int64)})
    _tampered_model(d, "array_text", arrays={**W, "b1": np.array(["a"] * 8).reshape(8, 1)})
    _tampered_model(d, "array_shape", arrays={**W, "W2": W["W2"].T.copy()})
    _tampered_model(d, "array_nan", arrays={**W, "b2": np.full((3, 1), np.nan)})
    _tampered_model(d, "not_npy_member")
    with zipfile.ZipFile(d / "not_npy_member" / "model.npz", "a") as z:
        z.writestr("notes.txt", "hello")


# (id, arguments after `rayprop`, words the one line must name)
CASES = [
    ("CSV header with a name twice", ["train", "good.yaml", "--local", "--set", "data.source=dup.csv"],
     ["dup.csv", "'x0'", "two columns"]),
    ("Parquet with a name twice", ["train", "good.yaml", "--local", "--set", "data.source=dup.parquet"],
     ["dup.parquet", "'x0'", "two columns"]),
    ("header not UTF-8", ["train", "good.yaml", "--local", "--set", "data.source=latin1.csv"],
     ["latin1.csv", "UTF-8"]),
    ("gzip under a .csv name", ["train", "good.yaml", "--local", "--set", "data.source=gzipped.csv"],
     ["gzipped.csv", "gzip"]),
    ("zip under a .csv name", ["train", "good.yaml", "--local", "--set", "data.source=zipped.csv"],
     ["zipped.csv", "zip"]),
    ("a FIFO named .csv", ["train", "good.yaml", "--local", "--set", "data.source=fifo.csv"],
     ["fifo.csv", "FIFO"]),
    ("a FIFO named .parquet", ["train", "good.yaml", "--local", "--set", "data.source=fifo.parquet"],
     ["fifo.parquet", "FIFO"]),
    ("/dev/zero named .csv", ["train", "good.yaml", "--local", "--set", "data.source=zero.csv"],
     ["zero.csv", "device"]),
    ("a FIFO in a Parquet directory", ["train", "good.yaml", "--local", "--set", "data.source=fifodir"],
     ["b.parquet", "FIFO"]),
    ("Parquet files disagree on a type", ["train", "good.yaml", "--local", "--set", "data.source=mixed"],
     ["b.parquet", "'x0'", "string", "double"]),
    ("a struct column (long type name)", ["train", "good.yaml", "--local", "--set", "data.source=struct.parquet"],
     ["struct.parquet", "'x0'", "not numeric"]),
    ("predict on a FIFO", ["predict", "good_model", "fifo.csv"], ["fifo.csv", "FIFO"]),
    ("evaluate on gzip", ["evaluate", "good_model", "gzipped.csv"], ["gzipped.csv", "gzip"]),
    *[(f"{command}: model.json {name}", [command, name, "data.csv"], [name, *words])
      for command in ("predict", "evaluate")
      for name, words in [("layers_text", ["'layers'"]), ("layers_float", ["'layers'"]),
                          ("layers_huge", ["W1", "shape"]), ("layers_bool", ["'layers'"]),
                          ("activation_list", ["'hidden_activation'"]), ("dtype_number", ["'dtype'"]),
                          ("features_short", ["'features'"]), ("features_text", ["'features'"]),
                          ("targets_empty", ["'targets'"]), ("encoding_unknown", ["'encoding'"]),
                          ("json_deep", ["not valid JSON"])]],
    *[(f"{command}: model.npz {name}", [command, name, "data.csv"], [name, *words])
      for command in ("predict", "evaluate")
      for name, words in [("array_missing", ["b2"]), ("array_ints", ["W1", "int64"]),
                          ("array_text", ["b1"]), ("array_shape", ["W2", "shape"]),
                          ("array_nan", ["b2", "finite"]), ("not_npy_member", ["plain arrays"])]],
    ("output under /proc", ["train", "good.yaml", "--local", "--output", "/proc/rayprop-out"],
     ["--output", "/proc"]),
    ("output under /sys", ["train", "good.yaml", "--local", "--output", "/sys/kernel/rayprop-out"],
     ["--output", "/sys/kernel"]),
    ("init-from with W1 of ints", ["train", "good.yaml", "--local", "--init-from", "array_ints/model.npz"],
     ["array_ints", "W1"]),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    _make_files(d)
    return d


@pytest.mark.parametrize("args,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_and_writes_nothing(files, tmp_path, rayprop, args, words):
    for f in files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = rayprop(*args, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    one_line_exit_2(result, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no runs/, no mlflow.db


# ---- --resume with a checkpoint edited by hand ---------------------------------------------

STEPS_PER_EPOCH = 3  # 12 rows, 0.2 held out: 10 training rows in batches of 4


def _good_checkpoint(run_id: str) -> dict[str, np.ndarray]:
    """What trainer/checkpoint.py writes after epoch 1 of CONFIG's adam job."""
    theta = init_theta(SPEC, "he", 0)
    return {"theta": theta, "position": np.array([1, 0, STEPS_PER_EPOCH], dtype=np.int64),
            "epoch_partial": np.zeros(3), "meta": np.array(json.dumps({"run_id": run_id, "layers": [2, 8, 3]})),
            "opt_t": np.array(STEPS_PER_EPOCH), "opt_m": np.zeros_like(theta), "opt_v": np.zeros_like(theta)}


# (id, how the good checkpoint's arrays are changed, words the one line must name)
CHECKPOINTS = [
    ("theta missing", lambda a: {k: v for k, v in a.items() if k != "theta"}, ["'theta'"]),
    ("theta as text", lambda a: {**a, "theta": np.array(["1.0"] * a["theta"].size)}, ["'theta'"]),
    ("theta not finite", lambda a: {**a, "theta": np.full_like(a["theta"], np.inf)}, ["finite"]),
    ("theta of another size", lambda a: {**a, "theta": np.zeros(5), "opt_m": np.zeros(5), "opt_v": np.zeros(5)},
     ["5 parameters"]),
    ("position of 2 numbers", lambda a: {**a, "position": np.array([1, 0])}, ["'position'"]),
    ("position as a matrix", lambda a: {**a, "position": np.ones((3, 3), dtype=np.int64)}, ["'position'"]),
    ("negative epoch", lambda a: {**a, "position": np.array([-1, 0, 0])}, ["negative"]),
    ("batch past the epoch's end", lambda a: {**a, "position": np.array([0, 7, 7]), "opt_t": np.array(7)},
     ["batch 7", "3 batches per epoch"]),
    ("step count off the plan", lambda a: {**a, "position": np.array([1, 0, 99]), "opt_t": np.array(99)},
     ["step 99"]),
    ("meta a JSON list", lambda a: {**a, "meta": np.array("[1, 2]")}, ["'meta'"]),
    ("meta missing", lambda a: {k: v for k, v in a.items() if k != "meta"}, ["'meta'"]),
    ("momentum's state, adam's config", lambda a: {k: v for k, v in a.items() if k not in ("opt_m",)},
     ["another optimizer"]),
    ("adam buffer of the wrong size", lambda a: {**a, "opt_m": np.zeros(3)}, ["'m'"]),
    ("adam step count off", lambda a: {**a, "opt_t": np.array(1000)}, ["step count"]),
    ("an object array", lambda a: {**a, "opt_v": np.array([{"x": 1}], dtype=object)}, ["opt_v"]),
]


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """A real run of CONFIG, marked KILLED as Ctrl-C leaves it, with no checkpoint in its
    artifacts: the checkpoint a case writes into its folder is the only one there is."""
    import mlflow
    from experiments.cli.rayprop import main

    d = tmp_path_factory.mktemp("resume")
    (d / "good.yaml").write_text(CONFIG)
    (d / "data.csv").write_text(CSV)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    saved = os.getcwd()
    os.chdir(d)
    try:
        assert main(["train", "good.yaml", "--local", "--quiet", "--output", "out", "--tracking-uri", uri]) == 0
    finally:
        os.chdir(saved)
    run_id = json.loads((d / "out" / "summary.json").read_text())["run_id"]
    client = mlflow.MlflowClient(uri)
    client.set_terminated(run_id, "KILLED")
    shutil.rmtree(Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / "checkpoints",
                  ignore_errors=True)
    return d, uri, run_id


def _write_checkpoint(folder: Path, arrays: dict) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    np.savez(folder / "ckpt-000000003.npz", **arrays)


@pytest.mark.parametrize("edit,words", [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS])
def test_resume_refuses_a_tampered_checkpoint(killed_run, rayprop, edit, words):
    d, uri, run_id = killed_run
    _write_checkpoint(d / "out" / "checkpoints", edit(_good_checkpoint(run_id)))
    before = sorted(p.name for p in d.iterdir())
    result = rayprop("train", "good.yaml", "--local", "--resume", run_id, "--tracking-uri", uri, cwd=d)
    one_line_exit_2(result, run_id, "ckpt-000000003.npz", *words)
    assert sorted(p.name for p in d.iterdir()) == before


def test_resume_takes_the_untampered_checkpoint(killed_run, rayprop):
    """The control: the same checkpoint as the cases above, unchanged, resumes."""
    import mlflow

    d, uri, run_id = killed_run
    _write_checkpoint(d / "out" / "checkpoints", _good_checkpoint(run_id))
    result = rayprop("train", "good.yaml", "--local", "--quiet", "--resume", run_id, "--tracking-uri", uri, cwd=d)
    assert result.returncode == 0, result.stderr
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    assert json.loads((d / "out" / "summary.json").read_text())["steps"] == 2 * STEPS_PER_EPOCH


# ---- the command line: a closed pipe, passwords in addresses -------------------------------

def test_predict_into_a_pipe_closed_early_is_quiet(files):
    """`rayprop predict MODEL DATA | head -1`: the first line arrives, then no traceback."""
    proc = subprocess.Popen([RAYPROP, "predict", files / "good_model", "teacher-tiny"], cwd=files,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert first.startswith(b'"p0","p1","p2","prediction"'), first
    assert err == ""


@pytest.mark.parametrize("args,hidden", [
    (["train", "good.yaml", "--address", "ray://bob:s3cret@127.0.0.1:{port}"], "ray://***@127.0.0.1"),
    (["train", "good.yaml", "--address", "bob:s3cret@127.0.0.1:{port}"], "***@127.0.0.1"),
    (["train", "good.yaml", "--local", "--tracking-uri", "http://bob:s3cret@127.0.0.1:{port}"],
     "http://***@127.0.0.1"),
    # (a tracking server named: a submit whose run would stay on the head is refused first)
    (["submit", "good.yaml", "--address", "http://bob:s3cret@127.0.0.1:{port}", "--tracking-uri",
      "http://127.0.0.1:{port}"], "http://***@127.0.0.1"),
], ids=["ray client", "gcs address", "tracking server", "jobs api"])
def test_a_password_in_an_address_is_never_shown(files, tmp_path, rayprop, args, hidden):
    from tests.raycluster import free_port

    port = free_port()  # nothing listens there
    for f in ("good.yaml", "data.csv"):
        (tmp_path / f).symlink_to(files / f)
    result = rayprop(*[a.format(port=port) for a in args],
                     env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    line = one_line_exit_2(result, hidden, str(port))
    assert "s3cret" not in line and "bob" not in line


def test_a_tracking_uri_with_a_password_works_and_is_never_shown(files, tmp_path, rayprop, mlflow_server):
    """MLflow sends user:password@ as HTTP basic auth; rayprop's own check of the
    server must accept such a URI too, and show or log it only as ***@."""
    import mlflow

    for f in ("good.yaml", "data.csv"):
        (tmp_path / f).symlink_to(files / f)
    uri = mlflow_server.uri.replace("http://", "http://bob:s3cret@")
    result = rayprop("train", "good.yaml", "--local", "--quiet", "--output", "out", "--tracking-uri", uri)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr and "http://***@127.0.0.1" in result.stderr
    run = mlflow.MlflowClient(mlflow_server.uri).get_run(json.loads((tmp_path / "out" / "summary.json")
                                                                    .read_text())["run_id"])
    assert run.info.status == "FINISHED"
    logged = json.dumps([run.data.params, run.data.tags])
    assert "s3cret" not in logged


# ---- SIGTERM while the local Ray starts ---------------------------------------------------

def _ray_processes_of(pid: int) -> list[str]:
    """Processes of the Ray a driver `pid` started: its children, and every process of
    its session (Ray names the session ..._PID and puts that path in their arguments)."""
    out = subprocess.run(["ps", "-eww", "-o", "pid,ppid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:]
            if line.split()[1] == str(pid) or f"_{pid}/" in line or line.endswith(f"_{pid}")]


def test_sigterm_while_ray_starts_leaves_no_ray_behind(files, tmp_path):
    import signal
    import time

    for f in ("good.yaml", "data.csv"):
        (tmp_path / f).symlink_to(files / f)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([RAYPROP, "train", "good.yaml", "--workers", "1", "--output", "out"], cwd=tmp_path,
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any("gcs_server" in p for p in _ray_processes_of(proc.pid)):  # Ray is starting
            assert proc.poll() is None and time.monotonic() < deadline, "Ray never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=180)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "rayprop train: interrupted", err
    time.sleep(2)  # a process that outlives the driver would still be there
    assert _ray_processes_of(proc.pid) == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


# ---- rayprop submit to a cluster whose Python lacks a dependency ---------------------------

@pytest.fixture(scope="module")
def head_without_pyarrow(tmp_path_factory):
    """A real `ray start --head` whose Python cannot import pyarrow: a module on its
    PYTHONPATH raises ModuleNotFoundError as a missing one does (Ray itself runs
    without pyarrow; it checks for that very error)."""
    from tests.raycluster import Head

    shim = tmp_path_factory.mktemp("shim")
    (shim / "pyarrow").mkdir()
    (shim / "pyarrow" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'pyarrow'\", name='pyarrow')\n")
    head = Head(tmp_path_factory.mktemp("head"), num_cpus=1, env={"PYTHONPATH": str(shim)})
    yield head
    head.stop()


def test_submit_to_a_cluster_without_pyarrow_names_it_and_the_way_out(files, tmp_path, head_without_pyarrow):
    (tmp_path / "good.yaml").symlink_to(files / "good.yaml")
    (tmp_path / "data.csv").symlink_to(files / "data.csv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN=head_without_pyarrow.token)
    # A process of its own: Ray reads the auth mode once per process, at import.
    # An output URI the cluster can write (this machine's folder): else the submit is
    # refused before it reaches the cluster (its results would stay on the head).
    result = installed_rayprop("submit", "good.yaml", "--address", head_without_pyarrow.jobs_address,
                               "--output", f"file://{tmp_path / 'out'}", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "lacks pyarrow" in last and "pip install pyarrow" in last and "--pip" in last, last


def test_submit_pip_lists_rayprops_dependencies_but_not_ray():
    from cluster.jobs import pip_requirements

    names = [r.split(">")[0].split("=")[0].split("[")[0].lower() for r in pip_requirements()]
    assert {"numpy", "pyarrow", "mlflow", "pyyaml"} <= set(names) and "ray" not in names


# ---- an output folder on a full disk ------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 128 KiB tmpfs of the test's own (needs root, as these machines give)."""
    import subprocess as sp

    mount = tmp_path / "disk"
    mount.mkdir()
    if sp.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mount
    sp.run(["umount", str(mount)], check=True)


def test_output_on_a_full_disk_is_refused_before_training(files, tmp_path, rayprop, small_disk):
    (small_disk / "filler").write_bytes(bytes(128 * 1024 - 4096))  # what is left is less than a model
    for f in ("good.yaml", "data.csv"):
        (tmp_path / f).symlink_to(files / f)
    result = rayprop("train", "good.yaml", "--local", "--output", small_disk / "out",
                     env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    one_line_exit_2(result, "--output", str(small_disk), "No space left")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_disk_that_fills_during_training_fails_the_run_in_one_line(files, tmp_path, rayprop, small_disk):
    """Room for the start, not for the model: 4096 hidden units of float64 are 196 KB."""
    import mlflow

    for f in ("good.yaml", "data.csv"):
        (tmp_path / f).symlink_to(files / f)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = rayprop("train", "good.yaml", "--local", "--quiet", "--output", small_disk / "out",
                     "--set", "model.layers=[2,4096,3]", env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "No space left on device" in last and str(small_disk) in last
    # no half-written file left: no temp file, no model or checkpoint that could be read as whole
    assert not [p for p in small_disk.rglob("*") if p.suffix in (".tmp", ".npz", ".json")]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("hostile").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
