"""The run configuration: one frozen dataclass per section, checked from plain values.

Every key has a default except `data.source`. A value is checked three ways, each
stated once: its type (the annotations below; the words of `model.cost`,
`train.optimizer`, ... are the keys of the registries that implement them), its
range (declared beside the field with `ranged`, as scikit-learn declares
`_parameter_constraints`), and the few rules that tie keys together (`_validate`).
So a wrong key or value is a `ConfigError` naming the dotted key
(`train.learning_rate: must be > 0, got -1`), never a crash later; values are
never printed back whole. Reading YAML and `--set` text is experiments/jobs/configfile.py's
job: this module sees parsed values only.

The optional `sweep:` section is what `rayprop sweep` tries: dotted key -> a list of
values (a grid axis) or a distribution (trainer/search_space.py), each value (or
bound) checked as an override of that key, so a sweep that would fail halfway
through is refused before its first run. The `sweep_*` keys say how it runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Literal, Union

from trainer.activations import ACTIVATIONS, OUTPUT_ONLY
from trainer.costs import COSTS
from trainer.errors import ConfigError, short
from trainer.network import INITIALIZERS
from trainer.optimizers import OPTIMIZERS
from trainer.search_space import has_distributions, is_distribution, parse_distribution

# The config's words are the keys of the registries that implement them.
Activation = Literal[tuple(a for a in ACTIVATIONS if a not in OUTPUT_ONLY)]
OutputActivation = Literal[tuple(ACTIVATIONS)]
Cost = Literal[tuple(COSTS)]
Initializer = Literal[INITIALIZERS]
Optimizer = Literal[OPTIMIZERS]

DEFAULT_BATCH = 256
# Past these a config costs memory or hours before its first step: refused up front.
MAX_UNITS = 1_000_000  # in one layer
MAX_LAYERS = 1_000
MAX_PARAMETERS = 100_000_000  # 800 MB per float64 copy; the coordinator and each worker hold several
MAX_WORKERS = 1_024
MAX_NAME = 100  # characters of an experiment name
_NAME = re.compile(r"[^\W_][\w .+=@-]*")  # a name that is also a safe folder name (no / or ..)


def natural_output(cost: str) -> str:
    """The output activation a cost implies when model.output_activation is not given:
    the one it fits (its fused delta is yhat - y), else linear."""
    fits = COSTS[cost].fits
    return fits[0] if len(fits) == 1 else "linear"


@dataclass(frozen=True)
class Range:
    """Where a number (or each number of a list) must lie; None is no bound."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False

    def __contains__(self, x) -> bool:
        return ((self.lo is None or (x > self.lo if self.lo_open else x >= self.lo))
                and (self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)))

    def __str__(self) -> str:
        lo, hi = (str(x) if isinstance(x, int) else f"{x:g}" for x in (self.lo, self.hi or 0))
        if self.hi is None:
            return f"> {lo}" if self.lo_open else f"at least {lo}"
        return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def ranged(default, **bounds):
    """A field's default and the Range its values must lie in (checked by `_validate`)."""
    return field(default=default, metadata={"range": Range(**bounds)})


@dataclass(frozen=True)
class ModelConfig:
    # [n_0, ..., n_L]; None: [features, 64, outputs] from the data
    layers: list[int] | None = ranged(None, lo=1, hi=MAX_UNITS)
    hidden_activation: Activation = "relu"
    output_activation: OutputActivation | None = None  # None: the cost's natural output
    cost: Cost = "cross_entropy"
    init: Initializer = "he"
    dtype: Literal["float32", "float64"] = "float32"


@dataclass(frozen=True)
class DataConfig:
    source: str | None = None  # built-in name (xor, spirals, digits, teacher-*), a path, or a URI (s3://, gs://, ...)
    features: list[str] | None = None  # None: every column but the target(s)
    target: str | list[str] = "y"  # one column, or several for several outputs
    validation_fraction: float = ranged(0.1, lo=0, hi=1, hi_open=True)  # held out, chosen by split_seed
    split_seed: int = ranged(0, lo=0)  # fixed apart from train.seed, so runs compare on one split


