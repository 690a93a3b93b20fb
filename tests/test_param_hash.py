"""The parameter hash (trainer/param_hash.py): equal for equal arrays, different for a
one-ulp change, a dtype or a shape; and in a real run, every epoch's hash in
summary.json and the final one as the MLflow tag `rayprop.param_hash` (a real MLflow
sqlite store: MLflow 3.17 refuses new file stores; training in this process, local mode)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.param_hash import HASH_CHARS, param_hash


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_equal_arrays_hash_alike_and_one_ulp_does_not(dtype):
    a = np.random.default_rng(0).standard_normal(1000).astype(dtype)
    b = a.copy()
    assert param_hash(a) == param_hash(b)
    assert len(param_hash(a)) == HASH_CHARS and int(param_hash(a), 16) >= 0
    b[537] = np.nextafter(b[537], dtype(np.inf))  # the smallest change a float can make
    assert param_hash(a) != param_hash(b)


def test_dtype_and_shape_are_part_of_the_hash():
    a = np.arange(12, dtype=np.float32)
    assert param_hash(a) != param_hash(a.astype(np.float64))
    assert param_hash(a) != param_hash(a.reshape(3, 4))
    assert param_hash(a[::2]) == param_hash(a[::2].copy())  # a view hashes as its values


def test_a_run_logs_each_epochs_hash_and_the_final_one(tmp_path, monkeypatch):
    import mlflow

    from experiments.jobs import training
    from experiments.jobs.configfile import load_config
    from experiments.tracking.metrics import PARAM_HASH_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    cfg = load_config("experiments/configs/spirals.yaml", ["train.epochs=3", "model.dtype=float64"])
    out = tmp_path / "out"
    summary, _, undelivered = training.train(cfg, training.Options(
        "spirals.yaml", local=True, tracking_uri=uri, output=str(out), quiet=True))
    assert undelivered is None
    written = json.loads((out / "summary.json").read_text())
    assert sorted(written["param_hashes"]) == ["1", "2", "3"]
    assert len(set(written["param_hashes"].values())) == 3  # the weights moved every epoch
    theta = np.concatenate([a.ravel() for a in _params(out / "model.npz")])
    assert written["param_hash"] == written["param_hashes"]["3"]
    run = mlflow.MlflowClient(uri).get_run(written["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[PARAM_HASH_TAG] == written["param_hash"]
    # The hash is of the trained weights themselves, in theta's layout (W1, b1, W2, ...).
    assert written["param_hash"] == param_hash(theta.astype(np.float64))


def _params(npz):
    with np.load(npz, allow_pickle=False) as z:
        layers = len(z.files) // 2
        return [z[f"{p}{l}"] for l in range(1, layers + 1) for p in ("W", "b")]
