"""One node's shared-memory data plane: parameters out and shard sums back with no
copy through Ray, no pickling and no spinning.

A *host* (the coordinator's process on its own node, or one worker per other node)
owns two anonymous shared buffers (`memfd`s):

    theta  (P,)        the parameters of the step, written once by the host
    sums   (S, P)      one slot per worker on the node: its Eq. 12 sums (GW, Gb flat)

Workers on the node (*peers*) connect to the host over a Unix socket in Linux's
abstract namespace (no file to clean up), receive both buffers' file descriptors
(SCM_RIGHTS) and map them. That name is visible to every process on the machine, so
the host takes only its own: a connection from another user is closed before anything
is read from it, and a peer must greet with the host's random token, which reaches
it through Ray with the socket's name (the host's `ticket`) and never appears on the
machine. Greetings are read with a short deadline each, all connections at once, so
no stranger (silent, slow, or wrong) can block, slow or end the attaching of the
real peers. Per step the host writes theta, sends each peer a
12-byte command (op, epoch, k) and blocks in `recv` until each has answered with
(n, loss_sum, compute_seconds); a peer blocks in `recv` between steps. Nothing
busy-waits, so the cores stay with BLAS (a spinning reader cost an actor 7x on two
cores; see the README's Speed section).

The host then adds the slots in rank order into slot 0: the node's sums leave it as
ONE array, whatever the number of workers on it (the README's Scaling section).
A peer that dies closes its socket, which the host sees at once as `PeerLost`; one
that is alive but silent past the gather's timeout (hung) is `PeersSilent`.
"""

from __future__ import annotations

import mmap
import os
import secrets
import select
import selectors
import socket
import struct
import threading
import time

import numpy as np

from trainer.pool import StepAbandoned

OP_STOP, OP_STEP, OP_EVAL = 0, 1, 2
COMMAND = struct.Struct("<iqq")  # op, epoch, k
# A reply's first field is n, the examples summed; -1 says the peer failed and a message follows.
REPLY = {OP_STEP: struct.Struct("<qdd"),  # n, loss_sum, compute_seconds
         OP_EVAL: struct.Struct("<qdqq")}  # n, loss_sum, correct, count
FAILED = {op: r.pack(-1, *r.unpack(bytes(r.size))[1:]) for op, r in REPLY.items()}
TOKEN_BYTES = 16
HELLO = struct.Struct(f"<q{TOKEN_BYTES}s")  # the peer's slot on the node, the host's token
SHAPE = struct.Struct("<qqq")  # P, slots, dtype itemsize: what the host's buffers hold
ERROR_LEN = struct.Struct("<i")
# A connection that has not sent its whole greeting in this long is closed. Each has
# its own deadline and they are read side by side: a silent one costs the real peers
# nothing, and only the greetings of our own user are read at all.
GREETING_TIMEOUT_S = 10.0
STOP_POLL_S = 0.25  # how often a gather that may be stopped looks at the stop request


class PeerLost(ConnectionError):
    """A peer's socket closed (its process died) or failed mid-step."""

    def __init__(self, slot: int, why: str):
        super().__init__(slot, why)  # args as given, so the error pickles (a leader's step raises it through Ray)
        self.slot = slot

    def __str__(self) -> str:
        return f"worker in slot {self.args[0]} of its node: {self.args[1]}"


class PeersSilent(PeerLost):
    """Peers alive (their sockets open) that did not answer in time: hung."""

    def __init__(self, slots: list[int], why: str):
        ConnectionError.__init__(self, slots, why)  # args as given: pickles through Ray
        self.slot, self.slots = slots[0], list(slots)

    def __str__(self) -> str:
        which = ", ".join(map(str, self.args[0]))
        return f"worker(s) in slot(s) {which} of its node: {self.args[1]}"


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """n bytes, or b'' when the other side has closed."""
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return b""
        buf += part
    return bytes(buf)


