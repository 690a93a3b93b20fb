"""The names the run's metrics have in MLflow, chosen for its chart view.

MLflow's UI groups a run's charts by the prefix before the first "/", and shows every
"system/" metric in its System metrics tab, apart from the model's charts. The
training curves (loss, epoch_loss, val_loss, val_accuracy, workers) stay unprefixed, in
its "Model metrics" group; the per-epoch timing figures, which say how fast and not
how well, go under "system/timing/", beside the machines' own (CPU, memory, network).
(MLflow 3.17 lists prefixed groups, sorted, before "Model metrics" -- its chart code
builds the sections as [...prefixed.sort(), "Model metrics", "System metrics"] -- so a
"timing/" group of its own showed above the training curves.) The trainer's own
names (its epoch metrics dict, summary.json, the progress line) stay unprefixed.
"""

from __future__ import annotations

TIMING_PREFIX = "system/timing/"
TIMING = ("examples_per_second", "step_seconds", "compute_seconds", "coordination_seconds")


def logged_name(key: str) -> str:
    """The MLflow name of the trainer's metric `key`: system/timing/step_seconds, ..., else key."""
    return TIMING_PREFIX + key if key in TIMING else key
