"""`rayprop fetch RUN_ID --output DIR`: a finished run's model files, from its MLflow
artifacts, into a folder here.

This is how the model of a job that ran elsewhere (`rayprop submit`, a run on another
machine logging to the same tracking server) reaches this machine: the run's folder
lives on the node that trained it (for a submitted job, in Ray's session folder on
the head, deleted with the session), but every finished run logged model.npz,
model.json and summary.json as artifacts (experiments/tracking/run_artifacts.py).

Nothing is half written: the files are downloaded into a temporary folder beside DIR
and moved in only once all three are there.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from experiments.jobs.output_folder import check_writable_dir, owner_of, say_moved, siblings
from experiments.tracking import stores
from experiments.tracking.tags import SUBMISSION_TAG
from trainer.errors import InputError, RunError, one_line
from trainer.model_io import MODEL_FILES
from workers.data.locations import is_uri

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def check_target(out_dir: Path, what: str = "--output") -> None:
    """InputError now if the model files cannot go to out_dir (or would replace others,
    or join another run's checkpoints: one run's files per folder)."""
    if is_uri(str(out_dir)):
        raise InputError(f"{what}: {out_dir}: the model files come to a folder here, not a URI")
    check_writable_dir(out_dir, what)
    there = [name for name in MODEL_FILES if (out_dir / name).exists()]
    if there:
        raise InputError(f"{what}: {out_dir} already holds {there[0]}; choose another folder")
    owner = owner_of(out_dir) if out_dir.is_dir() else None
    if owner is not None:
        raise InputError(f"{what}: {out_dir} holds the files of run {owner[0] or '(unknown)'}; "
                         "choose another folder")


def free_target(out_dir: Path) -> Path:
    """out_dir, or (a second `submit --output DIR`) its first sibling DIR-2, DIR-3, ...
    that holds no model files, said in one line: as `rayprop train` does."""
    check_writable_dir(out_dir, "--output")  # a file there is named as one, not moved aside
    for candidate in map(Path, siblings(str(out_dir))):
        if candidate.exists() and not candidate.is_dir():
            continue
        if not any((candidate / name).exists() for name in MODEL_FILES) and \
                (not candidate.is_dir() or owner_of(candidate) is None):
            if candidate != out_dir:
                say_moved(out_dir, "holds model files", candidate)
            check_target(candidate)
            return candidate
    raise AssertionError("siblings() never ends")


def _run_of_job(client, job_id: str, uri: str) -> str:
    """The run id of the submitted job `job_id` (its SUBMISSION_TAG), in any experiment."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{SUBMISSION_TAG}` = '{job_id}'",
                              max_results=1) if experiments else []
    if not runs:
        raise InputError(f"{job_id}: no run of that id, nor of a job of that id, in the tracking store "
                         f"at {stores.redact(uri)} (a job that has not started training has none yet)")
    return runs[0].info.run_id


def fetch(run_id: str, uri: str, out_dir: Path) -> str:
    """Put the run's model files into out_dir and return the run's id; `run_id` may also be
    the id of a job `rayprop submit` sent. InputError (one line) when the run is
    unknown, not finished or has no model files, RunError when the download fails."""
    if not RUN_ID.match(run_id) and "'" in run_id:
        raise InputError(f"{run_id!r}: not a run id or a job id")
    check_target(out_dir)
    db = stores.sqlite_path(uri)
    if db is not None and not db.exists():  # MLflow would create an empty store just to look
        raise InputError(f"run {run_id}: no tracking store at {db} (give --tracking-uri)")
    stores.check(uri)  # a server that does not answer: one line in seconds, not MLflow's retries
    stores.quiet_mlflow()
    stores.hide_links_if_secret(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        if not RUN_ID.match(run_id):
            run_id = _run_of_job(client, run_id, uri)
        run = client.get_run(run_id)
    except InputError:
        raise
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # the store failed, not the id
            raise RunError(f"--tracking-uri {stores.redact(uri)}: cannot read run {run_id} ({one_line(e)})") from None
        raise InputError(f"run {run_id}: no such run in the tracking store at {stores.redact(uri)}") from None
    except Exception as e:  # a server that does not answer, ...
        raise InputError(f"--tracking-uri {stores.redact(uri)}: cannot read run {run_id} ({one_line(e)})") from None
    if run.info.status != "FINISHED":
        raise InputError(f"run {run_id} is {run.info.status}, not finished: it has no model to fetch yet")
    try:
        logged = {a.path for a in client.list_artifacts(run_id)}
    except Exception as e:
        raise RunError(f"run {run_id}: cannot list its artifacts ({one_line(e)})") from None
    lacking = [name for name in MODEL_FILES if name not in logged]
    if lacking:
        raise InputError(f"run {run_id} has no model files in its artifacts (no {lacking[0]}); "
                         "is it a rayprop training run?")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out_dir) as tmp:
        try:
            for name in MODEL_FILES:
                client.download_artifacts(run_id, name, tmp)
        except Exception as e:
            raise RunError(f"run {run_id}: downloading its model files failed ({one_line(e)})") from None
        for name in MODEL_FILES:
            (Path(tmp) / name).replace(out_dir / name)
    return run_id


def command(run_id: str, uri: str, out_dir: str = "DIR") -> str:
    """The command line that fetches this run's files later."""
    from shlex import quote

    flag = "" if uri == stores.DEFAULT_URI else f" --tracking-uri {quote(stores.redact(uri))}"
    return f"rayprop fetch {run_id} --output {quote(str(out_dir))}{flag}"
