"""What a `rayprop train` job does side by side, once its inputs are checked.

- The imports its tracking needs (MLflow, its SQL store, pandas; matplotlib for a
  decision-boundary plot) happen in a thread while Ray starts and the workers read
  their rows: an import writes nothing, and the driver mostly waits there.
- Ray shuts down while the model files are written and the model is logged. Training
  is the last use of Ray; what follows (summary.json, model.npz, the pyfunc model, the
  run's end) needs no Ray, and Ray's shutdown is mostly waiting for its processes to
  exit (cluster/connect.py, Connection.close_early). A sweep's trials share one Ray
  and do not do this.

The MLflow run itself is created after the pool has read and checked every row, as
before: bad data must leave no store and no run behind.
"""

from __future__ import annotations

import importlib
import threading

# In the order the job needs them; each module's import is shared with the main thread
# (Python's per-module import lock), so whichever comes first does it.
WARM_MODULES = ("experiments.tracking.run", "mlflow.store.tracking.sqlalchemy_store",
                "experiments.tracking.run_artifacts")
PLOT_MODULES = ("matplotlib.figure",)


def warm_up(plot: bool) -> None:
    """Import WARM_MODULES (and PLOT_MODULES if the run draws a plot) in a background thread."""
    def run():
        for name in WARM_MODULES + (PLOT_MODULES if plot else ()):
            try:
                importlib.import_module(name)
            except Exception:  # the main thread's own import says what is wrong, when it gets there
                pass

    threading.Thread(target=run, name="rayprop-imports", daemon=True).start()


class Once:
    """`call()` at most once, from whichever thread asks first; a later caller returns
    once that first call has finished (the pool is closed by the early shutdown, and
    again, as a no-op, by the job's exit stack)."""

    def __init__(self, call):
        self._call, self._lock, self._done = call, threading.Lock(), False

    def __call__(self) -> None:
        with self._lock:
            if not self._done:
                self._done = True
                self._call()


def release_ray(conn, close_pool: Once):
    """What `fit` calls once training is over: close the pool, then shut Ray down, in
    the background. None in local mode (no Ray)."""
    if conn is None:
        return None
    return lambda: conn.close_early(close_pool)
