"""The end of a `rayprop train` job on Ray, overlapped: Ray shuts down while the model
files are written and the model is logged to MLflow.

Training is the last use of Ray in a job. What follows (summary.json, model.npz, the
pyfunc model, the run's end) needs no Ray, and Ray's shutdown is mostly waiting for its
processes to exit (cluster/connect.py, Connection.close_early), so it goes to a thread
the moment the coordinator returns. A sweep's trials share one Ray and do not do this.
"""

from __future__ import annotations

import threading


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