@dataclass(frozen=True)
class TrainConfig:
    optimizer: Optimizer = "sgd"
    learning_rate: float = ranged(0.1, lo=0, lo_open=True)
    batch_size: int | Literal["full"] | None = ranged(None, lo=1)  # None: full for gd, else 256
    epochs: int = ranged(20, lo=1)
    seed: int = ranged(0, lo=0)  # initial weights and the per-epoch batch permutation
    momentum: float = ranged(0.9, lo=0, hi=1, hi_open=True)  # mu of `momentum`
    beta1: float = ranged(0.9, lo=0, hi=1, hi_open=True)  # Adam
    beta2: float = ranged(0.999, lo=0, hi=1, hi_open=True)  # Adam
    epsilon: float = ranged(1e-8, lo=0, lo_open=True)  # Adam
    checkpoint_every: int = ranged(1, lo=1)  # epochs
    # ... but not sooner than this after the last one (one-step epochs would spend their time writing)
    checkpoint_seconds: float = ranged(2.0, lo=0)
    max_worker_failures: int = ranged(3, lo=0)  # shard workers that may be lost and replaced in one run
    # Where the model files, summary.json and checkpoints go: a folder or a URI (s3://, gs://,
    # file://, ... as data.source); None: runs/EXPERIMENT-TIMESTAMP. --output wins.
    output: str | None = None


@dataclass(frozen=True)
class ClusterConfig:
    # Shard workers; "auto": as many as the cluster's free CPUs allow, and more when
    # nodes join (up to max_workers), checked at step boundaries (README: Faults and elasticity).
    workers: int | Literal["auto"] = ranged(2, lo=1, hi=MAX_WORKERS)
    # Fewest workers to go on with when lost ones cannot be replaced; below, the run stops.
    min_workers: int = ranged(1, lo=1, hi=MAX_WORKERS)
    max_workers: int | None = ranged(None, lo=1, hi=MAX_WORKERS)  # with workers: auto; None: no limit
    # How long a lost worker's replacement may take to start before the pool goes on with fewer.
    replace_seconds: float = ranged(120.0, lo=0)
    # A worker alive but silent this long in a step is hung: killed and replaced like a
    # dead one. "auto": 10x the median of the run's recent steps, at least 10 s (300 s
    # before two steps are timed); workers/hang.py.
    hang_seconds: float | Literal["auto"] = ranged("auto", lo=1)
    address: str | None = None
    cpus_per_worker: int = ranged(1, lo=1)
    # The per-step data path: "shm", one shared-memory plane per node with the node's
    # sums added before they leave it; "object_store", every worker through ray.put/get.
    data_plane: Literal["shm", "object_store"] = "shm"


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir


# Keys a sweep cannot vary: its runs share one experiment, one store and one Ray connection.
NOT_SWEPT = ("experiment", "tracking.uri", "cluster.address")
SCHEDULERS = ("fifo", "asha")  # every trial to its last epoch; successive halving (ASHA)


