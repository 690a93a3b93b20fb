"""Wiring a config to a pool and the coordinator: one training job.

`prepare` does every check that can fail on bad input (config, data source,
columns, labels, --init-from) BEFORE anything is written, so a bad input costs
nothing; `run` then trains and writes the output files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from trainer import __version__
from trainer.batches import BatchPlan
from trainer.checkpoint import Checkpoint, Checkpointer
from trainer.config import Config
from trainer.coordinator import TrainResult, train
from trainer.errors import InputError
from trainer.model_io import read_arrays, save_model, theta_from_arrays, write_json
from trainer.network import NetworkSpec, init_theta
from trainer.optimizers import make_optimizer
from workers.examples import Schema, resolve_schema, split_rows
from workers.local_pool import LocalPool
from workers.shard import ShardTask
from workers.sources import Source, open_source

DEFAULT_HIDDEN = 64  # the one hidden layer when model.layers is not given
MAX_INFERRED_CLASSES = 10_000  # past this a label column is more likely an id than a class


@dataclass
class Job:
    cfg: Config
    source: Source
    schema: Schema
    spec: NetworkSpec
    train_rows: np.ndarray
    val_rows: np.ndarray
    plan: BatchPlan
    theta0: np.ndarray  # initial parameters

    @property
    def task(self) -> ShardTask:
        """What every shard worker of this job opens (local and Ray pools alike)."""
        return ShardTask(self.spec, self.plan, self.source.spec, self.source.num_rows, self.schema,
                         (self.cfg.data.validation_fraction, self.cfg.data.split_seed))


def infer_layers(cfg: Config, source: Source) -> list[int]:
    """[n_features, 64, n_outputs] when model.layers is not given.

    n_outputs is the number of target columns, or for cross-entropy the number of
    classes, max(label) + 1, read from the target column alone. A missing column
    is left for resolve_schema to name.
    """
    targets = [cfg.data.target] if isinstance(cfg.data.target, str) else list(cfg.data.target)
    features = cfg.data.features or [c for c in source.column_names if c not in targets]
    n_out = len(targets)
    if cfg.model.cost == "cross_entropy" and targets[0] in source.column_names:
        labels = source.read(0, source.num_rows, targets[:1])[targets[0]]
        if np.issubdtype(labels.dtype, np.number) and np.isfinite(labels).all() and labels.size:
            n_out = int(labels.max()) + 1  # bad labels are named when the rows are loaded
            if n_out > MAX_INFERRED_CLASSES:
                raise InputError(f"data.target: column {targets[0]!r} has label {labels.max():g}; "
                                 f"set model.layers to say how many classes there are")
    return [len(features), DEFAULT_HIDDEN, max(n_out, 2 if cfg.output_activation == "softmax" else 1)]


def prepare(cfg: Config, init_from: str | None = None) -> Job:
    source = open_source(cfg.data.source)
    layers = cfg.model.layers or infer_layers(cfg, source)
    schema = resolve_schema(source, cfg.data.features, cfg.data.target, layers, cfg.model.cost)
    spec = NetworkSpec(tuple(layers), cfg.model.hidden_activation, cfg.output_activation,
                       cfg.model.cost, cfg.model.dtype)
    train_rows, val_rows = split_rows(source.num_rows, cfg.data.validation_fraction, cfg.data.split_seed)
    plan = BatchPlan(len(train_rows), cfg.batch_size, cfg.train.seed)
    if init_from:
        path = Path(init_from).expanduser()
        theta0 = theta_from_arrays(spec, read_arrays(path), path)
    else:
        theta0 = init_theta(spec, cfg.model.init, cfg.train.seed)
    return Job(cfg, source, schema, spec, train_rows, val_rows, plan, theta0)


def local_pool(job: Job, workers: int = 1) -> LocalPool:
    """In-process shard workers; reading their rows is where bad values surface."""
    return LocalPool.open(job.task, workers, job.source)


def default_output(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.experiment}-{datetime.now():%Y%m%d-%H%M%S}"


def summary_of(job: Job, result: TrainResult, workers: int, run_id: str | None) -> dict:
    return {"run_id": run_id, "steps": result.steps, "epochs": result.epochs,
            "final_loss": result.final_loss, "val_loss": result.val_loss,
            "val_accuracy": result.val_accuracy,
            "examples_per_second": result.examples_per_second,
            "wall_seconds": result.wall_seconds, "workers": workers,
            "m": job.plan.m, "m_val": len(job.val_rows), "rayprop_version": __version__,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_outputs(job: Job, theta: np.ndarray, out_dir: Path, summary: dict) -> None:
    columns = {"features": list(job.schema.features), "targets": list(job.schema.targets),
               "encoding": job.schema.encoding}
    save_model(out_dir, job.spec, theta, columns)
    write_json(out_dir / "summary.json", summary)


def resolved_config(job: Job) -> Config:
    """The config as trained: layers and output activation filled in from the data and cost."""
    return job.cfg.without_sweep().with_overrides(
        {"model.layers": list(job.spec.layers), "model.output_activation": job.spec.output_activation})


def run(job: Job, pool, out_dir: Path, listeners=(), extra: dict | None = None,
        run_id: str | None = None, resume: Checkpoint | None = None, should_stop=None,
        on_checkpoint=None, before_checkpoint=None, checkpointer_out: list | None = None) -> dict:
    """Train (from `resume` if given), checkpointing into out_dir/checkpoints, then write
    the model files and summary.json (whose run_id is the MLflow run's)."""
    theta = resume.theta.astype(job.spec.dtype) if resume else job.theta0.copy()
    optimizer = make_optimizer(job.cfg.train.optimizer, job.cfg.train.learning_rate,
                               job.cfg.train.momentum, job.cfg.train.beta1,
                               job.cfg.train.beta2, job.cfg.train.epsilon)
    if resume:
        optimizer.load_state(resume.optimizer)
    checkpointer = Checkpointer(out_dir / "checkpoints", job.cfg.train.checkpoint_every,
                                {"run_id": run_id, "layers": list(job.spec.layers)},
                                on_saved=on_checkpoint, before_save=before_checkpoint)
    if checkpointer_out is not None:
        checkpointer_out.append(checkpointer)  # so the caller can name the last checkpoint
    result = train(pool, theta, optimizer, job.plan, job.cfg.train.epochs, list(listeners),
                   resume=resume.position if resume else None, checkpointer=checkpointer,
                   should_stop=should_stop)
    summary = {**summary_of(job, result, pool.num_workers, run_id), **(extra or {})}
    write_outputs(job, theta, out_dir, summary)
    return summary
