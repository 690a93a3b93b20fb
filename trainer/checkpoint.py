"""Checkpoints: everything the coordinator needs to go on as if never stopped.

Because a step's batch depends only on (seed, epoch, m, batch_size) (docs/design.md
section 2), the state of training is small and exact: the parameters theta, the
optimizer's buffers, and the position (the next epoch and batch index), plus the
partial sums of the epoch in progress so its epoch metrics come out whole. A
checkpoint is one .npz of plain arrays (loaded with allow_pickle=False, like
model.npz), written to a temp file and renamed into place, so a crash while
writing leaves the previous checkpoints intact. The newest KEEP are kept; a
corrupt newest one falls back to the one before, with a warning.

Files: DIR/ckpt-<global step, 9 digits>.npz
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.model_io import atomic_write

KEEP = 3  # checkpoints kept; older ones are removed after a newer one is written
PREFIX, SUFFIX = "ckpt-", ".npz"
DEFAULT_MAX_SECONDS = 300.0  # on long epochs, a checkpoint at least this often


@dataclass
class Position:
    """Where training stands: the next step to take is batch `k` of `epoch`."""

    epoch: int
    k: int
    global_step: int  # steps taken so far over the whole run
    epoch_loss_sum: float = 0.0  # the epoch in progress: loss sum of its steps so far
    epoch_seconds: float = 0.0  # ... their wall time
    epoch_compute: float = 0.0  # ... and the workers' share of it


@dataclass
class Checkpoint:
    theta: np.ndarray
    optimizer: dict[str, np.ndarray]
    position: Position
    meta: dict = field(default_factory=dict)  # run_id, layers, ...: JSON-able
    path: Path | None = None


def checkpoint_files(directory: Path) -> list[Path]:
    """Checkpoint files in `directory`, newest (highest step) first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), reverse=True)


def write_checkpoint(directory: Path, ckpt: Checkpoint) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    p = ckpt.position
    path = directory / f"{PREFIX}{p.global_step:09d}{SUFFIX}"
    arrays = {"theta": ckpt.theta,
              "position": np.array([p.epoch, p.k, p.global_step], dtype=np.int64),
              "epoch_partial": np.array([p.epoch_loss_sum, p.epoch_seconds, p.epoch_compute]),
              "meta": np.array(json.dumps(ckpt.meta))}
    arrays.update({f"opt_{k}": np.asarray(v) for k, v in ckpt.optimizer.items()})
    atomic_write(path, lambda f: np.savez(f, **arrays))
    for old in checkpoint_files(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint; ValueError if the file is not a whole checkpoint of ours."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        epoch, k, step = (int(x) for x in arrays["position"])
        loss_sum, seconds, compute = (float(x) for x in arrays["epoch_partial"])
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path.name}: not a readable checkpoint ({e.__class__.__name__})") from None
    theta = arrays["theta"]
    if theta.ndim != 1 or not np.isfinite(theta).all():
        raise ValueError(f"{path.name}: parameters are not a finite vector")
    optimizer = {key[4:]: v for key, v in arrays.items() if key.startswith("opt_")}
    return Checkpoint(theta, optimizer, Position(epoch, k, step, loss_sum, seconds, compute), meta, path)


def latest_checkpoint(directory: Path, warn=print) -> Checkpoint | None:
    """The newest readable checkpoint in `directory` (None if there is none);
    each unreadable newer one is reported through `warn` and skipped."""
    for path in checkpoint_files(directory):
        try:
            return read_checkpoint(path)
        except ValueError as e:
            warn(f"checkpoint {e}; falling back to the one before")
    return None


class Checkpointer:
    """Decides when to checkpoint and writes: at the end of every `every_epochs`-th
    epoch, and after a step when `max_seconds` have passed since the last one."""

    def __init__(self, directory: Path, every_epochs: int, meta: dict,
                 max_seconds: float = DEFAULT_MAX_SECONDS, on_saved=None, before_save=None):
        """before_save() runs before each checkpoint is written (e.g. to get the metrics
        so far into the tracking store, so a resumed run has them exactly once);
        on_saved(path) after it is in place (e.g. to copy it to the run's artifacts)."""
        self.directory, self.every_epochs, self.meta = directory, every_epochs, meta
        self.max_seconds, self.on_saved, self.before_save = max_seconds, on_saved, before_save
        self.last_time = time.monotonic()
        self.written: list[Path] = []

    def save(self, theta: np.ndarray, optimizer, position: Position) -> Path:
        if self.before_save is not None:
            self.before_save()
        path = write_checkpoint(self.directory, Checkpoint(theta, optimizer.state(), position, self.meta))
        self.last_time = time.monotonic()
        self.written.append(path)
        if self.on_saved is not None:
            self.on_saved(path)
        return path

    @property
    def latest(self) -> Path | None:
        return self.written[-1] if self.written else None

    def after_step(self, theta, optimizer, position: Position) -> Path | None:
        if time.monotonic() - self.last_time >= self.max_seconds:
            return self.save(theta, optimizer, position)
        return None

    def after_epoch(self, theta, optimizer, position: Position, epochs_done: int) -> Path | None:
        if epochs_done % self.every_epochs == 0:
            return self.save(theta, optimizer, position)
        return None
