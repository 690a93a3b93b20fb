"""The worker's side of a one-worker pool's run (workers/solo.py): the coordinator loop
in the worker's own process, over its own rows.

`SoloRun` runs trainer.coordinator.train over a LocalPool of the worker's ShardWorker
in a thread of the actor, with an EventQueue as its listener (workers/run_events.py):
the steps are the same calls a Ray step makes of that ShardWorker (Eq. 1 and Eq. 12
over its rows, with its CPUs' threads), then the same division by m and optimizer
step (Eq. 3) that the driver's coordinator would take. Its checkpointer
(`MarkedCheckpoints`) queues the driver's checkpoints as events, and besides them a
*mark* (theta, the optimizer's buffers, the position) after a step or an epoch once
MARK_SECONDS have passed since the last (longer for a network whose copy costs more:
MARK_COST_FACTOR times that copy's time): where the driver starts again on a new
worker if this one is lost.
"""

from __future__ import annotations

import copy
import math
import threading

import numpy as np

from trainer.checkpoint import Position
from trainer.coordinator import train
from workers.local_pool import LocalPool
from workers.run_events import EventQueue, QueuedCheckpoints, outcome_of, state_copy

MARK_SECONDS = 1.0  # at most this much work (and at least one step) is done again after a loss
# A mark is copied here, then serialized and sent to the driver: a few times the copy's
# time, so marks cost about 2% of the run at most (W-wide with Adam: 250 MB a mark).
MARK_COST_FACTOR = 100
# The schedule of a run the driver checkpoints nowhere: marks only.
NO_CHECKPOINTS = {"every_epochs": 2**62, "max_seconds": math.inf, "min_seconds": 0.0, "last_epoch": None}


class MarkedCheckpoints(QueuedCheckpoints):
    """The driver's checkpoint schedule, as QueuedCheckpoints keeps it, and a mark
    event after any step or epoch that brought no checkpoint (a checkpoint is a mark
    too), once the time between marks (module doc) has passed."""

    def __init__(self, schedule: dict | None, put):
        super().__init__(schedule or NO_CHECKPOINTS, put)
        self.checkpoints = schedule is not None
        self.saves = 0
        self.last_mark = self.clock()
        self.mark_cost = 0.0  # seconds the last mark's copies took

    def save(self, theta, optimizer, position: Position):
        if not self.checkpoints:  # a stop's final checkpoint: the driver keeps none, so a mark
            return self.mark(theta, optimizer, position)
        super().save(theta, optimizer, position)
        self.saves += 1
        self.last_mark = self.last_time
        return None

    def mark(self, theta, optimizer, position: Position) -> None:
        t0 = self.clock()
        self._put(("mark", theta.copy(), state_copy(optimizer), position))
        self.last_mark = self.clock()
        self.mark_cost = self.last_mark - t0

    def _marked(self, saves: int, theta, optimizer, position: Position) -> None:
        due = max(MARK_SECONDS, MARK_COST_FACTOR * self.mark_cost)
        if self.saves == saves and self.clock() - self.last_mark >= due:
            self.mark(theta, optimizer, position)

    def after_step(self, theta, optimizer, position: Position):
        saves = self.saves
        super().after_step(theta, optimizer, position)
        self._marked(saves, theta, optimizer, position)

    def after_epoch(self, theta, optimizer, position: Position, epochs_done: int):
        saves = self.saves
        super().after_epoch(theta, optimizer, position, epochs_done)
        self._marked(saves, theta, optimizer, position)


class SoloRun:
    """trainer.coordinator.train over `worker`'s rows, in a thread of this process,
    from `resume` (a mark's or a checkpoint's position; None: the start); the outcome
    is the last event. `errstate()`: numpy's error state for the thread (it is per
    thread): the coordinator sees a diverging step's NaN and says so itself.
    `asks`: a sweep's early-stopping milestones (epochs), or None: at each, the run
    sends an "ask" event with the epoch's metrics and waits for the driver's answer
    (`answer`), as trainer.coordinator.train's `end_early` would decide there."""

    def __init__(self, worker, theta: np.ndarray, optimizer, plan, epochs: int, resume: Position | None,
                 schedule: dict | None, errstate, asks: list[int] | None = None):
        self.pool = LocalPool([worker])
        self.queue = EventQueue(self.pool)
        self._stop, self._done = threading.Event(), threading.Event()
        self._answers: dict[int, bool] = {}
        self._answered = threading.Condition()
        # Arrays that arrive through Ray are read-only views of the object store; the
        # coordinator updates theta and the optimizer's buffers in place.
        theta, optimizer = theta.copy(), copy.deepcopy(optimizer)
        marks = MarkedCheckpoints(schedule, self.queue.put)
        end_early = None if asks is None else self._asker(set(asks))

        def run():
            with errstate():
                result = train(self.pool, theta, optimizer, plan, epochs, [self.queue], resume=resume,
                               checkpointer=marks, should_stop=self._stop.is_set, end_early=end_early)
            return result, theta, optimizer

        def thread():
            self.queue.put(("end", outcome_of(run)))
            self._done.set()

        self._thread = threading.Thread(target=thread, name="rayprop-solo", daemon=True)
        self._thread.start()

    def _asker(self, asks: set[int]):
        def end_early(epochs_done: int, metrics: dict) -> bool:
            if epochs_done not in asks:
                return False
            self.queue.put(("ask", epochs_done, metrics))
            with self._answered:
                # A stop ends the wait: the run goes on, and stops after its next step.
                self._answered.wait_for(lambda: epochs_done in self._answers or self._stop.is_set())
                return self._answers.get(epochs_done, False)
        return end_early

    def answer(self, epochs_done: int, stop: bool) -> None:
        """The driver's answer to the ask at `epochs_done`: True ends training there."""
        with self._answered:
            self._answers[epochs_done] = stop
            self._answered.notify_all()

    def poll(self, seconds: float) -> list[tuple]:
        """The events since the last poll, after at most `seconds` (at once when training ended)."""
        self._done.wait(seconds)
        return self.queue.take()

    def stop(self) -> None:
        """Stop after the step in flight, with a checkpoint (or a mark)."""
        self._stop.set()
        with self._answered:
            self._answered.notify_all()

    @property
    def running(self) -> bool:
        return not self._done.is_set()
