"""What a finished run keeps: the resolved config, the model files, the model as an
MLflow pyfunc model, and for 2-D inputs a decision-boundary plot.

The pyfunc model is "models from code" (experiments/tracking/pyfunc_model.py) and carries
rayprop's numpy-only `trainer` package in its code_paths, so it loads and serves
without rayprop installed. It is logged as an MLflow 3 logged model with the run's last
step and that step's metrics linked (experiments/tracking/logged_models.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import yaml

from experiments.tracking import logged_models, plots
from experiments.tracking.params import public_config
from trainer.model_io import MODEL_FILES, load_model
from trainer.network import NetworkSpec
from workers.data.examples import Schema, load_examples
from workers.data.source import Source

EXAMPLE_ROWS = 5     # rows in the model's input example
PLOT_ROWS = 2000     # rows drawn on the decision-boundary plot
SLICES = 20          # the plot's rows come from this many slices spread over the source


def sample(source: Source, schema: Schema, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `rows` examples as (X, Y) rows, read in slices across the source (never all of it)."""
    n = source.num_rows
    if n <= rows:
        return load_examples(source, schema, 0, n, np.float64)
    per = max(rows // SLICES, 1)
    starts = np.linspace(0, n - per, min(SLICES, rows), dtype=np.int64)
    parts = [load_examples(source, schema, int(s), int(s) + per, np.float64) for s in starts]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def input_example(source: Source, schema: Schema) -> pd.DataFrame:
    """A model's input example: the data's first EXAMPLE_ROWS rows, in one read (rows
    spread over the source, as the plot takes them, made a teacher set draw its stream
    again for each: 1.5-2 s for 5 rows of W-mnist)."""
    X, _ = load_examples(source, schema, 0, min(EXAMPLE_ROWS, source.num_rows), np.float64)
    return pd.DataFrame(X, columns=list(schema.features))


def log_pyfunc(source: Source, schema: Schema, out_dir: Path, run=None) -> str:
    """The final model as a logged model named "model" (experiments/tracking/logged_models.py)
    at the run's last step, with that step's training metrics linked; returns its id.
    run: the TrackedRun (its logger and last points); None: the active run, no points."""
    example = input_example(source, schema)
    data = SimpleNamespace(source=source, schema=schema)  # what a model logger reads of a job: its data set
    models = logged_models.of(run, data) if run is not None else logged_models.for_active_run(data)
    step = run.metrics.step if run is not None and run.metrics is not None else 0
    points = run.metrics.points_at(step) if run is not None and run.metrics is not None else []
    with tempfile.TemporaryDirectory(prefix="rayprop-model-") as tmp:
        network = Path(tmp) / "network"  # the artifact the model loads: model.npz + model.json
        network.mkdir()
        for name in ("model.npz", "model.json"):
            shutil.copy2(out_dir / name, network / name)
        model_id = models.log(logged_models.FINAL_NAME, network, step, points,
                              {logged_models.KIND_TAG: "final", logged_models.STEP_TAG: str(step)}, example)
    if run is not None:
        run.final_model_id = model_id
    return model_id


def log_outputs(out_dir: Path, resolved_cfg, source: Source, schema: Schema, spec: NetworkSpec,
                run=None) -> None:
    """Everything a run keeps besides params, tags and metrics (into the active run):
    the files in `out_dir`, the config as trained, and the model's input example and
    plot drawn from the data it trained on. run: the TrackedRun, whose last step's
    metrics the final model links."""
    mlflow.log_text(yaml.safe_dump(public_config(resolved_cfg), sort_keys=False), "config.yaml")
    for name in MODEL_FILES:
        mlflow.log_artifact(str(out_dir / name))
    log_pyfunc(source, schema, out_dir, run)
    if spec.layers[0] == 2:
        X, Y = sample(source, schema, PLOT_ROWS)
        _, theta, _ = load_model(out_dir)  # the weights as saved, not a copy in memory
        fig = plots.decision_boundary(spec, theta, X, Y, schema.encoding,
                                      list(schema.features), f"{resolved_cfg.experiment}: decision boundary")
        if fig is not None:
            mlflow.log_figure(fig, "decision_boundary.png")

