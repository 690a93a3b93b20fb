"""The `rayprop` CLI end to end: real files, a real MLflow store, no mocks.

Most tests call the CLI in-process (the `rayprop` fixture of conftest.py); a few
smoke tests run the installed `rayprop` command in a new process, as a user does,
with and without Ray. Training here uses `--local` (Ray training is tested in
test_ray_pool.py, test_worker_loss.py, test_multinode.py and test_remote.py). Losses and predictions are
checked against a forward pass written here in plain numpy from model.npz. Bad input
is one table in test_bad_inputs.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import installed_rayprop, one_line_exit_2

SUMMARY_KEYS = {"run_id", "steps", "epochs", "final_loss", "val_loss", "val_accuracy",
                "examples_per_second", "wall_seconds", "workers"}

SPIRALS_ROWS = 900            # the built-in set
SPIRALS_LAYERS = [2, 32, 32, 3]
SPIRALS_EPOCHS, SPIRALS_BATCH = 60, 64
SPIRALS_YAML = f"""\
experiment: spirals
model: {{layers: {SPIRALS_LAYERS}, hidden_activation: relu, cost: cross_entropy}}
data: {{source: spirals, validation_fraction: 0.1}}
train: {{optimizer: adam, learning_rate: 0.01, batch_size: {SPIRALS_BATCH},
         epochs: {SPIRALS_EPOCHS}, seed: 0}}
"""

XOR_YAML = """\
model: {layers: [2, 8, 2], hidden_activation: tanh}
data: {source: xor, validation_fraction: 0}
train: {optimizer: adam, learning_rate: 0.05, batch_size: full, epochs: 300}
"""


# ---- helpers ----------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def tracking_store(tmp_path_factory):
    """One MLflow store for this module's runs: a new sqlite file costs seconds to set up,
    and what a run holds is tested in test_mlflow.py. Bad input never reaches it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def check_model_files(out: Path, layers: list[int]) -> tuple[dict, dict, dict]:
    """model.npz (plain arrays, the shapes of docs/design.md section 1), model.json and
    summary.json exist and agree."""
    arrays = load_npz(out / "model.npz")
    L = len(layers) - 1
    assert set(arrays) == {f"W{l}" for l in range(1, L + 1)} | {f"b{l}" for l in range(1, L + 1)}
    for l in range(1, L + 1):
        assert arrays[f"W{l}"].shape == (layers[l], layers[l - 1]), f"W{l}"
        assert arrays[f"b{l}"].shape == (layers[l], 1), f"b{l}"
        assert arrays[f"W{l}"].dtype.kind == "f" and np.isfinite(arrays[f"W{l}"]).all()
        assert arrays[f"b{l}"].dtype.kind == "f" and np.isfinite(arrays[f"b{l}"]).all()
    spec = json.loads((out / "model.json").read_text())
    assert spec["layers"] == layers
    summary = json.loads((out / "summary.json").read_text())
    missing = SUMMARY_KEYS - set(summary)
    assert not missing, f"summary.json lacks {missing}"
    return arrays, spec, summary


ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "linear": lambda z: z,
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
}


def np_forward(arrays: dict, spec: dict, X_rows: np.ndarray) -> np.ndarray:
    """Logits Z[L] (n_L, n) in float64, examples as columns (docs/design.md section 1)."""
    A = np.asarray(X_rows, np.float64).T
    L = len(spec["layers"]) - 1
    for l in range(1, L + 1):
        Z = arrays[f"W{l}"].astype(np.float64) @ A + arrays[f"b{l}"].astype(np.float64)
        if l < L:
            A = ACTIVATIONS[spec["hidden_activation"]](Z)
    return Z


def np_softmax(Z: np.ndarray) -> np.ndarray:
    e = np.exp(Z - Z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def np_cross_entropy(Z: np.ndarray, labels: np.ndarray) -> float:
    """Mean over examples of -log softmax(z)_y."""
    shifted = Z - Z.max(axis=0, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=0, keepdims=True))
    return float(-log_p[labels, np.arange(Z.shape[1])].mean())


