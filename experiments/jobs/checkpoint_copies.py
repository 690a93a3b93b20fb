"""Where a run's checkpoints go besides its output folder: an output URI, and the run's
MLflow artifacts (for --resume where the folder is gone).

The Checkpointer (trainer/checkpoint.py) calls `saved` after each checkpoint it writes.
An output URI gets every one, at once (jobs/output_uri.py). The artifacts get one at
most every ARTIFACT_CHECKPOINT_SECONDS, from the outbox's thread (a store round trip
per epoch costs more than a short epoch; resuming from an older copy is still exact,
only longer), and at the end, whatever ended the run, the newest one (`finish`). Each
checkpoint that reaches the artifacts is also logged as an MLflow logged model
(`models`: experiments/tracking/checkpoint_models.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ARTIFACT_CHECKPOINT_SECONDS = 60


class CheckpointCopies:
    def __init__(self, run, output=None, every_seconds: float = ARTIFACT_CHECKPOINT_SECONDS, models=None):
        self.run, self.output, self.every_seconds, self.models = run, output, every_seconds, models
        self.last_upload = -every_seconds  # time.monotonic() of the last upload: the first goes at once
        self.uploaded: Path | None = None  # the newest checkpoint in the artifacts

    def saved(self, path: Path) -> None:
        if self.output is not None:
            self.output.saved(path)  # to a URI output before the artifacts
        now = time.monotonic()
        if now - self.last_upload >= self.every_seconds:
            self.run.upload_later(str(path), "checkpoints")  # from the outbox's thread: no wait
            if self.models is not None:
                self.models.later(path)
            self.last_upload, self.uploaded = now, path

    def finish(self, latest: Path | None) -> None:
        """The newest checkpoint into the artifacts, in this thread, unless it is there:
        a store that fails here gets it in the run's report, and never hides why
        training ended."""
        if latest is None or latest == self.uploaded:
            return
        run = self.run
        try:
            if run.deliver("the last checkpoint",
                           lambda: run.client.log_artifact(run.run_id, str(latest), "checkpoints")):
                if self.models is not None:
                    self.models.later(latest)
            self.uploaded = latest
        except Exception as err:
            print(f"rayprop: warning: the last checkpoint did not reach the run's artifacts "
                  f"({type(err).__name__}); it is in {latest.parent}", file=sys.stderr)
