"""A worker's float32 sums, block by block, the same arithmetic on any worker
(trainer/exact_sum.py says why, README: The math says what was checked).

OpenBLAS's float32 results for one example depend on how many examples the call has
and on its thread count (measured: W-mnist's layers, N = 1..8192, 1 or 2 threads; see
the README). So every matrix product here sees ONE block's examples and runs with BLAS
on ONE thread; a block's float32 sums are then a function of the block alone. The
elementwise work (biases, activations, the cost) treats each example on its own, so it
runs over all of a thread's blocks at once (trainer/network.py `cuts`): a step makes
about as many numpy calls as a plain one, plus the per-block products. A worker given
several CPUs splits its blocks into that many consecutive groups, one Python thread
each (BLAS releases the GIL), each with its own buffers; which thread takes which
block changes nothing. The blocks' sums become integers (trainer/exact_sum.BlockScaler)
and are added in float64: exact, so the worker's total does not depend on the order.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from trainer.exact_sum import BlockScaler
from trainer.network import Blocks, NetworkSpec, Workspace, backward_sums


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
    """One thread's buffers: a workspace and gather buffers for its blocks' members."""

    def __init__(self, spec: NetworkSpec, capacity: int, dtype):
        # Examples as rows, whatever the network's own layout: a block's rows are then laid
        # out in memory as they would be alone (the same strides, whatever else the thread
        # holds). As columns, a block's stride is the thread's member count, and OpenBLAS
        # gave other bits for blocks of fewer than 8 examples (checked: W-tiny's layers).
        self.ws = Workspace(spec, capacity, rows=True)
        self.xb = np.empty(capacity * spec.layers[0], dtype)
        self.yb = np.empty(capacity * spec.layers[-1], dtype)
        self.total = np.empty(spec.size, np.float64)  # this thread's blocks' integer sums, added


def split_runs(runs, groups: int) -> list[tuple[int, int]]:
    """Cut the step's runs (block, start, stop) into at most `groups` consecutive groups
    of about equal members: [(first run, end run), ...], none empty."""
    ends = np.cumsum([b - a for _, a, b in runs])
    total = int(ends[-1])
    cuts = sorted({0, len(runs)} | {min(int(np.searchsorted(ends, total * g / groups)) + 1, len(runs))
                                    for g in range(1, groups)})
    return [(i, j) for i, j in zip(cuts[:-1], cuts[1:]) if j > i]


class BlockSums:
    """Block sums over one worker's rows. X: (n, n_0) rows, Y: (n_L, n) columns, both
    held by the ShardWorker; `threads`: Python threads to spread the blocks over;
    capacity: the most members a step can give this worker."""

    def __init__(self, spec: NetworkSpec, X: np.ndarray, Y: np.ndarray, capacity: int, blocks: int,
                 threads: int = 1):
        dt = np.dtype(spec.dtype)
        self.spec, self.X, self.Y = spec, X, Y
        self.threads = max(1, min(threads, blocks))
        self.lanes = [_Lane(spec, max(capacity, 1), dt) for _ in range(self.threads)]
        self.stack = np.empty((blocks, spec.size), dt)  # one row per block, theta's layout
        self.scaler = BlockScaler(spec.layers)
        self.flops_per_example = spec.flops_per_example()
        self._pool = ThreadPoolExecutor(self.threads, "rayprop-blocks") if self.threads > 1 else None

    def _run(self, lane: _Lane, theta, members, runs, scale_vector, maxima, i: int, j: int) -> float:
        """Runs i..j-1 of the step: their blocks' integer sums added into lane.total (in
        this thread: the float64 pass is the largest part of the conversion) and their
        maxima into maxima[i:j]; returns their loss sum."""
        if threading.current_thread() is not threading.main_thread():
            # numpy's error state is per thread: a block thread computes quietly, as its
            # callers do (experiments/jobs/fit.py, shard_actor.quiet): a diverging step
            # is the coordinator's to report, in one line.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self._blocks(lane, theta, members, runs, scale_vector, maxima, i, j)
        return self._blocks(lane, theta, members, runs, scale_vector, maxima, i, j)

    def _blocks(self, lane: _Lane, theta, members, runs, scale_vector, maxima, i: int, j: int) -> float:
        X, Y, spec = self.X, self.Y, self.spec
        a0, b1 = runs[i][1], runs[j - 1][2]
        n = b1 - a0
        if isinstance(members, slice):
            Xb, Yb = X[a0:b1], Y[:, a0:b1]
        else:  # the members of consecutive blocks are consecutive (sorted offsets)
            idx = members[a0:b1]
            Xb = np.take(X, idx, axis=0, out=lane.xb[: n * X.shape[1]].reshape(n, -1), mode="clip")
            Yb = np.take(Y, idx, axis=1, out=lane.yb[: n * Y.shape[0]].reshape(-1, n), mode="clip")
        cuts = Blocks([(a - a0, b - a0) for _, a, b in runs[i:j]])
        sums = self.stack[i:j]
        loss = backward_sums(spec, theta, Xb, Yb, sums, lane.ws, cuts)
        maxima[i:j] = self.scaler.to_integers(sums, scale_vector)
        np.add.reduce(sums, axis=0, dtype=np.float64, out=lane.total)
        return loss

    def compute(self, theta: np.ndarray, members, runs, scales, out: np.ndarray) -> tuple[float, np.ndarray]:
        """out (float64, theta's layout) <- the exact sum of the blocks' integer sums at
        `scales`; returns (loss sum, per-tensor max |block sum| before scaling).
        runs: plan.block_runs(...) of this step, non-empty blocks only."""
        q = len(runs)
        scale_vector = self.scaler.vector(scales)
        maxima = np.zeros((max(q, 1), len(self.scaler.sizes)))
        if q == 0:
            out.fill(0)
            return 0.0, maxima.max(axis=0)
        groups = [(0, q)]
        members_n = runs[-1][2] - runs[0][1]  # runs are consecutive
        if self._pool is not None and q > 1 and members_n * self.flops_per_example >= THREADED_MIN_FLOPS:
            groups = split_runs(runs, self.threads)
        with _OneThreadBlas():
            if self._pool is None or len(groups) == 1:
                loss = self._run(self.lanes[0], theta, members, runs, scale_vector, maxima, 0, q)
            else:
                jobs = [self._pool.submit(self._run, lane, theta, members, runs, scale_vector, maxima, i, j)
                        for lane, (i, j) in zip(self.lanes, groups)]
                loss = sum(job.result() for job in jobs)
        np.copyto(out, self.lanes[0].total)
        for lane in self.lanes[1:len(groups)]:
            out += lane.total  # integers below 2^53: exact, in any order
        return float(loss), maxima.max(axis=0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
