"""Ctrl-C and SIGTERM during training: finish the step in flight, checkpoint, stop.

The first SIGINT or SIGTERM only raises a flag the coordinator reads after every
step (it then writes a checkpoint and raises TrainingStopped, and the MLflow run
ends KILLED); a second one gives Python's default behaviour back and exits at once.
"""

from __future__ import annotations

import signal
import sys
import threading


class StopFlag:
    def __init__(self):
        self.signal_name: str | None = None
        self._saved: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.signal_name is not None

    def _on_signal(self, signum, frame) -> None:
        if self.signal_name is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\nrayprop: {self.signal_name}: stopping after this step and writing a checkpoint "
              "(again to stop at once)", file=sys.stderr)

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False
