"""The Ray pool's rules (workers/pool_policy.py), without Ray: every branch the
live-cluster tests reach through real losses and free CPUs (test_worker_loss.py,
test_elastic.py, test_hung_worker.py, test_multinode.py), decided in microseconds.
The live tests then only need to show that the pool carries the decisions out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.pool_policy import FailurePolicy, Grow, Replace, ScalingPolicy, Shrink, Stop, start_size


def test_the_policies_need_no_ray():
    code = "import sys, workers.pool_policy; assert 'ray' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- on a loss: replace while the count allows, else stop ---

def test_a_loss_within_max_failures_is_replaced_over_the_same_ranks():
    policy = FailurePolicy(max_failures=3, min_workers=1)
    assert policy.on_loss(1, [1], "worker 1 died") == Replace((1,))
    assert policy.on_loss(3, [2, 0, 2], "two at once") == Replace((0, 2))  # named twice: once, in rank order


def test_the_loss_past_max_failures_stops_the_job_naming_the_count_and_the_last_cause():
    policy = FailurePolicy(max_failures=3, min_workers=1)
    assert policy.on_loss(3, [0], "x") == Replace((0,))  # the third loss of three allowed
    decision = policy.on_loss(4, [1], "worker 1 (rows 501-1003) died while starting (killed)")
    assert decision == Stop("4 worker losses, more than train.max_worker_failures=3 allows "
                            "(last: worker 1 (rows 501-1003) died while starting (killed))")


def test_no_loss_allowed_stops_at_the_first_in_the_singular():
    decision = FailurePolicy(max_failures=0, min_workers=1).on_loss(1, [0], "gone")
    assert decision == Stop("1 worker loss, more than train.max_worker_failures=0 allows (last: gone)")


def test_two_lost_at_once_count_twice():
    # The pool adds len(lost) before it asks: two lost with one loss left allowed is a stop.
    policy = FailurePolicy(max_failures=2, min_workers=1)
    failures = 1
    failures += 2
    assert isinstance(policy.on_loss(failures, [0, 1], "node removed"), Stop)


def test_an_error_that_lost_no_worker_is_not_a_loss():
    # The pool then raises the original error (a bug, not a lost worker).
    assert FailurePolicy(max_failures=3, min_workers=1).on_loss(0, [], "a bug") is None


def test_losses_over_the_pools_life_add_up():
    policy, failures, decisions = FailurePolicy(max_failures=2, min_workers=1), 0, []
    for lost in ([1], [0], [1]):
        failures += len(lost)
        decisions.append(policy.on_loss(failures, lost, "killed"))
    assert decisions[:2] == [Replace((1,)), Replace((0,))]
    assert decisions[2] == Stop("3 worker losses, more than train.max_worker_failures=2 allows (last: killed)")


# --- a replacement that could not start: shrink, down to min_workers ---

WHAT = "worker 1 (rows 501-1003) lost (killed); no CPU for a replacement within 5 s"


def test_replacements_that_cannot_start_shrink_the_pool_to_the_workers_left():
    decision = FailurePolicy(max_failures=3, min_workers=1).on_unplaced([2, 0], WHAT)
    assert decision == Shrink((0, 2)) and decision.to == 2


def test_shrinking_to_exactly_min_workers_goes_on():
    assert FailurePolicy(max_failures=3, min_workers=2).on_unplaced([0, 1], WHAT) == Shrink((0, 1))


def test_fewer_left_than_min_workers_stops_the_job():
    decision = FailurePolicy(max_failures=3, min_workers=2).on_unplaced([0], WHAT)
    assert decision == Stop(f"{WHAT}, and 1 left is fewer than cluster.min_workers=2")


def test_none_left_stops_the_job():
    assert isinstance(FailurePolicy(max_failures=3, min_workers=1).on_unplaced([], WHAT), Stop)


# --- the size of an auto pool ---

@pytest.mark.parametrize("free, expected", [(0, 2), (1, 2), (3, 3), (5, 4), (100, 4)])
def test_an_auto_pool_starts_on_the_free_cpus_between_min_and_max(free, expected):
    assert start_size(free, min_workers=2, max_workers=4) == expected


# --- growth on free CPUs ---

def test_a_fixed_size_pool_never_looks_nor_grows():
    policy = ScalingPolicy(max_workers=None, check_seconds=0.0)
    assert not policy.should_look(2, now=100.0, last_look=0.0)
    assert policy.on_free(2, 8) is None


def test_the_cluster_is_asked_at_most_every_check_seconds():
    policy = ScalingPolicy(max_workers=4, check_seconds=5.0)
    assert not policy.should_look(2, now=104.9, last_look=100.0)
    assert policy.should_look(2, now=105.0, last_look=100.0)
    assert ScalingPolicy(max_workers=4, check_seconds=0.0).should_look(2, now=100.0, last_look=100.0)


def test_a_pool_at_max_workers_does_not_look():
    assert not ScalingPolicy(max_workers=3, check_seconds=0.0).should_look(3, now=100.0, last_look=0.0)


def test_free_cpus_grow_the_pool_by_as_many_up_to_max_workers():
    policy = ScalingPolicy(max_workers=5, check_seconds=5.0)
    assert policy.on_free(2, 0) is None
    assert policy.on_free(2, 1) == Grow(3)
    assert policy.on_free(2, 2) == Grow(4)
    assert policy.on_free(2, 9) == Grow(5)
    assert policy.on_free(5, 9) is None


def test_workers_started_on_free_cpus_join_only_all_together_and_with_their_rows_read():
    assert ScalingPolicy.joins(started=2, ready=2, failed_reading=False)
    assert not ScalingPolicy.joins(started=2, ready=1, failed_reading=False)  # one died: its node left again
    assert not ScalingPolicy.joins(started=1, ready=1, failed_reading=True)
