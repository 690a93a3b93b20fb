"""The job being prepared: a config checked against its data, resolved to a network,
its batches and its initial weights, before anything runs or is written.

`prepare` is every check that can fail on bad input about the job itself: the config,
the data source, its columns and labels, --init-from. (The output and the tracking
store are checked by `rayprop train` next, jobs/training.py.) It opens the source for
its metadata only and takes its fingerprint (workers/data/fingerprint.py); the rows
are read by the pool's workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.batches import BatchPlan
from trainer.config import Config, check_size
from trainer.errors import InputError
from trainer.exact_sum import exact_by_default
from trainer.model_io import expected_shapes, read_arrays, theta_from_arrays
from trainer.network import NetworkSpec, init_theta
from workers.data.examples import Schema, resolve_schema, split_rows
from workers.data.fingerprint import take
from workers.data.source import Source
from workers.data.sources import open_source
from workers.shard import ShardTask

DEFAULT_HIDDEN = 64  # the one hidden layer when model.layers is not given
MAX_INFERRED_CLASSES = 10_000  # past this a label column is more likely an id than a class


@dataclass
class Job:
    """A checked config with what it resolved to: the data, the network, the batches."""

    cfg: Config
    source: Source
    schema: Schema
    spec: NetworkSpec
    train_rows: np.ndarray
    val_rows: np.ndarray
    plan: BatchPlan
    theta0: np.ndarray  # initial parameters
    fingerprint: dict | None = None  # of the data, from metadata (workers/data/fingerprint.py)

    @property
    def task(self) -> ShardTask:
        """What every shard worker of this job opens (local and Ray pools alike)."""
        return ShardTask(self.spec, self.plan, self.source.spec, self.source.num_rows, self.schema,
                         (self.cfg.data.validation_fraction, self.cfg.data.split_seed),
                         self.source.handoff(), self.fingerprint)

    @property
    def resolved_cfg(self) -> Config:
        """The config as trained: layers and output activation filled in from the data and cost."""
        return self.cfg.resolved(list(self.spec.layers), self.spec.output_activation)


@dataclass(frozen=True)
class Options:
    """What the command line adds to the config for one `rayprop train`."""

    config_name: str | None  # as the user gave it; None: `--resume RUN_ID` with the run's own config
    workers: int | str | None = None  # a count or "auto"; None: cluster.workers (1 with local)
    local: bool = False
    address: str | None = None
    tracking_uri: str | None = None
    init_from: str | None = None
    output: str | None = None
    resume: str | None = None  # an MLflow run id
    quiet: bool = False
    register_model: str | None = None  # --register-model NAME: the final model's registry name


def infer_layers(cfg: Config, source: Source) -> list[int]:
    """[n_features, 64, n_outputs] when model.layers is not given.

    n_outputs is the number of target columns, or for cross-entropy the number of
    classes, max(label) + 1 (`largest_label`). A missing column is left for
    resolve_schema to name.
    """
    targets = [cfg.data.target] if isinstance(cfg.data.target, str) else list(cfg.data.target)
    features = cfg.data.features or [c for c in source.column_names if c not in targets]
    n_out = len(targets)
    if cfg.model.cost == "cross_entropy" and targets[0] in source.column_names:
        top = largest_label(source, targets[0])
        if top is not None:
            n_out = int(top) + 1  # bad labels are named when the rows are loaded
            if n_out > MAX_INFERRED_CLASSES:
                raise InputError(f"data.target: column {targets[0]!r} has label {top:g}; "
                                 f"set model.layers to say how many classes there are")
    return [len(features), DEFAULT_HIDDEN, max(n_out, 2 if cfg.output_activation == "softmax" else 1)]


def largest_label(source: Source, column: str) -> float | None:
    """The largest value of the label column, or None when it is not all finite numbers
    (the rows' check names what is wrong). A built-in set knows its classes; a Parquet
    footer's statistics give it without reading data pages; else the one column is
    streamed a batch at a time."""
    classes = source.classes
    if classes:
        return classes - 1
    top = source.column_max(column)
    if top is not None:
        return top
    for _, chunk in source.pieces(0, source.num_rows, [column]):
        labels = chunk[column]
        if not (np.issubdtype(labels.dtype, np.number) and np.isfinite(labels).all()):
            return None
        if labels.size:
            top = labels.max() if top is None else max(top, labels.max())
    return None if top is None else float(top)


def prepare(cfg: Config, init_from: str | None = None) -> Job:
    source = open_source(cfg.data.source)
    layers = cfg.model.layers
    if layers is None:
        layers = infer_layers(cfg, source)
        check_size(layers)  # the data chose them: still refused before anything is built
    schema = resolve_schema(source, cfg.data.features, cfg.data.target, layers, cfg.model.cost)
    spec = NetworkSpec(tuple(layers), cfg.model.hidden_activation, cfg.output_activation,
                       cfg.model.cost, cfg.model.dtype)
    train_rows, val_rows = split_rows(source.num_rows, cfg.data.validation_fraction, cfg.data.split_seed)
    plan = BatchPlan(len(train_rows), cfg.batch_size, cfg.train.seed, cfg.train.blocks)
    exact = cfg.train.exact_sums  # "auto": where it costs little (trainer/exact_sum.py)
    plan.exact = exact_by_default(spec, plan.batch_size, plan.blocks) if exact == "auto" else exact
    if init_from:
        path = Path(init_from).expanduser()
        theta0 = theta_from_arrays(spec, read_arrays(path, expected_shapes(spec)), path)
    else:
        theta0 = init_theta(spec, cfg.model.init, cfg.train.seed)
    return Job(cfg, source, schema, spec, train_rows, val_rows, plan, theta0, take(source))
