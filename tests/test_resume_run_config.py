"""`rayprop train --resume RUN_ID` with no CONFIG takes the run's own logged config
(its --set values included), so the `continue with:` hint a stopped job prints works
as printed. Real subprocesses of the installed command, a real sqlite MLflow store,
local mode; the weights are compared with an uninterrupted run's."""

from __future__ import annotations

import shlex
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.jobs.run_config import from_params, parse_param
from experiments.tracking.params import run_params
from tests.conftest import RAYPROP, installed_rayprop, one_line_exit_2
from tests.raydata import write_parquet
from trainer.config import from_dict
from trainer.errors import InputError

CONFIG = """\
experiment: no-config
model: {layers: [4, 8, 3], hidden_activation: relu, dtype: float64}
data: {source: d.parquet, validation_fraction: 0.1}
train: {optimizer: sgd, learning_rate: 0.1, batch_size: 16, epochs: 6, seed: 1, checkpoint_seconds: 0}
"""
# What the stopped run changes on the command line: a list, a float, a word, an int, a null.
SETS = ["model.layers=[4,12,3]", "model.hidden_activation=tanh", "train.optimizer=adam",
        "train.learning_rate=0.003", "train.epochs=60", "cluster.max_workers=null"]


def weights(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return np.concatenate([z[k].ravel() for k in sorted(z.files)])


def hint_of(stderr: str) -> list[str]:
    """The words after `continue with:` on the line that has it, `rayprop` the installed one."""
    line = next(line for line in stderr.splitlines() if "continue with: " in line)
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[:2] == ["rayprop", "train"] and "--resume" in words, line
    return [str(RAYPROP), *words[1:]]


def test_a_stopped_run_goes_on_with_the_printed_command_alone(tmp_path):
    """SIGINT after the first checkpoint of a run given six --set values, started in
    `here/` with a relative data path; the printed command, run from another folder,
    exits 0, continues the same run and ends with the uninterrupted run's weights."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    write_parquet(here / "d.parquet", m=500)
    (here / "c.yaml").write_text(CONFIG)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [w for s in SETS for w in ("--set", s)]
    ref = installed_rayprop("train", "c.yaml", "--local", "--quiet", "--output", "ref", "--tracking-uri", uri,
                            *sets, cwd=here)
    assert ref.returncode == 0, ref.stderr[-2000:]

    proc = subprocess.Popen([str(RAYPROP), "train", "c.yaml", "--local", "--quiet", "--output", "stopped",
                             "--tracking-uri", uri, *sets], cwd=here, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list((here / "stopped" / "checkpoints").glob("ckpt-*.npz")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the end"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    command = hint_of(err)
    assert "c.yaml" not in command and "--local" in command and "--tracking-uri" in command

    cont = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert cont.returncode == 0, cont.stderr[-2000:]
    assert "resuming at step" in cont.stderr
    import mlflow

    client = mlflow.MlflowClient(uri)
    run_id = command[command.index("--resume") + 1]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.learning_rate"] == "0.003"
    assert len(client.get_metric_history(run_id, "epoch_loss")) == 60
    ref_w = weights(here / "ref" / "model.npz")
    rel = np.max(np.abs(weights(here / "stopped" / "model.npz") - ref_w)) / np.max(np.abs(ref_w))
    assert rel <= 1e-9, f"relative difference to the uninterrupted run {rel:.2e}"
    assert not (elsewhere / "runs").exists() and not (elsewhere / "mlflow.db").exists()

    # With a CONFIG it is checked as before: the file without the --set values is refused.
    again = installed_rayprop("train", "c.yaml", "--local", "--resume", run_id, "--tracking-uri", uri, cwd=here)
    one_line_exit_2(again, f"--resume {run_id}", "the run")


def test_no_config_and_no_resume_is_one_line(tmp_path):
    one_line_exit_2(installed_rayprop("train", "--local", cwd=tmp_path), "CONFIG", "--resume")
    assert not list(tmp_path.iterdir())


def test_resume_of_an_unknown_run_without_config_is_one_line(tmp_path, rayprop):
    none_there = rayprop("train", "--resume", "0" * 32, "--local", "--tracking-uri",
                         f"sqlite:///{tmp_path / 'none.db'}")
    one_line_exit_2(none_there, "--resume", "no tracking store")
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("raw", [
    {"data": {"source": "spirals"}},
    {"experiment": "x y", "data": {"source": "/data/t.csv", "features": ["a", "1", "None"], "target": ["p", "q"],
                                   "validation_fraction": 0.0},
     "model": {"layers": [3, 5, 7, 2], "cost": "mse", "init": "xavier", "dtype": "float64"},
     "train": {"optimizer": "adam", "learning_rate": 1e-3, "batch_size": "full", "epsilon": 1e-12,
               "beta2": 0.98765432109876, "checkpoint_seconds": 0.5},
     "cluster": {"workers": "auto", "min_workers": 1, "max_workers": 3, "data_plane": "object_store",
                 "address": "ray://head:10001"}},
    {"data": {"source": "xor", "target": "1"}, "model": {"cost": "binary_cross_entropy"},
     "train": {"optimizer": "gd", "learning_rate": 2, "epochs": 3}},
])
def test_params_read_back_give_the_same_config(raw):
    """Every value's type survives the params' text: lists, floats (all digits), null,
    words, numbers as words ("1" as a column name)."""
    cfg = from_dict({**raw, "tracking": {"uri": "sqlite:///m.db"}})
    assert from_params("r", run_params(cfg), {}, "sqlite:///m.db", []) == cfg


def test_what_the_params_lack_is_named():
    cfg = from_dict({"data": {"source": "spirals"}, "cluster": {"address": "ray://u:pw@head:10001"}})
    params = run_params(cfg)
    assert params["cluster.address"] == "ray://***@head:10001"
    with pytest.raises(InputError, match="cluster.address was logged without its credentials"):
        from_params("r", params, {}, "sqlite:///m.db", [])
    given = from_params("r", params, {}, "sqlite:///m.db", ["cluster.address=ray://u:pw@head:10001"])
    assert given.cluster.address == "ray://u:pw@head:10001"
    with pytest.raises(InputError, match="a sweep's parent run; continue the sweep with rayprop sweep"):
        from_params("r", params, {"rayprop.sweep": "parent"}, "sqlite:///m.db", [])
    assert parse_param(float, "1e-08") == 1e-08 and parse_param(list[int], "[2, 3]") == [2, 3]
