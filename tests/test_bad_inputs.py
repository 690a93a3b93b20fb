"""Every way a user can get config, data, arguments or files wrong (issue: reliability):
exit 2, ONE line on stderr naming the field, column, file or value, no traceback,
nothing written (no output directory, no MLflow store or run).

Each case is a real `python -m experiments.cli` subprocess in its own directory,
with a real tracking store configured there; the check afterwards opens that store
with MLflow if it exists at all.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

GOOD_YAML = """\
experiment: bad-inputs
model: {layers: [2, 8, 3], hidden_activation: tanh, cost: cross_entropy, dtype: float64}
data: {source: data.csv, target: y, validation_fraction: 0.2}
train: {optimizer: sgd, learning_rate: 0.1, batch_size: 4, epochs: 1}
"""
GOOD_CSV = "x0,x1,y\n" + "".join(f"{i * 0.1:.1f},{(i % 3) * 0.5:.1f},{i % 3}\n" for i in range(12))


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return path.name


def _setup_files(d: Path) -> None:
    write(d / "good.yaml", GOOD_YAML)
    write(d / "data.csv", GOOD_CSV)
    write(d / "nan.csv", GOOD_CSV.replace("0.5,1\n", "nan,1\n", 1))
    write(d / "strings.csv", GOOD_CSV.replace("0.5,1\n", "abc,1\n", 1))
    write(d / "empty.csv", "")
    write(d / "header_only.csv", "x0,x1,y\n")
    write(d / "labels5.csv", GOOD_CSV.replace(",2\n", ",5\n"))
    write(d / "neg_labels.csv", GOOD_CSV.replace(",2\n", ",-1\n"))
    write(d / "frac_labels.csv", GOOD_CSV.replace(",2\n", ",1.5\n"))
    write(d / "one_col.csv", "y\n1\n2\n")
    write(d / "broken.yaml", "model: {layers: [2, 8, 3]\ndata: [\n")
    write(d / "list.yaml", "- 1\n- 2\n")
    write(d / "not_a_model.npz", "hello")
    np.savez(d / "other_net.npz", W1=np.zeros((4, 2)), b1=np.zeros((4, 1)), W2=np.zeros((3, 4)),
             b2=np.zeros((3, 1)))
    np.savez(d / "pickled.npz", W1=np.array([{"a": 1}], dtype=object))
    from trainer.model_io import save_model
    from trainer.network import NetworkSpec, init_theta

    spec = NetworkSpec((2, 8, 3), "tanh", "softmax", "cross_entropy", "float64")
    save_model(d / "good_model", spec, init_theta(spec), {"features": ["x0", "x1"], "targets": ["y"],
                                                          "encoding": "one_hot"})
    (d / "model.pkl").write_bytes(pickle.dumps({"W1": [1, 2]}))
    write(d / "a_file", "x")
    pq.write_table(pa.table({"x0": pa.array([], pa.float64()), "x1": pa.array([], pa.float64()),
                             "y": pa.array([], pa.int64())}), d / "empty.parquet")


# (id, arguments after `rayprop`, words the one line must contain)
CASES = [
    ("config missing", ["train", "nope.yaml", "--local"], ["nope.yaml"]),
    ("config not YAML", ["train", "broken.yaml", "--local"], ["broken.yaml"]),
    ("config not a mapping", ["train", "list.yaml", "--local"], ["list.yaml"]),
    ("unknown key", ["train", "good.yaml", "--local", "--set", "model.layrs=[2,3]"], ["model.layrs"]),
    ("unknown section", ["train", "good.yaml", "--local", "--set", "modle.layers=[2,3]"], ["modle"]),
    ("set without =", ["train", "good.yaml", "--local", "--set", "train.epochs"], ["train.epochs"]),
    ("wrong type", ["train", "good.yaml", "--local", "--set", "train.learning_rate=fast"], ["train.learning_rate"]),
    ("negative epochs", ["train", "good.yaml", "--local", "--set", "train.epochs=-1"], ["train.epochs"]),
    ("zero learning rate", ["train", "good.yaml", "--local", "--set", "train.learning_rate=0"], ["train.learning_rate"]),
    ("batch size 0", ["train", "good.yaml", "--local", "--set", "train.batch_size=0"], ["train.batch_size"]),
    ("validation fraction 1.5", ["train", "good.yaml", "--local", "--set", "data.validation_fraction=1.5"],
     ["data.validation_fraction"]),
    ("unknown activation", ["train", "good.yaml", "--local", "--set", "model.hidden_activation=relux"],
     ["model.hidden_activation", "relux"]),
    ("unknown optimizer", ["train", "good.yaml", "--local", "--set", "train.optimizer=adamw"], ["train.optimizer"]),
    ("cost does not fit output", ["train", "good.yaml", "--local", "--set", "model.cost=binary_cross_entropy",
                                  "--set", "model.output_activation=softmax"], ["model."]),
    ("unknown dtype", ["train", "good.yaml", "--local", "--set", "model.dtype=float16"], ["model.dtype"]),
    ("layer of 0 units", ["train", "good.yaml", "--local", "--set", "model.layers=[2,0,3]"], ["model.layers"]),
    ("data file missing", ["train", "good.yaml", "--local", "--set", "data.source=missing.csv"], ["missing.csv"]),
    ("unknown data kind", ["train", "good.yaml", "--local", "--set", "data.source=data.xlsx"], ["data.xlsx"]),
    ("empty CSV", ["train", "good.yaml", "--local", "--set", "data.source=empty.csv"], ["empty.csv"]),
    ("header-only CSV", ["train", "good.yaml", "--local", "--set", "data.source=header_only.csv"],
     ["header_only.csv"]),
    ("empty Parquet", ["train", "good.yaml", "--local", "--set", "data.source=empty.parquet"], ["empty.parquet"]),
    ("NaN in a feature", ["train", "good.yaml", "--local", "--set", "data.source=nan.csv"], ["x1", "NaN"]),
    ("string in a feature", ["train", "good.yaml", "--local", "--set", "data.source=strings.csv"], ["x1"]),
    ("label beyond the output layer", ["train", "good.yaml", "--local", "--set", "data.source=labels5.csv"],
     ["5"]),
    ("negative label", ["train", "good.yaml", "--local", "--set", "data.source=neg_labels.csv"], ["-1"]),
    ("fractional label", ["train", "good.yaml", "--local", "--set", "data.source=frac_labels.csv"], ["1.5"]),
    ("target column missing", ["train", "good.yaml", "--local", "--set", "data.target=label"], ["label"]),
    ("feature column missing", ["train", "good.yaml", "--local", "--set", "data.features=[x0,x9]"], ["x9"]),
    ("features do not fit layer 0", ["train", "good.yaml", "--local", "--set", "data.features=[x0]"],
     ["model.layers"]),
    ("no feature columns", ["train", "good.yaml", "--local", "--set", "data.source=one_col.csv",
                            "--set", "model.layers=null"], ["one_col.csv"]),
    ("init-from missing", ["train", "good.yaml", "--local", "--init-from", "none.npz"], ["none.npz"]),
    ("init-from not a model", ["train", "good.yaml", "--local", "--init-from", "not_a_model.npz"],
     ["not_a_model.npz"]),
    ("init-from another network", ["train", "good.yaml", "--local", "--init-from", "other_net.npz"],
     ["other_net.npz"]),
    ("init-from a pickle", ["train", "good.yaml", "--local", "--init-from", "pickled.npz"], ["pickled.npz"]),
    ("init-from a .pkl", ["train", "good.yaml", "--local", "--init-from", "model.pkl"], ["model.pkl"]),
    ("output is a file", ["train", "good.yaml", "--local", "--output", "a_file"], ["--output", "a_file"]),
    ("unknown flag", ["train", "good.yaml", "--local", "--epochs", "3"], ["--epochs"]),
    ("workers 0", ["train", "good.yaml", "--local", "--workers", "0"], ["--workers"]),
    ("workers not a number", ["train", "good.yaml", "--local", "--workers", "two"], ["--workers"]),
    ("unknown command", ["trian", "good.yaml"], ["trian"]),
    ("evaluate: model missing", ["evaluate", "nomodel", "data.csv"], ["nomodel"]),
    ("evaluate: not a model", ["evaluate", "not_a_model.npz", "data.csv"], ["not_a_model.npz"]),
    ("predict: data missing", ["predict", "good_model", "nothere.csv"], ["nothere.csv"]),
    ("predict: features missing", ["predict", "good_model", "one_col.csv"], ["x0"]),
    ("evaluate: labels beyond the output", ["evaluate", "good_model", "labels5.csv"], ["5"]),
    ("predict: output of unknown kind", ["predict", "good_model", "data.csv", "--output", "p.txt"], ["p.txt"]),
    ("gradcheck: config missing", ["gradcheck", "nope.yaml"], ["nope.yaml"]),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    _setup_files(d)
    return d


@pytest.mark.parametrize("args,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(files, tmp_path, args, words):
    work = tmp_path / "w"
    work.mkdir()
    for f in files.iterdir():
        (work / f.name).symlink_to(f)
    before = set(p.name for p in work.iterdir())
    db = work / "mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=work,
                          capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}; stderr:\n{proc.stderr[-1500:]}"
    assert len(lines) == 1, f"expected one line, got:\n{proc.stderr[-1500:]}"
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for w in words:
        assert w in lines[0], f"{w!r} not named in: {lines[0]}"
    # Nothing written: no new file or directory (no runs/, no output, no mlflow.db).
    assert set(p.name for p in work.iterdir()) == before, sorted(set(p.name for p in work.iterdir()) - before)
