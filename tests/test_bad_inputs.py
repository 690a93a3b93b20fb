"""Every way a user can get config, data, arguments or files wrong, in one table:
exit 2, ONE line on stderr naming the field, column, file or value, no traceback,
nothing on stdout, nothing written (no output directory, no `runs/`, no MLflow store,
so no run either) and no MLflow run left active.

Each case runs `rayprop` in-process (tests/conftest.py) in a directory of its own
that holds links to the files below, with MLFLOW_TRACKING_URI pointing at a store in
that directory that must not come into being. `test_cli.py` proves the same for the
installed command in a new process, with and without Ray.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import one_line_exit_2
from tests.raycluster import free_port

GOOD_YAML = """\
experiment: bad-inputs
model: {layers: [2, 8, 3], hidden_activation: tanh, cost: cross_entropy, dtype: float64}
data: {source: data.csv, target: y, validation_fraction: 0.2}
train: {optimizer: sgd, learning_rate: 0.1, batch_size: 4, epochs: 1}
"""
GOOD_CSV = "x0,x1,y\n" + "".join(f"{i * 0.1:.1f},{(i % 3) * 0.5:.1f},{i % 3}\n" for i in range(12))
MODEL_JSON = {"format": "rayprop-mlp", "rayprop_version": "0.1.0", "layers": [2, 8, 3],
              "hidden_activation": "tanh", "output_activation": "softmax",
              "cost": "cross_entropy", "dtype": "float64",
              "features": ["x0", "x1"], "targets": ["y"], "encoding": "one_hot"}
SENTINEL = "sprung"  # a directory that appears only if a pickle was loaded (see _Trap)


class _Trap:
    """Unpickling this creates the directory `sprung` in the working directory, where
    the nothing-written check finds it: proof that something unpickled."""

    def __reduce__(self):
        return (os.mkdir, (SENTINEL,))


def _arrays(layers, dtype=np.float64):
    rng = np.random.default_rng(0)
    out = {}
    for l in range(1, len(layers)):
        out[f"W{l}"] = rng.standard_normal((layers[l], layers[l - 1])).astype(dtype)
        out[f"b{l}"] = np.zeros((layers[l], 1), dtype)
    return out


def _model_dir(d, name, arrays, with_json=True):
    (d / name).mkdir()
    np.savez(d / name / "model.npz", **arrays)
    if with_json:
        (d / name / "model.json").write_text(json.dumps(MODEL_JSON))


def _setup_files(d) -> None:
    texts = {
        "good.yaml": GOOD_YAML,
        "data.csv": GOOD_CSV,
        "nan.csv": GOOD_CSV.replace("0.5,1\n", "nan,1\n", 1),        # row 1, column x1
        "strings.csv": GOOD_CSV.replace("0.5,1\n", "abc,1\n", 1),
        "empty.csv": "",
        "header_only.csv": "x0,x1,y\n",
        "labels5.csv": GOOD_CSV.replace(",2\n", ",5\n"),              # first at row 2
        "neg_labels.csv": GOOD_CSV.replace(",2\n", ",-1\n"),
        "frac_labels.csv": GOOD_CSV.replace(",2\n", ",1.5\n"),
        "huge_label.csv": "x0,x1,y\n1,2,0\n2,1,10000000000\n3,4,0\n",
        "one_col.csv": "y\n1\n2\n",
        "no_target.csv": "x0,x1\n1,2\n",
        "syntax.yaml": "model: {layers: [2, 8, 2\ndata: {source: xor}\n",
        "list.yaml": "- 1\n- 2\n",
        "key_typo.yaml": "data: {source: xor}\ntrain: {epochz: 3}\n",
        "wrong_type.yaml": "data: {source: xor}\ntrain: {epochs: many}\n",
        "sweep_typo.yaml": GOOD_YAML + "sweep: {train.epoch: [1, 2]}\n",
        # each value is fine alone; layers [3, ...] do not fit the data's 2 features
        "sweep_layers.yaml": GOOD_YAML + "sweep: {model.layers: [[2, 4, 3], [3, 4, 3]]}\n",
        "not_a_model.npz": "x0,x1,y\n1,2,0\n",
        "a_file": "not a directory\n",
    }
    for name, text in texts.items():
        (d / name).write_text(text)
    np.savez(d / "narrow.npz", **_arrays([2, 16, 3]))               # other widths
    np.savez(d / "deep.npz", **_arrays([2, 8, 8, 3]))                # other depth
    np.savez(d / "pickled.npz", **{**_arrays([2, 8, 3]), "W1": np.array([_Trap()], dtype=object)})
    (d / "model.pkl").write_bytes(pickle.dumps({"W1": [1, 2]}))
    _model_dir(d, "good_model", _arrays([2, 8, 3]))
    _model_dir(d, "no_json", _arrays([2, 8, 3]), with_json=False)
    _model_dir(d, "pickled_model", {**_arrays([2, 8, 3]), "W1": np.array([_Trap()], dtype=object)})
    pq.write_table(pa.table({"x0": pa.array([], pa.float64()), "x1": pa.array([], pa.float64()),
                             "y": pa.array([], pa.int64())}), d / "empty.parquet")


def train(*extra):
    return ["train", "good.yaml", "--local", "--output", "out", *extra]


def set_(*pairs):
    return [x for pair in pairs for x in ("--set", pair)]


# (id, arguments after `rayprop`, words the one line must contain[, files of the case]).
# "{port}" in an argument becomes a free loopback port where nothing listens.
CASES = [
    # -- the config file
    ("config missing", ["train", "nope.yaml", "--local"], ["nope.yaml"]),
    ("config not YAML", ["train", "syntax.yaml", "--local"], ["syntax.yaml", "line 2", "YAML"]),
    ("config not a mapping", ["train", "list.yaml", "--local"], ["list.yaml"]),
    ("unknown key in the file", ["train", "key_typo.yaml", "--local"],
     ["train.epochz", "did you mean train.epochs"]),
    ("wrong type in the file", ["train", "wrong_type.yaml", "--local"], ["train.epochs", "integer", "many"]),
    # -- config values, through --set
    ("unknown key", train(*set_("model.layrs=[2,3]")), ["model.layrs"]),
    ("unknown section", train(*set_("modle.layers=[2,3]")), ["modle"]),
    ("set without =", train(*set_("train.epochs")), ["train.epochs"]),
    ("set: not a number", train(*set_("train.epochs=abc")), ["train.epochs", "abc"]),
    ("set: not a float", train(*set_("train.learning_rate=fast")), ["train.learning_rate"]),
    ("set: not a list of integers", train(*set_("model.layers=[2, x, 2]")), ["model.layers"]),
    ("negative epochs", train(*set_("train.epochs=-1")), ["train.epochs"]),
    ("zero learning rate", train(*set_("train.learning_rate=0")), ["train.learning_rate"]),
    ("negative learning rate", train(*set_("train.learning_rate=-1")), ["train.learning_rate"]),
    ("batch size 0", train(*set_("train.batch_size=0")), ["train.batch_size"]),
    ("validation fraction 1.5", train(*set_("data.validation_fraction=1.5")), ["data.validation_fraction"]),
    ("unknown activation", train(*set_("model.hidden_activation=relux")), ["model.hidden_activation", "relux"]),
    ("unknown optimizer", train(*set_("train.optimizer=adamw")), ["train.optimizer"]),
    ("unknown cost", train(*set_("model.cost=nope")), ["model.cost", "nope"]),
    ("cost does not fit the output", train(*set_("model.cost=binary_cross_entropy",
                                                 "model.output_activation=softmax")),
     ["model.output_activation", "binary_cross_entropy", "sigmoid"]),
    ("unknown dtype", train(*set_("model.dtype=float16")), ["model.dtype"]),
    ("layer of 0 units", train(*set_("model.layers=[2,0,3]")), ["model.layers"]),
    # -- the data
    ("data file missing", train(*set_("data.source=missing.csv")), ["data.source", "missing.csv"]),
    ("unknown data kind", train(*set_("data.source=data.xlsx")), ["data.xlsx", ".xlsx"]),
    ("empty CSV", train(*set_("data.source=empty.csv")), ["empty.csv", "empty"]),
    ("header-only CSV", train(*set_("data.source=header_only.csv")), ["header_only.csv", "no rows"]),
    ("empty Parquet", train(*set_("data.source=empty.parquet")), ["empty.parquet"]),
    ("NaN in a feature", train(*set_("data.source=nan.csv")), ["nan.csv", "x1", "NaN", "row 1"]),
    ("string in a feature", train(*set_("data.source=strings.csv")), ["strings.csv", "x1", "not numeric"]),
    ("label beyond the output layer", train(*set_("data.source=labels5.csv")),
     ["labels5.csv", "'y'", "5", "row 2", "3 classes"]),
    ("negative label", train(*set_("data.source=neg_labels.csv")), ["-1"]),
    ("fractional label", train(*set_("data.source=frac_labels.csv")), ["1.5"]),
    ("huge label with inferred layers", train(*set_("data.source=huge_label.csv", "model.layers=null")),
     ["data.target", "'y'", "model.layers"]),
    ("target column missing", train(*set_("data.target=label")), ["label"]),
    ("feature column missing", train(*set_("data.features=[x0, x9]")), ["x9"]),
    ("features do not fit layer 0", train(*set_("data.features=[x0]")), ["model.layers"]),
    ("layer 0 does not fit the features", train(*set_("model.layers=[3, 8, 3]")),
     ["model.layers[0]", "3", "2 columns"]),
    ("no feature columns", train(*set_("data.source=one_col.csv", "model.layers=null")), ["one_col.csv"]),
    ("data URI with credentials", train(*set_("data.source=s3://AKIDX:s3cr3t@bucket/d.parquet")),
     ["data.source", "s3://bucket/d.parquet", "environment"]),
    ("data URI with options", train(*set_("data.source=s3://bucket/d.parquet?endpoint_override=x")),
     ["data.source", "s3://bucket/d.parquet", "AWS_ENDPOINT_URL"]),
    ("data URI of unknown scheme", train(*set_("data.source=ftp://host/d.parquet")), ["data.source", "ftp://"]),
    # -- --init-from
    ("init-from missing", train("--init-from", "none.npz"), ["none.npz", "not found"]),
    ("init-from not a model", train("--init-from", "not_a_model.npz"), ["not_a_model.npz"]),
    ("init-from other widths", train("--init-from", "narrow.npz"), ["W1", "(16, 2)", "(8, 2)"]),
    ("init-from another depth", train("--init-from", "deep.npz"), ["[2, 8, 3]", "W3"]),
    ("init-from a pickle in an npz", train("--init-from", "pickled.npz"), ["pickled.npz"]),
    ("init-from a pickled model dir", train("--init-from", "pickled_model/model.npz"), ["model.npz"]),
    ("init-from a .pkl", train("--init-from", "model.pkl"), ["model.pkl"]),
    # -- flags and output
    ("output is a file", train("--output", "a_file"), ["--output", "a_file"]),
    ("output under a file", train("--output", "a_file/out"), ["--output", "a_file", "not a directory"]),
    ("output URI with credentials", train("--output", "s3://key:pw@bucket/out"),
     ["--output", "s3://bucket/out", "carries credentials"]),
    ("output URI of unknown scheme", train("--output", "ftp://host/out"), ["--output", "ftp://"]),
    ("output URI that cannot be written", train("--output", "file:///proc/rayprop-none/out"),
     ["--output", "file:///proc/rayprop-none/out", "cannot write there"]),
    ("unknown flag", train("--epochs", "3"), ["--epochs"]),
    ("workers 0", train("--workers", "0"), ["--workers", "0"]),
    ("workers not a number", train("--workers", "two"), ["--workers"]),
    ("workers below min_workers", ["train", "good.yaml", "--workers", "1", "--output", "out",
                                   *set_("cluster.min_workers=2")], ["--workers 1", "cluster.min_workers"]),
    ("workers above max_workers", ["train", "good.yaml", "--workers", "3", "--output", "out",
                                   *set_("cluster.max_workers=2")], ["--workers 3", "cluster.max_workers"]),
    ("unknown command", ["trian", "good.yaml"], ["trian"]),
    ("tracking store in a missing folder", train("--tracking-uri", "sqlite:///nowhere/m.db"),
     ["tracking URI", "nowhere"]),
    ("no tracking server answers", train("--tracking-uri", "http://127.0.0.1:{port}"),
     ["http://127.0.0.1:", "no MLflow server answers"]),
    # -- sweep
    ("output file:// with no path", train("--output", "file://"), ["--output", "file://", "file:///ABSOLUTE/PATH"]),
    ("output file:// on another host", train("--output", "file://otherhost/tmp/x"),
     ["--output", "file://otherhost/tmp/x", "on this machine"]),
    ("output file: without slashes", train("--output", "file:relative/x"), ["--output", "file:relative/x", "file://"]),
    ("output URI with a fragment", train("--output", "s3://bkt/x#frag"), ["--output", "#fragment"]),
    ("submit output URI of unknown scheme", ["submit", "good.yaml", "--address", "http://127.0.0.1:1",
                                             "--output", "bogus://a/b"], ["--output", "bogus://"]),
    ("fetch into a URI", ["fetch", "0" * 32, "--output", "file:///tmp/x"], ["--output", "not a URI"]),
    ("fetch from a server that does not answer",
     ["fetch", "0" * 32, "--output", "x", "--tracking-uri", "http://127.0.0.1:1"],
     ["http://127.0.0.1:1", "no MLflow server answers"]),
    ("sweep without a sweep section", ["sweep", "good.yaml", "--local", "--output", "out"],
     ["good.yaml", "no sweep: section", "--grid"]),
    ("sweep to a URI", ["sweep", "good.yaml", "--local", "--grid", "train.seed=1,2", "--output", "s3://b/x"],
     ["--output", "s3://b/x", "local folder"]),
    ("sweep grid with a bad value", ["sweep", "good.yaml", "--local", "--grid", "train.epochs=3,many"],
     ["sweep.train.epochs", "many"]),
    ("sweep grid with a negative rate", ["sweep", "good.yaml", "--local", "--grid",
                                         "train.learning_rate=0.1,-1"], ["sweep.train.learning_rate", "-1"]),
    ("sweep grid key misspelt", ["sweep", "good.yaml", "--local", "--grid", "train.learnin_rate=0.1,0.2"],
     ["sweep.train.learnin_rate", "did you mean sweep.train.learning_rate"]),
    ("sweep grid on the store", ["sweep", "good.yaml", "--local", "--grid", "tracking.uri=a,b"],
     ["sweep.tracking.uri", "cannot be swept"]),
    ("sweep section with an unknown key", ["sweep", "sweep_typo.yaml", "--local"],
     ["sweep.train.epoch", "did you mean sweep.train.epochs"]),
    ("sweep combination that cannot train", ["sweep", "sweep_layers.yaml", "--local"],
     ["layers=[3, 4, 3]", "model.layers[0]"]),
    # -- evaluate, predict, gradcheck, ui
    ("evaluate: model missing", ["evaluate", "nomodel", "data.csv"], ["nomodel"]),
    ("evaluate: not a model", ["evaluate", "not_a_model.npz", "data.csv"], ["not_a_model.npz"]),
    ("evaluate: no model.json", ["evaluate", "no_json/model.npz", "data.csv"], ["model.json"]),
    ("evaluate: a pickled model", ["evaluate", "pickled_model", "data.csv"], ["model.npz"]),
    ("evaluate: data without the target", ["evaluate", "good_model", "no_target.csv"],
     ["'y'", "no_target.csv"]),
    ("evaluate: labels beyond the output", ["evaluate", "good_model", "labels5.csv"], ["5"]),
    ("predict: data missing", ["predict", "good_model", "nothere.csv"], ["nothere.csv"]),
    ("predict: features missing", ["predict", "good_model", "one_col.csv"], ["x0"]),
    ("predict: output of unknown kind", ["predict", "good_model", "data.csv", "--output", "p.txt"],
     ["--output", "p.txt", ".csv or .parquet"]),
    ("gradcheck: config missing", ["gradcheck", "nope.yaml"], ["nope.yaml"]),
    ("ui: port out of range", ["ui", "--port", "70000"], ["--port", "65535"]),
]

# Hostile configs, refused before anything is built (by `train` and `sweep` alike).
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcdefgh", "bcdefghi")) + "data: {source: xor}\nmodel: {layers: *i}\n"
XOR = "data: {source: xor}\n"
HOSTILE = [
    # (id, the file c.yaml, arguments after CONFIG, words)
    ("a layer of a billion units", XOR, set_("model.layers=[2, 1000000000, 2]"),
     ["model.layers", "in [1, 1000000]", "1000000000"]),
    ("too many parameters", XOR, set_("model.layers=[2, 100000, 100000, 2]"),
     ["model.layers", "parameters, more than"]),
    ("5000 layers", XOR + "model: {layers: " + str([4] * 5000) + "}\n", [],
     ["model.layers", "at most 1000 sizes"]),
    ("YAML alias bomb", ALIAS_BOMB, [], ["expands to more than", "aliases"]),
    ("YAML self-reference", "a: &a [*a]\n" + XOR, [], ["c.yaml", "refers to itself"]),
    ("YAML nested 5000 deep", XOR + "x: " + "[" * 5000 + "]" * 5000 + "\n", [], ["c.yaml"]),
    ("negative seed", XOR + "train: {seed: -1}\n", [], ["train.seed", "at least 0", "-1"]),
    ("negative split seed", "data: {source: xor, split_seed: -3}\n", [], ["data.split_seed", "at least 0"]),
    ("experiment name leaves the folder", XOR, ["--experiment", "../../x"],
     ["experiment", "plain name", "'../../x'"]),
    ("experiment name absolute", XOR + "experiment: /tmp/abs\n", [], ["experiment", "plain name"]),
    ("experiment name ..", XOR + "experiment: ..\n", [], ["experiment", "plain name"]),
    ("a 5000-digit number", XOR, set_("train.learning_rate=" + "9" * 5000 + "x"),
     ["train.learning_rate", "expected a number", "..."]),
    ("too many workers in the file", XOR + "cluster: {workers: 100000}\n", [],
     ["cluster.workers", "in [1, 1024]"]),
    ("too many workers", XOR, ["--workers", "100000"], ["--workers", "at most 1024"]),
]
CASES += [(f"{command}: {name}", [command, "c.yaml", "--local", *argv], words, {"c.yaml": text})
          for name, text, argv, words in HOSTILE for command in ("train", "sweep")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    _setup_files(d)
    return d


@pytest.mark.parametrize("args,words,own_files", [(*c[1:3], c[3] if len(c) > 3 else {}) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(rayprop, files, tmp_path, args, words,
                                                           own_files):
    for f in files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    for name, text in own_files.items():
        (tmp_path / name).write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    if any("{port}" in a for a in args):
        port = free_port()
        args = [a.replace("{port}", str(port)) for a in args]
    result = rayprop(*args, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    line = one_line_exit_2(result, *words)
    assert "s3cr3t" not in line  # a secret in a data URI is never repeated
    # Nothing written: no output, no runs/, no mlflow.db or mlruns/, no sprung pickle trap.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_pickle_trap_works(files, tmp_path, monkeypatch):
    """The trap above does spring when a pickle is loaded, so its absence means something."""
    monkeypatch.chdir(tmp_path)
    with np.load(files / "pickled.npz", allow_pickle=True) as z:
        z["W1"]
    assert (tmp_path / SENTINEL).is_dir()
