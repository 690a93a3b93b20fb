"""The early-stopping rule on its own (no training): successive halving at milestones,
decided as if the trials reached each milestone in the sweep's order."""

import math
import threading
import time

from experiments.sweeps.early_stopping import SuccessiveHalving, milestones


def test_milestones_are_grace_times_powers_of_the_factor_below_the_last_epoch():
    assert milestones(1, 2, 10) == [1, 2, 4, 8]
    assert milestones(2, 3, 20) == [2, 6, 18]
    assert milestones(3, 2, 3) == []  # at the last epoch there is nothing left to stop


def rank_rule(scores, factor):
    """Stopped trials at one milestone, by the README's words: trial i goes on only if it
    ranks in the best ceil(n / factor) of the n = i + 1 trials up to it."""
    return {i for i in range(len(scores))
            if sorted(scores[:i + 1]).index(scores[i]) >= math.ceil((i + 1) / factor)}


def test_decisions_follow_the_sweeps_order_not_the_clock():
    """Six trials reach epoch 1 in reverse order (the last one first): the decisions are
    those of the rule applied in the sweep's order, as one after the other would give."""
    scores = [0.5, 0.9, 0.4, 0.6, 0.45, 1.2]
    halving = SuccessiveHalving(grace=1, reduction_factor=2)
    hooks = [halving.hook(i, epochs=4) for i in range(len(scores))]
    stopped, arrived = {}, []

    def trial(i):
        time.sleep(0.05 * (len(scores) - i))  # later trials get there sooner
        arrived.append(i)
        stopped[i] = hooks[i](1, {"val_loss": scores[i], "epoch_loss": 9.0})

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(len(scores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert arrived[0] == len(scores) - 1  # the clock's order was the reverse one
    assert {i for i, s in stopped.items() if s} == rank_rule(scores, 2) == {1, 3, 5}


def test_a_trial_that_ended_early_is_not_waited_for_and_training_loss_stands_in():
    halving = SuccessiveHalving(grace=1, reduction_factor=3)
    first, second = halving.hook(0, epochs=9), halving.hook(1, epochs=9)
    halving.end(0)  # failed before its first milestone
    assert second(1, {"epoch_loss": 0.7}) is False  # alone at the milestone: goes on
    assert first is not second
    assert halving.rungs[1] == {1: 0.7}
    assert second(2, {"epoch_loss": 0.1}) is False  # not a milestone (1, 3)
