"""Early stopping for sweeps: successive halving at epoch milestones (ASHA's rule).

Milestones are at `grace` epochs, then grace*rf, grace*rf^2, ... below a trial's last
epoch (rf: the reduction factor). A trial that reaches a milestone is compared with
those that reached it before: it goes on only if its score (val_loss, or the epoch's
training loss when nothing is held out) ranks in the best ceil(n / rf) of the n
trials recorded there, itself included. So the first to arrive always goes on, and
with rf = 2 the second goes on only if it beats the first. This is the rule of Ray
Tune's ASHAScheduler (asynchronous: no trial waits for a whole rung to fill).

One difference, for reproducible sweeps: "before" means earlier in the sweep's
order, not earlier in time. A trial that reaches a milestone waits until every
earlier trial has reached it too (or has ended: finished, failed, or stopped at an
earlier milestone). The decisions are then those of the same sweep run one trial
after the other, whatever the concurrency and timing. Trials are admitted in order,
so the earliest running trial never waits and the wait always ends.
"""

from __future__ import annotations

import math
import threading


def milestones(grace: int, reduction_factor: int, epochs: int) -> list[int]:
    """[grace, grace*rf, grace*rf^2, ...] below `epochs` (at the last epoch there is nothing to stop)."""
    out, m = [], grace
    while m < epochs:
        out.append(m)
        m *= reduction_factor
    return out


class SuccessiveHalving:
    """The decisions of one sweep's trials, numbered 0..n-1 in the sweep's order;
    called from the trials' threads."""

    def __init__(self, grace: int, reduction_factor: int, should_give_up=lambda: False):
        """should_give_up(): when true (Ctrl-C), a waiting trial stops waiting and goes on
        (it will stop after its next step anyway)."""
        self.grace, self.rf = grace, reduction_factor
        self.should_give_up = should_give_up
        self.rungs: dict[int, dict[int, float]] = {}  # milestone -> {trial: score}
        self.ended: set[int] = set()
        self.epochs: dict[int, int] = {}  # trial -> its epochs (a swept train.epochs differs)
        self._changed = threading.Condition()

    def end(self, trial: int) -> None:
        """Trial `trial` reaches no further milestone (it finished, failed or stopped)."""
        with self._changed:
            self.ended.add(trial)
            self._changed.notify_all()

    def decide(self, trial: int, epochs_done: int, score: float, epochs: int) -> bool:
        """True if trial `trial` stops now, after `epochs_done` of its `epochs` epochs."""
        if epochs_done not in milestones(self.grace, self.rf, epochs):
            return False
        with self._changed:
            rung = self.rungs.setdefault(epochs_done, {})

            def earlier_pending():
                return any(j not in rung and j not in self.ended and epochs_done < self.epochs.get(j, math.inf)
                           for j in range(trial))

            while earlier_pending() and not self.should_give_up():
                self._changed.wait(timeout=0.5)
            rung[trial] = score
            self._changed.notify_all()
            # Only earlier trials are there: a later one waits for this one before recording.
            order = sorted(rung, key=lambda j: (rung[j], j))
            return order.index(trial) >= math.ceil(len(rung) / self.rf)

    def hook(self, trial: int, epochs: int) -> EndEarly:
        """The coordinator's `end_early(epochs_done, metrics)` for trial `trial`, of `epochs` epochs."""
        with self._changed:
            self.epochs[trial] = epochs
        return EndEarly(self, trial, epochs)


class EndEarly:
    """A trial's `end_early(epochs_done, metrics)`: True at a milestone where it ranks
    out. `milestones`: the only epochs at which it can say True, so a coordinator that
    runs away from the sweep (workers/solo.py) asks at those alone."""

    def __init__(self, halving: SuccessiveHalving, trial: int, epochs: int):
        self.halving, self.trial, self.epochs = halving, trial, epochs
        self.milestones = milestones(halving.grace, halving.rf, epochs)

    def __call__(self, epochs_done: int, metrics: dict) -> bool:
        score = metrics.get("val_loss", metrics["epoch_loss"])
        return self.halving.decide(self.trial, epochs_done, score, self.epochs)
