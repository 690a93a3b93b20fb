"""Where runs go: choosing the MLflow tracking URI, and checking it without MLflow.

Precedence: `--tracking-uri`, then `MLFLOW_TRACKING_URI`, then the config's
`tracking.uri`, then `sqlite:///mlflow.db` in the working directory (what MLflow
itself uses when nothing is set, so `mlflow ui` run there shows the runs).

`check` runs before any training starts and before MLflow is imported (it takes
about 2 s): a store that cannot work is one line and exit 2, not a failure after
the job has trained.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shlex
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cluster.auth import redact
from trainer.errors import InputError

DEFAULT_URI = "sqlite:///mlflow.db"
ENV = "MLFLOW_TRACKING_URI"
PROBE_SECONDS = 5.0


# Set before MLflow runs: rayprop's console stays rayprop's. MLflow prints "View run ...
# at: URL" on stdout for a tracking server (stdout is for machine-readable output; rayprop
# prints the run's page itself) and "Downloading artifacts" bars (on --resume).
QUIET_MLFLOW_ENV = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def quiet_mlflow() -> None:
    """Call before MLflow is imported (its logger's INFO lines: creating tables, ...)."""
    for key, value in QUIET_MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


# MLflow 3.17's UI opens in its "GenAI" workspace (traces, prompts, judges) unless the
# address asks for the other one: its sidebar reads ?workflowType= (genai or
# machine_learning, "Model training"), else what the browser last chose (localStorage
# mlflow.workflowType), else genai. So every address rayprop prints asks for it.
TRAINING_WORKSPACE = "?workflowType=machine_learning"


def experiment_page(ui: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs, in its "Model training" workspace."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs{TRAINING_WORKSPACE}"


def run_page(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_WORKSPACE}"


def where_to_see(uri: str, experiment_id: str, run_id: str) -> str:
    """Where a run can be looked at: its page on a tracking server, else the store and
    the command that shows it."""
    if is_server(uri):
        return run_page(redact(uri), experiment_id, run_id)
    if os.environ.get("RAYPROP_IN_JOB"):  # a submitted job: `rayprop ui` on the submitter shows nothing
        return f"{redact(uri)} on the cluster's node"
    # Quoted: a store path with a space must paste as one argument.
    flag = "" if uri == DEFAULT_URI else " --tracking-uri " + shlex.quote(redact(uri))
    return f"{redact(uri)} (see it with: rayprop ui{flag})"


def experiments_with_runs(ui: str, timeout: float = PROBE_SECONDS) -> list[tuple[str, str]]:
    """(id, name) of the experiments that hold runs, newest first, asked of a tracking
    server's REST API (no MLflow import)."""

    def post(path, body):
        request = urllib.request.Request(f"{ui.rstrip('/')}/api/2.0/mlflow/{path}",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)

    found = post("experiments/search", {"max_results": 1000, "order_by": ["last_update_time DESC"]})
    out = []
    for exp in found.get("experiments", []):
        runs = post("runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1})
        if runs.get("runs"):
            out.append((exp["experiment_id"], exp["name"]))
    return out


def resolve_uri(flag: str | None, config_uri: str | None) -> str:
    return flag or os.environ.get(ENV) or config_uri or DEFAULT_URI


def choose(flag: str | None, config_uri: str | None) -> str:
    """The store to use (`resolve_uri`), checked (InputError) without importing MLflow."""
    uri = resolve_uri(flag, config_uri)
    check(uri)
    hide_links_if_secret(uri)
    return uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def hide_links_if_secret(uri: str) -> None:
    """MLflow prints run and model links to stdout with the tracking URI as given
    ("View run ... at: http://user:password@..."); with a password in it, it must not."""
    if redact(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        os.environ["MLFLOW_PRINT_MODEL_URLS_ON_CREATION"] = "false"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative to the working directory or absolute)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?")[0])


def check(uri: str) -> None:
    """InputError now if the store at `uri` cannot be used; writes nothing."""
    db = sqlite_path(uri)
    if db is not None:
        folder = db.parent if str(db.parent) else Path(".")
        if db.exists() and (not db.is_file() or not os.access(db, os.R_OK | os.W_OK)):
            raise InputError(f"tracking URI {uri}: {db} is not a database file rayprop can write")
        if not db.exists() and (not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK)):
            raise InputError(f"tracking URI {uri}: cannot create {db} (no writable directory {folder})")
        return
    if is_server(uri):
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=PROBE_SECONDS):
                pass
        except urllib.error.HTTPError:
            pass  # something answered (an auth proxy, an older server): MLflow takes it from here
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = redact(str(getattr(e, "reason", e)))
            raise InputError(f"tracking URI {redact(uri)}: no MLflow server answers ({reason})") from None


def start_from_template(uri: str) -> None:
    """Make a new sqlite store as a copy of an empty one, kept once per MLflow version in
    the user's cache folder. MLflow makes a new store by running its 60-odd schema
    migrations: seconds on every first run in a new folder. Any failure here leaves the
    store to MLflow, which makes it the slow way. Call with MLflow importable."""
    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rayprop"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        if not template.is_file():
            _make_template(template)
        _copy_if_absent(template, db)
    except (OSError, sqlite3.Error):
        return


def _make_template(template: Path) -> None:
    from mlflow import MlflowClient

    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        path = Path(tmp) / "empty.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()  # MLflow creates its tables
        # MLflow adds the Default experiment (id 0) with an artifact folder beside the store;
        # without it, MLflow adds it again on first use, beside the copy.
        with sqlite3.connect(path) as con:
            con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
            con.execute("DELETE FROM experiments WHERE experiment_id = 0")
        con.close()
        os.replace(path, template)  # whole or not at all, if two jobs make it at once


def _copy_if_absent(template: Path, db: Path) -> None:
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(template.read_bytes())
        try:
            os.link(tmp, db)  # never replaces a store another job made meanwhile
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
def _health_request(uri: str) -> urllib.request.Request:
    """GET /health of the server, with user:password@ sent as HTTP basic auth, as
    MLflow's client (requests) does with such a URI; urllib would take it for a host."""
    parts = urllib.parse.urlsplit(uri.rstrip("/") + "/health")
    headers = {}
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return urllib.request.Request(urllib.parse.urlunsplit(parts), headers=headers)