@dataclass(frozen=True)
class Config:
    experiment: str = "rayprop"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # `rayprop sweep`'s search space: {"train.learning_rate": [0.01, 0.1] or
    # {"loguniform": [1e-3, 0.1]}, ...}, values checked. The sweep_* keys say how it runs
    # (README: Sweeps); a child run's config has none of them.
    sweep: dict[str, list | dict] = field(default_factory=dict)
    sweep_samples: int = ranged(1, lo=1)  # draws of the distributions per grid point
    sweep_seed: int | None = ranged(None, lo=0)  # seed of the draws; None: train.seed
    sweep_concurrency: int | None = ranged(None, lo=1)  # trials at once; None: as the CPUs allow
    sweep_scheduler: Literal[SCHEDULERS] = "fifo"
    sweep_grace_epochs: int = ranged(1, lo=1)  # asha: the first milestone, in epochs
    sweep_reduction_factor: int = ranged(2, lo=2)  # asha: 1/this of the trials go on at a milestone

    @property
    def output_activation(self) -> str:
        return self.model.output_activation or natural_output(self.model.cost)

    @property
    def batch_size(self) -> int | None:
        """Examples per batch; None for the full batch."""
        bs = self.train.batch_size
        if bs == "full" or (bs is None and self.train.optimizer == "gd"):
            return None
        return DEFAULT_BATCH if bs is None else bs

    def flat(self) -> dict[str, object]:
        """{'model.layers': [...], 'train.learning_rate': 0.1, ...}: every setting, dotted.

        The sweep is not a setting of a run (its keys are dotted already): see `sweep`
        and `sweep_settings`.
        """
        settings = dataclasses.asdict(self)
        for name in ("sweep", *SWEEP_SETTINGS):
            del settings[name]
        return dict(_flatten(settings))

    def sweep_settings(self) -> dict[str, object]:
        """{'sweep_samples': 1, ...}: how `rayprop sweep` runs."""
        return {name: getattr(self, name) for name in SWEEP_SETTINGS}

    @property
    def sweep_draw_seed(self) -> int:
        return self.train.seed if self.sweep_seed is None else self.sweep_seed

    def with_overrides(self, pairs: dict[str, object]) -> "Config":
        merged = {**_unflatten(self.flat()), **self.sweep_settings()}
        for key, value in pairs.items():
            set_dotted(merged, key, value)
        if self.sweep:
            merged["sweep"] = dict(self.sweep)
        return from_dict(merged)

    def with_sweep(self, axes: dict[str, list]) -> "Config":
        """This config with `axes` added to (or replacing axes of) its sweep grid."""
        return dataclasses.replace(self, sweep=_check_sweep(self, {**self.sweep, **axes}))

    def without_sweep(self) -> "Config":
        """The config of one run: no sweep, sweep_* keys at their defaults."""
        return dataclasses.replace(self, sweep={}, **_SWEEP_DEFAULTS)

    def resolved(self, layers: list[int], output_activation: str) -> "Config":
        """The config as trained: the layers and output activation the data and cost
        chose filled in (both already checked by building the network), no sweep."""
        model = dataclasses.replace(self.model, layers=list(layers), output_activation=output_activation)
        return dataclasses.replace(self.without_sweep(), model=model)


