"""Every rayprop job is one MLflow run (README, "MLflow"), checked against a real MLflow:
the embedded sqlite store and a real `mlflow server` on loopback. No mocks.

The CLI runs as a subprocess (`python -m experiments.cli`), in --local mode to stay
fast; the runs are read back with MlflowClient in this process. The model logged as
a pyfunc model is loaded with mlflow.pyfunc.load_model and compared with a forward
pass written here in numpy on the run's own model.npz artifact.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments.cli.ui import STOP_SECONDS
from tests.conftest import one_line_exit_2
from tests.raycluster import free_port
from tests.test_cli import load_npz, n_train, np_forward, np_softmax, write
from tests.test_ui_stop import children


LAYERS, EPOCHS, BATCH, LR = [2, 16, 3], 4, 128, 0.05
SPIRALS_ROWS, VAL = 900, 0.2


def spirals_yaml(experiment: str, epochs: int = EPOCHS) -> str:
    return (f"experiment: {experiment}\n"
            f"model: {{layers: {LAYERS}, hidden_activation: tanh, cost: cross_entropy}}\n"
            f"data: {{source: spirals, validation_fraction: {VAL}}}\n"
            f"train: {{optimizer: adam, learning_rate: {LR}, batch_size: {BATCH}, epochs: {epochs}, seed: 3}}\n")


# The timing ones under system/timing/, apart from the training curves in the UI (experiments/tracking/metric_names.py).
EPOCH_METRICS = {"epoch_loss", "val_loss", "val_accuracy", "system/timing/examples_per_second",
                 "system/timing/step_seconds", "system/timing/compute_seconds", "system/timing/coordination_seconds"}
# mse on a linear output with plain SGD at this learning rate overflows within an epoch.
MSE = {"model.cost": "mse", "model.output_activation": "linear", "model.layers": "[2, 8, 1]",
       "train.optimizer": "sgd"}
DIVERGING_LR = "1e6"


def sets(overrides: dict[str, str]) -> list[str]:
    return [x for key, value in overrides.items() for x in ("--set", f"{key}={value}")]


def rayprop(*args, cwd: Path, env_uri: str | None = None, timeout: float = 180):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if env_uri:
        env["MLFLOW_TRACKING_URI"] = env_uri
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def mlflow_mod():
    import mlflow

    return mlflow


@pytest.fixture(scope="module")
def template_db(tmp_path_factory, mlflow_mod):
    """An empty sqlite store with MLflow's tables, created once: copying it is instant,
    creating tables is several seconds."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow_mod.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def new_store(template_db: Path, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def runs_of(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def history(client, run_id, key):
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def load_pyfunc(mlflow, uri: str, model_uri: str):
    """mlflow.pyfunc.load_model, with the process-wide tracking URI that runs:/ URIs
    resolve through put back afterwards: set_tracking_uri also sets the environment
    variable MLFLOW_TRACKING_URI, which later tests' subprocesses would inherit."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


# ---- one training run, checked whole --------------------------------------------------------

def check_run(mlflow, uri: str, experiment: str, out: Path, tmp: Path):
    """Everything a finished spirals run must hold; returns the run."""
    client = mlflow.MlflowClient(uri)
    runs = runs_of(client, experiment)
    assert len(runs) == 1, runs
    run = runs[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED" and run.info.end_time

    # params: the whole config, flattened with dotted keys
    p = run.data.params
    assert p["model.layers"] == str(LAYERS) and p["train.learning_rate"] == str(LR)
    assert p["train.batch_size"] == str(BATCH) and p["train.epochs"] == str(EPOCHS)
    assert p["data.source"] == "spirals" and p["model.output_activation"] == "softmax"
    assert p["experiment"] == experiment and "tracking.uri" in p and "cluster.workers" in p
    # tags: version, workers, nodes, Ray kind, data source and rows
    t = run.data.tags
    assert t["rayprop.version"] == "0.1.0" and t["rayprop.workers"] == "1"
    assert t["rayprop.nodes"] == "1" and t["rayprop.ray"] == "none"
    assert t["rayprop.data.source"] == "spirals" and t["rayprop.data.rows"] == str(SPIRALS_ROWS)
    assert p["cluster.workers"] == t["rayprop.workers"]  # what ran, not the config's default
    # the dataset as an input: source and schema, no rows
    (ds_input,) = run.inputs.dataset_inputs
    assert ds_input.dataset.name == "spirals"
    schema = json.loads(ds_input.dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in schema] == [("x0", "double"), ("x1", "double"), ("y", "long")]
    assert {(tag.key, tag.value) for tag in ds_input.tags} >= {("mlflow.data.context", "training")}

    # loss: exactly one point per step, steps 1..N
    m = n_train(SPIRALS_ROWS, VAL)
    per_epoch = math.ceil(m / BATCH)
    steps = EPOCHS * per_epoch
    assert summary["steps"] == steps
    loss = history(client, run.info.run_id, "loss")
    assert [point.step for point in loss] == list(range(1, steps + 1))
    # epoch metrics at the global step of each epoch's end
    for key in EPOCH_METRICS:
        points = history(client, run.info.run_id, key)
        assert [point.step for point in points] == [per_epoch * (e + 1) for e in range(EPOCHS)], key
        assert all(math.isfinite(point.value) for point in points), key
    # The step losses are batch means: weighted by batch size they give each epoch's loss.
    sizes = [BATCH] * (per_epoch - 1) + [m - BATCH * (per_epoch - 1)]
    epoch_loss = history(client, run.info.run_id, "epoch_loss")
    for e in range(EPOCHS):
        chunk = [point.value for point in loss[e * per_epoch:(e + 1) * per_epoch]]
        assert np.dot(chunk, sizes) / m == pytest.approx(epoch_loss[e].value, rel=1e-5)
    assert epoch_loss[-1].value == pytest.approx(summary["final_loss"], rel=1e-9)
    assert history(client, run.info.run_id, "val_loss")[-1].value == pytest.approx(summary["val_loss"])
    assert history(client, run.info.run_id, "val_accuracy")[-1].value == pytest.approx(summary["val_accuracy"])

    # artifacts: resolved config, model files, decision boundary
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model.npz", "model.json", "summary.json", "decision_boundary.png"} <= names
    got = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp)))
    cfg = yaml.safe_load(got.read_text())
    assert cfg["model"]["layers"] == LAYERS and cfg["train"]["learning_rate"] == LR
    png = Path(client.download_artifacts(run.info.run_id, "decision_boundary.png", str(tmp)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = Path(client.download_artifacts(run.info.run_id, "model.npz", str(tmp)))
    assert npz.read_bytes() == (out / "model.npz").read_bytes()
    # the newest checkpoint reached the artifacts too (the once-a-minute rule skipped the others)
    newest = sorted((out / "checkpoints").glob("ckpt-*.npz"))[-1]
    ckpt = Path(client.download_artifacts(run.info.run_id, f"checkpoints/{newest.name}", str(tmp)))
    assert ckpt.read_bytes() == newest.read_bytes()

    # the pyfunc model: same outputs as numpy's forward pass on model.npz
    arrays = load_npz(npz)
    spec = json.loads((out / "model.json").read_text())
    rng = np.random.default_rng(5)
    X = rng.uniform(-1, 1, (50, 2))
    expected = np_softmax(np_forward(arrays, spec, X)).T
    model = load_pyfunc(mlflow, uri, f"runs:/{run.info.run_id}/model")
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["x0", "x1"] and sig.outputs.input_names() == ["p0", "p1", "p2"]
    import pandas as pd

    frame = pd.DataFrame({"x1": X[:, 1], "extra": 0.0, "x0": X[:, 0]})  # by name, not position
    pred = model.predict(frame)
    assert list(pred.columns) == ["p0", "p1", "p2"]
    np.testing.assert_allclose(pred.to_numpy(), expected, atol=1e-5)
    raw = model.unwrap_python_model().predict(None, X)  # a plain 2-D array works too
    np.testing.assert_allclose(raw.to_numpy(), expected, atol=1e-5)
    # The job gives the signature and saves the model without MLflow's serving check of the
    # example (experiments/tracking/logged_models.py): the signature is what MLflow infers
    # from the logged example (the data's first rows) and the model's output on it, and
    # the check passes on the logged model.
    from mlflow.models import infer_signature
    from mlflow.models.utils import _validate_serving_input, load_serving_example

    example = model.input_example
    assert list(example.columns) == ["x0", "x1"] and len(example) == 5
    assert sig == infer_signature(example, model.predict(example))
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        served = _validate_serving_input(f"runs:/{run.info.run_id}/model",
                                         load_serving_example(f"runs:/{run.info.run_id}/model"))
    finally:
        mlflow.set_tracking_uri(None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before
    np.testing.assert_allclose(served.to_numpy(), model.predict(example).to_numpy())
    return run


def test_train_logs_a_complete_run_to_sqlite(tmp_path, template_db, mlflow_mod):
    uri = new_store(template_db, tmp_path / "store")
    cfg = write(tmp_path / "spirals.yaml", spirals_yaml("complete"))
    proc = ok(rayprop("train", cfg, "--local", "--output", tmp_path / "out", "--tracking-uri", uri,
                      cwd=tmp_path))
    assert proc.stdout == ""  # MLflow prints nothing of its own there
    assert "MLflow run" in proc.stderr
    check_run(mlflow_mod, uri, "complete", tmp_path / "out", tmp_path / "dl")
    assert not (tmp_path / "mlflow.db").exists()  # the flag's store, not the default


def test_train_logs_a_complete_run_to_a_tracking_server(tmp_path, mlflow_server, mlflow_mod):
    cfg = write(tmp_path / "spirals.yaml", spirals_yaml("on-server"))
    # The server's URI comes from the environment here (the flag is tested above).
    proc = ok(rayprop("train", cfg, "--local", "--quiet", "--output", tmp_path / "out",
                      env_uri=mlflow_server.uri, cwd=tmp_path))
    assert proc.stdout == ""  # no "View run at" line from MLflow on stdout
    run = check_run(mlflow_mod, mlflow_server.uri, "on-server", tmp_path / "out", tmp_path / "dl")
    # The job names its run's page (MLflow 3 would open the experiment on its GenAI overview).
    page = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}"
    assert f"{page}/runs/{run.info.run_id}?workflowType=machine_learning" in proc.stderr, proc.stderr
    # The artifacts went through the server into its own folder, not into our cwd.
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert any((mlflow_server.root / "artifacts").rglob("model.npz"))
    # `rayprop ui` on a server URI: the server is the UI already.
    proc = ok(rayprop("ui", "--tracking-uri", mlflow_server.uri, cwd=tmp_path, timeout=60))
    assert mlflow_server.uri in proc.stdout
    assert f"experiment 'on-server': {page}/runs?workflowType=machine_learning\n" in proc.stdout, proc.stdout
    assert run.info.run_id


# ---- status: FAILED, KILLED; bad input makes no run --------------------------------------

def test_a_diverging_job_ends_failed(tmp_path, template_db, mlflow_mod):
    uri = new_store(template_db, tmp_path / "store")
    cfg = write(tmp_path / "spirals.yaml", spirals_yaml("diverges"))
    proc = rayprop("train", cfg, "--local", "--quiet", "--output", tmp_path / "out",
                   "--tracking-uri", uri, *sets({**MSE, "train.learning_rate": DIVERGING_LR}),
                   cwd=tmp_path)
    assert proc.returncode == 1 and "diverged" in proc.stderr and "Traceback" not in proc.stderr
    client = mlflow_mod.MlflowClient(uri)
    (run,) = runs_of(client, "diverges")
    assert run.info.status == "FAILED"
    assert "DivergedError" in run.data.tags["rayprop.error"]
    # The steps before the divergence were logged, one point each.
    steps = [point.step for point in history(client, run.info.run_id, "loss")]
    assert steps == list(range(1, len(steps) + 1)) and steps
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_job_ends_killed(tmp_path, template_db, mlflow_mod, sig):
    uri = new_store(template_db, tmp_path / "store")
    # Steps of about a millisecond: a second of training is a few thousand metric points.
    cfg = write(tmp_path / "s.yaml", "experiment: stopped\ndata: {source: spirals}\n"
                "model: {layers: [2, 256, 256, 3]}\ntrain: {batch_size: 64, epochs: 100000}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "train", str(cfg), "--local",
                             "--quiet", "--tracking-uri", uri, "--output", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # wait until the run exists and training has begun
            if "MLflow run" in line:
                break
        time.sleep(0.5)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (130, 128 + sig), (proc.returncode, err)
    assert "Traceback" not in err, err
    (run,) = runs_of(mlflow_mod.MlflowClient(uri), "stopped")
    assert run.info.status == "KILLED"
    assert len(history(mlflow_mod.MlflowClient(uri), run.info.run_id, "loss")) > 0


def test_the_default_store_and_the_config_store(tmp_path, template_db, mlflow_mod):
    """No URI anywhere: sqlite:///mlflow.db in the working directory. tracking.uri in
    the config is used when no flag or MLFLOW_TRACKING_URI says otherwise."""
    cfg = write(tmp_path / "xor.yaml", "experiment: where\ndata: {source: xor, validation_fraction: 0}\n"
                "model: {layers: [2, 4, 2]}\ntrain: {optimizer: gd, epochs: 3}\n")
    new_store(template_db, tmp_path)  # ./mlflow.db with its tables made: the run must land in it
    ok(rayprop("train", cfg, "--local", "--quiet", "--output", tmp_path / "out", cwd=tmp_path))
    assert len(runs_of(mlflow_mod.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "where")) == 1

    uri = new_store(template_db, tmp_path / "cfgstore")
    cfg2 = write(tmp_path / "xor2.yaml", cfg.read_text() + f"tracking: {{uri: '{uri}'}}\n")
    ok(rayprop("train", cfg2, "--local", "--quiet", "--output", tmp_path / "out2", cwd=tmp_path))
    (run,) = runs_of(mlflow_mod.MlflowClient(uri), "where")
    assert run.data.params["tracking.uri"] == uri
    assert len(runs_of(mlflow_mod.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), "where")) == 1


def test_a_new_store_starts_from_a_template(tmp_path, template_db, mlflow_mod, monkeypatch):
    """A new sqlite store is a copy of an empty one MLflow made once (kept in the cache
    folder): the same tables and schema version as MLflow's own, the runs land in it, and
    the Default experiment's artifacts go beside the store, not beside the template."""
    import sqlite3

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = write(tmp_path / "xor.yaml", "experiment: fresh\ndata: {source: xor, validation_fraction: 0}\n"
                "model: {layers: [2, 4, 2]}\ntrain: {optimizer: gd, epochs: 2}\n")

    def schema(db):
        with sqlite3.connect(db) as con:
            tables = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'"))
            return tables, con.execute("SELECT version_num FROM alembic_version").fetchall()

    for folder in ("a", "b"):  # a: the template is made; b: it is copied
        (tmp_path / folder).mkdir()
        ok(rayprop("train", cfg, "--local", "--quiet", "--output", "out", cwd=tmp_path / folder))
        db = tmp_path / folder / "mlflow.db"
        assert schema(db) == schema(template_db)
        client = mlflow_mod.MlflowClient(f"sqlite:///{db}")
        assert len(runs_of(client, "fresh")) == 1
        default = client.get_experiment("0").artifact_location
        assert str(tmp_path / folder) in default, default
    (template,) = (tmp_path / "cache" / "rayprop").glob("mlflow-*-empty.db")
    assert schema(template) == schema(template_db)


