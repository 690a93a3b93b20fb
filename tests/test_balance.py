"""The rebalancing policy (workers/balance.py), in milliseconds and without Ray:
the cuts it picks against every possible cut, when it declines to move, and the
Balancer's measurements and timing (a clock of the test's own)."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from workers.balance import Balancer, balanced_cuts, step_times


def worst(rates, cuts, sizes):
    prefix = [0, *itertools.accumulate(sizes)]
    return max(step_times(rates, cuts, prefix))


def best_possible(rates, sizes):
    """The least largest step time over every way to cut the units in rank order,
    each worker with at least one row: what no policy can beat."""
    units, w = len(sizes), len(rates)
    best = float("inf")
    for inner in itertools.combinations(range(1, units), w - 1):
        cuts = [0, *inner, units]
        if all(sum(sizes[cuts[i]:cuts[i + 1]]) >= 1 for i in range(w)):
            best = min(best, worst(rates, cuts, sizes))
    return best


def test_equal_workers_on_an_even_split_stay():
    assert balanced_cuts([1.0, 1.0, 1.0], [0, 3, 6, 9], [1] * 9) is None


def test_a_slow_worker_gets_fewer_rows():
    # Worker 2 takes twice as long per row: 3, 3, 3 rows cost 3, 3, 6; 4, 4, 2 cost 4.
    new = balanced_cuts([1.0, 1.0, 2.0], [0, 3, 6, 9], [1] * 9)
    assert new is not None and worst([1, 1, 2], new, [1] * 9) == 4
    assert new[0] == 0 and new[-1] == 9 and new[3] - new[2] == 2


def test_no_move_below_the_threshold():
    # 100 rows each at 1.0, 1.0, 1.05: the best cut (101, 102, 97) saves under 3%.
    assert balanced_cuts([1.0, 1.0, 1.05], [0, 100, 200, 300], [1] * 300) is None
    assert balanced_cuts([1.0, 1.0, 1.05], [0, 100, 200, 300], [1] * 300, threshold=0.0) is not None


def test_unmeasured_workers_or_a_single_worker_never_move():
    assert balanced_cuts([1.0, 0.0], [0, 2, 4], [1] * 4) is None
    assert balanced_cuts([1.0], [0, 4], [1] * 4) is None


def test_units_without_rows_are_never_a_workers_only_units():
    # Units of 0 rows (validation rows only): every worker must still hold training rows.
    sizes = [0, 5, 0, 0, 5, 0, 5, 0]
    new = balanced_cuts([1.0, 1.0, 100.0], [0, 2, 4, 8], sizes)
    assert new is not None
    assert all(sum(sizes[new[i]:new[i + 1]]) >= 1 for i in range(3))


@pytest.mark.parametrize("seed", range(40))
def test_the_cuts_are_the_best_possible(seed):
    rng = random.Random(seed)
    workers = rng.randint(2, 4)
    sizes = [rng.choice([0, 1, 2, 3, 5, 8]) for _ in range(rng.randint(workers + 1, 9))]
    sizes[-1] = max(sizes[-1], 1)
    while sum(1 for s in sizes if s) < workers:
        sizes[rng.randrange(len(sizes))] = 1
    rates = [rng.uniform(0.2, 3.0) for _ in range(workers)]
    bad = [0, *range(1, workers), len(sizes)]  # the first workers one unit each: far from best
    new = balanced_cuts(rates, bad, sizes, threshold=0.0)
    optimum = best_possible(rates, sizes)
    if new is None:  # declined: only when the given cuts are already the best
        assert worst(rates, bad, sizes) <= optimum * (1 + 1e-9)
    else:
        assert new[0] == 0 and new[-1] == len(sizes) and new == sorted(new)
        assert worst(rates, new, sizes) <= optimum * (1 + 1e-6)


def test_a_thousand_units_take_milliseconds():
    sizes = [60] * 1000
    t0 = time.perf_counter()
    new = balanced_cuts([1.0, 1.0, 2.0], [0, 333, 666, 1000], sizes)
    assert time.perf_counter() - t0 < 1.0  # generous: a loaded machine; about 5 ms alone
    assert new == [0, 400, 800, 1000]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def measured(balancer, seconds_per_row, steps, rows=100):
    for _ in range(steps):
        for rank, rate in enumerate(seconds_per_row):
            balancer.record(rank, rate * rows, rows)


def test_balancer_waits_for_its_interval_and_for_fresh_steps():
    clock = Clock()
    b = Balancer(every_seconds=5.0, clock=clock, min_steps=4, min_step_seconds=0, step_toward=1.0)
    cuts, sizes = [0, 3, 6, 9], [1] * 9
    measured(b, [1.0, 1.0, 2.0], 3)
    clock.t = 6.0
    assert b.propose(cuts, sizes) is None  # 3 steps measured: too few
    measured(b, [1.0, 1.0, 2.0], 1)
    move = b.propose(cuts, sizes)
    assert move is not None and move.slowest == 2 and move.ratio == pytest.approx(2.0)
    assert move.old == cuts and move.after < move.before
    b.changed(keep_rates=True)
    measured(b, [1.0, 1.0, 2.0], 4)
    clock.t = 10.0
    assert b.propose(cuts, sizes) is None  # 4 s since the move: too soon
    clock.t = 11.5
    assert b.propose(cuts, sizes) is not None
    assert b.rates(3) == pytest.approx([1.0, 1.0, 2.0])


def test_steps_too_short_to_matter_never_move():
    clock = Clock()
    b = Balancer(every_seconds=0.0, clock=clock, min_step_seconds=1e-3)
    measured(b, [1e-6, 1e-6, 5e-6], 8)  # 0.5 ms a step at the slowest: noise, little to gain
    assert b.propose([0, 3, 6, 9], [1] * 9) is None
    measured(b, [1e-6, 1e-6, 5e-5], 8)  # 5 ms
    assert b.propose([0, 3, 6, 9], [1] * 9) is not None


def test_a_move_goes_partway_and_steady_rates_converge():
    clock = Clock()
    b = Balancer(every_seconds=0.0, clock=clock, min_steps=1, min_step_seconds=0, step_toward=0.5)
    cuts, sizes = [0, 100, 200, 300], [1] * 300
    rates = [1.0, 1.0, 2.0]  # best: 120, 120, 60 rows
    move = b.propose(cuts, sizes) if measured(b, rates, 1) is None else None
    assert move.new == [0, 110, 220, 300]  # half of the way: 110, 110, 80
    for _ in range(6):
        cuts = move.new
        b.changed(keep_rates=True)
        measured(b, rates, 1)
        move = b.propose(cuts, sizes)
        if move is None:
            break
    assert move is None and worst(rates, cuts, sizes) <= 1.1 * 120  # within the threshold of the best


def test_new_workers_are_measured_anew():
    clock = Clock()
    b = Balancer(every_seconds=0.0, clock=clock)
    measured(b, [1.0, 3.0], 8)
    b.changed(keep_rates=False)  # a resize or a replacement: other workers in those ranks
    assert b.rates(2) == [0.0, 0.0]
    assert b.propose([0, 2, 4], [1] * 4) is None


def test_steps_without_rows_are_not_measurements():
    b = Balancer(every_seconds=0.0, clock=Clock(), min_steps=1, min_step_seconds=0)
    b.record(0, 0.5, 0)
    b.record(1, 0.5, 10)
    assert b.rates(2) == [0.0, 0.05]
    assert b.propose([0, 2, 4], [1] * 4) is None  # worker 0 has no rate yet
