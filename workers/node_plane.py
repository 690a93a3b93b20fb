"""One node's shared-memory data plane: parameters out and shard sums back with no
copy through Ray, no pickling and no spinning. This module is its wire format and
errors; the host's side is workers/plane_host.py, a worker's side workers/plane_peer.py.

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
import socket
import struct

import numpy as np

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


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """n bytes, or b'' when the other side has closed."""
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return b""
        buf += part
    return bytes(buf)


def shared_array(fd: int, count: int, dtype) -> tuple[mmap.mmap, np.ndarray]:
    nbytes = max(count * np.dtype(dtype).itemsize, 1)
    mem = mmap.mmap(fd, nbytes)
    return mem, np.frombuffer(mem, dtype=dtype, count=count)
