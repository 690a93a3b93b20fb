"""The run's models as MLflow 3 logged models: the final one and each checkpoint.

Every model is the same pyfunc (experiments/tracking/pyfunc_model.py, "models from code",
numpy and pandas only), logged with the global step it was taken at, and the
training metrics of that step linked to it (model_id) and to the run's data set
(dataset name and digest), so the UI's model list and `search_logged_models`
rank the checkpoints by `val_loss` like any model.

Why not `mlflow.pyfunc.log_model(step=...)`: to link metrics it reads the run's
whole history of every metric (`get_metric_history` per key) and logs the points
of that step again. That costs O(all points logged so far) per model: 0.53 s of
its 0.62 s on a sqlite store after 2000 epochs of xor, more over HTTP, and it
would grow with every checkpoint of a long run. The coordinator already holds the
step's points (MetricLogger.points_at), so this module does the same steps as
`log_model` (create the model, save the pyfunc, upload, link to the run as an
output, finalize) and logs those points with the model's id. MLflow saves the
first model of its kind in the process (its signature inferred from an input
example: it loads and runs the model for that; model_templates.py); the later ones,
of this run and of a sweep's other runs, are copies of it with their own weights and
identity, so none pays that again.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.models import Model

import trainer
from experiments.tracking import model_templates
from trainer.model_io import save_model

FINAL_NAME = "model"  # the final model's name (and artifact name), as before
CHECKPOINT_PREFIX = "checkpoint-"  # + the global step: checkpoint-000000120
KIND_TAG, STEP_TAG, EPOCH_TAG = "rayprop.model", "rayprop.step", "rayprop.epoch"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MLMODEL = "MLmodel"  # a saved model's description
# The metrics linked to a model: the training curves, not the timing.
LINKED = ("loss", "epoch_loss", "val_loss", "val_accuracy")


def requirements() -> list[str]:
    return [f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


class ModelLogger:
    """Logs the models of one run; `signature` is inferred by the first."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str,
                 params: dict[str, str] | None = None, dataset: tuple[str, str] | None = None):
        """params: the run's params, copied onto each model (as `log_model` does).
        dataset: (name, digest) of the run's input data set, for the linked metrics."""
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.params, self.dataset = params or {}, dataset
        self._template: Path | None = None
        self._lock = threading.Lock()

    @property
    def needs_example(self) -> bool:
        return self._template is None

    def log(self, name: str, network: Path, step: int, points: list[Metric], tags: dict[str, str],
            example: pd.DataFrame | None = None) -> str:
        """Log the model whose model.npz and model.json are in `network`; returns its id.
        points: the run's metric points of `step` to link to it (only LINKED keys are)."""
        model = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id,
                                                tags=tags, params=self.params, model_type="rayprop-mlp")
        try:
            with tempfile.TemporaryDirectory(prefix="rayprop-model-") as tmp:
                path = Path(tmp) / "model"
                self._save(path, network, model, example)
                self.client.log_model_artifacts(model.model_id, str(path))
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step=step)])
            self.link(model.model_id, points)
        except BaseException:
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def _save(self, path: Path, network: Path, model, example) -> None:
        """The pyfunc model's folder at `path`: saved by MLflow the first time in the
        process for its kind (signature from `example`; model_templates.py), then
        copied with the network's files and the MLmodel's identity (model id, run,
        time) replaced. (The outbox's thread logs checkpoints while the main thread
        logs the final model: one template, made under a lock.)"""
        with self._lock:
            if self._template is None:
                signature = signature_of(network, example)

                def save(template: Path) -> None:
                    with _no_requirement_check():
                        mlflow.pyfunc.save_model(
                            str(template), python_model=str(PYFUNC_CODE), artifacts={"network": str(network)},
                            code_paths=[str(Path(trainer.__file__).parent)], input_example=example,
                            signature=signature, pip_requirements=requirements())
                    for cache in template.rglob("__pycache__"):
                        shutil.rmtree(cache, ignore_errors=True)

                # One per kind of model in the process: a sweep's trials share it (model_templates.py).
                self._template = model_templates.shared(model_templates.key(signature, example, network), save)
        shutil.copytree(self._template, path)
        meta = Model.load(str(path / MLMODEL))
        # where MLflow put the "network" artifact in the model (artifacts/<its folder's name>)
        inside = meta.flavors["python_function"]["artifacts"]["network"]["path"]
        for name in ("model.npz", "model.json"):
            shutil.copy2(network / name, path / inside / name)
        meta.model_id = meta.model_uuid = model.model_id
        meta.run_id, meta.artifact_path = self.run_id, model.artifact_location
        meta.utc_time_created = Model().utc_time_created
        meta.save(str(path / MLMODEL))

    def link(self, model_id: str, points: list[Metric]) -> None:
        """The points again, with the model's id and the data set: the store keeps them
        for the model and, being the same points (key, time, step, value), not twice
        in the run's history."""
        name, digest = self.dataset or (None, None)
        linked = [Metric(p.key, p.value, p.timestamp, p.step, model_id=model_id,
                         dataset_name=name, dataset_digest=digest)
                  for p in points if p.key in LINKED]
        if linked:
            self.client.log_batch(self.run_id, metrics=linked)