def spiral_csv(path: Path, per_class: int = 150, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Our own spiral points (independent of the built-in set), written as CSV x0,x1,y."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k in range(3):
        r = rng.uniform(0.05, 1.0, per_class)
        t = 4.0 * k + 4.0 * r + rng.standard_normal(per_class) * 0.2
        X.append(np.column_stack([r * np.sin(t), r * np.cos(t)]))
        y.append(np.full(per_class, k))
    X, y = np.concatenate(X), np.concatenate(y)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x0", "x1", "y"])
        for (a, b), label in zip(X, y):
            w.writerow([repr(float(a)), repr(float(b)), int(label)])
    return X, y


def n_train(rows: int, fraction: float) -> int:
    """Training examples after the validation split (round, at least 1 held out)."""
    n_val = int(round(fraction * rows))
    if fraction > 0 and rows > 1:
        n_val = max(n_val, 1)
    return rows - n_val


# ---- training end to end ------------------------------------------------------------------

@pytest.fixture(scope="module")
def spirals_run(tmp_path_factory):
    """One spirals training run, shared by the tests that need a trained model."""
    work = tmp_path_factory.mktemp("spirals")
    cfg = write(work / "spirals.yaml", SPIRALS_YAML)
    # The installed command, in a new process: the smoke test of a whole training job.
    proc = ok(installed_rayprop("train", cfg, "--local", "--output", work / "run", cwd=work))
    return work, cfg, work / "run", proc


def test_train_spirals_end_to_end(spirals_run):
    work, _, out, proc = spirals_run
    arrays, spec, summary = check_model_files(out, SPIRALS_LAYERS)
    assert spec["hidden_activation"] == "relu" and spec["output_activation"] == "softmax"
    assert spec["cost"] == "cross_entropy"
    assert all(a.dtype == np.float32 for a in arrays.values())  # model.dtype default
    m = n_train(SPIRALS_ROWS, 0.1)
    assert summary["epochs"] == SPIRALS_EPOCHS
    assert summary["steps"] == SPIRALS_EPOCHS * math.ceil(m / SPIRALS_BATCH)
    assert summary["workers"] == 1
    assert summary["val_accuracy"] >= 0.9, summary
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] < 0.3
    assert math.isfinite(summary["val_loss"]) and summary["val_loss"] < 0.3
    assert summary["examples_per_second"] > 0 and summary["wall_seconds"] > 0
    # Progress and summary go to stderr; stdout stays free. The summary's loss is named
    # as the MLflow metric it is (the last epoch's mean), not as the per-batch `loss`.
    assert proc.stdout == ""
    assert f"epoch_loss {summary['final_loss']:.4g} (the last epoch's mean)" in proc.stderr
    assert not (work / "runs").exists()  # --output was honoured


def test_train_xor_end_to_end(rayprop, tmp_path):
    cfg = write(tmp_path / "xor.yaml", XOR_YAML)
    ok(rayprop("train", cfg, "--local", "--output", tmp_path / "out", "--quiet", cwd=tmp_path))
    _, spec, summary = check_model_files(tmp_path / "out", [2, 8, 2])
    assert spec["hidden_activation"] == "tanh"
    assert summary["epochs"] == 300 and summary["steps"] == 300  # full batch: 1 step per epoch
    assert summary["val_loss"] is None and summary["val_accuracy"] is None  # nothing held out
    assert summary["final_loss"] < 0.05
    # The network learnt XOR: evaluate on the 4 examples.
    result = json.loads(ok(rayprop("evaluate", tmp_path / "out", "xor", cwd=tmp_path)).stdout)
    assert result["rows"] == 4 and result["accuracy"] == 1.0


def test_set_overrides_take_effect(rayprop, tmp_path):
    cfg = write(tmp_path / "xor.yaml", XOR_YAML)
    ok(rayprop("train", cfg, "--local", "--quiet", "--output", tmp_path / "out",
               "--set", "train.epochs=3", "--set", "train.batch_size=3",
               "--set", "model.layers=[2, 5, 2]", "--set", "model.hidden_activation=relu",
               "--set", "train.optimizer=sgd", cwd=tmp_path))
    _, spec, summary = check_model_files(tmp_path / "out", [2, 5, 2])
    assert spec["hidden_activation"] == "relu"
    assert summary["epochs"] == 3
    assert summary["steps"] == 3 * math.ceil(4 / 3)  # 4 xor rows, batches of 3 -> 2 steps


