"""`rayprop submit`: the same training job on a remote cluster, through Ray Jobs.

The job's runtime_env ships rayprop's own packages and the resolved config (the
cluster needs only Ray and the dependencies), plus the data file when it is small
enough to send; a larger local file is refused with a request for a path or URI
the cluster can read. A URI source (s3://, gs://, ..., file://) ships nothing: each
worker on the cluster reads it, with the credentials in the nodes' environment
(never in the runtime_env). The job runs `python -m experiments.cli train` on the
cluster, which joins it through RAY_ADDRESS, and we follow its log to the end.

The job runs with the Python that runs the cluster's Ray, however the cluster was
started (`cluster/job_python.sh` finds it), and first runs `cluster/depcheck.py`: a
Python that lacks a dependency is one line naming it and how to provide it (install
it into that Python, or `--pip`: a runtime_env pip list of rayprop's dependencies,
installed by Ray for the job).

Whatever goes wrong here is one line: a Jobs API whose agent is not up yet is
retried for a while; a job that failed is its id and the last line it printed. Ray's
own log lines (the client's INFO logging, the lines Ray writes into the job's log)
stay off rayprop's console.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
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
from workers.data.locations import is_uri

MAX_SHIPPED_BYTES = 64 * 2**20  # data up to this size travels with the job
PACKAGES = ("trainer", "workers", "cluster", "experiments")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SUBMISSION_ENV = "RAYPROP_SUBMISSION_ID"  # the job's id, in its environment on the cluster
SUBMIT_RETRY_SECONDS = 60  # a head that just started answers "no available agent" for a while
# What a head that is not ready yet answers (HTTP 500 / 503): worth another try.
NOT_READY = ("try again later", "no available agent")
# How the job names its MLflow run ("rayprop: MLflow run ID (NAME) ..." from `rayprop train`).
RUN_LINE = re.compile(r"^rayprop: (?:resuming at step \d+: )?MLflow run ([0-9a-f]{32})\b", re.M)
# Lines Ray itself writes into a job's log: its logging format ("2026-01-01 10:00:00,123\tINFO
# job_manager.py:581 -- ..."), the entrypoint it runs, and what raylets forward to the driver.
RAY_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO)\s+\S+\.py:\d+ -- "
                      r"|Running entrypoint for job |\(raylet(, ip=[^)]*)?\) )")


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
        with quiet_ray():
            return JobSubmissionClient(address)
    except Exception as e:  # Ray raises ConnectionError, AuthenticationError, RuntimeError...
        text = redact(one_line(e))
        if "auth" in text.lower() or "token" in text.lower() or e.__class__.__name__ == "AuthenticationError":
            hint = TOKEN_HINT if token_source is None else f"the token from {token_source} was refused"
            raise InputError(f"--address {redact(address)}: authentication failed; {hint}") from None
        raise InputError(f"--address {redact(address)}: cannot reach the Ray Jobs API ({text})") from None


def pip_requirements() -> list[str]:
    """rayprop's runtime dependencies as pip requirements (Ray aside: the cluster runs it)."""
    return depcheck.requirements()


def submit(config: dict, address: str, train_args: list[str], wait: bool, is_builtin,
           tracking_note: str | None = None, pip: bool = False, output_uri: str | None = None,
           later: str | None = None) -> tuple[str, str | None]:
    """Submit, then (if wait) follow the log to the job's end; (job id, the job's MLflow
    run id, None if not waited for or not seen). A job that did not succeed raises:
    InputError if it ended on bad input, else RunError; Ctrl-C here raises Stopped
    (after asking whether to stop the job on the cluster).

    `train_args` carry `--tracking-uri` when one was given, so the job logs its MLflow
    run where the submitter said; `tracking_note` says where, once the job is in.
    `output_uri`: where the job writes its files (else a folder of its own on the
    cluster); `later`: the line printed with --no-wait (how to get the model later;
    "{job_id}" in it becomes the job's id).
    """
    client = _client(address)
    with tempfile.TemporaryDirectory(prefix="rayprop-job-") as tmp:
        workdir = Path(tmp)
        job_config = stage(config, workdir, is_builtin)
        (workdir / "job.yaml").write_text(yaml.safe_dump(job_config, sort_keys=False))
        # A folder of its own: Ray unpacks identical working_dirs into one shared folder,
        # and an output folder belongs to one run (a second job would be refused).
        output = output_uri or f"output-{uuid.uuid4().hex[:12]}"
        needs = " ".join(shlex.quote(depcheck.name_of(r)) for r in depcheck.requirements())
        entrypoint = " ".join([f". cluster/job_python.sh && \"$RAYPROP_PYTHON\" -m cluster.depcheck {needs} && "
                               "exec \"$RAYPROP_PYTHON\" -m experiments.cli train job.yaml",
                               "--output", shlex.quote(output), *train_args])
        # The job's id is ours to choose: the job tags its MLflow run with it, so
        # `rayprop fetch JOB_ID` finds the run before anyone has read the job's log.
        submission_id = f"raysubmit_rayprop_{uuid.uuid4().hex[:16]}"
        runtime_env = {"working_dir": str(workdir),
                       "env_vars": {"RAYPROP_IN_JOB": "1", SUBMISSION_ENV: submission_id}}
        if pip:
            runtime_env["pip"] = pip_requirements()
        job_id = _submit_with_retry(
            client, entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
            metadata={"rayprop": "train", "experiment": str(config.get("experiment", ""))})
    print(f"rayprop submit: job {job_id} submitted to {redact(address)}", file=sys.stderr)
    if tracking_note:
        print(f"rayprop submit: {tracking_note}", file=sys.stderr)
    if not wait:
        if later:
            print(f"rayprop submit: {later.replace('{job_id}', job_id)}", file=sys.stderr)
        print(job_id)
        return job_id, None
    try:
        return job_id, follow(client, job_id)
    except KeyboardInterrupt:
        if sys.stdin is not None and sys.stdin.isatty():
            answer = input(f"\nstop job {job_id} on the cluster? [y/N] ").strip().lower()
            if answer in ("y", "yes"):
                client.stop_job(job_id)
                raise Stopped(f"asked the cluster to stop job {job_id}") from None
        raise Stopped(f"job {job_id} goes on; follow it with `ray job logs -f {job_id} "
                      f"--address {redact(address)}`") from None


