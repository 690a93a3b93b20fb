"""`rayprop submit`: the same training job on a remote cluster, through Ray Jobs.

The job's runtime_env ships rayprop's own packages and the resolved config (the
cluster needs only Ray and the dependencies), plus the data file when it is small
enough to send; a larger local file is refused with a request for a path or URI
the cluster can read. A URI source (s3://, gs://, ..., file://) ships nothing: each
worker on the cluster reads it, with the credentials in the nodes' environment
(never in the runtime_env). The job runs `python -m experiments.cli train` on the
cluster, which joins it through RAY_ADDRESS, and we follow its log to the end.

It first runs `cluster/depcheck.py`: a cluster whose Python lacks a dependency is
one line naming it and how to provide it (install it on the nodes, or `--pip`: a
runtime_env pip list of rayprop's dependencies, installed by Ray for the job).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from cluster import depcheck
from cluster.auth import TOKEN_HINT, enable_token_mode, redact
from trainer.errors import InputError, RunError, Stopped, one_line
from workers.locations import is_uri

MAX_SHIPPED_BYTES = 64 * 2**20  # data up to this size travels with the job
PACKAGES = ("trainer", "workers", "cluster", "experiments")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SUBMIT_RETRY_SECONDS = 60  # a head that just started answers "no available agent" for a while


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def stage(config: dict, workdir: Path, is_builtin) -> dict:
    """Copy the packages (and a small data file) into workdir; return the job's config."""
    import importlib

    for name in PACKAGES:
        src = Path(importlib.import_module(name).__file__).parent
        shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    data = dict(config.get("data") or {})
    source = str(data.get("source") or "")
    local = Path(source).expanduser()
    if source and not is_builtin(source) and not is_uri(source) and local.exists():
        size = _size(local)
        if size > MAX_SHIPPED_BYTES:
            raise InputError(f"data.source: {local} is {size / 2**20:.0f} MiB, too large to ship with "
                             f"the job (limit {MAX_SHIPPED_BYTES // 2**20} MiB); give a path or URI "
                             "the cluster's nodes can read")
        target = workdir / "data" / local.name
        target.parent.mkdir()
        (shutil.copytree if local.is_dir() else shutil.copy2)(local, target)
        data["source"] = f"data/{local.name}"
    return {**config, "data": data}


def _client(address: str):
    token_source = enable_token_mode()  # before Ray is imported: it reads the mode once
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # Ray raises ConnectionError, AuthenticationError, RuntimeError...
        text = redact(one_line(e))
        if "auth" in text.lower() or "token" in text.lower() or e.__class__.__name__ == "AuthenticationError":
            hint = TOKEN_HINT if token_source is None else f"the token from {token_source} was refused"
            raise InputError(f"--address {redact(address)}: authentication failed; {hint}") from None
        raise InputError(f"--address {redact(address)}: cannot reach the Ray Jobs API ({text})") from None


def pip_requirements() -> list[str]:
    """rayprop's runtime dependencies as pip requirements (Ray aside: the cluster runs it)."""
    from importlib import metadata

    try:
        wanted = metadata.requires("rayprop") or []
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return list(depcheck.DEPENDENCIES.values())
    return [r.split(";")[0].strip() for r in wanted
            if "extra ==" not in r and not r.lower().startswith("ray")]


def submit(config: dict, address: str, train_args: list[str], wait: bool, is_builtin,
           tracking_note: str | None = None, pip: bool = False) -> None:
    """Submit, then (if wait) follow the log to the job's end. A job that did not
    succeed raises: InputError if it ended on bad input, else RunError; Ctrl-C here
    raises Stopped (after asking whether to stop the job on the cluster).

    `train_args` carry `--tracking-uri` when one was given, so the job logs its MLflow
    run where the submitter said; `tracking_note` says where, once the job is in.
    """
    client = _client(address)
    with tempfile.TemporaryDirectory(prefix="rayprop-job-") as tmp:
        workdir = Path(tmp)
        job_config = stage(config, workdir, is_builtin)
        (workdir / "job.yaml").write_text(yaml.safe_dump(job_config, sort_keys=False))
        # A folder of its own: Ray unpacks identical working_dirs into one shared folder,
        # and an output folder belongs to one run (a second job would be refused).
        output = f"output-{uuid.uuid4().hex[:12]}"
        entrypoint = " ".join(["python -m cluster.depcheck && python -m experiments.cli train job.yaml",
                               "--output", output, *train_args])
        runtime_env = {"working_dir": str(workdir), "env_vars": {"RAYPROP_IN_JOB": "1"}}
        if pip:
            runtime_env["pip"] = pip_requirements()
        job_id = _submit_with_retry(
            client, entrypoint=entrypoint, runtime_env=runtime_env,
            metadata={"rayprop": "train", "experiment": str(config.get("experiment", ""))})
    print(f"rayprop submit: job {job_id} submitted to {redact(address)}", file=sys.stderr)
    if tracking_note:
        print(f"rayprop submit: {tracking_note}", file=sys.stderr)
    if not wait:
        print(job_id)
        return
    try:
        follow(client, job_id)
    except KeyboardInterrupt:
        if sys.stdin is not None and sys.stdin.isatty():
            answer = input(f"\nstop job {job_id} on the cluster? [y/N] ").strip().lower()
            if answer in ("y", "yes"):
                client.stop_job(job_id)
                raise Stopped(f"asked the cluster to stop job {job_id}") from None
        raise Stopped(f"job {job_id} goes on; follow it with `ray job logs -f {job_id}`") from None


def _submit_with_retry(client, seconds: float = SUBMIT_RETRY_SECONDS, **job) -> str:
    """submit_job, retried while a freshly started head says it has no job agent yet."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "try again later" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def follow(client, job_id: str) -> None:
    """Print the job's log as it comes; raise if the job did not succeed."""
    import asyncio

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    info = client.get_job_info(job_id)
    while info.status not in TERMINAL:  # the log can end a moment before the status does
        time.sleep(0.5)
        info = client.get_job_info(job_id)
    if info.status == "SUCCEEDED":
        return
    code = info.driver_exit_code
    if code == depcheck.EXIT_MISSING:
        missing = _missing_on_cluster(client, job_id)
        if missing:
            raise InputError(missing)
    what = f"job {job_id} {info.status.lower()}" + (f" (exit code {code})" if code is not None
                                                     else f": {one_line(info.message or '')}")
    # The job's own one line is in the log above; its kind decides this command's exit code.
    raise (InputError if code == 2 else RunError)(what)


def _missing_on_cluster(client, job_id: str) -> str | None:
    """The one line for a job whose Python lacked dependencies (depcheck's line in its log)."""
    lines = [l for l in client.get_job_logs(job_id).splitlines() if l.startswith(depcheck.MARKER)]
    if not lines:
        return None
    names = lines[-1][len(depcheck.MARKER):].split("(for")[0].split()
    return (f"the cluster's Python lacks {', '.join(names)}: pip install {' '.join(names)} on its nodes, "
            "or submit with --pip (Ray then installs rayprop's dependencies for the job)")
