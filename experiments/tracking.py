"""One MLflow run per training job: its lifecycle, params, tags, dataset and metrics.

Only the coordinator's process logs (README, "MLflow"); workers never import this.
Importing this module imports mlflow (about 2 s), so commands import it only once
the inputs have been checked.

- `TrackedRun` starts a run and always ends it: FINISHED, FAILED on an error
  (the error's first line in the tag `rayprop.error`), KILLED on Ctrl-C or SIGTERM.
- `MetricLogger` is the coordinator listener: every step's `loss` and each epoch's
  metrics go into a buffer that a sender thread passes to `log_batch` every
  FLUSH_SECONDS and at the end, so the training loop never waits for the store.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import threading
import time
import warnings

from experiments import stores

stores.quiet_mlflow()  # before mlflow is imported

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

stores.quiet_mlflow()  # again: importing mlflow sets its logger to INFO

from experiments.stores import redact  # noqa: E402
from trainer import __version__  # noqa: E402
from trainer.config import Config  # noqa: E402
from trainer.coordinator import TrainingStopped  # noqa: E402
from trainer.errors import InputError  # noqa: E402
from workers.sources import Source  # noqa: E402

FLUSH_SECONDS = 5.0   # how stale the UI's loss curve may get while a job runs
MAX_METRICS = 1000    # per log_batch call (MLflow's limit)
MAX_PARAMS = 100      # per log_batch call (MLflow's limit)

# Config keys whose values must never reach a store: credentials go by environment.
SECRET_KEY = re.compile(r"token|passw|secret|credential|private|apikey|api_key|access_key|(^|_)key$",
                        re.IGNORECASE)

# Arrow type names (workers.sources column_types) -> MLflow column types.
MLFLOW_TYPES = {"double": "double", "float": "float", "halffloat": "float", "int64": "long",
                "uint32": "long", "int32": "integer", "int16": "integer", "int8": "integer",
                "uint16": "integer", "uint8": "integer", "bool": "boolean", "string": "string",
                "large_string": "string", "binary": "binary"}

# MLflow's INFO lines ("creating tables", "creating experiment", "validating input
# example") are quieted by stores.quiet_mlflow; rayprop prints where the run went itself.


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def open_experiment(uri: str, name: str) -> str:
    """Point MLflow at `uri` and return the id of experiment `name` (created if new)."""
    stores.start_from_template(uri)  # a new sqlite store in seconds less
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.set_experiment(name).experiment_id
    except Exception as e:  # MlflowException, sqlalchemy, requests: any way a store can refuse
        raise InputError(f"tracking URI {redact(uri)}: cannot use experiment {name!r} "
                         f"({first_line(e)[:300]})") from None


def _public_items(cfg: Config):
    """(dotted key, value) of every setting, without secret-looking keys or URL passwords."""
    for key, value in cfg.flat().items():
        if SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            continue
        yield key, redact(value) if isinstance(value, str) else value


def run_params(cfg: Config) -> dict[str, str]:
    """The flattened config as run params: {'model.layers': '[2, 32, 3]', ...}."""
    return {key: str(value) for key, value in _public_items(cfg)}


def public_config(cfg: Config) -> dict:
    """The config as nested sections, for the run's config.yaml (same filtering as params)."""
    tree: dict = {}
    for key, value in _public_items(cfg):
        *sections, last = key.split(".")
        node = tree
        for name in sections:
            node = node.setdefault(name, {})
        node[last] = value
    return tree


