"""The model registry: `--register-model NAME` and `models:/` URIs for evaluate/predict.

`--register-model NAME` (train, sweep, submit) makes the run's final logged model
(experiments/tracking/logged_models.py; a sweep's: the best trial's by the sweep's metric) a
new version of registered model NAME, created if new. The version names its run and
its logged model, whose metrics are linked to the data set: the registry page leads
to both. Registering happens after the run has ended, so a refusal (another server,
no registry) costs the version, not the run: it is said in one line, exit 1.

`rayprop evaluate` and `predict` take MODEL as a folder, a model.npz, or an MLflow
model URI: models:/NAME/VERSION, models:/NAME@ALIAS, models:/NAME/latest or
models:/MODEL_ID (a logged model, e.g. a checkpoint's), on the tracking store.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from trainer.errors import InputError, RunError

URI_PREFIX = "models:/"
NETWORK = "artifacts/network"  # inside a logged pyfunc model: model.npz and model.json
BAD_NAME_CHARS = ("/", ":", "@")


def check_name(name: str | None) -> None:
    """InputError for a name MLflow would refuse or that a models:/ URI could not name."""
    if name is None:
        return
    if not name.strip() or any(c in name for c in BAD_NAME_CHARS) or name.strip(".") == "":
        raise InputError(f"--register-model {name!r}: a registered model's name is not blank and "
                         f"has no {' '.join(BAD_NAME_CHARS)}")


def is_model_uri(text: str) -> bool:
    return str(text).startswith(URI_PREFIX)


def final_model_id(client, run_id: str) -> str | None:
    """The id of run `run_id`'s final logged model (named "model"), None if it has none."""
    from experiments.tracking.logged_models import FINAL_NAME, KIND_TAG

    run = client.get_run(run_id)
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{FINAL_NAME}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], max_results=10)
    for model in models:
        if model.tags.get(KIND_TAG) == "final" and str(model.status).endswith("READY"):
            return model.model_id
    return None


def register(uri: str, run_id: str, name: str, model_id: str | None = None) -> str:
    """Register run `run_id`'s final model as a new version of `name`; returns models:/NAME/VERSION.
    RunError (one line) if the store refuses or the run has no final model."""
    import mlflow
    from mlflow import MlflowClient

    from experiments.tracking.run import first_line

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        model_id = model_id or final_model_id(client, run_id)
        if model_id is None:
            raise RunError(f"--register-model {name}: run {run_id} has no final model in the tracking store")
        with contextlib.redirect_stderr(io.StringIO()):  # its "Created version" line: rayprop says it
            version = mlflow.register_model(f"{URI_PREFIX}{model_id}", name, await_registration_for=0,
                                            tags={"rayprop.run_id": run_id})
    except RunError:
        raise
    except Exception as e:  # MlflowException, requests: any way a store can refuse
        raise RunError(f"--register-model {name}: the tracking store did not register run {run_id}'s "
                       f"model ({first_line(e)[:200]})") from None
    return f"{URI_PREFIX}{name}/{version.version}"


def download(model_uri: str, tracking_uri: str, into: Path) -> Path:
    """The folder holding model.npz and model.json of MLflow model `model_uri`, downloaded
    into `into`. InputError (one line) if the store has no such model."""
    import mlflow

    from experiments.tracking.run import first_line

    mlflow.set_tracking_uri(tracking_uri)
    try:
        # The whole model (a few files): models:/MODEL_ID/subpath would read MODEL_ID as a name.
        path = mlflow.artifacts.download_artifacts(artifact_uri=model_uri.rstrip("/"), dst_path=str(into),
                                                   tracking_uri=tracking_uri)
    except Exception as e:
        raise InputError(f"MODEL {model_uri}: not a rayprop model in {tracking_uri} "
                         f"({first_line(e)[:200]})") from None
    try:  # where the model keeps its "network" artifact (artifacts/network when rayprop logged it)
        from mlflow.models import Model

        inside = Model.load(str(Path(path) / "MLmodel")).flavors["python_function"]["artifacts"]["network"]["path"]
    except Exception:
        inside = NETWORK
    network = Path(path) / inside
    if not (network / "model.npz").is_file():
        raise InputError(f"MODEL {model_uri}: not a rayprop model (no {NETWORK}/model.npz in it)")
    return network


class ModelFolder:
    """`with ModelFolder(args.model, tracking_uri) as path:` a local model folder for MODEL:
    the path itself, or a models:/ URI's files in a temporary folder removed afterwards."""

    def __init__(self, model: str, tracking_uri: str | None):
        self.model, self.tracking_uri = str(model), tracking_uri
        self._tmp = None

    def __enter__(self) -> Path:
        if not is_model_uri(self.model):
            return Path(self.model)
        from experiments.tracking import stores

        uri = stores.resolve_uri(self.tracking_uri, None)
        stores.check(uri)
        self._tmp = tempfile.TemporaryDirectory(prefix="rayprop-model-")
        return download(self.model, uri, Path(self._tmp.name))

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