@contextlib.contextmanager
def _no_requirement_check():
    """MLflow's save_model checks the model's pip requirements against the installed
    packages (warn_dependency_requirement_mismatches); the first time in a process that
    maps every module of every installed distribution to its package: 1-3 s of CPU here,
    most of what logging the final model cost, and under the GIL while training goes on
    when a checkpoint's model is the first. rayprop's requirements are the installed
    numpy and pandas versions (`requirements`), so the check cannot find anything."""
    import mlflow.utils.environment as environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is None:  # another MLflow: nothing to skip
        yield
        return
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def signature_of(network: Path, example: pd.DataFrame | None):
    """The model's signature from the example and the network's output on it, computed
    here: given no signature, MLflow loads and runs the model to infer it (seconds of
    CPU in the coordinator's process, under the GIL, while training goes on)."""
    if example is None:
        return None
    from mlflow.models import infer_signature

    from trainer.model_io import load_model, output_names
    from trainer.network import forward

    spec, theta, meta = load_model(network)
    _, AL = forward(spec, theta, np.ascontiguousarray(example.to_numpy(), dtype=spec.dtype))
    # the columns the pyfunc model returns (pyfunc_model.py uses the same output_names)
    return infer_signature(example, pd.DataFrame(AL.T.copy(), columns=output_names(meta, spec.layers[-1])))


def network_dir(into: Path, spec, theta: np.ndarray, columns: dict) -> Path:
    """model.npz and model.json of `theta` in `into` (the artifact the pyfunc loads)."""
    into.mkdir(parents=True, exist_ok=True)
    save_model(into, spec, theta, columns)
    return into


def _dataset(job) -> tuple[str, str] | None:
    """(name, digest) of the data set the run logged as its input (tracking.dataset_of)."""
    from experiments.tracking.dataset import dataset_of

    try:
        ds = dataset_of(job.source, [*job.schema.features, *job.schema.targets])
    except Exception:  # a source MLflow cannot describe: the metrics go unlinked to a data set
        return None
    return ds.name, ds.digest


def of(run, job) -> ModelLogger:
    """The ModelLogger of TrackedRun `run` (one per run: the signature is inferred once)."""
    logger = getattr(run, "model_logger", None)
    if logger is None:
        info = run.client.get_run(run.run_id)
        logger = ModelLogger(run.client, run.run_id, info.info.experiment_id, dict(info.data.params),
                             _dataset(job))
        run.model_logger = logger
    return logger


def for_active_run(job) -> ModelLogger:
    run = mlflow.active_run()
    client = MlflowClient()
    info = client.get_run(run.info.run_id)
    return ModelLogger(client, run.info.run_id, info.info.experiment_id, dict(info.data.params), _dataset(job))
