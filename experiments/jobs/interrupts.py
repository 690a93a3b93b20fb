"""Ctrl-C and SIGTERM during training: finish the step in flight, checkpoint, stop.

The first SIGINT or SIGTERM only raises a flag the coordinator reads after every
step (it then writes a checkpoint and raises TrainingStopped, and the MLflow run
ends KILLED). A Ray pool waiting for a worker looks at the flag too, and gives up
the step in flight when it is still waiting 2 s later (the checkpoint is then the
last completed step's), so a hung worker never holds a stop. A second one means "now":
it raises KeyboardInterrupt wherever the job is, sets `hurry` (the cleanup then only
writes local files and skips a store that is not answering) and gives the signals
their default action back, so a third kills the process outright.

Once training is over the job only talks to the tracking store; inside
`interruptible()` the first signal already raises KeyboardInterrupt, so a Ctrl-C
never waits on a store that does not answer.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager, nullcontext

from experiments.jobs.signal_handlers import SignalHandlers


class StopFlag:
    def __init__(self):
        self.signal_name: str | None = None
        self.hurry = False  # a second signal came: exit now, local work only
        self._raise_now = False
        self._handlers = SignalHandlers((signal.SIGINT, signal.SIGTERM), self._on_signal)

    def __call__(self) -> bool:
        return self.signal_name is not None

    def _on_signal(self, signum, frame) -> None:
        if self.signal_name is not None:  # the second one: stop now
            self.hurry = True
            self._handlers.default()
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        if self._raise_now:
            raise KeyboardInterrupt
        print(f"\nrayprop: {self.signal_name}: stopping after this step and writing a checkpoint "
              "(a step that a worker holds up is given up in 2 s; again to stop at once)", file=sys.stderr)

    @contextmanager
    def interruptible(self):
        """A signal inside the block raises KeyboardInterrupt at once (a call to the
        store after training: there is no step to finish)."""
        saved, self._raise_now = self._raise_now, True
        try:
            yield
        finally:
            self._raise_now = saved

    def __enter__(self) -> StopFlag:
        self._handlers.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return self._handlers.__exit__(*exc)


class ThreadStop:
    """A StopFlag as a sweep trial's thread sees it. Signals reach the main thread only:
    a trial stops after its step when the flag is up, and its calls to the store are
    never interrupted by a KeyboardInterrupt of its own (the main thread takes those)."""

    def __init__(self, flag: StopFlag):
        self.flag = flag

    def __call__(self) -> bool:
        return self.flag()

    @property
    def hurry(self) -> bool:
        return self.flag.hurry

    def interruptible(self):
        return nullcontext()
