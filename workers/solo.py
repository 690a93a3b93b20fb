"""A one-worker Ray pool's training, run inside its worker.

With one worker a step has nothing to add up: a coordinator on the driver would only
send theta, wait while the worker computes, read its sums back and take the
optimizer's step while the worker waits. On the `digits` sweep's network (two
512-unit layers, batches of 32) that was 0.5 ms of a 1.5 ms step, and with two
trials side by side the two coordinators shared one interpreter on a 2-CPU machine.
So a pool of one worker and a fixed size (`RayPool.solo`) runs
trainer.coordinator.train in that worker's process over its own rows
(workers/solo_run.py), as a Ray Client job's coordinator runs in the cluster: the
driver takes the events in batches (every POLL_SECONDS) and hands them to its own
listeners and checkpointer (workers/run_events.py). The worker takes the same steps
with the same calls, so the weights are those of the driver's loop, bit for bit. A
sweep's early stopping (`end_early` with its `milestones`) is asked at those epochs
only: the worker sends an "ask" with the epoch's metrics and waits; the driver's
answer goes with its next poll.

Faults, as the Ray pool's (README: Faults and elasticity). The worker sends a mark
(theta, the optimizer's buffers, the position) about every MARK_SECONDS
(workers/solo_run.py). A worker that dies, or is silent past the hang bound of a
step and an evaluation (workers/hang.py), is lost: the pool replaces it like any
lost worker (workers/pool_recovery.py, counted against train.max_worker_failures),
and training goes on from the last mark on the new worker. A step depends only on
(theta, epoch, k), so the weights do not change; the steps and epochs it takes
again, up to the last one handed on, are not handed on twice, so MLflow gets each
once. A stop request reaches the worker after its step (a checkpoint, then the
end); a worker silent then is given up after STOP_GRACE_S, and the job stops at the
last mark.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from trainer.checkpoint import Position
from trainer.coordinator import TrainResult, TrainingStopped
from trainer.pool import StepAbandoned
from workers.pool_waits import WorkersLost
from workers.run_events import POLL_SECONDS, end, replay, schedule_of, state_copy

class SoloTraining:
    """One call of trainer.coordinator.train, carried out by the pool's one worker (module doc)."""

    def __init__(self, pool, theta: np.ndarray, optimizer, plan, epochs: int, listeners,
                 resume: Position | None, checkpointer, should_stop, end_early=None):
        """end_early: a sweep's early-stopping decision with its `milestones`
        (experiments/sweeps/early_stopping.py), asked when the worker reaches one."""
        self.pool, self.plan, self.epochs = pool, plan, epochs
        self.end_early = end_early
        self.answers: dict[int, bool] = {}  # {epoch: the sweep's answer there}, over every attempt
        self.optimizer, self.listeners, self.checkpointer = optimizer, list(listeners), checkpointer
        self.should_stop = should_stop or (lambda: False)
        # Where training goes on from if the worker is lost: (theta, optimizer state, position).
        self.mark = (theta.copy(), state_copy(optimizer), resume or Position(0, 0, 0))
        self.epoch_metrics: list[tuple[int, dict]] = []  # (epoch, metrics) handed to the listeners, all attempts
        self.attempts = 0
        start = self.mark[2]
        self.steps_handed, self.next_epoch = start.global_step, start.epoch  # handed on so far

    def run(self, theta: np.ndarray) -> TrainResult:
        t0 = time.perf_counter()
        self.pool.waits.stop_on(self.should_stop)
        self.pool.in_worker = True  # a replacement's line says where training goes on from
        try:
            outcome = self.pool._with_recovery(self._attempt)
        except StepAbandoned:  # stopped while the worker did not answer: at the last mark
            mark_theta, state, position = self.mark
            if self.checkpointer is not None and np.isfinite(mark_theta).all():
                self.optimizer.load_state(state)
                self.checkpointer.save(mark_theta, self.optimizer, position)
            raise TrainingStopped(position) from None
        finally:
            self.pool.in_worker = False
        result = end(outcome, theta, self.optimizer, t0)
        if self.attempts > 1:
            self._whole(result)
        return result

    def _attempt(self) -> tuple:
        """Train from the last mark to the end on the pool's worker; the outcome."""
        self.attempts += 1
        actor = self.pool.actors[0]
        theta, state, position = self.mark
        optimizer = copy.deepcopy(self.optimizer)
        optimizer.load_state(state)
        resume = None if position == Position(0, 0, 0) else position
        waits = self.pool.waits
        asks = None if self.end_early is None else list(self.end_early.milestones)
        waits.all([actor.solo_start.remote(theta, optimizer, self.plan, self.epochs, resume,
                                           schedule_of(self.checkpointer), asks)],
                  [[0]], time.monotonic() + self._silence_bound())
        heard = time.monotonic()
        stop_sent = False
        said = None  # a step's "workers" event, handed on with its step
        answer = None  # to the worker's ask, sent with the next poll
        while True:
            if not stop_sent and self.should_stop():
                actor.solo_stop.remote()
                stop_sent = True
            if stop_sent and waits.give_up():  # the worker's thread did not come to a step's end
                raise StepAbandoned("stopped while the worker did not answer")
            bound = self._silence_bound()
            events = waits.all([actor.solo_poll.remote(POLL_SECONDS, answer)], [[0]],
                               heard + bound + POLL_SECONDS)[0]
            answer = None
            if not events:
                if time.monotonic() - heard > bound:  # the actor answers, its training does not
                    raise WorkersLost([0], f"hung: no step within {bound:.0f} s (cluster.hang_seconds)")
                continue
            heard = time.monotonic()
            for event in events:
                kind = event[0]
                if kind == "workers":
                    if event[1]:
                        waits.step_bound.record(max(event[1]))  # a step's compute: the hang bound goes by it
                    said = event
                elif kind == "step":
                    if event[1] > self.steps_handed:  # not one taken again after a loss
                        self._hand_on([said, event] if said is not None else [event])
                        self.steps_handed = event[1]
                    said = None
                elif kind == "epoch":
                    if event[1] >= self.next_epoch:
                        self._hand_on([event])
                        self.epoch_metrics.append((event[1], event[2]))
                        self.next_epoch = event[1] + 1
                elif kind in ("mark", "checkpoint"):
                    if kind == "checkpoint":
                        self._hand_on([event])
                    self.mark = event[1:4]
                elif kind == "ask":  # a milestone: the sweep decides (it may wait for earlier trials)
                    answer = (event[1], self._decide(event[1], event[2]))
                    heard = time.monotonic()
                elif kind == "end":
                    return event[1]
                else:
                    self._hand_on([event])

    def _decide(self, epochs_done: int, metrics: dict) -> bool:
        """The sweep's answer at a milestone, once: a replacement that reaches it again gets the same."""
        if epochs_done not in self.answers:
            self.answers[epochs_done] = self.end_early(epochs_done, metrics)
        return self.answers[epochs_done]

    def _hand_on(self, events: list[tuple]) -> None:
        """Events to the driver's listeners and checkpointer (the pool's worker seconds kept current)."""
        replay(events, self.pool, self.listeners, self.optimizer, self.checkpointer)

    def _silence_bound(self) -> float:
        """How long the worker may send nothing: a step's hang bound and an evaluation's."""
        return self.pool.waits.step_bound.seconds() + self.pool._evaluation_bound()

    def _whole(self, result: TrainResult) -> None:
        """A result over every attempt (the last one's counts only its own epochs)."""
        metrics = [m for _, m in self.epoch_metrics]
        result.epochs, result.history = len(metrics), metrics
        result.param_hashes = {epoch + 1: m["param_hash"] for epoch, m in self.epoch_metrics}
        if metrics:
            last = metrics[-1]
            result.final_loss = last["epoch_loss"]
            result.val_loss, result.val_accuracy = last.get("val_loss"), last.get("val_accuracy")
            seconds = sum(self.plan.n_train / m["examples_per_second"] for m in metrics)
            result.examples_per_second = self.plan.n_train * len(metrics) / seconds if seconds else 0.0
