"""Checkpoints: everything the coordinator needs to go on as if never stopped.

Because a step's batch depends only on (seed, epoch, m, batch_size) (docs/design.md
section 2), the state of training is small and exact: the parameters theta, the
optimizer's buffers, and the position (the next epoch and batch index), plus the
partial sums of the epoch in progress so its epoch metrics come out whole. A
checkpoint is one .npz of plain arrays (loaded with allow_pickle=False, like
model.npz), written to a temp file and renamed into place, so a crash while
writing leaves the previous checkpoints intact. A corrupt newest one falls back
to the one before, with a warning.

Every checkpoint names its run (meta["run_id"]): resuming run A never picks up run
B's file, and the newest KEEP of a run are kept by deleting only that run's older
ones, never another run's. meta["data_fingerprint"] is the job's data fingerprint
(workers/data/fingerprint.py), which --resume compares with the data it finds.

How often: at the end of every `checkpoint_every`-th epoch, but not sooner than
`train.checkpoint_seconds` after the previous one: a write costs a few ms plus a
round trip to the tracking store (the metrics it covers are delivered first), and
2000 one-step epochs of full-batch GD on xor spent 20 s writing for 0.2 s of
training. A SIGKILL loses at most that much work. Within long epochs, at least
every DEFAULT_MAX_SECONDS. Ctrl-C and SIGTERM always write one (the coordinator's stop).

Files: DIR/ckpt-<global step, 9 digits>.npz
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.model_io import NPZ_ERRORS, array_headers, atomic_write

KEEP = 3  # checkpoints kept per run; its older ones are removed after a newer one is written
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
    """Write `ckpt` as DIR/ckpt-STEP.npz (temp file, then rename); deletes nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    p = ckpt.position
    path = directory / f"{PREFIX}{p.global_step:09d}{SUFFIX}"
    arrays = {"theta": ckpt.theta,
              "position": np.array([p.epoch, p.k, p.global_step], dtype=np.int64),
              "epoch_partial": np.array([p.epoch_loss_sum, p.epoch_seconds, p.epoch_compute]),
              "meta": np.array(json.dumps(ckpt.meta))}
    arrays.update({f"opt_{k}": np.asarray(v) for k, v in ckpt.optimizer.items()})
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def run_of(path: Path) -> str | None:
    """The run a checkpoint file belongs to (reads only its meta), None if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            run_id = json.loads(str(z["meta"])).get("run_id")
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint; ValueError if the file is not a whole checkpoint of ours.

    A checkpoint may have been edited or swapped: every array's type and shape is
    checked here; whether it fits the job at hand is `check_resumable`'s to say."""
    try:
        headers = array_headers(path)  # shapes and dtypes, before loading anything
    except NPZ_ERRORS as e:
        raise ValueError(f"{path.name}: not a readable checkpoint ({e.__class__.__name__})") from None
    _check_headers(path.name, headers)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        epoch, k, step = (int(x) for x in arrays["position"])
        loss_sum, seconds, compute = (float(x) for x in arrays["epoch_partial"])
        meta = json.loads(str(arrays["meta"]))
    except (*NPZ_ERRORS, KeyError, RecursionError) as e:
        raise ValueError(f"{path.name}: not a readable checkpoint ({e.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path.name}: its 'meta' is not a JSON object")
    if min(epoch, k, step) < 0:
        raise ValueError(f"{path.name}: position (epoch {epoch}, batch {k}, step {step}) is negative")
    theta = arrays["theta"]
    if not np.isfinite(theta).all():
        raise ValueError(f"{path.name}: parameters are not a finite vector")
    optimizer = {key[4:]: v for key, v in arrays.items() if key.startswith("opt_")}
    return Checkpoint(theta, optimizer, Position(epoch, k, step, loss_sum, seconds, compute), meta, path)


# The arrays every checkpoint holds: (dtype kinds allowed, shape; None: any 1-D).
REQUIRED = {"theta": ("f", None), "position": ("iu", (3,)), "epoch_partial": ("f", (3,)), "meta": ("U", ())}


def _check_headers(name: str, headers: dict) -> None:
    for key, (kinds, shape) in REQUIRED.items():
        if key not in headers:
            raise ValueError(f"{name}: not a checkpoint: no {key!r} array")
        got, dtype = headers[key]
        if dtype.kind not in kinds or (len(got) != 1 if shape is None else got != shape):
            raise ValueError(f"{name}: {key!r} is {dtype.name[:20]} of shape {got}, not a checkpoint's")
    for key, (_, dtype) in headers.items():
        if key.startswith("opt_") and dtype.kind not in "iuf":
            raise ValueError(f"{name}: {key!r} holds {dtype.name[:20]} values")


