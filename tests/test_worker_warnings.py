"""A job whose loss diverges on Ray workers ends with its one line, as in local mode:
numpy's overflow warnings inside the workers (the coordinator says what happened)
must not reach the console through Ray's log forwarding. The installed `rayprop`, a
real local Ray started by the job in a temp folder of the test's own (RAY_TMPDIR),
whose workers' logs show what they wrote whether or not Ray forwarded it in time."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.conftest import installed_rayprop


def test_a_diverging_job_on_ray_workers_says_one_line(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))  # short: Ray's socket paths have a limit
    try:
        proc = installed_rayprop("train", "spirals", "--workers", "2", "--quiet", "--set", "train.optimizer=sgd",
                                 "--set", "train.learning_rate=1e9", "--set", "train.epochs=3",
                                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                                 "--output", tmp_path / "out", cwd=tmp_path,
                                 env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1, proc.stderr[-1500:]
        assert lines[-1].startswith("rayprop train: diverged: loss became"), lines[-3:]
        assert "Warning" not in proc.stderr and "ShardActor" not in proc.stderr, proc.stderr[-1500:]
        logs = list(ray_tmp.glob("ray/session_*/logs/worker-*.err"))
        assert logs, "the job's Ray wrote no worker logs where the test looks"
        said = "".join(p.read_text(errors="replace") for p in logs)
        assert "RuntimeWarning" not in said, said[-1500:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
