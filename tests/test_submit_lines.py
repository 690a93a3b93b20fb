"""What `rayprop submit` shows of Ray and of a job: the lines Ray adds to a job's log
are left out, a head not ready is retried then one line, a missing dependency names
the fix. (No cluster: the end-to-end paths are in test_remote.py.)"""

import time

import pytest

from cluster import jobs
from trainer.errors import RunError


def test_ray_lines_are_told_from_the_jobs_own():
    # lines seen in the logs of jobs submitted to a `ray start --head` of Ray 2.60
    assert jobs.ray_line("2026-12-05 23:33:15,930\tINFO job_manager.py:581 -- Runtime env is setting up.")
    assert jobs.ray_line("Running entrypoint for job raysubmit_nSnRSnCEfez8gJQX: . cluster/job_python.sh")
    assert jobs.ray_line("(raylet) [2026-12-05 23:40:01,001 E 123 456] worker_pool.cc:1: Some error")
    assert not jobs.ray_line("rayprop train: error: data.source: /x.parquet does not exist")
    assert not jobs.ray_line("2026-12-05 23:33:15,930\tWARNING worker.py:1 -- a warning stays")
    assert not jobs.ray_line("(ShardWorker pid=77) a worker's own line stays")


def test_the_run_id_is_read_from_the_jobs_log():
    run = "0123456789abcdef0123456789abcdef"
    assert jobs.RUN_LINE.match(f"rayprop: MLflow run {run} (bold-cat-1) in experiment 'x' at http://h/")
    assert jobs.RUN_LINE.match(f"rayprop: resuming at step 12: MLflow run {run} (n) in ...").group(1) == run


class NoAgent:
    """What a head's Jobs API answers before its dashboard agent is up (Ray 2.60's
    JobSubmissionClient raises this RuntimeError for the HTTP 500)."""

    def __init__(self, refusals):
        self.refusals = refusals
        self.calls = 0

    def submit_job(self, **job):
        self.calls += 1
        if self.calls <= self.refusals:
            raise RuntimeError("Request failed with status code 500: No available agent to submit job, "
                               "please try again later..")
        return "raysubmit_x"


def test_a_head_without_its_job_agent_is_retried_then_one_line():
    client = NoAgent(refusals=1)
    assert jobs._submit_with_retry(client, seconds=30, entrypoint="x") == "raysubmit_x"
    assert client.calls == 2
    start = time.monotonic()
    with pytest.raises(RunError) as e:
        jobs._submit_with_retry(NoAgent(refusals=10 ** 6), seconds=1.5, entrypoint="x")
    assert time.monotonic() - start < 30  # bounded
    assert "no job agent up after 2 s" in str(e.value) and "\n" not in str(e.value)


class Logs:
    def __init__(self, text):
        self.text = text

    def get_job_logs(self, job_id):
        return self.text


def test_a_missing_dependency_names_the_python_and_the_fix():
    line = jobs._missing_on_cluster(Logs("rayprop: missing on the cluster: pyarrow mlflow (for /opt/py/bin/python)\n"), "j")
    assert "/opt/py/bin/python -m pip install pyarrow mlflow" in line and "--pip" in line
    line = jobs._missing_on_cluster(Logs("rayprop: missing on the cluster: ray numpy (for /usr/bin/python3)\n"), "j")
    assert "could not find the Python that runs the cluster's Ray" in line and "pip install" not in line


@pytest.mark.parametrize("case", ["venv of the loaded ray", "interpreter", "VIRTUAL_ENV"])
def test_job_python_finds_the_python_of_the_parent(case, tmp_path):
    """cluster/job_python.sh, sourced by a shell whose parent is a Python process (on the
    cluster: Ray's job supervisor): that Python, whatever `python` the PATH finds."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(jobs.__file__).with_name("job_python.sh")
    venv = Path(sys.prefix)  # the venv the tests run in (its pyvenv.cfg is at its root)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"  # the shell's `python`, if any, is another one
    if case == "VIRTUAL_ENV":
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "python").symlink_to(sys.executable)
        env["VIRTUAL_ENV"] = str(tmp_path)
    load = "import ray; " if case == "venv of the loaded ray" else ""
    code = (f"{load}import subprocess; print(subprocess.run(['/bin/sh', '-c', '. {script} && "
            "echo \"$RAYPROP_PYTHON\"'], capture_output=True, text=True).stdout.strip())")
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=120).stdout.strip()
    if case == "venv of the loaded ray":
        assert (venv / "pyvenv.cfg").exists()
        assert found == str(venv / "bin" / "python")
    elif case == "interpreter":  # nothing tells of a venv: the real interpreter behind the symlink
        assert found == os.path.realpath(sys.executable)
    else:
        assert found == str(tmp_path / "bin" / "python")
