"""Where runs go: choosing the MLflow tracking URI, and checking it without MLflow.

Precedence: `--tracking-uri`, then `MLFLOW_TRACKING_URI`, then the config's
`tracking.uri`, then `sqlite:///mlflow.db` in the working directory (what MLflow
itself uses when nothing is set, so `mlflow ui` run there shows the runs).

`check` runs before any training starts and before MLflow is imported (it takes
about 2 s): a store that cannot work is one line and exit 2, not a failure after
the job has trained.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from trainer.errors import InputError

DEFAULT_URI = "sqlite:///mlflow.db"
ENV = "MLFLOW_TRACKING_URI"
PROBE_SECONDS = 5.0

_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def resolve_uri(flag: str | None, config_uri: str | None) -> str:
    return flag or os.environ.get(ENV) or config_uri or DEFAULT_URI


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def redact(uri: str) -> str:
    """The URI with any user:password@ removed, for printing and for run params."""
    return _USERINFO.sub(r"\1***@", uri)


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
        probe = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(probe, timeout=PROBE_SECONDS):
                pass
        except urllib.error.HTTPError:
            pass  # something answered (an auth proxy, an older server): MLflow takes it from here
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise InputError(f"tracking URI {redact(uri)}: no MLflow server answers ({reason})") from None
