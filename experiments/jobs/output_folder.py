"""An output folder belongs to one run.

`--output DIR` keeps the contract's file names (DIR/model.npz, DIR/summary.json,
DIR/checkpoints/), so two runs in one folder would overwrite each other's model and
checkpoints. Instead a job claims the folder before its MLflow run is created:

- while a job writes in DIR it holds an exclusive lock (flock) on DIR/.rayprop-run;
  the kernel drops the lock when the job ends, however it ends (kill -9 included);
- DIR/.rayprop-run names the run the folder belongs to (a folder from before the
  lock file is recognised by the run id in its summary.json or checkpoints).

A new run (`rayprop train`) whose DIR is taken -- another run's files, finished or
not, or another job writing there now -- writes to the first free sibling DIR-2,
DIR-3, ... instead, and says so in one line: running a command twice works, and two
runs never mix their files. `--resume RUN` continues in the run's own folder and a
sweep's run-NN folders are fixed: there a taken folder is refused (InputError,
exit 2) before anything is written, naming the run. rayprop deletes only its own
run's files (trainer/checkpoint.py prunes by run id), never another run's.
An output URI (s3://...) is claimed by experiments/jobs/output_uri.py, by the same rules.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import sys
from datetime import datetime
from pathlib import Path

from trainer.checkpoint import checkpoint_files, run_of
from trainer.config import Config
from trainer.errors import InputError
from trainer.model_io import MODEL_FILES, probe_write

OWNER_FILE = ".rayprop-run"


def read_owner(text: str) -> dict:
    """The owner file's text as {"run_id": ..., ...}; {} for an empty or broken one."""
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
        owner = read_owner((out_dir / OWNER_FILE).read_text())
    except OSError:
        owner = {}
    summary_run = None
    try:
        summary_run = json.loads((out_dir / "summary.json").read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        pass
    run_id = owner.get("run_id") or summary_run or next(filter(None, map(run_of, checkpoints)), None)
    return run_id, summary_run is not None and summary_run == run_id


def refusal_for(out_dir: Path, run_id: str | None, finished: bool) -> InputError:
    """Why a folder (or URI) holding run `run_id`'s files is not this job's, and what to do."""
    if run_id is None:
        return InputError(f"--output {out_dir}: holds model files of another job; "
                          "choose another folder (or delete them)")
    hint = "choose another folder" if finished else f"--resume {run_id} continues it, or choose another folder"
    return InputError(f"--output {out_dir}: holds the files of run {run_id}; {hint}")


def siblings(first: str):
    """first, first-2, first-3, ...: where a new run may write."""
    yield first
    for n in itertools.count(2):
        yield f"{first.rstrip('/')}-{n}"


def say_moved(requested, why: str, chosen) -> None:
    """The one line saying a new run did not get the folder it named, and where it writes."""
    sep = " " if why.startswith("holds") else ": "
    print(f"rayprop: {requested}{sep}{why}; this run writes to {chosen}", file=sys.stderr)


def why_refused(refusal: InputError, out_dir) -> str:
    """A refusal's reason without its flag and advice: "holds the files of run X"."""
    return str(refusal).removeprefix(f"--output {out_dir}: ").split("; ")[0]


class OutputClaim:
    """`with OutputClaim(DIR, resume_run_id, move_aside)`: `claim.out_dir` is this job's
    until the block ends. With move_aside (a new run), a taken DIR gives its first free
    sibling; without, a taken DIR is refused."""

    def __init__(self, out_dir: Path, resume_run_id: str | None = None, move_aside: bool = False):
        self.requested = self.out_dir = out_dir
        self.resume_run_id, self.move_aside = resume_run_id, move_aside
        self._fd: int | None = None

    @property
    def name(self) -> str:
        """The output location as recorded in the run's rayprop.output tag."""
        return str(self.out_dir.resolve())

    def _busy(self, out_dir: Path) -> InputError | None:
        """The refusal when a job holds the folder's lock now, else None."""
        try:
            fd = os.open(out_dir / OWNER_FILE, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while a job holds it
            return None
        except BlockingIOError:
            owner = read_owner(os.pread(fd, 4096, 0).decode(errors="replace"))
            who = f"run {owner['run_id']}" if owner.get("run_id") else "another job"
            pid = f" (pid {owner['pid']})" if owner.get("pid") else ""
            return InputError(f"--output {out_dir}: {who}{pid} is writing there now; "
                              "choose another folder")
        finally:
            os.close(fd)  # and with it the shared lock

    def _taken(self, out_dir: Path, locked: bool = False) -> InputError | None:
        """Why `out_dir` is not this job's (the refusal), None when it is free."""
        if not out_dir.is_dir():
            if out_dir.exists():  # a sibling DIR-2 that is a file: the next one is tried
                return InputError(f"--output {out_dir}: exists and is not a directory")
            return None
        busy = None if locked else self._busy(out_dir)
        if busy is not None:
            return busy
        owner = owner_of(out_dir)
        if owner is not None and (owner[0] is None or owner[0] != self.resume_run_id):
            return refusal_for(out_dir, *owner)
        return None

    def _candidates(self):
        return map(Path, siblings(str(self.requested))) if self.move_aside else iter([self.requested])

    def check(self) -> None:
        """Refuse (InputError) a taken folder when it may not move aside; writes nothing."""
        for out_dir in self._candidates():
            refusal = self._taken(out_dir)
            if refusal is None:
                return
            if not self.move_aside:
                raise refusal

    def __enter__(self) -> OutputClaim:
        first_refusal = None
        for out_dir in self._candidates():
            refusal = self._taken(out_dir) or self._lock(out_dir)
            if refusal is None:
                break
            if not self.move_aside:
                raise refusal
            first_refusal = first_refusal or refusal
        self.out_dir = out_dir
        if first_refusal is not None:
            say_moved(self.requested, why_refused(first_refusal, self.requested), out_dir)
        return self

    def _lock(self, out_dir: Path) -> InputError | None:
        """Take the folder's lock (None), or the refusal when it is taken after all."""
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._busy(out_dir) or InputError(f"--output {out_dir}: another job is writing "
                                                     "there now; choose another folder")
        self._fd = fd
        refusal = self._taken(out_dir, locked=True)  # again under the lock: a job may have written there since
        if refusal is not None:
            self.__exit__()
        return refusal

    def record(self, run_id: str) -> None:
        """Write the owning run's id (in place: the lock is on this file)."""
        data = json.dumps({"run_id": run_id, "pid": os.getpid()}).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def saved(self, path: Path) -> None:
        """A checkpoint is in place: in a local folder, nothing more to do (see output_uri.py)."""

    def written(self, out_dir: Path) -> None:
        """The model files are in place: nothing more to do."""

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
        return False


def check_writable_dir(path: Path, what: str) -> None:
    """InputError now, rather than a failure after training, if `path` cannot become a directory."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{what}: {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what}: {parent} is not a directory, so {path} cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what}: no permission to write in {parent}")
    try:  # root passes os.access everywhere; /proc, a read-only or full disk refuse a real write
        probe_write(parent)
    except OSError as e:
        raise InputError(f"{what}: cannot write in {parent} ({e.strerror})") from None


def default_output(cfg: Config, kind: str = "") -> Path:
    """runs/EXPERIMENT-TIMESTAMP (kind "sweep": runs/EXPERIMENT-sweep-TIMESTAMP)."""
    return Path("runs") / f"{cfg.experiment}{'-' + kind if kind else ''}-{datetime.now():%Y%m%d-%H%M%S}"
