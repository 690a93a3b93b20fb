"""Config schema, overrides and model files: user mistakes become one-line errors."""

import dataclasses
import json

import numpy as np
import pytest

from experiments.jobs.configfile import load_config, parse_grid, parse_override
from trainer.config import from_dict
from trainer.errors import ConfigError, InputError
from trainer.model_io import load_model, read_arrays, save_model, theta_from_arrays
from trainer.network import NetworkSpec, init_theta

BASE = {"data": {"source": "xor"}}


def test_defaults_fill_every_key_but_the_source():
    cfg = from_dict(BASE)
    flat = cfg.flat()
    assert flat["train.optimizer"] == "sgd" and flat["train.learning_rate"] == 0.1
    assert cfg.batch_size == 256 and cfg.output_activation == "softmax"
    gd = from_dict({**BASE, "train": {"optimizer": "gd"}})
    assert gd.batch_size is None  # gd is the full batch
    assert from_dict({**BASE, "model": {"cost": "mse"}}).output_activation == "linear"
    assert from_dict({**BASE, "train": {"batch_size": "full"}}).batch_size is None


@pytest.mark.parametrize("raw,key", [
    ({}, "data.source"),
    ({**BASE, "model": {"layer": [2, 3]}}, "model.layer: unknown key (did you mean model.layers?)"),
    ({**BASE, "train": {"learning_rate": "fast"}}, "train.learning_rate: expected a number, got 'fast'"),
    ({**BASE, "train": {"learning_rate": -1}}, "train.learning_rate: must be > 0"),
    ({**BASE, "train": {"epochs": 2.5}}, "train.epochs: expected an integer"),
    ({**BASE, "train": {"batch_size": "half"}}, "train.batch_size"),
    ({**BASE, "train": {"optimizer": "gd", "batch_size": 32}}, "train.batch_size: gd uses the full batch"),
    ({**BASE, "train": {"optimizer": "rmsprop"}}, "train.optimizer"),
    ({**BASE, "model": {"hidden_activation": "softmax"}}, "model.hidden_activation"),
    ({**BASE, "model": {"cost": "binary_cross_entropy", "output_activation": "softmax"}},
     "model.output_activation: binary_cross_entropy needs a sigmoid output"),
    ({**BASE, "model": {"layers": [2]}}, "model.layers"),
    ({**BASE, "model": {"layers": [2, 0, 1]}}, "model.layers"),
    ({**BASE, "model": {"layers": [2, "8", 1]}}, "model.layers: expected a list of an integer"),
    ({**BASE, "data": {"source": "xor", "validation_fraction": 1.0}}, "data.validation_fraction"),
    ({**BASE, "cluster": {"workers": 0}}, "cluster.workers"),
    ({**BASE, "cluster": {"workers": "many"}}, "cluster.workers: expected an integer or 'auto', got 'many'"),
    ({**BASE, "cluster": {"workers": 2, "min_workers": 3}}, "cluster.min_workers: must be at most cluster.workers=2"),
    ({**BASE, "cluster": {"workers": "auto", "min_workers": 4, "max_workers": 2}},
     "cluster.max_workers: must be at least cluster.min_workers=4"),
    ({**BASE, "cluster": {"replace_seconds": -1}}, "cluster.replace_seconds: must be at least 0"),
    ({**BASE, "cluster": {"hang_seconds": 0.5}}, "cluster.hang_seconds: must be at least 1, got 0.5"),
    ({**BASE, "cluster": {"hang_seconds": "soon"}}, "cluster.hang_seconds: expected a number or 'auto', got 'soon'"),
    ({**BASE, "train": 5}, "train: expected a mapping"),
    ({**BASE, "colour": "red"}, "colour: unknown key"),
])
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: spirals}\ntrain: {learning_rate: 1e-3, epochs: 3}\n")
    cfg = load_config(path, ["train.epochs=7", "model.layers=[2, 16, 3]", "train.batch_size=full"])
    assert cfg.train.learning_rate == 0.001  # PyYAML reads 1e-3 as a string; accepted as a number
    assert cfg.train.epochs == 7 and cfg.model.layers == [2, 16, 3] and cfg.batch_size is None
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 'abc'"):
        load_config(path, ["train.epochs=abc"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["train.epochs"])
    assert parse_override("data.target=[a, b]") == ("data.target", ["a", "b"])


def test_workers_flag_replaces_the_files_count_in_the_pool_size_checks(tmp_path):
    """--workers overrides cluster.workers, so min_workers/max_workers are held to it."""
    from experiments.cli.commands import _config
    from experiments.cli.rayprop import build_parser

    path = tmp_path / "c.yaml"
    path.write_text("data: {source: spirals}\ncluster: {workers: 2}\n")
    cfg = _config(build_parser().parse_args(["train", str(path), "--workers", "auto",
                                             "--set", "cluster.min_workers=3"]))
    assert (cfg.cluster.workers, cfg.cluster.min_workers) == ("auto", 3)
    with pytest.raises(ConfigError, match=r"^--workers 3: cluster.max_workers"):
        _config(build_parser().parse_args(["train", str(path), "--workers", "3", "--set", "cluster.max_workers=2"]))


def test_yaml_errors_and_unsafe_tags(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {source: xor\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    evil = tmp_path / "evil.yaml"
    evil.write_text("data: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe_load refuses to build objects
        load_config(evil)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_flat_config_round_trips():
    cfg = from_dict({**BASE, "model": {"layers": [2, 4, 2]}, "train": {"epochs": 9}})
    assert cfg.with_overrides({}) == cfg
    assert cfg.with_overrides({"train.epochs": 3}).train.epochs == 3


def test_model_files_round_trip_without_pickle(tmp_path):
    spec = NetworkSpec((3, 5, 2), "tanh", "sigmoid", "binary_cross_entropy", "float64")
    theta = init_theta(spec, "xavier", 4)
    theta[-2:] = [0.25, -0.5]  # non-zero biases
    save_model(tmp_path, spec, theta, {"features": ["a", "b", "c"], "targets": ["y1", "y2"],
                                       "encoding": "binary"})
    with np.load(tmp_path / "model.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["W1", "W2", "b1", "b2"]
        assert z["W1"].shape == (5, 3) and z["b2"].shape == (2, 1)
    spec2, theta2, meta = load_model(tmp_path)
    assert spec2 == spec and meta["features"] == ["a", "b", "c"]
    np.testing.assert_array_equal(theta2, theta)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_model_files_refuse_wrong_shapes_pickles_and_junk(tmp_path):
    spec = NetworkSpec((3, 5, 2), "tanh", "softmax", "cross_entropy", "float32")
    other = NetworkSpec((3, 4, 2), "tanh", "softmax", "cross_entropy", "float32")
    save_model(tmp_path, other, init_theta(other), {})
    with pytest.raises(InputError, match=r"W1 has shape \(4, 3\)"):
        theta_from_arrays(spec, read_arrays(tmp_path / "model.npz"), tmp_path / "model.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, W1=np.array([{"x": 1}], dtype=object))
    with pytest.raises(InputError, match="not a model file of plain arrays"):
        read_arrays(pickled)
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    with pytest.raises(InputError, match="not a model file"):
        read_arrays(junk)
    (tmp_path / "model.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="not a rayprop model description"):
        load_model(tmp_path)


# ---- the sweep: grid ----------------------------------------------------------------------

def test_sweep_values_are_checked_and_converted_like_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: spirals}\n"
                    "sweep:\n  train.learning_rate: [1e-3, 0.1]\n  model.layers: [[2, 8, 3], [2, 16, 16, 3]]\n")
    cfg = load_config(path)
    assert cfg.sweep == {"train.learning_rate": [0.001, 0.1], "model.layers": [[2, 8, 3], [2, 16, 16, 3]]}
    assert cfg.train.learning_rate == 0.1  # the base config is untouched by the grid
    assert "sweep" not in cfg.flat() and not any(k.startswith("sweep") for k in cfg.flat())
    assert cfg.with_overrides({"train.epochs": 3}).sweep == cfg.sweep
    assert cfg.without_sweep().sweep == {}
    wider = cfg.with_sweep({"train.epochs": [1, 2], "train.learning_rate": [0.5]})
    assert wider.sweep == {"train.learning_rate": [0.5], "model.layers": cfg.sweep["model.layers"],
                           "train.epochs": [1, 2]}


@pytest.mark.parametrize("sweep, words", [
    ({"train.learnin_rate": [0.1]}, ["sweep.train.learnin_rate", "did you mean sweep.train.learning_rate"]),
    ({"train.epochs": 3}, ["sweep.train.epochs", "non-empty list"]),
    ({"train.epochs": []}, ["sweep.train.epochs", "non-empty list"]),
    ({"train.learning_rate": [0.1, -1]}, ["sweep.train.learning_rate", "-1", "must be > 0"]),
    ({"model.layers": [[2, 8, 3], "big"]}, ["sweep.model.layers", "'big'"]),
    ({"experiment": ["a", "b"]}, ["sweep.experiment", "cannot be swept"]),
    ({"cluster.address": ["auto"]}, ["sweep.cluster.address", "cannot be swept"]),
    ([0.1, 0.2], ["sweep: expected a mapping"]),
])
def test_bad_sweep_names_the_key_and_value(sweep, words):
    with pytest.raises(ConfigError) as err:
        from_dict({**BASE, "sweep": sweep})
    for w in words:
        assert w in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_grid_values_are_yaml_scalars():
    assert parse_grid("train.learning_rate=0.01,1e-3, 0.5") == ("train.learning_rate", [0.01, "1e-3", 0.5])
    assert parse_grid("train.batch_size=32,full") == ("train.batch_size", [32, "full"])
    cfg = from_dict(BASE).with_sweep(dict([parse_grid("train.learning_rate=0.01,1e-3")]))
    assert cfg.sweep == {"train.learning_rate": [0.01, 0.001]}
    for bad in ("train.learning_rate", "=1,2", "train.epochs="):
        with pytest.raises(ConfigError, match="--grid"):
            parse_grid(bad)


def test_config_words_are_the_registries_keys():
    """Each word the config accepts builds the thing it names, and every registry entry
    is a word the config accepts (the Literals are made from the registries)."""
    import typing

    from trainer.activations import ACTIVATIONS, OUTPUT_ONLY
    from trainer.config import ModelConfig, TrainConfig, natural_output
    from trainer.costs import COSTS
    from trainer.network import INITIALIZERS
    from trainer.optimizers import OPTIMIZERS, make_optimizer

    model, train = typing.get_type_hints(ModelConfig), typing.get_type_hints(TrainConfig)
    assert set(typing.get_args(model["hidden_activation"])) == set(ACTIVATIONS) - OUTPUT_ONLY
    output = typing.get_args(model["output_activation"])[0]
    assert set(typing.get_args(output)) == set(ACTIVATIONS)
    assert set(typing.get_args(model["cost"])) == set(COSTS)
    assert set(typing.get_args(model["init"])) == set(INITIALIZERS)
    assert set(typing.get_args(train["optimizer"])) == set(OPTIMIZERS)
    spec = NetworkSpec((2, 3, 2), "tanh", "softmax", "cross_entropy", "float64")
    for init in INITIALIZERS:
        assert init_theta(spec, init, 0).any()
    for name in OPTIMIZERS:
        theta = np.ones(3)
        make_optimizer(name, 0.5).step(theta, np.ones(3))
        assert (theta < 1).all(), name  # a step downhill
    from trainer.costs import ENCODINGS

    assert set(ENCODINGS) == {"one_hot", "binary", "numeric"}  # how targets are encoded, by the costs
    for cost in COSTS:  # the output a cost implies is one it fits, and is accepted
        assert natural_output(cost) in COSTS[cost].fits
        assert from_dict({**BASE, "model": {"cost": cost}}).output_activation == natural_output(cost)
    for cost, needs in (("cross_entropy", "softmax"), ("binary_cross_entropy", "sigmoid")):
        with pytest.raises(ConfigError, match=f"{cost} needs a {needs} output"):
            from_dict({**BASE, "model": {"cost": cost, "output_activation": "linear"}})


def test_resolved_config_fills_in_layers_and_output_only():
    cfg = from_dict({**BASE, "train": {"epochs": 3}, "sweep": {"train.epochs": [1, 2]}})
    resolved = cfg.resolved([2, 64, 2], "softmax")
    assert resolved.model.layers == [2, 64, 2] and resolved.model.output_activation == "softmax"
    assert resolved.sweep == {} and resolved.train == cfg.train and resolved.data == cfg.data
    assert from_dict(dataclasses.asdict(resolved)) == resolved  # still a valid config


def test_layers_inferred_from_the_data_are_held_to_the_same_size_limit(monkeypatch):
    """A table of a million columns would infer a network past the limit: refused in
    prepare like a written one (the limit is lowered here to stand for that table)."""
    import trainer.config
    from experiments.jobs import training

    cfg = from_dict(BASE)  # no model.layers: [2, 64, 2] from xor's columns and labels
    assert training.prepare(cfg).spec.layers == (2, 64, 2)
    monkeypatch.setattr(trainer.config, "MAX_PARAMETERS", 2 * 64 + 64 + 64 * 2 + 2 - 1)
    with pytest.raises(ConfigError, match=r"model.layers: \[2, 64, 2\] has 322 parameters, more than 321"):
        training.prepare(cfg)


def test_hang_seconds_is_auto_or_a_number_of_seconds():
    assert from_dict({"data": {"source": "xor"}}).cluster.hang_seconds == "auto"
    assert from_dict({"data": {"source": "xor"}, "cluster": {"hang_seconds": 30}}).cluster.hang_seconds == 30.0
    assert from_dict({"data": {"source": "xor"}, "cluster": {"hang_seconds": "auto"}}).cluster.hang_seconds == "auto"


def test_the_hang_bound_follows_the_runs_step_times():
    from workers.hang import FIRST_S, FLOOR_S, WaitBound

    steps, evals = WaitBound(), WaitBound()
    assert steps.seconds() == FIRST_S and evals.seconds(steps, 20) == FIRST_S  # nothing timed yet
    for t in (0.001, 0.003, 2.0):
        steps.record(t)
    assert steps.seconds() == FLOOR_S  # 10 x the median (3 ms) is below the floor
    for _ in range(10):
        steps.record(4.0)
    assert steps.seconds() == 40.0
    assert evals.seconds(steps, 2.5) == 100.0  # no evaluation timed: the steps' bound, by rows
    assert WaitBound(7.0).seconds() == 7.0