def test_uri_precedence_and_secrets():
    from experiments.tracking.stores import DEFAULT_URI, redact, resolve_uri

    env = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert resolve_uri(None, None) == DEFAULT_URI == "sqlite:///mlflow.db"
        assert resolve_uri(None, "sqlite:///c.db") == "sqlite:///c.db"
        os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///e.db"
        assert resolve_uri(None, "sqlite:///c.db") == "sqlite:///e.db"
        assert resolve_uri("sqlite:///f.db", "sqlite:///c.db") == "sqlite:///f.db"
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
    assert redact("postgresql://me:hunter2@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_params_drop_secret_keys(mlflow_mod):
    from experiments.tracking.params import run_params
    from trainer.config import from_dict

    cfg = from_dict({"data": {"source": "xor"},
                     "tracking": {"uri": "postgresql://me:hunter2@db/mlflow"}})
    params = run_params(cfg)
    assert params["tracking.uri"] == "postgresql://***@db/mlflow"
    assert set(params) == set(cfg.flat())

    class WithSecrets:  # a config whose sections grew credential-like keys
        def flat(self):
            return {"cluster.auth_token": "t", "x.password": "p", "x.api_key": "k", "x.key": "k",
                    "x.client_secret": "s", "model.layers": [2, 3], "train.keep": 1}

    assert run_params(WithSecrets()) == {"model.layers": "[2, 3]", "train.keep": "1"}


def test_help_gradcheck_and_bad_input_do_not_import_mlflow(tmp_path):
    """mlflow takes ~2 s to import: commands that do not log must not pay for it."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "mlflow":
                    raise ModuleNotFoundError("mlflow imported", name=name)
        sys.meta_path.insert(0, Block())
        from experiments.cli.rayprop import main
        try:
            code = main(sys.argv[1:])
        except SystemExit as e:
            code = e.code
        print("EXIT", code)
    """)
    env = dict(os.environ)
    cfg = write(tmp_path / "s.yaml", spirals_yaml("x"))
    for args, code_expected in ((["--help"], 0), (["gradcheck", str(cfg)], 0),
                                (["train", str(cfg), "--local", "--set", "model.cost=nope"], 2),
                                (["sweep", str(cfg), "--local", "--grid", "train.lr=1,2"], 2)):
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert f"EXIT {code_expected}" in proc.stdout, (args, proc.stdout, proc.stderr)
        assert "mlflow imported" not in proc.stderr


