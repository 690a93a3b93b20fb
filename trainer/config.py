"""The run configuration: one frozen dataclass per section, checked from plain values.

Every key has a default except `data.source`. A value is checked three ways, each
stated once: its type (the annotations below; the words of `model.cost`,
`train.optimizer`, ... are the keys of the registries that implement them), its
range (declared beside the field with `ranged`, as scikit-learn declares
`_parameter_constraints`), both read by trainer/config_reader.py, and the few rules
that tie keys together (`_validate`, here).
So a wrong key or value is a `ConfigError` naming the dotted key
(`train.learning_rate: must be > 0, got -1`), never a crash later; values are
never printed back whole. Reading YAML and `--set` text is experiments/jobs/configfile.py's
job: this module sees parsed values only.

The optional `sweep:` section is what `rayprop sweep` tries: dotted key -> a list of
values (a grid axis) or a distribution (trainer/search_space.py), each value (or
bound) checked as an override of that key (trainer/sweep_config.py), so a sweep that
would fail halfway through is refused before its first run. The `sweep_*` keys say
how it runs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from trainer.activations import ACTIVATIONS, OUTPUT_ONLY
from trainer.batches import DEFAULT_BLOCKS
from trainer.costs import COSTS
from trainer.errors import ConfigError, short
from trainer.network import INITIALIZERS
from trainer.optimizers import OPTIMIZERS
from trainer.config_reader import check_ranges, ranged, read_section
from trainer.sweep_config import check_sweep

SCHEDULERS = ("fifo", "asha")  # every trial to its last epoch; successive halving (ASHA)

# The config's words are the keys of the registries that implement them: the reader
# checks a value against these Literals, built when the module runs. A type checker
# cannot read a Literal built at run time; to it they are words.
if TYPE_CHECKING:
    Activation: TypeAlias = str
    OutputActivation: TypeAlias = str
    Cost: TypeAlias = str
    Initializer: TypeAlias = str
    Optimizer: TypeAlias = str
    Scheduler: TypeAlias = str
else:
    Activation = Literal[tuple(a for a in ACTIVATIONS if a not in OUTPUT_ONLY)]
    OutputActivation = Literal[tuple(ACTIVATIONS)]
    Cost = Literal[tuple(COSTS)]
    Initializer = Literal[INITIALIZERS]
    Optimizer = Literal[OPTIMIZERS]
    Scheduler = Literal[SCHEDULERS]

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
    # The training examples are cut into this many fixed blocks; a worker holds whole
    # blocks, so this is also the most workers a job can use.
    blocks: int = ranged(DEFAULT_BLOCKS, lo=1, hi=MAX_WORKERS)
    # float32 sums taken per block and added exactly: the weights do not depend on the
    # worker count, bit for bit (README: The math). "auto": on where a one-CPU worker's
    # exact step costs 5% or less, when a step's blocks hold 512 examples or more on
    # average in a network of 256 inputs or more (trainer/exact_sum.exact_by_default).
    # Off by default: with 2 CPUs a worker (local mode) W-wide's step costs 1.15x, and
    # W-mnist's and W-tiny's 1.3-1.8x anywhere (README: Speed). float64 runs agree to
    # 1e-9 either way.
    exact_sums: bool | Literal["auto"] = False
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
    # Stragglers: at most this often, at a step boundary, move rows from workers that
    # compute slower per row to faster ones so that they finish steps together (the
    # weights do not change; workers/balance.py). 0 or false: never.
    rebalance_seconds: float | Literal[False] = ranged(5.0, lo=0)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir


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
    sweep_scheduler: Scheduler = "fifo"
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

    def with_overrides(self, pairs: dict[str, object]) -> Config:
        merged = {**_unflatten(self.flat()), **self.sweep_settings()}
        for key, value in pairs.items():
            set_dotted(merged, key, value)
        if self.sweep:
            merged["sweep"] = dict(self.sweep)
        return from_dict(merged)

    def with_sweep(self, axes: dict[str, list]) -> Config:
        """This config with `axes` added to (or replacing axes of) its sweep grid."""
        return dataclasses.replace(self, sweep=_check_sweep(self, {**self.sweep, **axes}))

    def without_sweep(self) -> Config:
        """The config of one run: no sweep, sweep_* keys at their defaults."""
        return dataclasses.replace(self, sweep={}, **_SWEEP_DEFAULTS)

    def resolved(self, layers: list[int], output_activation: str) -> Config:
        """The config as trained: the layers and output activation the data and cost
        chose filled in (both already checked by building the network), no sweep."""
        model = dataclasses.replace(self.model, layers=list(layers), output_activation=output_activation)
        return dataclasses.replace(self.without_sweep(), model=model)


SWEEP_SETTINGS = tuple(f.name for f in dataclasses.fields(Config) if f.name.startswith("sweep_"))
_SWEEP_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Config) if f.name in SWEEP_SETTINGS}


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
        check_ranges(getattr(cfg, name), f"{name}.")
    check_ranges(cfg, "")  # the sweep_* keys

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
    if isinstance(c.workers, int) and c.workers > t.blocks:
        bad("cluster.workers", f"must be at most train.blocks={t.blocks} (a worker holds whole blocks), "
            f"got {c.workers}")
    if c.min_workers > t.blocks:
        bad("cluster.min_workers", f"must be at most train.blocks={t.blocks}, got {c.min_workers}")
    if isinstance(c.workers, int) and c.min_workers > c.workers:
        bad("cluster.min_workers", f"must be at most cluster.workers={c.workers}, got {c.min_workers}")
    if c.max_workers is not None and c.min_workers > c.max_workers:
        bad("cluster.max_workers", f"must be at least cluster.min_workers={c.min_workers}, got {c.max_workers}")
    if c.max_workers is not None and isinstance(c.workers, int) and c.workers > c.max_workers:
        bad("cluster.max_workers", f"must be at least cluster.workers={c.workers}, got {c.max_workers}")
    return cfg


def from_dict(raw: dict) -> Config:
    """A validated Config from a plain mapping (a parsed YAML file)."""
    sweep = None
    if isinstance(raw, dict) and "sweep" in raw:
        raw = dict(raw)
        sweep = raw.pop("sweep")
    cfg = _validate(read_section(Config, raw, ""))
    return dataclasses.replace(cfg, sweep=_check_sweep(cfg, sweep))


def _check_sweep(base: Config, raw) -> dict[str, list | dict]:
    """The sweep with every value checked as an override of one run of `base`."""
    one_run = base.without_sweep()
    return check_sweep(raw, base.flat(), base.sweep_samples,
                       lambda key, value: one_run.with_overrides({key: value}).flat()[key])
