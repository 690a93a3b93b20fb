"""`--output s3://BUCKET/PREFIX` (or gs://, abfs://, hdfs://, file://): a run's files
written to a URI, by the rules of a local output folder (experiments/jobs/output_folder.py).

Training writes in a local staging folder as it does for a local --output (one per
URI, under the temp directory); each checkpoint is copied to URI/checkpoints/ once it
is in place there (the newest 3 of the run are kept), and at the end model.npz and
model.json, then summary.json last. Each copy is atomic (workers/data/output_store.py), so
the newest checkpoint at the URI is always a whole one. `--resume` reads the run's
checkpoints back from the URI (its rayprop.output tag holds the URI).

Claiming a prefix: an object store has no lock to hold, so the prefix's owner object
(URI/.rayprop-run) is written with a token of this job's and read back. A prefix is
taken when it holds an owner object, model files or checkpoints of another run; a new
run then takes the first free sibling (URI-2, ...), a resumed run is refused. What
remains of the local guarantee: two jobs that find one prefix free at the same moment
may both claim it (the store has no conditional write); then the one whose token was
overwritten fails (exit 1) before its next checkpoint or its model files are copied,
so at most a file it was copying at that moment lands beside the other run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

from experiments.jobs.output_folder import (OWNER_FILE, read_owner, refusal_for, say_moved, siblings,
                                            why_refused)
from trainer.checkpoint import KEEP, PREFIX, SUFFIX, run_of
from trainer.errors import InputError, RunError
from trainer.model_io import MODEL_FILES
from workers.data.locations import explain
from workers.data.output_store import OutputStore

CHECKPOINTS = "checkpoints"
SPOOL_DIR = "mlflow-undelivered"  # experiments/tracking/outbox.py's: metrics a dead store missed


def checkpoint_names(store: OutputStore) -> list[str]:
    """The checkpoint files at the URI, oldest (lowest step) first."""
    return sorted(n for n in store.names(CHECKPOINTS) if n.startswith(PREFIX) and n.endswith(SUFFIX))


def fetch_checkpoints(uri: str, dest: Path) -> Path:
    """Copy the checkpoints at URI/checkpoints into `dest` (for --resume); returns dest."""
    store = OutputStore(uri, "--resume")
    for name in checkpoint_names(store):
        store.download(f"{CHECKPOINTS}/{name}", dest / name)
    return dest


def owner_of(store: OutputStore) -> tuple[str | None, bool] | None:
    """As output_folder.owner_of, for a URI: (run, finished) or None when the prefix is free.
    An owner object without files is taken too: a job is starting there."""
    owner = read_owner((store.read_bytes(OWNER_FILE) or b"").decode(errors="replace"))
    checkpoints = checkpoint_names(store)
    if not owner and not checkpoints and not any(store.exists(n) for n in MODEL_FILES):
        return None
    try:
        summary_run = json.loads(store.read_bytes("summary.json") or b"{}").get("run_id")
    except (ValueError, AttributeError):
        summary_run = None
    run_id = owner.get("run_id") or summary_run
    if run_id is None and checkpoints:
        with tempfile.TemporaryDirectory(prefix="rayprop-owner-") as tmp:
            local = Path(tmp) / checkpoints[-1]
            store.download(f"{CHECKPOINTS}/{checkpoints[-1]}", local)
            run_id = run_of(local)
    return run_id, summary_run is not None and summary_run == run_id


class UriClaim:
    """OutputClaim's interface for a URI: `out_dir` is the local staging folder training
    writes in, `name` the URI (the rayprop.output tag), `saved`/`written` copy files there."""

    def __init__(self, uri: str, resume_run_id: str | None = None, move_aside: bool = False):
        self.requested = self.name = uri.rstrip("/")
        self.resume_run_id, self.move_aside = resume_run_id, move_aside
        self.token = uuid.uuid4().hex
        self.store: OutputStore | None = None
        self.out_dir = self._staging(self.name)
        self._own: list[str] = []  # this run's checkpoints at the URI, oldest first

    @staticmethod
    def _staging(uri: str) -> Path:
        # One per URI: a resumed run on this machine finds the metric points its store missed.
        key = hashlib.sha256(uri.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"rayprop-output-{os.getuid()}" / key

    def _taken(self, store: OutputStore) -> InputError | None:
        owner = owner_of(store)
        if owner is None or (owner[0] is not None and owner[0] == self.resume_run_id):
            return None
        if owner[0] is None:
            return InputError(f"--output {store.uri}: holds the files of another job; choose another folder")
        return refusal_for(store.uri, *owner)

    def _candidates(self):
        return siblings(self.requested) if self.move_aside else iter([self.requested])

    def check(self) -> None:
        """InputError now (nothing left written) for a URI that cannot be written, or
        that is another run's when this one may not move aside."""
        OutputStore(self.requested).check()
        if not self.move_aside:
            refusal = self._taken(OutputStore(self.requested))
            if refusal is not None:
                raise refusal

    def _write_owner(self, run_id: str | None = None) -> None:
        owner = {"run_id": run_id, "job": self.token, "host": socket.gethostname(), "pid": os.getpid()}
        self.store.write_bytes(OWNER_FILE, json.dumps(owner).encode() + b"\n")

    def _still_mine(self) -> None:
        owner = read_owner((self.store.read_bytes(OWNER_FILE) or b"").decode(errors="replace"))
        if owner.get("job") != self.token:
            raise RunError(f"--output {self.name}: another job claimed it while this one ran "
                           f"(host {owner.get('host')}, pid {owner.get('pid')}); stopped before mixing files")

    def __enter__(self) -> UriClaim:
        first_refusal = None
        for uri in self._candidates():
            store = OutputStore(uri)
            refusal = self._taken(store)
            if refusal is None:
                self.store = store
                self._write_owner(self.resume_run_id)
                if read_owner((store.read_bytes(OWNER_FILE) or b"").decode()).get("job") == self.token:
                    break  # read back as written: no other job wrote it since
                refusal = InputError(f"--output {uri}: another job claimed it now; choose another folder")
            if not self.move_aside:
                raise refusal
            first_refusal = first_refusal or refusal
        self.name = self.store.uri
        if first_refusal is not None:
            say_moved(self.requested, why_refused(first_refusal, self.requested), self.name)
        self.out_dir = self._staging(self.name)
        if self.resume_run_id is None:  # a fresh run: nothing of an earlier one in its staging
            shutil.rmtree(self.out_dir, ignore_errors=True)
        else:  # the resumed run's files: its checkpoints are pruned with the new ones
            self._own = checkpoint_names(self.store)
            for name in MODEL_FILES:  # deliver_only reads them
                self.store.download(name, self.out_dir / name)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def record(self, run_id: str) -> None:
        self._still_mine()
        self._write_owner(run_id)

    def saved(self, path: Path) -> None:
        """A checkpoint is in place in the staging folder: copy it, then drop the run's
        older ones at the URI (the new one is whole before any goes)."""
        try:
            self._still_mine()
            self.store.upload(path, f"{CHECKPOINTS}/{path.name}")
            self._own = sorted(set(self._own) | {path.name})
            for old in self._own[:-KEEP]:
                self.store.delete(f"{CHECKPOINTS}/{old}")
            self._own = self._own[-KEEP:]
        except (OSError, InputError) as err:
            raise RunError(f"--output {self.name}: cannot copy {path.name} there ({_why_failed(err)})") from None

    def written(self, out_dir: Path) -> None:
        """The model files are in the staging folder: copy them, summary.json last (a
        summary at the URI means its model files are there)."""
        try:
            self._still_mine()
            for name in MODEL_FILES:
                if (out_dir / name).exists():
                    self.store.upload(out_dir / name, name)
        except (OSError, InputError) as err:
            why = _why_failed(err)
            raise RunError(f"--output {self.name}: cannot copy the model files there ({why})") from None

    def __exit__(self, *exc) -> bool:
        # Metric points the tracking store missed stay in the staging folder (the run's
        # last line names them); anything else there is at the URI.
        if not any((self.out_dir / SPOOL_DIR).glob("*")):
            shutil.rmtree(self.out_dir, ignore_errors=True)
        return False


