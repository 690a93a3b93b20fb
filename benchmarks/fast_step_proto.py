#!/usr/bin/env python
"""Prototype of the suggested speed-ups, measured against the current local-mode step.

    python benchmarks/fast_step_proto.py W-mnist [--rounds 5] [--steps N] [--only-fixes]

Nothing in trainer/ or workers/ is changed: FastShardWorker subclasses ShardWorker and
re-implements gradient_sums/backward_sums here with these changes (each one measured
on its own in the micro-benchmarks quoted in the report):

 1. gather with np.take(..., mode="clip"): with the default mode="raise" and `out=`,
    numpy buffers the whole result and copies it again (numpy's own docs say so);
    the plan's indices are always in range;
 2. W/b/GW/Gb views and the ones vector built once per theta buffer, not 3x per step;
 3. sigmoid as 1/(1+exp(-z)) (numpy's float32 exp is vectorized, its tanh is not),
    under np.errstate(over="ignore"): exp(-z) = inf gives exactly 0;
 4. dA = W^T delta as a broadcast outer product when delta has ONE row (n_L = 1):
    OpenBLAS's K=1 gemm runs at < 1 GFLOP/s;
 5. sigmoid' and the binary cross-entropy without temporaries; BCE's softplus(-|z|)
    as -log(max(A, 1-A)) from the sigmoid output A (one log, no exp, no log1p: numpy's
    float32 log1p is scalar, ~15 ns/element);
 6. coordinator/optimizer: with one worker its sums are used in place (no copy), and
    1/m is folded into the step: theta += (-lr/m) * sums, in place, no temporary;

and, separately, the pool: `threads` runs W shard workers in W Python threads with
OpenBLAS on 1 thread (ufuncs and BLAS release the GIL), instead of one worker whose
matmuls OpenBLAS splits over the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local  # noqa: E402

from trainer.activations import ACTIVATIONS  # noqa: E402
from trainer.costs import COSTS  # noqa: E402
from trainer.coordinator import reduce_sums  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402
from trainer.pool import ShardSums  # noqa: E402
from workers.local_pool import LocalPool  # noqa: E402
from workers.shard import ShardWorker, shard_ranges  # noqa: E402


class FastShardWorker(ShardWorker):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        cap = self._ws.capacity
        dt = self._grad.dtype
        self._ones = np.ones(max(cap, self.X.shape[0]), dt)
        self._theta = None
        self._GWs, self._Gbs = self.spec.views(self._grad)
        widest = max(self.spec.layers[1:])
        self._tmp = np.empty(widest * max(cap, self.X.shape[0]), dt)  # scratch for sigmoid'
        self._tmp2 = np.empty(self.spec.layers[-1] * max(cap, self.X.shape[0]), dt)

    def _views(self, theta):
        if theta is not self._theta:
            self._theta = theta  # keeps it alive, so `is` cannot match a new array at the same address
            self._Ws, self._bs = self.spec.views(theta)
        return self._Ws, self._bs

    def gradient_sums(self, theta, epoch, k):
        t0 = time.perf_counter()
        members = self.plan.shard_batch(epoch, k, self.lo, self.hi)
        if isinstance(members, slice):
            X, Y = self.X[members], self.Y[:, members]
        else:
            nb = members.size
            if nb == 0:
                return ShardSums(np.zeros_like(self._grad), 0.0, 0, time.perf_counter() - t0)
            X = np.take(self.X, members, axis=0, out=self._xb[: nb * self.X.shape[1]].reshape(nb, -1), mode="clip")
            Y = np.take(self.Y, members, axis=1, out=self._yb[: nb * self.Y.shape[0]].reshape(-1, nb), mode="clip")
        loss_sum = self._backward_sums(theta, X, Y)
        return ShardSums(self._grad, loss_sum, X.shape[0], time.perf_counter() - t0)

    def _act_forward(self, name, Z, out):
        if name == "sigmoid":
            with np.errstate(over="ignore"):
                np.negative(Z, out=out)
                np.exp(out, out=out)
                out += 1.0
                return np.reciprocal(out, out=out)
        return ACTIVATIONS[name].forward(Z, out)

    def _act_backward(self, name, dA, A, out):
        if name == "sigmoid":
            tmp = self._tmp[: A.size].reshape(A.shape)
            np.subtract(1.0, A, out=tmp)
            tmp *= A
            return np.multiply(dA, tmp, out=out)
        return ACTIVATIONS[name].backward(dA, A, out)

    def _loss_sum(self, Y, AL, ZL):
        spec = self.spec
        if spec.cost == "binary_cross_entropy":
            # L = max(z,0) - y z + softplus(-|z|), softplus(-|z|) = -log(sigmoid(|z|)) = -log(max(A, 1-A))
            t = self._tmp2[: AL.size].reshape(AL.shape)
            np.subtract(1.0, AL, out=t)
            np.maximum(t, AL, out=t)
            np.log(t, out=t)
            s = -float(np.sum(t, dtype=np.float64))
            np.maximum(ZL, 0, out=t)
            s += float(np.sum(t, dtype=np.float64))
            np.multiply(Y, ZL, out=t)
            return s - float(np.sum(t, dtype=np.float64))
        return COSTS[spec.cost].loss_sum(Y, AL, ZL)

    def _backward_sums(self, theta, X_rows, Y):
        spec, ws = self.spec, self._ws
        n = X_rows.shape[0]
        Ws, bs = self._views(theta)
        GWs, Gbs = self._GWs, self._Gbs
        L = spec.L
        A_prev = X_rows.T
        for l in range(1, L + 1):
            A = ws.A(l, n)
            Z = ws.ZL(n) if l == L else A
            np.matmul(Ws[l - 1], A_prev, out=Z)
            Z += bs[l - 1]
            self._act_forward(spec.activation(l), Z, A)
            A_prev = A
        ZL, AL = ws.ZL(n), A_prev
        loss_sum = self._loss_sum(Y, AL, ZL)
        delta = COSTS[spec.cost].output_delta(Y, AL, ZL, spec.output_activation, ws.D(0, spec.layers[L], n))
        ones = self._ones[:n]
        for l in range(L, 0, -1):
            A_prev = X_rows.T if l == 1 else ws.A(l - 1, n)
            np.matmul(delta, A_prev.T, out=GWs[l - 1])
            np.matmul(delta, ones, out=Gbs[l - 1][:, 0])
            if l == 1:
                break
            dA = ws.D((L - l + 1) % 2, spec.layers[l - 1], n)
            W = Ws[l - 1]
            if W.shape[0] == 1:
                np.multiply(W.T, delta, out=dA)  # K = 1: an outer product
            else:
                np.matmul(W.T, delta, out=dA)
            delta = self._act_backward(spec.activation(l - 1), dA, A_prev, dA)
        return loss_sum


class ThreadedPool(LocalPool):
    def __init__(self, workers):
        super().__init__(workers)
        self._ex = ThreadPoolExecutor(max_workers=len(workers))

    def gradient_sums(self, theta, epoch, k):
        futs = [self._ex.submit(w.gradient_sums, theta, epoch, k) for w in self.workers]
        return [f.result() for f in futs]


def current_step(pool, theta, grad, opt, epoch, k):
    """What train() does per step today."""
    sums = pool.gradient_sums(theta, epoch, k)
    n, loss_sum = reduce_sums(sums, grad)
    grad /= n
    opt.step(theta, grad)
    return loss_sum / n


def fused_step(pool, theta, grad, lr, epoch, k):
    """Suggestion 6: no copy for one worker; theta += (-lr/m) * sum, in place."""
    sums = pool.gradient_sums(theta, epoch, k)
    if len(sums) == 1:
        g, n, loss_sum = sums[0].grad, sums[0].n, sums[0].loss_sum
    else:
        n, loss_sum = reduce_sums(sums, grad)
        g = grad
    np.multiply(g, -lr / n, out=g)  # the worker's buffer is rewritten next step anyway
    theta += g
    return loss_sum / n


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=list(local.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    name, w = args.workload, local.WORKLOADS[args.workload]
    steps = args.steps or {"W-tiny": 200, "W-mnist": 59, "W-wide": 2}[name]
    spec, X, Y, _, plan, theta0 = local.workload_data(name)
    spe = plan.steps_per_epoch
    nt = local.numpy_threads()
    ranges = shard_ranges(plan.m, args.workers)

    def shards(cls):
        return [cls(spec, plan, lo, X[lo:hi], Y[lo:hi]) for lo, hi in ranges]

    configs = {
        f"current: 1 worker, BLAS {nt} thr": (LocalPool([ShardWorker(spec, plan, 0, X, Y)]), nt, False),
        f"fixes 1-6: 1 worker, BLAS {nt} thr": (LocalPool([FastShardWorker(spec, plan, 0, X, Y)]), nt, True),
        "fixes 1-6: 1 worker, BLAS 1 thr": (LocalPool([FastShardWorker(spec, plan, 0, X, Y)]), 1, True),
        f"current code, {args.workers} workers in threads, BLAS 1": (ThreadedPool(shards(ShardWorker)), 1, False),
        f"fixes 1-6 + {args.workers} workers in threads, BLAS 1": (ThreadedPool(shards(FastShardWorker)), 1, True),
    }
    # correctness: same loss and gradient sums as the current code, to float32 rounding
    ref_g = np.empty_like(theta0)
    first = next(iter(configs))
    for label, (pool, th, fast) in configs.items():
        with threadpool_limits(th, "blas"):
            g = np.empty_like(theta0)
            n, loss = reduce_sums(pool.gradient_sums(theta0, 1, 0), g)
        if label == first:
            ref_g[:], ref_loss = g, loss
        print(f"  {label:50s} grad max rel diff {np.abs(g - ref_g).max() / np.abs(ref_g).max():.1e}, "
              f"loss sum rel diff {abs(loss - ref_loss) / abs(ref_loss):.1e}")
    state = {label: (theta0.copy(), np.empty_like(theta0), make_optimizer(w["optimizer"], w["lr"]))
             for label in configs}
    times = {label: [] for label in configs}
    for r in range(args.rounds + 1):  # round 0 is the warm-up
        for label, (pool, th, fast) in configs.items():
            theta, grad, opt = state[label]
            with threadpool_limits(th, "blas"):
                t = time.perf_counter()
                for i in range(steps):
                    e, k = 1 + (r * steps + i) // spe, (r * steps + i) % spe
                    if fast:
                        fused_step(pool, theta, grad, w["lr"], e, k)
                    else:
                        current_step(pool, theta, grad, opt, e, k)
                dt = (time.perf_counter() - t) / steps
            if r:
                times[label].append(dt)
    final = {label: float(np.abs(state[label][0] - state[first][0]).max()) for label in configs}
    flops = spec.flops_per_example() * plan.m / spe
    base = statistics.median(times[first])
    print(f"{name}: median over {args.rounds} interleaved rounds of {steps} steps "
          f"(a step: the workers' sums, reduce, optimizer; no train() loop)")
    for label, ts in times.items():
        med = statistics.median(ts)
        print(f"  {label:50s} {med * 1e3:9.3f} ms/step {flops / med / 1e9:7.1f} GFLOP/s  "
              f"x{base / med:.2f}  (max |theta - current| after all steps {final[label]:.1e})")
    for pool, _, _ in configs.values():
        if isinstance(pool, ThreadedPool):
            pool._ex.shutdown()


if __name__ == "__main__":
    main()