SWEEP_SETTINGS = tuple(f.name for f in dataclasses.fields(Config) if f.name.startswith("sweep_"))
_SWEEP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config) if f.name in SWEEP_SETTINGS}


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
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {short(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{prefix}{str(key)[:60]}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _section(tp, value, f"{prefix}{key}.")
            continue
        try:
            values[key] = _check(tp, value)
        except TypeError:
            raise ConfigError(f"{prefix}{key}: expected {_describe(tp)}, got {short(value)}") from None
    return cls(**values)


def _check_ranges(section, prefix: str) -> None:
    """Every field declared with `ranged` holds a number (or numbers) in its Range."""
    for f in dataclasses.fields(section):
        rng, value = f.metadata.get("range"), getattr(section, f.name)
        if rng is None or value is None or isinstance(value, str):  # None, "full": no number to check
            continue
        if any(v not in rng for v in (value if isinstance(value, list) else [value])):
            each = "every value " if isinstance(value, list) else ""
            raise ConfigError(f"{prefix}{f.name}: {each}must be {rng}, got {short(value)}")


def check_size(layers: list[int]) -> None:
    """ConfigError if a network of these layer sizes is past what rayprop builds: also
    for the layers inferred from the data (a table of a million columns)."""
    if not 2 <= len(layers) <= MAX_LAYERS:
        raise ConfigError(f"model.layers: needs an input and an output size and at most "
                          f"{MAX_LAYERS} sizes, got {len(layers)}")
    parameters = sum((n_in + 1) * n_out for n_in, n_out in zip(layers, layers[1:]))
    if parameters > MAX_PARAMETERS:
        raise ConfigError(f"model.layers: {short(layers)} has {parameters:,} parameters, "
                          f"more than {MAX_PARAMETERS:,}")


def _validate(cfg: Config) -> Config:
    """The declared ranges, then the rules that tie keys together."""
    m, d, t = cfg.model, cfg.data, cfg.train
    for name in ("model", "data", "train", "cluster"):
        _check_ranges(getattr(cfg, name), f"{name}.")
    _check_ranges(cfg, "")  # the sweep_* keys

    def bad(key, msg):
        raise ConfigError(f"{key}: {msg}")

    if not _NAME.fullmatch(cfg.experiment) or len(cfg.experiment) > MAX_NAME:
        bad("experiment", f"must be a plain name (letters, digits, space, - _ . + = @; at most "
            f"{MAX_NAME} characters; it names the output folder), got {short(cfg.experiment)}")
    if not d.source:
        bad("data.source", "is required (a built-in set such as spirals, a .parquet/.csv path, or a URI "
            "such as s3://BUCKET/KEY)")
    if isinstance(d.target, list) and not d.target:
        bad("data.target", "names no column")
    if m.layers is not None:
        check_size(m.layers)
    if cfg.output_activation not in COSTS[m.cost].fits:
        bad("model.output_activation", f"{m.cost} needs a {' or '.join(COSTS[m.cost].fits)} output, "
            f"got {cfg.output_activation}")
    if cfg.output_activation == "softmax" and m.layers is not None and m.layers[-1] < 2:
        bad("model.layers", "a softmax output needs at least 2 units")
    if t.optimizer == "gd" and isinstance(t.batch_size, int):
        bad("train.batch_size", "gd uses the full batch; set optimizer: sgd for mini-batches")
    c = cfg.cluster
    if isinstance(c.workers, int) and c.min_workers > c.workers:
        bad("cluster.min_workers", f"must be at most cluster.workers={c.workers}, got {c.min_workers}")
    if c.max_workers is not None and c.min_workers > c.max_workers:
        bad("cluster.max_workers", f"must be at least cluster.min_workers={c.min_workers}, got {c.max_workers}")
    if c.max_workers is not None and isinstance(c.workers, int) and c.workers > c.max_workers:
        bad("cluster.max_workers", f"must be at least cluster.workers={c.workers}, got {c.max_workers}")
    return cfg


def _checked_value(base: Config, key: str, value, what: str = "value"):
    """`value` converted as an override of `key`, or ConfigError naming sweep.KEY."""
    try:
        return base.with_overrides({key: value}).flat()[key]
    except ConfigError as e:
        # The override's own message starts with the key it names; keep the reason.
        reason = str(e).removeprefix(f"{key}: ")
        raise ConfigError(f"sweep.{key}: {what} {short(value)}: {reason}") from None


def _check_distribution(base: Config, key: str, raw: dict) -> dict[str, list]:
    kind, args = parse_distribution(key, raw)
    if kind == "choice":
        return {kind: [_checked_value(base, key, v) for v in args]}
    if isinstance(base.flat()[key], int) and not isinstance(base.flat()[key], bool):
        raise ConfigError(f"sweep.{key}: {kind} draws numbers with fractions; give whole numbers "
                          "as a list or {choice: [...]}")
    for bound in args:  # a range is convex: its bounds in range, every draw is
        _checked_value(base, key, bound, f"{kind} bound")
    return {kind: args}


def _check_sweep(base: Config, raw) -> dict[str, list | dict]:
    """The sweep with every value (or bound) checked and converted as an override of `base`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected a mapping of dotted keys to lists of values, got {short(raw)}")
    if base.sweep_samples > 1 and not has_distributions(raw):
        raise ConfigError(f"sweep_samples: {base.sweep_samples} draws of the sweep's distributions, "
                          "but sweep: has none ({uniform: [a, b]}, {loguniform: ...}, {choice: ...})")
    known = base.flat()
    base = base.without_sweep()  # each value is checked as a setting of one run
    grid = {}
    for key, values in raw.items():
        if key not in known:
            same_section = [k for k in known if k.split(".")[0] == str(key).split(".")[0]]
            close = difflib.get_close_matches(str(key), same_section or list(known), n=1, cutoff=0.5)
            hint = f" (did you mean sweep.{close[0]}?)" if close else ""
            raise ConfigError(f"sweep.{str(key)[:60]}: unknown key{hint}")
        if key in NOT_SWEPT:
            raise ConfigError(f"sweep.{key}: cannot be swept (a sweep's runs share one "
                              "experiment, tracking store and Ray cluster)")
        if is_distribution(values):
            grid[key] = _check_distribution(base, key, values)
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values (or a distribution), "
                              f"got {short(values)}")
        grid[key] = [_checked_value(base, key, value) for value in values]
    return grid


def from_dict(raw: dict) -> Config:
    """A validated Config from a plain mapping (a parsed YAML file)."""
    sweep = None
    if isinstance(raw, dict) and "sweep" in raw:
        raw = dict(raw)
        sweep = raw.pop("sweep")
    cfg = _validate(_section(Config, raw, ""))
    return dataclasses.replace(cfg, sweep=_check_sweep(cfg, sweep))
