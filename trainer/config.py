"""The run configuration: one frozen dataclass per section, validated from YAML.

Every key has a default except `data.source`. Types come from the annotations
below and are checked the same way for the YAML file and for `--set key=value`
overrides, so a wrong key or value is a `ConfigError` naming the dotted key
(`train.learning_rate: expected a number > 0, got 'fast'`), never a crash later.

The optional `sweep:` section is a grid for `rayprop sweep`: dotted key -> list of
values, each value checked as an override of that key, so a sweep that would fail
halfway through is refused before its first run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Literal, Union

from trainer.errors import ConfigError

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "linear"]
OutputActivation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "linear", "softmax"]
Cost = Literal["mse", "mae", "binary_cross_entropy", "cross_entropy"]

# The output activation a cost implies when `model.output_activation` is not given.
DEFAULT_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid",
                  "mse": "linear", "mae": "linear"}
# Costs that only make sense with one output activation (their fused delta is yhat - y).
REQUIRED_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class ModelConfig:
    layers: list[int] | None = None  # [n_0, ..., n_L]; None: [features, 64, outputs] from the data
    hidden_activation: Activation = "relu"
    output_activation: OutputActivation | None = None  # None: the cost's natural output
    cost: Cost = "cross_entropy"
    init: Literal["he", "xavier", "normal"] = "he"
    dtype: Literal["float32", "float64"] = "float32"


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None  # built-in name (xor, spirals, digits, teacher-*) or a path
    features: list[str] | None = None  # None: every column but the target(s)
    target: str | list[str] = "y"  # one column, or several for several outputs
    validation_fraction: float = 0.1  # held out, chosen by split_seed; 0 allowed
    split_seed: int = 0  # fixed apart from train.seed, so runs compare on one split


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Literal["gd", "sgd", "momentum", "adam"] = "sgd"
    learning_rate: float = 0.1
    batch_size: int | Literal["full"] | None = None  # None: full for gd, else 256
    epochs: int = 20
    seed: int = 0  # initial weights and the per-epoch batch permutation
    momentum: float = 0.9  # mu of `momentum`
    beta1: float = 0.9  # Adam
    beta2: float = 0.999  # Adam
    epsilon: float = 1e-8  # Adam
    checkpoint_every: int = 1  # epochs
    max_worker_failures: int = 3  # shard workers that may be lost and replaced in one run


@dataclass(frozen=True)
class ClusterConfig:
    workers: int = 2
    address: str | None = None
    cpus_per_worker: int = 1
    # Steps through a Ray Compiled Graph on one node: much less per-step overhead, but
    # opt-in: after a worker loss in it, the process segfaulted at exit on Ray 2.60.
    compiled_graph: bool = False


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir


# Keys a sweep cannot vary: its runs share one experiment, one store and one Ray connection.
NOT_SWEPT = ("experiment", "tracking.uri", "cluster.address")


@dataclass(frozen=True)
class Config:
    experiment: str = "rayprop"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # `rayprop sweep`'s grid: {"train.learning_rate": [0.01, 0.1], ...}, values checked.
    sweep: dict[str, list] = field(default_factory=dict)

    @property
    def output_activation(self) -> str:
        return self.model.output_activation or DEFAULT_OUTPUT[self.model.cost]

    @property
    def batch_size(self) -> int | None:
        """Examples per batch; None for the full batch."""
        bs = self.train.batch_size
        if bs == "full" or (bs is None and self.train.optimizer == "gd"):
            return None
        return DEFAULT_BATCH if bs is None else bs

    def flat(self) -> dict[str, object]:
        """{'model.layers': [...], 'train.learning_rate': 0.1, ...}: every setting, dotted.

        The sweep grid is not a setting (its keys are dotted already): see `sweep`.
        """
        settings = dataclasses.asdict(self)
        del settings["sweep"]
        return dict(_flatten(settings))

    def with_overrides(self, pairs: dict[str, object]) -> "Config":
        merged = _unflatten(self.flat())
        for key, value in pairs.items():
            set_dotted(merged, key, value)
        if self.sweep:
            merged["sweep"] = dict(self.sweep)
        return from_dict(merged)

    def with_sweep(self, axes: dict[str, list]) -> "Config":
        """This config with `axes` added to (or replacing axes of) its sweep grid."""
        return dataclasses.replace(self, sweep=_check_sweep(self.without_sweep(), {**self.sweep, **axes}))

    def without_sweep(self) -> "Config":
        return dataclasses.replace(self, sweep={})

    def resolved(self, layers: list[int], output_activation: str) -> "Config":
        """The config as trained: the layers and output activation the data and cost
        chose filled in (both already checked by building the network), no sweep."""
        model = dataclasses.replace(self.model, layers=list(layers), output_activation=output_activation)
        return dataclasses.replace(self, model=model, sweep={})


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _unflatten(flat):
    out: dict = {}
    for key, v in flat.items():
        set_dotted(out, key, v)
    return out


def set_dotted(d, key, value):
    *parents, last = key.split(".")
    for p in parents:
        if d.get(p) is None:  # absent, or an empty `train:` line in the YAML
            d[p] = {}
        d = d[p]
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: {p} is not a section")
    d[last] = value


# ---- type checking against the annotations -------------------------------------------

def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, getattr(__import__("types"), "UnionType")):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, str(tp))


def _check(tp, value):
    """Return `value` converted to `tp`, or raise TypeError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise TypeError
    if origin in (Union, getattr(__import__("types"), "UnionType")):
        for a in args:
            try:
                return _check(a, value)
            except TypeError:
                continue
        raise TypeError
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_check(args[0], v) for v in value]
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads 1e-3 (no dot) as a string; accept what float() accepts.
            try:
                value = float(value)
            except ValueError:
                raise TypeError from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise AssertionError(f"config type {tp} is not handled")


