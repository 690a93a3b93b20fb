"""A worker's side of its node's shared-memory plane (workers/node_plane.py): it maps
the host's buffers and answers the host's commands in its own thread.
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np

from workers.node_plane import COMMAND, ERROR_LEN, FAILED, HELLO, OP_STEP, REPLY, SHAPE, recv_exact, shared_array


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
        except socket.timeout:
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
            self._theta_mem, self.theta = shared_array(fds[0], size, dtype)
            self._sums_mem, flat = shared_array(fds[1], slots * size, dtype)
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
                data = recv_exact(self._sock, COMMAND.size)
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
