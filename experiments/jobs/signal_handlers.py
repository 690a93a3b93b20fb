"""Our handler for some signals for as long as a block runs, the ones found before put
back after: what `rayprop ui` (experiments/cli/ui.py) and a training job's StopFlag
(experiments/jobs/interrupts.py) both need around the part of the process they guard."""

from __future__ import annotations

import signal
import threading


class SignalHandlers:
    """`with SignalHandlers(signals, handler):` handler for those signals inside.

    Only the main thread may set handlers (Python's rule): elsewhere the block runs with
    the process's own, which are the main thread's business."""

    def __init__(self, signals, handler):
        self.signals, self.handler = tuple(signals), handler
        self._saved: dict[int, object] = {}

    def __enter__(self) -> SignalHandlers:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._saved[sig] = signal.signal(sig, self.handler)
        return self

    def __exit__(self, *exc) -> bool:
        while self._saved:
            sig, handler = self._saved.popitem()
            signal.signal(sig, handler)
        return False

    def default(self) -> None:
        """The signals' default action until the block ends (a next one kills the process)."""
        for sig in self._saved:
            signal.signal(sig, signal.SIG_DFL)
