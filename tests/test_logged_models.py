"""MLflow 3's models, against a real `mlflow server` on loopback (no mocks): each
checkpoint that reaches the run is a logged model with its step, epoch and linked
training metrics; the final model too; `--register-model` makes a registry version
that `rayprop evaluate` / `predict` load back by models:/ URI; a sweep registers its
best trial. Training runs in --local mode, in this process (the `rayprop` fixture),
with every checkpoint copied to the run (ARTIFACT_CHECKPOINT_SECONDS = 0).

Independent references: the run's own metric history (for the linked values), the
checkpoint files and model.npz through the numpy forward pass of tests/test_cli.py
(for what a logged model predicts), and `rayprop evaluate` on the output folder.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import one_line_exit_2
from tests.test_cli import load_npz, np_forward, np_softmax, write

EPOCHS, BATCH, ROWS, VAL = 5, 128, 900, 0.2
KEEP = 3  # trainer/checkpoint.py


def spirals(experiment: str, epochs: int = EPOCHS, extra: str = "") -> str:
    return (f"experiment: {experiment}\n"
            "model: {layers: [2, 16, 3], hidden_activation: tanh, cost: cross_entropy}\n"
            f"data: {{source: spirals, validation_fraction: {VAL}}}\n"
            f"train: {{optimizer: adam, learning_rate: 0.05, batch_size: {BATCH}, epochs: {epochs}, seed: 3,"
            " checkpoint_every: 1, checkpoint_seconds: 0}\n" + extra)


@pytest.fixture
def every_checkpoint(monkeypatch):
    from experiments.jobs import checkpoint_copies

    monkeypatch.setattr(checkpoint_copies, "ARTIFACT_CHECKPOINT_SECONDS", 0)


def client_of(uri):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def run_models(client, run):
    return client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                       filter_string=f"source_run_id = '{run.info.run_id}'")


def ok(result):
    assert result.code == 0, f"exit {result.code}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


def test_checkpoints_are_logged_models_with_steps_and_metrics(tmp_path, mlflow_server, rayprop, every_checkpoint):
    import mlflow

    cfg = write(tmp_path / "s.yaml", spirals("ckpt-models"))
    out = tmp_path / "out"
    res = ok(rayprop("train", cfg, "--local", "--quiet", "--output", out, "--tracking-uri", mlflow_server.uri))
    summary = json.loads((out / "summary.json").read_text())
    client = client_of(mlflow_server.uri)
    run = client.get_run(summary["run_id"])
    per_epoch = math.ceil(round(ROWS * (1 - VAL)) / BATCH)
    ends = [per_epoch * (e + 1) for e in range(EPOCHS)]

    models = run_models(client, run)
    final = [m for m in models if m.name == "model"]
    ckpts = sorted((m for m in models if m.name.startswith("checkpoint-")), key=lambda m: m.name)
    # every epoch's checkpoint reached the run; only the newest KEEP models stay
    assert [m.name for m in ckpts] == [f"checkpoint-{s:09d}" for s in ends[-KEEP:]]
    assert len(final) == 1 and final[0].tags["rayprop.model"] == "final"
    outputs = {o.model_id: o.step for o in run.outputs.model_outputs}
    (ds,) = run.inputs.dataset_inputs
    history = {key: {p.step: p.value for p in client.get_metric_history(run.info.run_id, key)}
               for key in ("val_loss", "val_accuracy", "epoch_loss")}
    for m in [*ckpts, *final]:
        step = int(m.tags["rayprop.step"])
        assert str(m.status).endswith("READY") and outputs[m.model_id] == step
        linked = {x.key: x for x in m.metrics}
        assert {"val_loss", "val_accuracy", "epoch_loss", "loss"} <= set(linked), m.name
        assert not any(k.startswith("system/timing/") for k in linked)
        for key, points in history.items():
            assert linked[key].step == step and linked[key].value == pytest.approx(points[step]), (m.name, key)
            assert (linked[key].dataset_name, linked[key].dataset_digest) == (ds.dataset.name, ds.dataset.digest)
        if m in ckpts:
            assert m.tags["rayprop.model"] == "checkpoint" and int(m.tags["rayprop.epoch"]) * per_epoch == step
    # the run's history holds each point once although the models logged theirs again
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == EPOCHS

    # what a checkpoint's model predicts: numpy's forward pass on weights saved independently
    X = np.random.default_rng(1).uniform(-1, 1, (40, 2))
    import pandas as pd

    frame = pd.DataFrame(X, columns=["x0", "x1"])
    spec = json.loads((out / "model.json").read_text())
    mlflow.set_tracking_uri(mlflow_server.uri)
    last = mlflow.pyfunc.load_model(f"models:/{ckpts[-1].model_id}").predict(frame).to_numpy()
    np.testing.assert_allclose(last, np_softmax(np_forward(load_npz(out / "model.npz"), spec, X)).T, atol=1e-5)
    earlier = mlflow.pyfunc.load_model(f"models:/{ckpts[0].model_id}").predict(frame).to_numpy()
    from trainer.checkpoint import read_checkpoint
    from trainer.model_io import save_model
    from trainer.network import NetworkSpec

    theta = read_checkpoint(out / "checkpoints" / f"ckpt-{ends[-KEEP]:09d}.npz").theta
    net = NetworkSpec(tuple(spec["layers"]), spec["hidden_activation"], spec["output_activation"],
                      spec["cost"], spec.get("dtype", "float32"))
    save_model(tmp_path / "ckpt", net, theta.astype(net.dtype), {})
    np.testing.assert_allclose(earlier, np_softmax(np_forward(load_npz(tmp_path / "ckpt" / "model.npz"), spec, X)).T,
                               atol=1e-5)
    assert not np.allclose(earlier, last, atol=1e-4)  # an earlier state, not the final weights

    # the printed way to pick the best checkpoint works and names one of them
    line = next(x for x in res.stderr.splitlines() if "checkpoints are logged models" in x)
    assert mlflow_server.uri in line and run.info.run_id in line


def test_register_model_and_load_it_back_by_uri(tmp_path, mlflow_server, rayprop):
    cfg = write(tmp_path / "s.yaml", spirals("registry", epochs=3))
    out = tmp_path / "out"
    res = ok(rayprop("train", cfg, "--local", "--quiet", "--output", out, "--tracking-uri", mlflow_server.uri,
                     "--register-model", "spiral-net"))
    assert "as models:/spiral-net/1" in res.stderr
    summary = json.loads((out / "summary.json").read_text())
    client = client_of(mlflow_server.uri)
    version = client.get_model_version("spiral-net", "1")
    assert version.run_id == summary["run_id"]
    final = [m for m in run_models(client, client.get_run(summary["run_id"])) if m.name == "model"]
    assert version.source == f"models:/{final[0].model_id}"
    client.set_registered_model_alias("spiral-net", "champion", "1")

    reference = json.loads(ok(rayprop("evaluate", out, "spirals")).stdout)
    for uri in ("models:/spiral-net/1", "models:/spiral-net@champion", f"models:/{final[0].model_id}"):
        got = json.loads(ok(rayprop("evaluate", uri, "spirals", "--tracking-uri", mlflow_server.uri)).stdout)
        assert (got["loss"], got.get("accuracy")) == (reference["loss"], reference.get("accuracy")), uri
    # the URI comes from MLFLOW_TRACKING_URI as well
    predicted = ok(rayprop("predict", "models:/spiral-net@champion", "spirals",
                           env={"MLFLOW_TRACKING_URI": mlflow_server.uri})).stdout
    assert predicted == ok(rayprop("predict", out, "spirals")).stdout

    # a second run under the same name: version 2
    ok(rayprop("train", cfg, "--local", "--quiet", "--output", tmp_path / "out2", "--tracking-uri", mlflow_server.uri,
               "--register-model", "spiral-net"))
    assert client.get_model_version("spiral-net", "2").run_id != summary["run_id"]

    missing = rayprop("evaluate", "models:/spiral-net/9", "spirals", "--tracking-uri", mlflow_server.uri)
    one_line_exit_2(missing, "models:/spiral-net/9")


def test_sweep_registers_its_best_trial(tmp_path, mlflow_server, rayprop):
    cfg = write(tmp_path / "s.yaml", spirals("sweep-registry", epochs=2))
    res = ok(rayprop("sweep", cfg, "--local", "--quiet", "--output", tmp_path / "sw", "--tracking-uri",
                     mlflow_server.uri, "--grid", "train.learning_rate=0.0001,0.05", "--register-model", "best-spiral"))
    best = json.loads((tmp_path / "sw" / "sweep.json").read_text())["best_run_id"]
    version = client_of(mlflow_server.uri).get_model_version("best-spiral", "1")
    assert version.run_id == best and "models:/best-spiral/1" in res.stderr


@pytest.mark.parametrize("name", ["a/b", "x:y", "n@alias", " "])
def test_a_bad_registry_name_is_refused_before_training(tmp_path, rayprop, name):
    cfg = write(tmp_path / "s.yaml", spirals("bad-name", epochs=1))
    res = rayprop("train", cfg, "--local", "--output", tmp_path / "out", "--register-model", name)
    one_line_exit_2(res, "--register-model")
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()