# ---- sweeps ----------------------------------------------------------------------------------

def test_sweep_makes_a_parent_and_children_and_records_the_best(tmp_path, template_db, mlflow_mod):
    """2 layer sizes x 2 learning rates; the large rate diverges: those children end
    FAILED, the sweep goes on, and the best is the finished child of lowest val_loss."""
    uri = new_store(template_db, tmp_path / "store")
    cfg = write(tmp_path / "sweep.yaml", spirals_yaml("swept", epochs=2)
                + "sweep:\n  model.layers: [[2, 8, 1], [2, 16, 1]]\n")
    mse = {k: v for k, v in MSE.items() if k != "model.layers"}
    proc = ok(rayprop("sweep", cfg, "--local", "--quiet", "--tracking-uri", uri, "--output",
                      tmp_path / "out", *sets(mse), "--grid", f"train.learning_rate=0.01,{DIVERGING_LR}",
                      cwd=tmp_path))
    client = mlflow_mod.MlflowClient(uri)
    runs = runs_of(client, "swept")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    combos = {(c.data.params["train.learning_rate"], c.data.params["model.layers"]): c.info.status
              for c in children}
    assert combos == {("0.01", "[2, 8, 1]"): "FINISHED", ("0.01", "[2, 16, 1]"): "FINISHED",
                      ("1000000.0", "[2, 8, 1]"): "FAILED", ("1000000.0", "[2, 16, 1]"): "FAILED"}
    assert parent.data.params["sweep.model.layers"] == "[[2, 8, 1], [2, 16, 1]]"
    assert parent.data.params["sweep.train.learning_rate"] == "[0.01, 1000000.0]"
    # The best child is the finished one with the lowest validation loss, read from the store.
    val = {c.info.run_id: c.data.metrics["val_loss"] for c in children if c.info.status == "FINISHED"}
    best = min(val, key=val.get)
    assert parent.data.tags["best_run_id"] == best
    assert parent.data.metrics["val_loss"] == pytest.approx(val[best])
    # The table on stdout lists the runs best first, the failed ones last.
    rows = [line.split() for line in proc.stdout.strip().splitlines()[1:]]
    assert [row[-1] for row in rows[:2]] == sorted(val, key=val.get)
    assert all("FAILED" in row for row in rows[2:]) and len(rows) == 4
    assert f"{tmp_path / 'out'}/run-NN/" in proc.stderr and f"{tmp_path / 'out' / 'sweep.json'}" in proc.stderr
    sweep_json = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert sweep_json["best_run_id"] == best and sweep_json["parent_run_id"] == parent.info.run_id
    for i in (1, 2):  # the grid's first axis varies slowest: runs 1 and 2 are layers [2, 8, 1]
        assert (tmp_path / "out" / f"run-{2 * i - 1:02d}" / "model.npz").is_file()
    # A second sweep into the same folder would overwrite these runs' files: refused up front.
    again = rayprop("sweep", cfg, "--local", "--quiet", "--tracking-uri", uri, "--output",
                    tmp_path / "out", *sets(mse), "--grid", "train.learning_rate=0.01", cwd=tmp_path)
    first = json.loads((tmp_path / "out" / "run-01" / "summary.json").read_text())["run_id"]
    one_line_exit_2(again, "run-01", first)
    assert len(runs_of(client, "swept")) == 5


