"""The names the run's metrics have in MLflow, chosen for its chart view.

MLflow's UI groups a run's charts by the prefix before the first "/". The training
curves (loss, epoch_loss, val_loss, val_accuracy, workers) stay unprefixed, in its
"Model metrics" group; the per-epoch timing figures, which say how fast and not how
well, go apart under "timing/". (MLflow 3.17 lists the prefixed groups, sorted,
before "Model metrics": its chart code builds the sections as
[...prefixed.sort(), "Model metrics", "System metrics"]; so the timing group shows
above the curves, folded away with one click, not among them.) The trainer's own
names (its epoch metrics dict, summary.json, the progress line) stay unprefixed.
"""

from __future__ import annotations

TIMING_PREFIX = "timing/"
TIMING = ("examples_per_second", "step_seconds", "compute_seconds", "coordination_seconds")


def logged_name(key: str) -> str:
    """The MLflow name of the trainer's metric `key`: timing/step_seconds, ..., else key."""
    return TIMING_PREFIX + key if key in TIMING else key
