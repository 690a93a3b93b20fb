"""The shared-memory plane of one node, without Ray: peers in threads and in a child
process of this test, against sums worked out here."""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from trainer.pool import StepAbandoned
from workers.node_plane import OP_EVAL, OP_STEP, PeerLost, PeersSilent, PlaneHost, PlanePeer

P = 7


def fake_step(slot, n):
    """A peer's step: its sums are (slot + 1) * theta + epoch * 100 + k, over n examples."""

    def step(theta, epoch, k, out):
        out[:] = (slot + 1) * theta + epoch * 100 + k
        return n, 0.5 * (slot + 1), 0.001 * (slot + 1)

    return step


def fake_eval(slot):
    return lambda theta: (10 + slot, float(theta.sum()), slot, 10 + slot)


@pytest.fixture
def plane():
    host = PlaneHost(P, np.float64, 3)
    peers = []
    yield host, peers
    host.close()
    for p in peers:
        p.close()


def connect(host, peers, steps, evals=None):
    """Peers attach in threads (a peer waits for the host to accept it, as in an actor)."""
    threads = [threading.Thread(target=lambda s=slot, f=step: peers.append(
        PlanePeer(host.address, s, f, (evals or fake_eval)(s)))) for slot, step in enumerate(steps)]
    for t in threads:
        t.start()
    host.accept(len(steps), timeout=10)
    for t in threads:
        t.join()


def attach(host, peers, ns=(5, 0, 3)):
    connect(host, peers, [fake_step(slot, n) for slot, n in enumerate(ns)])


def test_a_step_adds_the_slots_with_examples_in_slot_order(plane):
    host, peers = plane
    attach(host, peers)
    theta = np.arange(P, dtype=np.float64)
    for epoch, k in ((0, 0), (2, 5)):  # twice: the buffers are reused
        host.send(OP_STEP, theta, epoch, k)
        replies = host.gather(timeout=10)
        assert sorted(replies) == [0, 1, 2]
        n, loss_sum, seconds = host.reduce(replies)
        # Slot 1 summed no examples: whatever it wrote is not added.
        expected = (1 * theta + epoch * 100 + k) + (3 * theta + epoch * 100 + k)
        np.testing.assert_array_equal(host.sums[0], expected)
        assert n == 8 and loss_sum == pytest.approx(0.5 + 1.0 + 1.5)
        assert seconds == pytest.approx(0.003)
        theta = theta * 2


def test_an_evaluation_returns_each_peers_counts(plane):
    host, peers = plane
    attach(host, peers)
    theta = np.ones(P)
    host.send(OP_EVAL, theta)
    replies = host.gather(timeout=10)
    assert replies == {s: (10 + s, float(P), s, 10 + s) for s in range(3)}


def test_no_slot_with_examples_leaves_zeros(plane):
    host, peers = plane
    attach(host, peers, ns=(0, 0, 0))
    host.send(OP_STEP, np.ones(P), 0, 0)
    n, _, _ = host.reduce(host.gather(timeout=10))
    assert n == 0 and not host.sums[0].any()


def test_an_error_in_a_peer_is_raised_by_the_host_with_its_message(plane):
    host, peers = plane

    def broken(theta, epoch, k, out):
        raise ValueError("shapes do not match")

    connect(host, peers, [broken])
    host.send(OP_STEP, np.ones(P), 0, 0)
    with pytest.raises(RuntimeError, match="ValueError: shapes do not match"):
        host.gather(timeout=10)


def _peer_that_dies(address):
    def die(theta, epoch, k, out):
        os._exit(1)  # the process ends in the middle of a step, as under SIGKILL

    PlanePeer(address, 0, die, fake_eval(0))
    time.sleep(60)


def test_a_lost_peer_error_survives_pickling():
    """A node's leader raises it to the coordinator through Ray, which pickles it."""
    import pickle

    err = pickle.loads(pickle.dumps(PeerLost(3, "its process ended")))
    assert isinstance(err, PeerLost) and err.slot == 3
    assert str(err) == "worker in slot 3 of its node: its process ended"


def test_a_peer_process_that_dies_is_seen_at_once():
    host = PlaneHost(P, np.float32, 1)
    child = multiprocessing.get_context("fork").Process(target=_peer_that_dies, args=(host.address,))
    child.start()
    try:
        host.accept(1, timeout=20)
        host.send(OP_STEP, np.ones(P, np.float32), 0, 0)
        t = time.perf_counter()
        with pytest.raises(PeerLost, match="slot 0 .*its process ended"):
            host.gather(timeout=60)
        assert time.perf_counter() - t < 10  # seen when the socket closes, not at the time-out
    finally:
        child.kill()
        child.join()
        host.close()


def test_peers_of_the_host_see_the_same_memory(plane):
    """theta written by the host is what the peers compute on, with no copy sent."""
    host, peers = plane
    seen = []

    def record(theta, epoch, k, out):
        seen.append(theta.copy())
        out[:] = 0
        return 1, 0.0, 0.0

    connect(host, peers, [record])
    theta = np.linspace(-1, 1, P)
    host.send(OP_STEP, theta, 0, 0)
    host.gather(timeout=10)
    np.testing.assert_array_equal(seen[0], theta)


def silent_step(release: threading.Event):
    """A peer's step that does not answer until `release` is set (a hung worker)."""

    def step(theta, epoch, k, out):
        release.wait(30)
        out[:] = 0
        return 0, 0.0, 0.0

    return step


def test_silent_peers_are_named_together_after_the_timeout(plane):
    host, peers = plane
    release = threading.Event()
    connect(host, peers, [fake_step(0, 5), silent_step(release), silent_step(release)])
    host.send(OP_STEP, np.ones(P), 0, 0)
    t = time.perf_counter()
    try:
        with pytest.raises(PeersSilent, match=r"slot\(s\) 1, 2 of its node: no answer within 0.5 s") as info:
            host.gather(timeout=0.5)
        assert 0.5 <= time.perf_counter() - t < 5
        assert info.value.slots == [1, 2]
    finally:
        release.set()
    import pickle  # a leader raises it to the coordinator through Ray

    err = pickle.loads(pickle.dumps(info.value))
    assert isinstance(err, PeerLost) and err.slots == [1, 2] and err.slot == 1


def test_a_stop_request_ends_the_wait_for_a_silent_peer(plane):
    host, peers = plane
    release, asked = threading.Event(), []
    connect(host, peers, [fake_step(0, 5), silent_step(release)])
    host.send(OP_STEP, np.ones(P), 0, 0)
    threading.Timer(0.3, asked.append, (True,)).start()  # Ctrl-C, 0.3 s into the wait
    t = time.perf_counter()
    try:
        with pytest.raises(StepAbandoned):
            host.gather(timeout=60, should_stop=lambda: bool(asked))
        assert time.perf_counter() - t < 5  # not the 60 s
    finally:
        release.set()