# ---- rayprop ui ------------------------------------------------------------------------------

def test_ui_serves_the_store_on_loopback_and_stops(tmp_path, template_db, mlflow_mod):
    uri = new_store(template_db, tmp_path / "store")
    client = mlflow_mod.MlflowClient(uri)
    seen = client.create_experiment("seen")
    client.set_terminated(client.create_run(seen).info.run_id)
    client.create_experiment("empty")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "ui", "--tracking-uri", uri,
                             "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    servers = []  # the mlflow server's pid: its process group, stopped here if rayprop did not
    try:
        line = proc.stdout.readline()
        servers += children(proc.pid)
        assert f"http://127.0.0.1:{port}" in line, (line, proc.stderr.read() if proc.poll() else "")
        log = Path(line.split("server log: ")[1].rstrip(")\n"))
        # Each experiment with runs, with the address of its runs page; nothing else.
        assert proc.stdout.readline() == (f"  experiment 'seen': http://127.0.0.1:{port}/#/experiments/{seen}/runs"
                                          "?workflowType=machine_learning\n")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
                                      "?max_results=10", timeout=10).read()
        assert b"experiments" in body
        # A second UI on the same port is refused in one line.
        busy = rayprop("ui", "--tracking-uri", uri, "--port", port, cwd=tmp_path, timeout=60)
        one_line_exit_2(busy, f"--port {port}")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: rayprop stops the server it started
        try:
            code = proc.wait(timeout=STOP_SECONDS + 60)
        except subprocess.TimeoutExpired:
            for pgid in [proc.pid, *servers]:
                os.killpg(pgid, signal.SIGKILL)
            raise
    assert code == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    # The server's own log went to its file, not to the console (which, on a loaded
    # machine, may say that the server is taking its time to stop).
    assert proc.stdout.read() == ""
    assert all("stopping the MLflow server" in line for line in proc.stderr.read().splitlines())
    assert "Uvicorn running" in log.read_text() or "Listening at" in log.read_text(), log.read_text()[-2000:]
