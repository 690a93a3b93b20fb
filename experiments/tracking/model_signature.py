"""The pyfunc model's signature, computed here rather than by MLflow, and MLflow's
serving check of the input example, skipped.

MLflow's `log_model` with only an input example loads the model from its files and
predicts on the example to infer the signature; then it loads the model again, turns
the example into a serving request, parses it back against the signature and
predicts once more ("validating the serving input"). On W-mnist's 784 columns these
took 1-2 s of a job's end each. Here the signature comes from the example and the
network's output on it by the same forward pass the model runs
(experiments/tracking/pyfunc_model.py), so it is the signature MLflow would infer; and the
serving check would re-run that same pass on the same example. What the check
guards, that the logged model loads and serves its example, tests/test_mlflow.py
checks on logged models (MLflow's own check included), not every job.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature

from trainer.model_io import output_names
from trainer.network import NetworkSpec, forward


def signature(spec: NetworkSpec, theta: np.ndarray, meta: dict, example: pd.DataFrame) -> ModelSignature:
    """What MLflow infers from `example` and the model's output on it (pyfunc_model.py's predict)."""
    X = np.ascontiguousarray(example.to_numpy(), dtype=spec.dtype)
    _, AL = forward(spec, theta, X)
    return infer_signature(example, pd.DataFrame(AL.T.copy(), columns=output_names(meta, spec.layers[-1])))


_lock = threading.Lock()
_skipping = [0, None]  # how many callers are inside serving_check_skipped; MLflow's check


def _no_check(model_uri, serving_input):
    return None


@contextmanager
def serving_check_skipped():
    """`mlflow.pyfunc.log_model` without its serving check of the input example (the
    module docstring says why; pyfunc's log_model has no argument for it). Process-wide
    while any caller is inside (a sweep logs trials' models from several threads),
    which is harmless: every model this process logs is rayprop's. An MLflow without
    the hook runs its check as before."""
    from mlflow.models import utils

    with _lock:
        if _skipping[0] == 0:
            _skipping[1] = getattr(utils, "_validate_serving_input", None)
            if _skipping[1] is not None:
                utils._validate_serving_input = _no_check
        _skipping[0] += 1
    try:
        yield
    finally:
        with _lock:
            _skipping[0] -= 1
            if _skipping[0] == 0 and _skipping[1] is not None:
                utils._validate_serving_input = _skipping[1]
