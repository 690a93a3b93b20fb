"""The host's side of a node's shared-memory plane (workers/node_plane.py): the
node's buffers, the listening socket, and per step the command out to every peer and
their replies back.
"""

from __future__ import annotations

import os
import secrets
import select
import selectors
import socket
import struct
import time

import numpy as np

from trainer.pool import StepAbandoned
from workers.node_plane import (COMMAND, ERROR_LEN, HELLO, OP_STOP, REPLY, SHAPE, TOKEN_BYTES, PeerLost,
                                PeersSilent, recv_exact, shared_array)

# A connection that has not sent its whole greeting in this long is closed. Each has
# its own deadline and they are read side by side: a silent one costs the real peers
# nothing, and only the greetings of our own user are read at all.
GREETING_TIMEOUT_S = 10.0
STOP_POLL_S = 0.25  # how often a gather that may be stopped looks at the stop request


def new_memfd(name: str, nbytes: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, max(nbytes, 1))
    return fd


class PlaneHost:
    """The node's buffers and the listening socket; `step` drives the peers."""

    def __init__(self, size: int, dtype, slots: int):
        self.size, self.dtype, self.slots = size, np.dtype(dtype), slots
        itemsize = self.dtype.itemsize
        self._fds = [new_memfd("rayprop-theta", size * itemsize),
                     new_memfd("rayprop-sums", slots * size * itemsize)]
        self._theta_mem, self.theta = shared_array(self._fds[0], size, self.dtype)
        self._sums_mem, flat = shared_array(self._fds[1], slots * size, self.dtype)
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
                    data = recv_exact(conn, reply.size)
                except socket.timeout:
                    raise PeersSilent([slot], f"no answer within {timeout:g} s") from None
                except OSError as e:
                    raise PeerLost(slot, str(e)) from None
                if not data:
                    raise PeerLost(slot, "its process ended")
                values = reply.unpack(data)
                if values[0] < 0:
                    try:
                        head = recv_exact(conn, ERROR_LEN.size)
                        text = recv_exact(conn, ERROR_LEN.unpack(head)[0]) if head else b""
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
        self.theta = self.sums = None  # type: ignore[assignment]  # a closed plane has none
        for mem in (self._theta_mem, self._sums_mem):
            try:
                mem.close()
            except BufferError:  # a caller still holds a view; the map goes with it
                pass
        for fd in self._fds:
            os.close(fd)
        self._fds = []
