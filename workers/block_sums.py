"""A worker's float32 sums, block by block, the same arithmetic on any worker
(trainer/exact_sum.py says why, README: The math says what was checked).

OpenBLAS's float32 results for one column depend on how many columns the call has and
on its thread count (measured: W-mnist's layers, N = 1..8192, 1 or 2 threads; see the
README). So nothing here computes over "the worker's members": each block's members
are gathered into buffers of their own and go through forward and backward on their
own, with BLAS on ONE thread; a block's float32 sums are then a function of the block
alone. A worker given several CPUs runs its blocks in that many Python threads (BLAS
releases the GIL), each with its own buffers; which thread takes which block changes
nothing. The blocks' sums become integers (trainer/exact_sum.BlockScaler) and are
added in float64: exact, so the worker's total does not depend on the order either.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from trainer.exact_sum import BlockScaler
from trainer.network import NetworkSpec, Workspace, backward_sums


# A step with less work than this runs its blocks in one thread: waking a second costs
# more than it saves (spirals' batch of 64: 1.7 MFLOP; W-tiny's full batch: 18 MFLOP).
THREADED_MIN_FLOPS = 5e6


class _OneThreadBlas:
    """BLAS on one thread for the duration (threadpoolctl, looked up once)."""

    _libs = None

    def __enter__(self):
        if _OneThreadBlas._libs is None:
            from threadpoolctl import ThreadpoolController

            _OneThreadBlas._libs = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
        self._before = [lib.num_threads for lib in self._libs]
        for lib in self._libs:
            lib.set_num_threads(1)

    def __exit__(self, *exc):
        for lib, n in zip(self._libs, self._before):
            lib.set_num_threads(n)


class _Lane:
    """One thread's buffers: a workspace and gather buffers for one block."""

    def __init__(self, spec: NetworkSpec, capacity: int, dtype):
        self.ws = Workspace(spec, capacity)
        self.xb = np.empty(capacity * spec.layers[0], dtype)
        self.yb = np.empty(capacity * spec.layers[-1], dtype)
        self.scratch = np.empty(spec.size, dtype)


class BlockSums:
    """Block sums over one worker's rows. X: (n, n_0) rows, Y: (n_L, n) columns, both
    held by the ShardWorker; `threads`: Python threads to spread the blocks over."""

    def __init__(self, spec: NetworkSpec, X: np.ndarray, Y: np.ndarray, capacity: int, blocks: int,
                 threads: int = 1):
        dt = np.dtype(spec.dtype)
        self.spec, self.X, self.Y = spec, X, Y
        self.threads = max(1, min(threads, blocks))
        self.lanes = [_Lane(spec, max(capacity, 1), dt) for _ in range(self.threads)]
        self.stack = np.empty((blocks, spec.size), dt)  # one row per block, theta's layout
        self.rows = list(self.stack)  # the same row objects every step: their views are built once
        for lane in self.lanes:
            lane.ws.view_slots = blocks + 2
        self.scaler = BlockScaler(spec.layers)
        self.flops_per_example = spec.flops_per_example()
        self._pool = ThreadPoolExecutor(self.threads, "rayprop-blocks") if self.threads > 1 else None

    def _run(self, lane: _Lane, theta, members, runs, scale_vector, rows, maxima, losses, which) -> None:
        X, Y, spec = self.X, self.Y, self.spec
        for i in which:
            _, a, b = runs[i]
            n = b - a
            if isinstance(members, slice):
                Xb, Yb = X[a:b], Y[:, a:b]
            else:
                idx = members[a:b]
                Xb = np.take(X, idx, axis=0, out=lane.xb[: n * X.shape[1]].reshape(n, -1), mode="clip")
                Yb = np.take(Y, idx, axis=1, out=lane.yb[: n * Y.shape[0]].reshape(-1, n), mode="clip")
            block = self.rows[rows[i]]
            losses[i] = backward_sums(spec, theta, Xb, Yb, block, lane.ws)
            maxima[i] = self.scaler.to_integers(block, scale_vector, lane.scratch)

    def compute(self, theta: np.ndarray, members, runs, scales, out: np.ndarray) -> tuple[float, np.ndarray]:
        """out (float64, theta's layout) <- the exact sum of the blocks' integer sums at
        `scales`; returns (loss sum, per-tensor max |block sum| before scaling).
        runs: plan.block_runs(...) of this step, non-empty blocks only."""
        q = len(runs)
        scale_vector = self.scaler.vector(scales)
        maxima = np.zeros((max(q, 1), len(self.scaler.sizes)))
        losses = [0.0] * q
        rows = list(range(q))
        members_n = sum(b - a for _, a, b in runs)
        with _OneThreadBlas():
            if self._pool is None or q < 2 or members_n * self.flops_per_example < THREADED_MIN_FLOPS:
                self._run(self.lanes[0], theta, members, runs, scale_vector, rows, maxima, losses, rows)
            else:
                t = min(self.threads, q)
                jobs = [self._pool.submit(self._run, self.lanes[i], theta, members, runs, scale_vector, rows,
                                          maxima, losses, rows[i::t]) for i in range(t)]
                for job in jobs:
                    job.result()
        if q == 0:
            out.fill(0)
        elif q == 1:
            np.copyto(out, self.stack[0], casting="same_kind")
        else:
            np.add.reduce(self.stack[:q], axis=0, dtype=np.float64, out=out)
        return float(sum(losses)), maxima.max(axis=0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