def check_resumable(ckpt: Checkpoint, theta_size: int, optimizer_state: dict[str, np.ndarray],
                    steps_per_epoch: int) -> None:
    """ValueError naming what does not fit if `ckpt` cannot continue this job: the
    parameter count, the optimizer's buffers (`optimizer_state`: a fresh optimizer's
    `state()`, for the names) and a position on this job's batch plan."""
    name = ckpt.path.name if ckpt.path else "checkpoint"
    if ckpt.theta.size != theta_size:
        raise ValueError(f"{name}: {ckpt.theta.size} parameters, the network has {theta_size}")
    if set(ckpt.optimizer) != set(optimizer_state):
        raise ValueError(f"{name}: holds the state of another optimizer (buffers "
                         f"{sorted(ckpt.optimizer) or 'none'}; this one has {sorted(optimizer_state)})")
    p = ckpt.position
    for key, value in ckpt.optimizer.items():
        if key == "t":  # steps taken: one per global step
            if value.shape != () or int(value) != p.global_step:
                raise ValueError(f"{name}: optimizer step count does not match step {p.global_step}")
        elif value.shape not in ((0,), (theta_size,)) or not np.isfinite(value).all():
            raise ValueError(f"{name}: optimizer buffer {key!r} is not {theta_size} finite numbers")
    # Epoch e, batch k is global step e * steps_per_epoch + k (the plan starts at epoch 0).
    if p.k >= steps_per_epoch or p.global_step != p.epoch * steps_per_epoch + p.k:
        raise ValueError(f"{name}: position (epoch {p.epoch}, batch {p.k}, step {p.global_step}) "
                         f"is not on this job's batch plan ({steps_per_epoch} batches per epoch)")


def latest_checkpoint(directory: Path, warn=print, run_id: str | None = None) -> Checkpoint | None:
    """The newest readable checkpoint in `directory` (None if there is none); each
    unreadable newer one is reported through `warn` and skipped. With `run_id`, only
    that run's checkpoints count (another run's are skipped, with one warning)."""
    others = 0
    for path in checkpoint_files(directory):
        try:
            ckpt = read_checkpoint(path)
        except ValueError as e:
            warn(f"checkpoint {e}; falling back to the one before")
            continue
        if run_id is not None and ckpt.meta.get("run_id") != run_id:
            others += 1
            continue
        if others:
            warn(f"skipped {others} newer checkpoint(s) of another run in {directory}")
        return ckpt
    if others:
        warn(f"skipped {others} checkpoint(s) of another run in {directory}")
    return None


class Checkpointer:
    """Decides when to checkpoint and writes: at the end of every `every_epochs`-th
    epoch once `min_seconds` have passed since the last one, and after a step when
    `max_seconds` have. Keeps the newest KEEP of its run (meta["run_id"])."""

    def __init__(self, directory: Path, every_epochs: int, meta: dict,
                 max_seconds: float = DEFAULT_MAX_SECONDS, on_saved=None, before_save=None,
                 min_seconds: float = 0.0, clock=time.monotonic, last_epoch: int | None = None):
        """before_save() runs before each checkpoint is written (e.g. to get the metrics
        so far into the tracking store, so a resumed run has them exactly once);
        on_saved(path) after it is in place (e.g. to copy it to the run's artifacts).
        last_epoch: the run's last epoch always gets one, floor or not, so a run whose
        store died at its end resumes with nothing left to train."""
        self.directory, self.every_epochs, self.meta = directory, every_epochs, meta
        self.max_seconds, self.on_saved, self.before_save = max_seconds, on_saved, before_save
        self.min_seconds, self.clock, self.last_epoch = min_seconds, clock, last_epoch
        self.last_time = clock()
        self.written: list[Path] = []
        # This run's checkpoints already there (a resumed run's), oldest first: pruned
        # with the new ones. Files of any other run are never touched.
        run_id = meta.get("run_id")
        self._own = [p for p in reversed(checkpoint_files(directory))
                     if run_id is not None and run_of(p) == run_id]

    def save(self, theta: np.ndarray, optimizer, position: Position) -> Path:
        if self.before_save is not None:
            self.before_save()
        path = write_checkpoint(self.directory, Checkpoint(theta, optimizer.state(), position, self.meta))
        self.last_time = self.clock()
        self.written.append(path)
        self._own = [p for p in self._own if p != path] + [path]
        for old in self._own[:-KEEP]:
            old.unlink(missing_ok=True)
        self._own = self._own[-KEEP:]
        if self.on_saved is not None:
            self.on_saved(path)
        return path

    @property
    def latest(self) -> Path | None:
        return self.written[-1] if self.written else None

    def after_step(self, theta, optimizer, position: Position) -> Path | None:
        if self.clock() - self.last_time >= self.max_seconds:
            return self.save(theta, optimizer, position)
        return None

    def after_epoch(self, theta, optimizer, position: Position, epochs_done: int) -> Path | None:
        due = epochs_done % self.every_epochs == 0 and self.clock() - self.last_time >= self.min_seconds
        if due or epochs_done == self.last_epoch:
            return self.save(theta, optimizer, position)
        return None