def test_init_from_continues_training(rayprop, spirals_run, tmp_path):
    _, cfg, trained, _ = spirals_run
    one_epoch = ("--set", "train.epochs=1", "--quiet", "--local")
    ok(rayprop("train", cfg, *one_epoch, "--output", tmp_path / "scratch", cwd=tmp_path))
    ok(rayprop("train", cfg, *one_epoch, "--output", tmp_path / "cont",
               "--init-from", trained / "model.npz", cwd=tmp_path))
    scratch = json.loads((tmp_path / "scratch" / "summary.json").read_text())
    cont = json.loads((tmp_path / "cont" / "summary.json").read_text())
    # The first epoch's loss starts where the trained model left off, far below a fresh start.
    assert cont["final_loss"] < 0.5 * scratch["final_loss"], (cont, scratch)
    assert cont["val_accuracy"] >= 0.9

    # With a negligible learning rate the weights come back as they went in.
    ok(rayprop("train", cfg, *one_epoch, "--set", "train.learning_rate=1e-12",
               "--output", tmp_path / "still", "--init-from", trained / "model.npz", cwd=tmp_path))
    before, after = load_npz(trained / "model.npz"), load_npz(tmp_path / "still" / "model.npz")
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-5, atol=1e-7, err_msg=k)


# ---- evaluate, predict, gradcheck ---------------------------------------------------------

def test_evaluate_matches_numpy(rayprop, spirals_run, tmp_path):
    _, _, trained, _ = spirals_run
    X, y = spiral_csv(tmp_path / "points.csv")
    proc = ok(rayprop("evaluate", trained / "model.npz", tmp_path / "points.csv", cwd=tmp_path))
    result = json.loads(proc.stdout)
    arrays = load_npz(trained / "model.npz")
    spec = json.loads((trained / "model.json").read_text())
    Z = np_forward(arrays, spec, X)
    expected_loss = np_cross_entropy(Z, y)
    assert result["rows"] == len(y) == 450
    assert result["cost"] == "cross_entropy"
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-4, abs=1e-6)
    expected_acc = float((Z.argmax(axis=0) == y).mean())
    assert result["accuracy"] == pytest.approx(expected_acc, abs=1.5 / len(y))
    # Same answer with the model's directory instead of its model.npz.
    again = json.loads(ok(rayprop("evaluate", trained, tmp_path / "points.csv", cwd=tmp_path)).stdout)
    assert again["loss"] == result["loss"]


def test_predict_csv_and_parquet(rayprop, spirals_run, tmp_path):
    import pyarrow.parquet as pq

    _, _, trained, _ = spirals_run
    X, _ = spiral_csv(tmp_path / "points.csv")
    arrays = load_npz(trained / "model.npz")
    spec = json.loads((trained / "model.json").read_text())
    P = np_softmax(np_forward(arrays, spec, X))

    # To stdout, as CSV.
    proc = ok(rayprop("predict", trained, tmp_path / "points.csv", cwd=tmp_path))
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == len(X)
    assert set(rows[0]) == {"p0", "p1", "p2", "prediction"}
    got = np.array([[float(r[f"p{k}"]) for k in range(3)] for r in rows]).T
    np.testing.assert_allclose(got, P, atol=1e-5)
    assert [int(r["prediction"]) for r in rows] == list(got.argmax(axis=0))

    # To a Parquet file: nothing on stdout, the same rows in the file.
    out = tmp_path / "x.parquet"
    proc = ok(rayprop("predict", trained, tmp_path / "points.csv", "--output", out, cwd=tmp_path))
    assert proc.stdout == ""
    table = pq.read_table(out)
    assert table.num_rows == len(X)
    np.testing.assert_allclose(np.vstack([table.column(f"p{k}").to_numpy() for k in range(3)]), P, atol=1e-5)

    # A built-in set by name works too.
    proc = ok(rayprop("predict", trained, "spirals", cwd=tmp_path))
    assert len(proc.stdout.strip().splitlines()) == 1 + SPIRALS_ROWS  # header + rows


def test_gradcheck_passes(rayprop, spirals_run, tmp_path):
    _, cfg, _, _ = spirals_run
    proc = ok(rayprop("gradcheck", cfg, cwd=tmp_path))
    assert "PASS" in proc.stdout and "FAIL" not in proc.stdout
    for name in ("W1", "b1", "W3", "b3"):
        assert any(line.startswith(name) for line in proc.stdout.splitlines()), name


# ---- behaviours that were bugs once -------------------------------------------------------

