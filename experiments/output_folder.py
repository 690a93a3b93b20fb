"""An output folder belongs to one run.

`--output DIR` keeps the contract's file names (DIR/model.npz, DIR/summary.json,
DIR/checkpoints/), so two runs in one folder would overwrite each other's model and
checkpoints. Instead a job claims the folder before its MLflow run is created:

- while a job writes in DIR it holds an exclusive lock (flock) on DIR/.rayprop-run,
  so a second job at the same time is refused at once; the kernel drops the lock
  when the job ends, however it ends (kill -9 included);
- DIR/.rayprop-run names the run the folder belongs to; a later job for another
  run is refused, naming that run (and `--resume RUN_ID` when it can go on), unless
  it is that run being resumed;
- a folder from before the lock file is recognised by the run id in its
  summary.json or checkpoints.

A refusal is InputError (exit 2) before anything is written. rayprop deletes only
its own run's files (trainer/checkpoint.py prunes by run id), never another run's.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from trainer.checkpoint import checkpoint_files, run_of
from trainer.errors import InputError

OWNER_FILE = ".rayprop-run"
MODEL_FILES = ("model.npz", "model.json", "summary.json")


def _read_owner(text: str) -> dict:
    try:
        owner = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def owner_of(out_dir: Path) -> tuple[str | None, bool] | None:
    """(run whose files the folder holds, whether that run finished), the run None for
    model files of unknown origin; None when it holds no model files or checkpoints
    (a folder named by a job that wrote nothing is free again)."""
    checkpoints = checkpoint_files(out_dir / "checkpoints")
    if not checkpoints and not any((out_dir / n).exists() for n in MODEL_FILES):
        return None
    try:
        owner = _read_owner((out_dir / OWNER_FILE).read_text())
    except OSError:
        owner = {}
    summary_run = None
    try:
        summary_run = json.loads((out_dir / "summary.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        pass
    run_id = owner.get("run_id") or summary_run or next(filter(None, map(run_of, checkpoints)), None)
    return run_id, summary_run is not None and summary_run == run_id


def _refuse(out_dir: Path, run_id: str | None, finished: bool) -> InputError:
    if run_id is None:
        return InputError(f"--output {out_dir}: holds model files of another job; "
                          "choose another folder (or delete them)")
    hint = "choose another folder" if finished else f"--resume {run_id} continues it, or choose another folder"
    return InputError(f"--output {out_dir}: holds the files of run {run_id}; {hint}")


class OutputClaim:
    """`with OutputClaim(DIR, resume_run_id)`: DIR is this job's until the block ends."""

    def __init__(self, out_dir: Path, resume_run_id: str | None = None):
        self.out_dir, self.resume_run_id = out_dir, resume_run_id
        self._fd: int | None = None

    def _busy(self) -> InputError | None:
        """The refusal when a job holds the folder's lock now, else None."""
        try:
            fd = os.open(self.out_dir / OWNER_FILE, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a job holds it
            return None
        except BlockingIOError:
            owner = _read_owner(os.pread(fd, 4096, 0).decode(errors="replace"))
            who = f"run {owner['run_id']}" if owner.get("run_id") else "another job"
            pid = f" (pid {owner['pid']})" if owner.get("pid") else ""
            return InputError(f"--output {self.out_dir}: {who}{pid} is writing there now; "
                              "choose another folder")
        finally:
            os.close(fd)  # and with it the shared lock

    def check(self) -> None:
        """Refuse (InputError) a folder that is another run's, without writing anything."""
        if not self.out_dir.is_dir():
            return
        busy = self._busy()
        if busy is not None:
            raise busy
        self._check_owner()

    def _check_owner(self) -> None:
        owner = owner_of(self.out_dir)
        if owner is not None and (owner[0] is None or owner[0] != self.resume_run_id):
            raise _refuse(self.out_dir, *owner)

    def __enter__(self) -> "OutputClaim":
        self.check()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out_dir / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy() or InputError(f"--output {self.out_dir}: another job is writing "
                                             "there now; choose another folder") from None
        self._fd = fd
        try:
            self._check_owner()  # again under the lock: a job may have written there since
        except InputError:
            self.__exit__()
            raise
        return self

    def record(self, run_id: str) -> None:
        """Write the owning run's id (in place: the lock is on this file)."""
        data = json.dumps({"run_id": run_id, "pid": os.getpid()}).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
        return False
