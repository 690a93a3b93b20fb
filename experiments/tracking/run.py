"""One MLflow run per training job: its lifecycle, params, tags, dataset and metrics.

Only the coordinator's process logs (README, "MLflow"); workers never import this.
Importing this module imports mlflow (about 2 s), so commands import it only once
the inputs have been checked.

- `TrackedRun` starts a run and always ends it: FINISHED, FAILED on an error
  (the error's first line in the tag `rayprop.error`), KILLED on Ctrl-C or SIGTERM.
- `MetricLogger` (tracking/metrics.py) is the coordinator listener: every step's `loss`
  and each epoch's metrics go into a buffer handed every FLUSH_SECONDS to an outbox
  whose thread passes them to `log_batch` (tracking/outbox.py), so the training loop
  never waits for the store, even a store that died.
- The params are the config without its secrets (tracking/params.py); the data set is
  logged as its description, never its rows (tracking/dataset.py).
- When the store fails, training goes on; at the end the run says in one line what
  the store did not get and where it is kept (`TrackedRun.undelivered`): metric
  points in DIR/mlflow-undelivered/, the model files in DIR, and whether the run
  could not be ended (it then stays RUNNING in the store until `--resume`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

from experiments.tracking import stores

stores.quiet_mlflow()  # before mlflow is imported
# A store that stopped answering costs seconds per call, not MLflow's default of
# minutes of retries (7 retries, backoff factor 2, 120 s timeout): the outbox retries
# metrics itself, and the calls at the end of a job must not hold it for long.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Param, RunTag  # noqa: E402

stores.quiet_mlflow()  # again: importing mlflow sets its logger to INFO

from experiments.tracking.dataset import dataset_of  # noqa: E402
from experiments.tracking.metrics import CLOSE_SECONDS, IN_FLIGHT_SECONDS, MetricLogger  # noqa: E402
from experiments.tracking.outbox import SPOOL_DIR, SPOOL_FILE, replay  # noqa: E402
from experiments.tracking.params import run_params  # noqa: E402
from experiments.tracking.stores import redact  # noqa: E402
from experiments.tracking.tags import SOURCE_TAG  # noqa: E402
from trainer import __version__  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.coordinator import TrainingStopped  # noqa: E402
from trainer.errors import InputError, Stopped  # noqa: E402
from workers.data.source import Source  # noqa: E402

# MLflow's SQL store adds a data set to the experiment by looking it up and then
# inserting it: two runs of a sweep logging the same data set at once both insert, and
# the second fails on the table's unique key. One at a time in this process.
_DATASETS = threading.Lock()

FINGERPRINT_TAG, FINGERPRINT_ARTIFACT = "rayprop.data_fingerprint", "data_fingerprint.json"
MAX_PARAMS = 100      # per log_batch call (MLflow's limit)

# MLflow's INFO lines ("creating tables", "creating experiment", "validating input
# example") are quieted by stores.quiet_mlflow; rayprop prints where the run went itself.


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# MLflow 3's UI shows an experiment of this kind as model training (runs, charts,
# models), not as GenAI development (traces, judges): its own tag and value.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def open_experiment(uri: str, name: str) -> str:
    """Point MLflow at `uri` and return the id of experiment `name` (created if new)."""
    stores.start_from_template(uri)  # a new sqlite store in seconds less
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.set_experiment(name)
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # once per experiment; a user's choice stays
            MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    except Exception as e:  # MlflowException, sqlalchemy, requests: any way a store can refuse
        raise InputError(f"tracking URI {redact(uri)}: cannot use experiment {name!r} "
                         f"({first_line(e)[:300]})") from None


class TrackedRun:
    """`with TrackedRun(...) as run:` one MLflow run, ended with the right status when
    the store lets it; what the store did not get is kept locally and said once."""

    def __init__(self, experiment_id: str, run_name: str | None = None, nested: bool = False,
                 tags: dict[str, str] | None = None, resume_run_id: str | None = None,
                 out_dir: Path | None = None, stop=None, parent_run_id: str | None = None):
        """resume_run_id: continue that run (rayprop train --resume) instead of a new one.
        out_dir: the job's folder (the spool of undelivered metrics goes there).
        stop: the job's StopFlag (experiments/jobs/interrupts.py): a Ctrl-C during a call
        to the store after training abandons the store, not the job's files.
        parent_run_id: the sweep's parent run, for a child run started in a thread of
        its own (MLflow's active run is per thread, so `nested` alone would not see it)."""
        self.experiment_id, self.run_name, self.nested = experiment_id, run_name, nested
        self.parent_run_id = parent_run_id
        self.resume_run_id, self.out_dir, self.stop = resume_run_id, out_dir, stop
        self.tags = tags or {}
        self.client = MlflowClient()
        self.run_id = ""
        self.metrics: MetricLogger | None = None
        self.undelivered: list[str] = []  # what the store did not get (artifacts, status)
        self.report: str | None = None  # the one line saying so, set at the end (printed
        # here when the run ends by an exception; a finished run's caller prints it)
        self._failed = False
        self._sender_stuck = False  # the metrics sender was still in a call at the end
        self._old_sigterm = None

    @property
    def spool(self) -> Path | None:
        return self.out_dir / SPOOL_DIR / SPOOL_FILE if self.out_dir is not None else None

    def __enter__(self) -> TrackedRun:
        logged = (0, 0)
        if self.resume_run_id:
            run = mlflow.start_run(run_id=self.resume_run_id)
            if self.spool is not None and self.spool.exists():  # what a lost store missed last time
                try:
                    n = replay(self.client, run.info.run_id, self.spool)
                    print(f"rayprop: delivered {n} metric points kept in {self.spool}", file=sys.stderr)
                except Exception as e:  # kept: the outbox keeps the file and tries again at the end
                    print(f"rayprop: warning: the metric points kept in {self.spool} could not be "
                          f"delivered yet ({first_line(e)[:100]})", file=sys.stderr)
            logged = tuple(max((m.step for m in self.client.get_metric_history(run.info.run_id, key)),
                               default=0) for key in ("loss", "epoch_loss"))
        else:
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=self.run_name,
                                   nested=self.nested, parent_run_id=self.parent_run_id,
                                   tags={k: str(v) for k, v in self.tags.items()})
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self.metrics = MetricLogger(self.client, self.run_id, logged, self.spool)
        self._catch_sigterm()
        return self

    def _catch_sigterm(self) -> None:
        # A stopped job gets SIGTERM; by default Python dies on it without cleanup and
        # the run would stay RUNNING. (Ray's driver already turns it into SystemExit.)
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            def stop(signum, frame):
                raise SystemExit(128 + signum)
            self._old_sigterm = signal.signal(signal.SIGTERM, stop)

    @property
    def store_failed(self) -> bool:
        return self._failed or (self.metrics is not None and not self.metrics.outbox.store_ok)

    def deliver(self, what: str, call) -> bool:
        """call() against the store once training is over. Skipped once the store has
        failed; a failure or a Ctrl-C while it waits leaves `what` undelivered (said at
        the end); after a failure or a second Ctrl-C the store is left alone. True if
        it went through."""
        if self.store_failed:
            self.undelivered.append(what)
            return False
        try:
            with self.stop.interruptible() if self.stop is not None else nullcontext():
                call()
            return True
        except KeyboardInterrupt:  # a first Ctrl-C gives this up; a second, the store
            self._failed = self.stop is None or self.stop.hurry
            self.undelivered.append(what)
            return False
        except Exception:
            self._failed = True
            self.undelivered.append(what)
            return False

    def upload_later(self, path: str, artifact_path: str) -> None:
        """Copy a checkpoint file to the run's artifacts from the outbox's thread
        (training goes on). The file may be gone by then, or go while MLflow opens it:
        the checkpointer keeps only the newest KEEP, and short epochs write more than
        that before the outbox gets here. A pruned file is no failure of the store (a
        newer checkpoint follows, the last one at the end), so it must not count as one:
        that made a healthy job skip its final uploads and exit 3. Checking first and
        then uploading leaves that window open; asking after a failure closes it."""
        def upload():
            try:
                self.client.log_artifact(self.run_id, path, artifact_path)
            except Exception:
                if os.path.exists(path):  # the file is there: the store refused it
                    raise
        self.metrics.outbox.put_task(upload)

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS])

    def set_tags(self, tags: dict[str, object]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_job(self, cfg: Config, source: Source, columns: list[str], workers: int, nodes: int,
                ray_kind: str) -> None:
        """What the run is: the config as params, where it ran as tags, the data set as input."""
        self.log_params(run_params(cfg))
        self.set_tags({"rayprop.version": __version__, "rayprop.workers": workers,
                       "rayprop.nodes": nodes, "rayprop.ray": ray_kind,
                       SOURCE_TAG: redact(source.name),
                       "rayprop.data.rows": source.num_rows})
        with _DATASETS:
            mlflow.log_input(dataset_of(source, columns), context="training")

    def log_fingerprint(self, fingerprint: dict | None) -> None:
        """The data's fingerprint (workers/data/fingerprint.py): its hash as the tag
        `rayprop.data_fingerprint`, the per-file list as the artifact `data_fingerprint.json`."""
        if fingerprint:
            self.set_tags({FINGERPRINT_TAG: fingerprint["hash"]})
            self.client.log_dict(self.run_id, fingerprint, FINGERPRINT_ARTIFACT)

    def _close_metrics(self) -> int:
        """Points kept locally after delivering what the store takes in time."""
        hurry = self.stop is not None and self.stop.hurry
        outbox = self.metrics.outbox
        try:
            with self.stop.interruptible() if self.stop is not None else nullcontext():
                kept = self.metrics.close(0 if hurry else CLOSE_SECONDS)
                # The sender may still be in a call delivering points the spool holds:
                # replayed beside it they would go in twice (outbox.py), so not before it ends.
                self._sender_stuck = bool(kept) and not outbox.wait_stopped(0 if hurry else IN_FLIGHT_SECONDS)
        except KeyboardInterrupt:  # stop waiting for the store; keep the rest locally
            self._failed = self.stop is None or self.stop.hurry
            kept = self.metrics.close(0)
            self._sender_stuck = bool(kept) and not outbox.wait_stopped(0)
        if kept and not self._sender_stuck and outbox.store_ok and not self.store_failed and not hurry:
            # points that went only to the file while the store was away: send them now
            if self.deliver("metrics", lambda: replay(self.client, self.run_id, self.spool)):
                kept = 0
        return kept

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit, TrainingStopped, Stopped)):
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            kept = self._close_metrics()
            if exc is not None and status == "FAILED":
                self.deliver("the error tag", lambda: self.set_tags({"rayprop.error": first_line(exc)[:5000]}))
            ended = self.deliver("the run's status", lambda: mlflow.end_run(status))
        finally:
            if mlflow.active_run() is not None and mlflow.active_run().info.run_id == self.run_id:
                _forget_active_run()
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
        if kept or self.undelivered or not ended:
            self.report = self._report(kept, ended, status)
            if exc is not None:  # otherwise the caller says it last, after its summary
                print(self.report, file=sys.stderr)
        return False

    def _report(self, kept: int, ended: bool, status: str) -> str:
        parts = []
        if kept:
            parts.append(f"{kept} metric points kept in {self.spool}"
                         + (" (a call sending them was still under way)" if self._sender_stuck else ""))
        files = [w for w in self.undelivered if w not in ("metrics", "the error tag", "the run's status")]
        if files:
            parts.append(f"{', '.join(dict.fromkeys(files))} not uploaded (the files are in {self.out_dir})")
        if not ended:
            parts.append(f"run {self.run_id} left RUNNING, not {status}")
        return f"rayprop: the tracking store did not get everything: {'; '.join(parts)}"


def _forget_active_run() -> None:
    """Drop the run from MLflow's active-run stack without calling the store (which
    failed): mlflow.end_run pops it and then calls the store; this does the pop."""
    from mlflow.tracking import fluent

    try:
        stack = fluent._active_run_stack.get()
        if stack:
            stack.pop()
    except AttributeError:  # another MLflow: fall back to end_run, which may raise
        try:
            mlflow.end_run()
        except Exception:
            pass