def _section(cls, raw, prefix):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _section(tp, value, f"{prefix}{key}.")
            continue
        try:
            values[key] = _check(tp, value)
        except TypeError:
            raise ConfigError(f"{prefix}{key}: expected {_describe(tp)}, got {value!r}") from None
    return cls(**values)


def _validate(cfg: Config) -> Config:
    m, d, t, c = cfg.model, cfg.data, cfg.train, cfg.cluster

    def bad(key, msg):
        raise ConfigError(f"{key}: {msg}")

    if not d.source:
        bad("data.source", "is required (a built-in set such as spirals, or a .parquet/.csv path)")
    if m.layers is not None:
        if len(m.layers) < 2:
            bad("model.layers", f"needs at least an input and an output size, got {m.layers}")
        if any(n < 1 for n in m.layers):
            bad("model.layers", f"every size must be at least 1, got {m.layers}")
    need = REQUIRED_OUTPUT.get(m.cost)
    if need and cfg.output_activation != need:
        bad("model.output_activation", f"{m.cost} needs a {need} output, got {cfg.output_activation}")
    if cfg.output_activation == "softmax" and m.layers is not None and m.layers[-1] < 2:
        bad("model.layers", "a softmax output needs at least 2 units")
    if not 0 <= d.validation_fraction < 1:
        bad("data.validation_fraction", f"must be in [0, 1), got {d.validation_fraction}")
    if isinstance(d.target, list) and not d.target:
        bad("data.target", "names no column")
    if t.learning_rate <= 0:
        bad("train.learning_rate", f"must be > 0, got {t.learning_rate}")
    if isinstance(t.batch_size, int) and t.batch_size < 1:
        bad("train.batch_size", f"must be at least 1 or 'full', got {t.batch_size}")
    if t.optimizer == "gd" and isinstance(t.batch_size, int):
        bad("train.batch_size", "gd uses the full batch; set optimizer: sgd for mini-batches")
    if t.epochs < 1:
        bad("train.epochs", f"must be at least 1, got {t.epochs}")
    if t.checkpoint_every < 1:
        bad("train.checkpoint_every", f"must be at least 1, got {t.checkpoint_every}")
    if t.max_worker_failures < 0:
        bad("train.max_worker_failures", f"must be 0 or more, got {t.max_worker_failures}")
    for key in ("momentum", "beta1", "beta2"):
        if not 0 <= getattr(t, key) < 1:
            bad(f"train.{key}", f"must be in [0, 1), got {getattr(t, key)}")
    if t.epsilon <= 0:
        bad("train.epsilon", f"must be > 0, got {t.epsilon}")
    if c.workers < 1:
        bad("cluster.workers", f"must be at least 1, got {c.workers}")
    if c.cpus_per_worker < 1:
        bad("cluster.cpus_per_worker", f"must be at least 1, got {c.cpus_per_worker}")
    return cfg


def _check_sweep(base: Config, raw) -> dict[str, list]:
    """The sweep grid with every value checked (and converted) as an override of `base`."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected a mapping of dotted keys to lists of values, got {raw!r}")
    known = base.flat()
    grid = {}
    for key, values in raw.items():
        if key not in known:
            same_section = [k for k in known if k.split(".")[0] == str(key).split(".")[0]]
            close = difflib.get_close_matches(str(key), same_section or list(known), n=1, cutoff=0.5)
            hint = f" (did you mean sweep.{close[0]}?)" if close else ""
            raise ConfigError(f"sweep.{key}: unknown key{hint}")
        if key in NOT_SWEPT:
            raise ConfigError(f"sweep.{key}: cannot be swept (a sweep's runs share one "
                              "experiment, tracking store and Ray cluster)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values, got {values!r}")
        checked = []
        for value in values:
            try:
                checked.append(base.with_overrides({key: value}).flat()[key])
            except ConfigError as e:
                # The override's own message starts with the key it names; keep the reason.
                reason = str(e).removeprefix(f"{key}: ")
                raise ConfigError(f"sweep.{key}: value {value!r}: {reason}") from None
        grid[key] = checked
    return grid


def from_dict(raw: dict) -> Config:
    """A validated Config from a plain mapping (a parsed YAML file)."""
    sweep = None
    if isinstance(raw, dict) and "sweep" in raw:
        raw = dict(raw)
        sweep = raw.pop("sweep")
    cfg = _validate(_section(Config, raw, ""))
    return dataclasses.replace(cfg, sweep=_check_sweep(cfg, sweep)) if sweep is not None else cfg