def dataset_of(source: Source, columns: list[str]):
    """An MLflow dataset that describes the source (where, which columns) without its rows.

    The coordinator never holds the whole data set (docs/design.md section 3), so this is a
    MetaDataset: source and schema only, its digest computed from them.
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    info = source.describe()
    if info["kind"] == "builtin":
        where = CodeDatasetSource(tags={"rayprop.builtin": source.name})
    else:
        try:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all say local
                warnings.simplefilter("ignore")
                where = resolve_dataset_source(source.name)
        except Exception:  # a location MLflow has no source type for: still say where it was
            where = CodeDatasetSource(tags={"rayprop.source": redact(source.name)})
    types = info["columns"]
    schema = Schema([ColSpec(MLFLOW_TYPES.get(types[c], "string"), c) for c in columns])
    name = os.path.basename(source.name.rstrip("/")) or source.name
    return MetaDataset(where, name=name, schema=schema)


class MetricLogger:
    """Coordinator listener: buffered, batched metric logging on a thread of its own.

    `loss` gets exactly one point per step (step = global step). The epoch metrics
    are logged at step = the global step at the epoch's end, so they share the
    x axis of the loss curve. The training thread only appends to a list; every
    FLUSH_SECONDS the list goes to a sender thread that calls `log_batch`, so a slow
    store never stalls a step. (MLflow's own `synchronous=False` does the same but
    its worker polls once a second, which added ~1 s to the end of every run.)
    """

    def __init__(self, client: MlflowClient, run_id: str, logged_through: tuple[int, int] = (0, 0)):
        """logged_through: (last `loss` step, last epoch-metric step) the run already
        holds; a resumed run recomputes those steps but does not log them twice."""
        self.client, self.run_id = client, run_id
        self.loss_through, self.epoch_through = logged_through
        self.step = 0
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._sender = threading.Thread(target=self._send, name="rayprop-metrics", daemon=True)
        self._sender.start()

    def on_step(self, step: int, epoch: int, loss: float, n: int) -> None:
        self.step = step
        if step <= self.loss_through:
            return
        self._buffer.append(Metric("loss", float(loss), int(time.time() * 1000), step))
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.step <= self.epoch_through:
            return
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, self.step) for k, v in metrics.items()]
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._queue.put(self._buffer)
            self._buffer = []
        self._last_flush = time.monotonic()

    def sync(self) -> None:
        """Return once every point so far is in the store. Called before each checkpoint:
        what a checkpoint covers is then logged, and a resumed run logs only what follows."""
        if not self._sender.is_alive():
            return
        self.flush()
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def _send(self) -> None:
        while (batch := self._queue.get()) is not None:
            if isinstance(batch, threading.Event):
                batch.set()
                continue
            if self._error is not None:
                continue  # the store refused once: drop the rest, close() reports it
            try:
                for i in range(0, len(batch), MAX_METRICS):
                    self.client.log_batch(self.run_id, metrics=batch[i:i + MAX_METRICS])
            except Exception as e:
                self._error = e

    def close(self) -> None:
        """Send what is buffered and wait until the store has it all (raises if it refused)."""
        if self._sender.is_alive():
            self.flush()
            self._queue.put(None)
            self._sender.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class TrackedRun:
    """`with TrackedRun(...) as run:` one MLflow run, ended with the right status."""

    def __init__(self, experiment_id: str, run_name: str | None = None, nested: bool = False,
                 tags: dict[str, str] | None = None, resume_run_id: str | None = None):
        """resume_run_id: continue that run (rayprop train --resume) instead of a new one."""
        self.experiment_id, self.run_name, self.nested = experiment_id, run_name, nested
        self.resume_run_id = resume_run_id
        self.tags = tags or {}
        self.client = MlflowClient()
        self.run_id = ""
        self.metrics: MetricLogger | None = None
        self._old_sigterm = None

    def __enter__(self) -> "TrackedRun":
        logged = (0, 0)
        if self.resume_run_id:
            run = mlflow.start_run(run_id=self.resume_run_id)
            logged = tuple(max((m.step for m in self.client.get_metric_history(run.info.run_id, key)),
                               default=0) for key in ("loss", "epoch_loss"))
        else:
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=self.run_name,
                                   nested=self.nested, tags={k: str(v) for k, v in self.tags.items()})
        self.run_id = run.info.run_id
        self.run_name = run.info.run_name
        self.metrics = MetricLogger(self.client, self.run_id, logged)
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
                       "rayprop.data.source": redact(source.name),
                       "rayprop.data.rows": source.num_rows})
        mlflow.log_input(dataset_of(source, columns), context="training")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit, TrainingStopped)):
            status = "KILLED"
        else:
            status = "FAILED"
        close_error = None
        try:
            self.metrics.close()  # the points so far reach the store, whatever happened
        except BaseException as e:  # a second Ctrl-C while draining must not skip end_run
            close_error = e
        failure = exc if exc is not None else close_error
        if exc is None and close_error is not None:
            status = "KILLED" if isinstance(close_error, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:
            if failure is not None and status == "FAILED":
                self.set_tags({"rayprop.error": first_line(failure)[:5000]})
        finally:
            mlflow.end_run(status)
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
        if exc is None and close_error is not None:
            raise close_error
        return False