def _shared_array(fd: int, count: int, dtype) -> tuple[mmap.mmap, np.ndarray]:
    nbytes = max(count * np.dtype(dtype).itemsize, 1)
    mem = mmap.mmap(fd, nbytes)
    return mem, np.frombuffer(mem, dtype=dtype, count=count)


def _new_memfd(name: str, nbytes: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, max(nbytes, 1))
    return fd


class PlaneHost:
    """The node's buffers and the listening socket; `step` drives the peers."""

    def __init__(self, size: int, dtype, slots: int):
        self.size, self.dtype, self.slots = size, np.dtype(dtype), slots
        itemsize = self.dtype.itemsize
        self._fds = [_new_memfd("rayprop-theta", size * itemsize),
                     _new_memfd("rayprop-sums", slots * size * itemsize)]
        self._theta_mem, self.theta = _shared_array(self._fds[0], size, self.dtype)
        self._sums_mem, flat = _shared_array(self._fds[1], slots * size, self.dtype)
        self.sums = flat.reshape(slots, size)
        # A random name in the abstract namespace: nothing on disk, gone with the process.
        self.address = f"\0rayprop-plane-{secrets.token_hex(16)}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._listener.bind(self.address)
        self._listener.listen(socket.SOMAXCONN)  # strangers must not fill the queue of the real peers
        # What a peer needs to attach, passed to it through Ray: the socket's name and
        # the token (the name alone is public; the token is not).
        self._token = secrets.token_bytes(TOKEN_BYTES)
        self.ticket = (self.address, self._token.hex())
        self.peers: dict[int, socket.socket] = {}
        # Connections of this user whose greeting is under way: (bytes so far, its deadline).
        self._greeting: dict[socket.socket, tuple[bytearray, float]] = {}

    def accept(self, expected: int, timeout: float) -> None:
        """Take connections until `expected` peers have attached (or raise TimeoutError).

        Every waiting connection is served at once (a selector over the listener and
        the greetings under way): another user's is closed at accept, before any read;
        ours get GREETING_TIMEOUT_S to greet with the right token and a slot of this
        plane, else they are closed too. None of it touches the overall deadline."""
        deadline = time.monotonic() + timeout
        # Greetings under way outlive one call: the pool accepts a second at a time
        # (to notice a worker that died meanwhile), and a peer half-way through its
        # greeting at the end of a call must not lose its connection.
        greeting = self._greeting
        refused = 0
        with selectors.DefaultSelector() as sel:
            self._listener.setblocking(False)
            sel.register(self._listener, selectors.EVENT_READ)
            for conn in greeting:
                sel.register(conn, selectors.EVENT_READ)
            try:
                while len(self.peers) < expected:
                    now = time.monotonic()
                    for conn in [c for c, (_, due) in greeting.items() if due <= now]:
                        refused += self._drop(sel, greeting, conn)
                    if now >= deadline:
                        missing = expected - len(self.peers)
                        strangers = f" ({refused} other connection(s) refused)" if refused else ""
                        raise TimeoutError(f"{missing} worker(s) did not attach to the node's shared memory "
                                           f"within {timeout:g} s{strangers}")
                    due = min([deadline, *(d for _, d in greeting.values())])
                    for key, _ in sel.select(max(due - now, 0.001)):
                        if key.fileobj is self._listener:
                            refused += self._take_connections(sel, greeting)
                        else:
                            refused += self._read_greeting(sel, greeting, key.fileobj)
            finally:
                for conn in greeting:  # still greeting: kept for the next call (or close)
                    sel.unregister(conn)
                self._listener.setblocking(True)

    def _take_connections(self, sel, greeting) -> int:
        """Accept every queued connection; close another user's at once. Returns how many were refused."""
        refused = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return refused
            except OSError:  # the connection went away before it was taken (or no fd left): take the next
                return refused + 1
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                           struct.calcsize("3i")))
            if uid != os.getuid():  # nothing is read from it, nothing sent to it
                conn.close()
                refused += 1
                continue
            conn.setblocking(False)
            greeting[conn] = (bytearray(), time.monotonic() + GREETING_TIMEOUT_S)
            sel.register(conn, selectors.EVENT_READ)

    def _read_greeting(self, sel, greeting, conn) -> int:
        """Read what has come of one greeting; when whole, attach the peer or refuse it
        (1 returned when refused)."""
        buf, _ = greeting[conn]
        try:
            part = conn.recv(HELLO.size - len(buf))
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return self._drop(sel, greeting, conn)
        if not part:
            return self._drop(sel, greeting, conn)
        buf += part
        if len(buf) < HELLO.size:
            return 0
        slot, token = HELLO.unpack(buf)
        if not (secrets.compare_digest(token, self._token) and 0 <= slot < self.slots):
            return self._drop(sel, greeting, conn)
        sel.unregister(conn)
        del greeting[conn]
        try:
            conn.settimeout(GREETING_TIMEOUT_S)  # a few bytes into an empty socket: never blocks for long
            socket.send_fds(conn, [SHAPE.pack(self.size, self.slots, self.dtype.itemsize)], self._fds)
        except OSError:  # it went away; it is not attached, and the deadline still counts
            conn.close()
            return 0
        conn.settimeout(None)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        old = self.peers.pop(slot, None)
        if old is not None:
            old.close()
        self.peers[slot] = conn
        return 0

    @staticmethod
    def _drop(sel, greeting, conn) -> int:
        if sel is not None:
            sel.unregister(conn)
        del greeting[conn]
        conn.close()
        return 1

    def send(self, op: int, theta: np.ndarray, epoch: int = 0, k: int = 0) -> None:
        """Write theta into the shared buffer and wake every peer for a step (batch k
        of `epoch`) or an evaluation of its validation rows."""
        self._op = op
        np.copyto(self.theta, theta)
        command = COMMAND.pack(op, epoch, k)
        for slot, conn in self.peers.items():
            try:
                conn.sendall(command)
            except OSError as e:
                raise PeerLost(slot, f"cannot send the step ({e})") from None

    def gather(self, timeout: float | None, should_stop=None) -> dict[int, tuple]:
        """Each peer's reply to what was sent, by slot: (n, loss_sum, compute_seconds)
        for a step, whose sums are then in self.sums[slot]; (n, loss_sum, correct,
        count) for an evaluation.

        Peers that have not answered within `timeout` seconds raise PeersSilent (all
        of them at once); `should_stop()`, looked at every STOP_POLL_S while waiting,
        raises StepAbandoned: the step is given up, its replies no longer wanted."""
        reply = REPLY[self._op]
        replies = {}
        waiting = {conn.fileno(): (slot, conn) for slot, conn in self.peers.items()}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            wait = STOP_POLL_S if should_stop is not None else None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeersSilent(sorted(slot for slot, _ in waiting.values()),
                                      f"no answer within {timeout:g} s")
                wait = left if wait is None else min(wait, left)
            events = poller.poll(None if wait is None else wait * 1000)
            for fd, _ in events:
                slot, conn = waiting.pop(fd)
                poller.unregister(fd)
                conn.settimeout(timeout)  # the reply has begun: the rest follows at once
                try:
                    data = _recv_exact(conn, reply.size)
                except TimeoutError:
                    raise PeersSilent([slot], f"no answer within {timeout:g} s") from None
                except OSError as e:
                    raise PeerLost(slot, str(e)) from None
                if not data:
                    raise PeerLost(slot, "its process ended")
                values = reply.unpack(data)
                if values[0] < 0:
                    try:
                        head = _recv_exact(conn, ERROR_LEN.size)
                        text = _recv_exact(conn, ERROR_LEN.unpack(head)[0]) if head else b""
                    except OSError as e:
                        raise PeerLost(slot, f"failed, and its message was lost ({e})") from None
                    if not text:
                        raise PeerLost(slot, "failed, and its process ended")
                    raise RuntimeError(text.decode(errors="replace"))
                replies[slot] = values
            if waiting and should_stop is not None and should_stop():
                raise StepAbandoned("stopped while waiting for the workers' sums")
        return replies

    def reduce(self, replies: dict[int, tuple]) -> tuple[int, float, float]:
        """Add the step's slots that hold examples, in slot order, into slot 0; returns
        the node's (n, loss_sum, slowest compute_seconds).

        Slot 0 holds the node's sums afterwards (zeros when no slot had examples).
        """
        out = self.sums[0]
        n, loss_sum, seconds, filled = 0, 0.0, 0.0, False
        for slot in sorted(replies):
            n_slot, loss_slot, seconds_slot = replies[slot]
            if n_slot:
                if not filled:
                    if slot != 0:
                        np.copyto(out, self.sums[slot])
                    filled = True
                else:
                    out += self.sums[slot]
            n, loss_sum, seconds = n + n_slot, loss_sum + loss_slot, max(seconds, seconds_slot)
        if not filled:
            out.fill(0)
        return n, loss_sum, seconds

    def close(self) -> None:
        for conn in list(self._greeting):
            self._drop(None, self._greeting, conn)
        for conn in self.peers.values():
            try:
                conn.sendall(COMMAND.pack(OP_STOP, 0, 0))
            except OSError:
                pass
            conn.close()
        self.peers = {}
        self._listener.close()
        # The arrays are views of the maps: drop them before closing the maps.
        self.theta, self.sums = np.empty(0, self.dtype), np.empty((0, 0), self.dtype)
        for mem in (self._theta_mem, self._sums_mem):
            try:
                mem.close()
            except BufferError:  # a caller still holds a view; the map goes with it
                pass
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class PlanePeer:
    """A worker's side: maps the host's buffers and answers in its own thread.

    `step(theta, epoch, k, out)` fills `out` (this peer's slot) with its Eq. 12 sums and
    returns (n, loss_sum, compute_seconds); `evaluate(theta)` returns (n, loss_sum,
    correct, count) over its validation rows. All of a worker's computing runs in
    this one thread.
    """

    def __init__(self, ticket: tuple[str, str], slot: int, step, evaluate, timeout: float = 60.0):
        """ticket: the host's (address, token), as PlaneHost.ticket gives it."""
        self.slot, self._step, self._evaluate = slot, step, evaluate
        address, token = ticket
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(address)
            self._sock.sendall(HELLO.pack(slot, bytes.fromhex(token)))
            msg, fds, _, _ = socket.recv_fds(self._sock, SHAPE.size, 2)
        except TimeoutError:
            self._sock.close()
            raise TimeoutError(f"the node's shared memory did not take the worker in slot {slot} "
                               f"within {timeout:g} s") from None
        except BaseException:
            self._sock.close()
            raise
        if len(msg) != SHAPE.size or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self._sock.close()
            raise ConnectionError(f"the node's shared memory refused the worker in slot {slot}")
        size, slots, itemsize = SHAPE.unpack(msg)
        dtype = {4: np.float32, 8: np.float64}[itemsize]
        try:
            self._theta_mem, self.theta = _shared_array(fds[0], size, dtype)
            self._sums_mem, flat = _shared_array(fds[1], slots * size, dtype)
        finally:
            for fd in fds:
                os.close(fd)  # the maps keep the memory
        self.out = flat.reshape(slots, size)[slot]
        self._sock.settimeout(None)  # between steps a peer waits as long as the job lasts
        self._thread = threading.Thread(target=self._serve, name="rayprop-plane", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data = _recv_exact(self._sock, COMMAND.size)
            except OSError:
                break
            if not data:
                break
            op, epoch, k = COMMAND.unpack(data)
            if op not in REPLY:
                break
            try:
                if op == OP_STEP:
                    values = self._step(self.theta, epoch, k, self.out)
                else:
                    values = self._evaluate(self.theta)
                reply = REPLY[op].pack(*values)
            except Exception as e:  # a bug, not a lost worker: the host raises it as an error
                text = f"{type(e).__name__}: {e}".encode()[:4000]
                reply = FAILED[op] + ERROR_LEN.pack(len(text)) + text
            try:
                self._sock.sendall(reply)
            except OSError:
                break
        self._sock.close()

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout=5)