def _why_failed(err: BaseException) -> str:
    """A few words naming no secret (a storage error's text may carry request details)."""
    return str(err) if isinstance(err, InputError) else explain(err)


def check_spec(spec: str) -> None:
    """InputError now, without any request, for an --output that is neither a folder
    here nor a URI rayprop writes to: `file://` with no path or another host, `s3:x`
    without its slashes (it would become a folder named "s3:x"), an unknown scheme,
    credentials, options. `submit` checks this before the job that writes there is sent."""
    from urllib.parse import urlsplit

    from workers.data.locations import SCHEMES, is_uri

    head = spec.split(":", 1)[0].lower()
    if not is_uri(spec):
        if ":" in spec and head in SCHEMES:
            raise InputError(f"--output {spec}: expected {head}://... (a folder's name has no '{head}:')")
        return
    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    shown = f"{scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
    if scheme not in SCHEMES:
        raise InputError(f"--output {shown}: unknown URI scheme {scheme + '://'!r} (expected one of "
                         f"{', '.join(s + '://' for s in SCHEMES)})")
    if parts.password or (parts.username and scheme not in ("abfs", "abfss")):
        raise InputError(f"--output {shown} carries credentials; give them through the environment")
    if parts.query or parts.fragment:
        raise InputError(f"--output {shown}: no ?options or #fragment in an output URI")
    if scheme in ("s3", "gs", "gcs") and not parts.netloc:
        raise InputError(f"--output {shown} names no bucket (expected {scheme}://BUCKET/PREFIX)")
    if scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.strip("/")):
        raise InputError(f"--output {shown}: expected file:///ABSOLUTE/PATH (a folder on this machine, "
                         "not its root)")


def claim_output(spec: str, resume_run_id: str | None, move_aside: bool):
    """The claim for `spec`: a local folder (OutputClaim) or a URI (UriClaim)."""
    from experiments.jobs.output_folder import OutputClaim
    from workers.data.locations import is_uri

    check_spec(spec)
    if is_uri(spec):
        return UriClaim(spec, resume_run_id, move_aside)
    return OutputClaim(Path(spec).expanduser(), resume_run_id, move_aside)