@contextlib.contextmanager
def quiet_ray():
    """Ray's client logs INFO lines of its own (packaging the working_dir, uploading
    it): not rayprop's console. Its warnings and errors still show."""
    # Ray's client modules set their own loggers to INFO (ray.dashboard.modules.job.sdk,
    # ...dashboard_sdk): each one of Ray's loggers, not only the "ray" parent.
    loggers = [logger for name, logger in logging.root.manager.loggerDict.items()
               if isinstance(logger, logging.Logger) and name.split(".")[0] == "ray"]
    loggers.append(logging.getLogger("ray"))
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _submit_with_retry(client, seconds: float = SUBMIT_RETRY_SECONDS, **job) -> str:
    """submit_job, retried while a freshly started head says it has no job agent yet;
    RunError (one line) when it still cannot take the job."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with quiet_ray():
                return client.submit_job(**job)
        except Exception as e:  # Ray raises RuntimeError for an HTTP error, others for the rest
            text = redact(one_line(e))
            not_ready = any(words in text.lower() for words in NOT_READY)
            if not_ready and time.monotonic() < deadline:
                time.sleep(1)
                continue
            if not_ready:
                raise RunError(f"the cluster's Jobs API has no job agent up after {seconds:.0f} s "
                               f"(Ray's dashboard agent on the head); try again once it is up") from None
            raise RunError(f"the cluster refused the job: {text}") from None


def ray_line(line: str) -> bool:
    """A line Ray wrote into the job's log, not the job itself."""
    return bool(RAY_LINE.match(line))


def follow(client, job_id: str) -> str | None:
    """Print the job's log as it comes (Ray's own lines left out); the job's MLflow run
    id once it succeeded (None if its log did not name one); raise if it did not."""
    import asyncio

    seen = {"run": None, "last": ""}

    async def tail():
        pending = ""
        async for chunk in client.tail_job_logs(job_id):
            pending += chunk
            *lines, pending = pending.split("\n")  # a chunk may end mid-line
            show(lines)
        show([pending] if pending else [])

    def show(lines):
        kept = [line for line in lines if not ray_line(line)]
        for line in kept:
            if line.strip():
                seen["last"] = line.strip()
            found = RUN_LINE.match(line)
            if found:
                seen["run"] = found.group(1)
        if kept:
            sys.stdout.write("".join(line + "\n" for line in kept))
            sys.stdout.flush()

    try:
        with quiet_ray():
            asyncio.run(tail())
            info = client.get_job_info(job_id)
            while info.status not in TERMINAL:  # the log can end a moment before the status does
                time.sleep(0.5)
                info = client.get_job_info(job_id)
    except (KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as e:  # the head went away, a proxy cut the log's websocket, ...
        raise RunError(f"lost the cluster's Jobs API while following job {job_id} ({redact(one_line(e))}); "
                       f"the job may go on: ray job logs -f {job_id}") from None
    if info.status == "SUCCEEDED":
        return seen["run"]
    code = info.driver_exit_code
    if code == depcheck.EXIT_MISSING:
        missing = _missing_on_cluster(client, job_id)
        if missing:
            raise InputError(missing)
    how = info.status.lower() + (f" with exit code {code}" if code is not None else "")
    # The job's last line says why (rayprop's own one line, or a traceback's last line);
    # a job that never started has only Ray's message.
    why = seen["last"] if code is not None and seen["last"] else (one_line(info.message) if info.message else seen["last"])
    what = f"job {job_id} {how}: {redact(why)}" if why else f"job {job_id} {how}"
    # The kind of the job's own error decides this command's exit code.
    raise (InputError if code == 2 else RunError)(what)


def _missing_on_cluster(client, job_id: str) -> str | None:
    """The one line for a job whose Python lacked dependencies (depcheck's line in its log)."""
    lines = [l for l in client.get_job_logs(job_id).splitlines() if l.startswith(depcheck.MARKER)]
    if not lines:
        return None
    rest = lines[-1][len(depcheck.MARKER):]
    names = rest.split("(for")[0].split()
    python = rest.split("(for", 1)[1].rstrip(") ").strip() if "(for" in rest else "python"
    if "ray" in names:  # not the Python of the cluster's Ray: installing there would not help
        return (f"the job could not find the Python that runs the cluster's Ray (it ran {python}, "
                "which lacks ray); start the cluster with that Python's `ray start`")
    return (f"the cluster's Python {python} lacks {', '.join(names)}: run `{python} -m pip install "
            f"{' '.join(names)}` on its nodes, or submit with --pip (Ray then installs rayprop's "
            "dependencies for the job)")
