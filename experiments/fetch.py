"""`rayprop fetch RUN_ID --output DIR`: a finished run's model files, from its MLflow
artifacts, into a folder here.

This is how the model of a job that ran elsewhere (`rayprop submit`, a run on another
machine logging to the same tracking server) reaches this machine: the run's folder
lives on the node that trained it (for a submitted job, in Ray's session folder on
the head, deleted with the session), but every finished run logged model.npz,
model.json and summary.json as artifacts (experiments/run_artifacts.py).

Nothing is half written: the files are downloaded into a temporary folder beside DIR
and moved in only once all three are there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from experiments import stores
from experiments.training import check_writable_dir
from trainer.errors import InputError, RunError, one_line

MODEL_FILES = ("model.npz", "model.json", "summary.json")  # as run_artifacts.MODEL_FILES


def check_target(out_dir: Path, what: str = "--output") -> None:
    """InputError now if the model files cannot go to out_dir (or would replace others)."""
    check_writable_dir(out_dir, what)
    there = [name for name in MODEL_FILES if (out_dir / name).exists()]
    if there:
        raise InputError(f"{what}: {out_dir} already holds {there[0]}; choose another folder")


def fetch(run_id: str, uri: str, out_dir: Path) -> None:
    """Put the run's model files into out_dir; InputError (one line) when the run is
    unknown, not finished or has no model files, RunError when the download fails."""
    check_target(out_dir)
    db = stores.sqlite_path(uri)
    if db is not None and not db.exists():  # MLflow would create an empty store just to look
        raise InputError(f"run {run_id}: no tracking store at {db} (give --tracking-uri)")
    stores.quiet_mlflow()
    stores.hide_links_if_secret(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
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


def command(run_id: str, uri: str, out_dir: str = "DIR") -> str:
    """The command line that fetches this run's files later."""
    from shlex import quote

    flag = "" if uri == stores.DEFAULT_URI else f" --tracking-uri {quote(stores.redact(uri))}"
    return f"rayprop fetch {run_id} --output {quote(str(out_dir))}{flag}"
