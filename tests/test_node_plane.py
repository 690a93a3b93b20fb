"""The shared-memory plane of one node, without Ray: peers in threads and in a child
process of this test, against sums worked out here; strangers of another user (a
forked child that drops to uid 65534) and of this one, which must not attach, learn
anything, or hold up the real peers."""

import multiprocessing
import os
import socket
import threading
import time

import numpy as np
import pytest

from trainer.pool import StepAbandoned
from workers import node_plane, plane_host
from workers.node_plane import HELLO, OP_EVAL, OP_STEP, PeerLost, PeersSilent
from workers.plane_host import PlaneHost
from workers.plane_peer import PlanePeer

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
        PlanePeer(host.ticket, s, f, (evals or fake_eval)(s)))) for slot, step in enumerate(steps)]
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


def _peer_that_dies(ticket):
    def die(theta, epoch, k, out):
        os._exit(1)  # the process ends in the middle of a step, as under SIGKILL

    PlanePeer(ticket, 0, die, fake_eval(0))
    time.sleep(60)


def test_a_lost_peer_error_survives_pickling():
    """A node's leader raises it to the coordinator through Ray, which pickles it."""
    import pickle

    err = pickle.loads(pickle.dumps(PeerLost(3, "its process ended")))
    assert isinstance(err, PeerLost) and err.slot == 3
    assert str(err) == "worker in slot 3 of its node: its process ended"


def test_a_peer_process_that_dies_is_seen_at_once():
    host = PlaneHost(P, np.float32, 1)
    child = multiprocessing.get_context("fork").Process(target=_peer_that_dies, args=(host.ticket,))
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


# ---- strangers: the plane's address is public, its memory is not -----------------------

NOBODY = 65534  # an unprivileged user (these tests run as root, which may become it)


class Stranger:
    """A process of another user that connects to the plane's public address before
    (or between) the real peers, sends `greeting` (or nothing) and waits: it reports
    what the host sent it once the host closes the connection."""

    def __init__(self, address: str, greeting: bytes = b""):
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            try:
                # Like a real stranger it holds nothing of this process's (the fork's
                # copies of the host's sockets and memory fds are closed).
                os.close(r)
                os.closerange(3, w)
                os.closerange(w + 1, 1 << 16)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(address)
                if greeting:
                    s.sendall(greeting)
                os.write(w, f"connected as {os.getuid()}\n".encode())
                s.settimeout(60)
                msg, fds, _, _ = socket.recv_fds(s, 64, 4)
                os.write(w, f"closed; got {len(msg)} bytes, {len(fds)} fds\n".encode())
            except BaseException as e:
                os.write(w, f"{type(e).__name__}: {e}\n".encode())
            finally:
                os._exit(0)
        os.close(w)
        self._out = os.fdopen(r)
        line = self._out.readline()
        assert line == f"connected as {NOBODY}\n", line

    def outcome(self) -> str:
        """What it saw: waits until the host has closed its connection (60 s at most)."""
        return self._out.readline().strip()

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        self._out.close()


def check_steps(host):
    theta = np.arange(P, dtype=np.float64)
    host.send(OP_STEP, theta, 1, 2)
    n, _, _ = host.reduce(host.gather(timeout=10))
    np.testing.assert_array_equal(host.sums[0], 4 * theta + 2 * 102)  # slots 0 and 2 summed examples
    assert n == 8


@pytest.mark.parametrize("when", ["before the peers", "between two attachings"])
@pytest.mark.parametrize("greets", [False, True], ids=["silent", "valid-looking greeting"])
def test_another_users_connection_is_closed_unread_and_the_peers_attach(plane, when, greets):
    """The report: a silent stranger made the host wait 60 s in its greeting read and
    end the job. Now it is closed at accept; even the right token (which a stranger
    cannot know) does not make another user a peer."""
    host, peers = plane
    greeting = HELLO.pack(0, bytes.fromhex(host.ticket[1])) if greets else b""
    steps = [fake_step(slot, n) for slot, n in enumerate((5, 0, 3))]
    t = time.perf_counter()
    if when == "before the peers":
        stranger = Stranger(host.address, greeting)
        connect(host, peers, steps)
    else:  # it waits in the queue while nothing accepts; then another peer attaches (a grow)
        connect(host, peers, steps[:2])
        stranger = Stranger(host.address, greeting)
        late = threading.Thread(target=lambda: peers.append(PlanePeer(host.ticket, 2, steps[2], fake_eval(2))))
        late.start()
        host.accept(3, timeout=30)
        late.join()
    try:
        assert time.perf_counter() - t < 20  # not the 30 s time-out: nothing waited on the stranger
        # Nothing sent to it. A greeting left unread makes the close a reset (Linux
        # resets a Unix socket closed with data in its queue): proof it was not read.
        seen = stranger.outcome()
        if greets:
            assert seen == "ConnectionResetError: [Errno 104] Connection reset by peer", seen
        else:
            assert seen == "closed; got 0 bytes, 0 fds", seen
        assert sorted(host.peers) == [0, 1, 2]
        check_steps(host)
    finally:
        stranger.close()