def test_experiment_name_is_taken_literally(rayprop, tmp_path):
    cfg = write(tmp_path / "xor.yaml", XOR_YAML)
    ok(rayprop("train", cfg, "--local", "--quiet", "--output", tmp_path / "out",
               "--experiment", "2024", cwd=tmp_path))


def test_set_into_an_empty_section(rayprop, tmp_path):
    cfg = write(tmp_path / "xor.yaml", "data: {source: xor}\ntrain:\n")
    ok(rayprop("train", cfg, "--local", "--quiet", "--output", tmp_path / "out",
               "--set", "train.epochs=2", cwd=tmp_path))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["epochs"] == 2


def test_predict_into_a_missing_directory(rayprop, spirals_run, tmp_path):
    _, _, trained, _ = spirals_run
    proc = rayprop("predict", trained, "xor", "--output", tmp_path / "no" / "p.csv", cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    if proc.returncode == 0:  # creating the directory is fine too
        assert (tmp_path / "no" / "p.csv").is_file()
    else:
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_output_files_follow_the_umask(spirals_run):
    _, _, trained, _ = spirals_run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.npz", "model.json", "summary.json"):
        assert (trained / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_help_names_the_tracking_flags_and_commands(rayprop, tmp_path):
    top = ok(rayprop("--help", cwd=tmp_path)).stdout
    assert "sweep" in top and "ui" in top
    for command in ("train", "sweep", "submit"):
        assert "--tracking-uri" in ok(rayprop(command, "--help", cwd=tmp_path)).stdout, command
    assert "--grid" in ok(rayprop("sweep", "--help", cwd=tmp_path)).stdout
    ui = ok(rayprop("ui", "--help", cwd=tmp_path)).stdout
    assert "--host" in ui and "--port" in ui and "127.0.0.1" in ui


def test_summary_run_id_is_the_mlflow_run(spirals_run, tracking_store):
    import mlflow

    _, _, out, proc = spirals_run
    run_id = json.loads((out / "summary.json").read_text())["run_id"]
    assert f"MLflow run {run_id}" in proc.stderr
    run = mlflow.MlflowClient(tracking_store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == str(SPIRALS_EPOCHS)


# ---- the installed command in a new process -----------------------------------------------

def test_installed_command_reports_its_version(tmp_path):
    from trainer import __version__

    proc = ok(installed_rayprop("--version", cwd=tmp_path))
    assert proc.stdout.strip() == f"rayprop {__version__}"


def test_installed_command_bad_input_is_one_line(tmp_path):
    """Without --local a Ray is started before the data is read: the bad row is still
    one line, with nothing of Ray's on the console and nothing written."""
    (tmp_path / "d.csv").write_text("x0,x1,y\n" + "0.5,0.5,0\n" * 20 + "nan,1,1\n")
    (tmp_path / "c.yaml").write_text("data: {source: d.csv}\nmodel: {layers: [2, 4, 2]}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    proc = installed_rayprop("train", "c.yaml", "--workers", "2", cwd=tmp_path, env=env)
    one_line_exit_2(proc, "d.csv", "NaN", "row 20")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "d.csv"]


# ---- what the console says ------------------------------------------------------------------

def test_epoch_lines_say_which_are_skipped(capsys):
    from experiments.jobs.progress import MAX_EPOCH_LINES, ProgressBar

    epochs = MAX_EPOCH_LINES + 30
    bar = ProgressBar(epochs, steps_per_epoch=3)
    metrics = {"epoch_loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.75, "examples_per_second": 1000.0}
    for epoch in range(epochs):
        for step in range(3):
            bar.on_step(epoch * 3 + step + 1, epoch, 0.5, 10)
        bar.on_epoch(epoch, metrics)
    bar.close()
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    shown = [int(l.split()[1].split("/")[0]) for l in lines if l.startswith("epoch ")]
    assert shown == [*range(1, MAX_EPOCH_LINES + 1), epochs]
    skipped = [l for l in lines if "not shown" in l]
    assert skipped == [f"... (lines of epochs {MAX_EPOCH_LINES + 1} to {epochs - 1} not shown; "
                       "every epoch's metrics are in MLflow)"]
    assert lines.index(skipped[0]) == MAX_EPOCH_LINES  # between the last shown and the final line
    assert lines[0] == f"epoch 1/{epochs}  epoch_loss 0.5  val_loss 0.25  val_accuracy 75.0%  1,000 ex/s"
