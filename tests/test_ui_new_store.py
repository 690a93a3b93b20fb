"""`rayprop ui` on a sqlite store that does not exist yet, with a job started beside it
(a person opens the UI, then trains): the store must appear whole, so that the job's
MLflow and the UI's server never migrate one database at once (MLflow then fails the
job: "Online migration expected to match one row ..."). Real `rayprop ui`, real
`mlflow server`, a real `rayprop train`; every wait bounded by an event."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.test_ui_stop import LOADED, Ui


def schema_version(db: Path) -> str | None:
    """The store's MLflow schema revision, None while it has none (being made)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=LOADED)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def test_a_job_beside_the_ui_of_a_new_store(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    ui = Ui(uri, tmp_path)
    try:
        deadline = time.monotonic() + LOADED
        while not db.exists():
            assert ui.proc.poll() is None, f"rayprop ui exited with {ui.proc.returncode}"
            assert time.monotonic() < deadline, "rayprop ui made no store"
            time.sleep(0.005)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        job = subprocess.Popen([sys.executable, "-m", "experiments.cli", "train", "xor", "--local", "--quiet",
                                "--set", "train.epochs=1", "--tracking-uri", uri, "--output", str(tmp_path / "out")],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = schema_version(db)  # the store as the job finds it: whole, or being migrated
        _, err = job.communicate(timeout=4 * LOADED)
        ui.line("out", "http://")  # the server answers: its own start is done
        assert first is not None and first == schema_version(db), f"the store appeared at revision {first}"
        assert job.returncode == 0, err
        with sqlite3.connect(db) as con:
            assert con.execute("SELECT status FROM runs").fetchall() == [("FINISHED",)]
        ui.wait_for_server()
        ui.ctrl_c()
        assert ui.exits_within(LOADED) == 0
        ui.nothing_left()
    finally:
        ui.kill()