def test_a_silent_or_wrong_connection_of_this_user_holds_up_no_peer(plane, monkeypatch):
    """Greetings are read side by side, each with its own deadline: a silent one (given
    a long deadline here) does not delay the peers; a wrong token is closed at once."""
    monkeypatch.setattr(plane_host, "GREETING_TIMEOUT_S", 120.0)
    host, peers = plane
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    wrong = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        silent.connect(host.address)
        wrong.connect(host.address)
        wrong.sendall(HELLO.pack(0, bytes(node_plane.TOKEN_BYTES)))
        t = time.perf_counter()
        attach(host, peers)  # accept(3, timeout=10)
        assert time.perf_counter() - t < 10
        wrong.settimeout(10)
        assert wrong.recv(64) == b""  # closed, nothing sent
        check_steps(host)
        # The silent one waits out its own greeting deadline (a later accept may still
        # take it) and is closed with the plane at the latest, nothing sent.
        silent.settimeout(0.2)
        with pytest.raises(socket.timeout):
            silent.recv(64)
        host.close()
        silent.settimeout(10)
        assert silent.recv(64) == b""
    finally:
        silent.close()
        wrong.close()


def test_a_greeting_under_way_when_one_accept_ends_is_finished_by_the_next():
    """The pool accepts a second at a time: a peer half-way through its greeting when a
    call times out keeps its connection, and the next call attaches it."""
    host = PlaneHost(P, np.float64, 1)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        peer.connect(host.address)
        hello = HELLO.pack(0, bytes.fromhex(host.ticket[1]))
        peer.sendall(hello[:5])
        with pytest.raises(TimeoutError):
            host.accept(1, timeout=0.3)
        peer.sendall(hello[5:])
        host.accept(1, timeout=5)
        assert list(host.peers) == [0]
        msg, fds, _, _ = socket.recv_fds(peer, 64, 2)
        assert len(fds) == 2
        for fd in fds:
            os.close(fd)
    finally:
        peer.close()
        host.close()


def test_a_connection_that_never_greets_is_closed_after_the_greeting_time_out(monkeypatch):
    monkeypatch.setattr(plane_host, "GREETING_TIMEOUT_S", 0.2)
    host = PlaneHost(P, np.float64, 1)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        silent.connect(host.address)
        with pytest.raises(TimeoutError) as e:
            host.accept(1, timeout=1.5)
        # Closed by its own deadline, not at the end of accept: counted as refused.
        assert str(e.value) == ("1 worker(s) did not attach to the node's shared memory within 1.5 s "
                                "(1 other connection(s) refused)")
    finally:
        silent.close()
        host.close()


def test_a_peer_with_a_wrong_token_is_refused_in_one_line():
    host = PlaneHost(P, np.float64, 1)
    outcome = []

    def wrong_peer():
        try:
            PlanePeer((host.address, "00" * node_plane.TOKEN_BYTES), 0, fake_step(0, 1), fake_eval(0), timeout=10)
        except Exception as e:
            outcome.append(e)

    peer = threading.Thread(target=wrong_peer)
    peer.start()  # it connects (into the queue) at once; accept reads it below
    try:
        with pytest.raises(TimeoutError):
            host.accept(1, timeout=1.5)
        peer.join()
        assert not host.peers
        assert [type(e) for e in outcome] == [ConnectionError], outcome
        assert str(outcome[0]) == "the node's shared memory refused the worker in slot 0"
    finally:
        peer.join()
        host.close()


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
