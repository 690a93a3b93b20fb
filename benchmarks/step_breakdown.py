#!/usr/bin/env python
"""Per-operation time of one local-mode training step, for a workload of WORKLOADS.md.

    python benchmarks/step_breakdown.py W-mnist [--steps 100] [--threads N]

Replays ShardWorker.gradient_sums -> backward_sums -> coordinator reduce -> optimizer
step op by op, with the same numpy calls on the same buffers (the worker's Workspace
and gather buffers), and a clock read after each op. The replica's gradient is checked
to be bit-identical to trainer.network.backward_sums' on the same batch, so the split
is of the real computation. What the replica does not time, the Python glue between
ops in the real code, shows as "python overhead" = real step time - sum of ops.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local  # noqa: E402  (benchmarks/local.py)

from trainer.activations import ACTIVATIONS  # noqa: E402
from trainer.costs import COSTS  # noqa: E402
from trainer.coordinator import reduce_sums  # noqa: E402
from trainer.network import backward_sums  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402
from workers.shard import ShardWorker  # noqa: E402


class Clock:
    def __init__(self):
        self.t = defaultdict(float)
        self.kind = {}
        self.last = time.perf_counter()

    def reset(self):
        self.last = time.perf_counter()

    def __call__(self, label, kind):
        now = time.perf_counter()
        self.t[label] += now - self.last
        self.kind[label] = kind
        self.last = now


def replica_step(worker: ShardWorker, theta, grad_out, opt, epoch, k, clk: Clock):
    """gradient_sums + reduce + optimizer, op by op (same calls as the trainer code)."""
    spec, ws = worker.spec, worker._ws
    members = worker.plan.shard_batch(epoch, k, worker.lo, worker.hi)
    clk("batch plan: permutation slice, mask, sort", "batch plan")
    if isinstance(members, slice):
        X, Y = worker.X[members], worker.Y[:, members]
    else:
        nb = members.size
        X = np.take(worker.X, members, axis=0, out=worker._xb[: nb * worker.X.shape[1]].reshape(nb, -1))
        clk("gather X rows (np.take)", "gather")
        Y = np.take(worker.Y, members, axis=1, out=worker._yb[: nb * worker.Y.shape[0]].reshape(-1, nb))
        clk("gather Y columns (np.take)", "gather")
    n = X.shape[0]
    Ws, bs = spec.views(theta)
    A_prev = X.T
    L = spec.L
    for l in range(1, L + 1):
        A = ws.A(l, n)
        Z = ws.ZL(n) if l == L else A
        np.matmul(Ws[l - 1], A_prev, out=Z)
        clk(f"fwd matmul Z{l} = W{l} A{l - 1}  {Ws[l - 1].shape}x{A_prev.shape}", "matmul")
        Z += bs[l - 1]
        clk(f"fwd Z{l} += b{l}", "elementwise")
        ACTIVATIONS[spec.activation(l)].forward(Z, A)
        clk(f"fwd {spec.activation(l)} {l}", "elementwise")
        A_prev = A
    ZL, AL = ws.ZL(n), A_prev
    cost = COSTS[spec.cost]
    loss_sum = cost.loss_sum(Y, AL, ZL)
    clk("loss_sum", "elementwise")
    GWs, Gbs = spec.views(worker._grad)
    ones = np.ones(n, dtype=theta.dtype)
    delta = cost.output_delta(Y, AL, ZL, spec.output_activation, ws.D(0, spec.layers[L], n))
    clk("output delta", "elementwise")
    for l in range(L, 0, -1):
        A_prev = X.T if l == 1 else ws.A(l - 1, n)
        np.matmul(delta, A_prev.T, out=GWs[l - 1])
        clk(f"bwd matmul GW{l} = d{l} A{l - 1}^T  {delta.shape}x{A_prev.T.shape}", "matmul")
        np.matmul(delta, ones, out=Gbs[l - 1][:, 0])
        clk(f"bwd Gb{l} = d{l} @ ones (gemv)", "matmul (gemv)")
        if l == 1:
            break
        dA = ws.D((L - l + 1) % 2, spec.layers[l - 1], n)
        if Ws[l - 1].shape[0] == 1:
            np.multiply(Ws[l - 1].T, delta, out=dA)  # as backward_sums: K = 1 is an outer product
        else:
            np.matmul(Ws[l - 1].T, delta, out=dA)
        clk(f"bwd matmul dA{l - 1} = W{l}^T d{l}  {Ws[l - 1].T.shape}x{delta.shape}", "matmul")
        delta = ACTIVATIONS[spec.activation(l - 1)].backward(dA, A_prev)
        clk(f"bwd {spec.activation(l - 1)}' {l - 1}", "elementwise")
    m, _ = reduce_sums([type("S", (), {"n": n, "grad": worker._grad, "loss_sum": loss_sum})()], grad_out)
    clk("coordinator: copy grad (reduce_sums)", "coordinator")
    grad_out /= n
    clk("coordinator: grad /= n", "coordinator")
    opt.step(theta, grad_out)
    clk("optimizer: theta -= lr * grad", "optimizer")
    return loss_sum


def real_step(worker, theta, grad_out, opt, epoch, k):
    s = worker.gradient_sums(theta, epoch, k)
    n, loss_sum = reduce_sums([s], grad_out)
    grad_out /= n
    opt.step(theta, grad_out)
    return loss_sum


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=list(local.WORKLOADS))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (threadpoolctl)")
    args = ap.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, "blas")
    name = args.workload
    w = local.WORKLOADS[name]
    steps = args.steps or {"W-tiny": 1000, "W-mnist": 118, "W-wide": 8}[name]
    spec, X, Y, _, plan, theta0 = local.workload_data(name)
    worker = ShardWorker(spec, plan, 0, X, Y)
    grad = np.empty_like(theta0)
    spe = plan.steps_per_epoch

    # 1. the replica computes exactly what backward_sums computes
    g_ref = np.empty_like(theta0)
    members = plan.shard_batch(1, 0, 0, plan.m)
    Xb = X[members] if not isinstance(members, slice) else X
    Yb = worker.Y[:, members]
    loss_ref = backward_sums(spec, theta0, np.ascontiguousarray(Xb), np.ascontiguousarray(Yb), g_ref)
    theta = theta0.copy()
    loss = replica_step(worker, theta, grad, make_optimizer("gd", 0.0), 1, 0, Clock())
    assert np.array_equal(worker._grad, g_ref) and loss == loss_ref, "replica differs from backward_sums"

    # 2. real steps and replica steps, interleaved (the machine's speed drifts)
    theta = theta0.copy()
    opt = make_optimizer(w["optimizer"], w["lr"])
    for i in range(min(steps, spe * 2 if spe > 1 else 20)):
        real_step(worker, theta, grad, opt, 0, i % spe)
    clk, real = Clock(), 0.0
    for i in range(steps):
        e, k = 1 + i // spe, i % spe
        t = time.perf_counter()
        real_step(worker, theta, grad, opt, e, k)
        real += time.perf_counter() - t
        clk.reset()
        replica_step(worker, theta, grad, opt, e, k, clk)
    real /= steps
    per = {k: v / steps for k, v in clk.t.items()}
    total = sum(per.values())
    print(f"{name}: real step {real * 1e3:.3f} ms (gradient_sums + reduce + optimizer, no train() loop), "
          f"replica sum of ops {total * 1e3:.3f} ms, over {steps} steps")
    print(f"{'op':70s} {'ms/step':>9s} {'% of real':>9s}")
    for k, v in per.items():
        print(f"{k:70s} {v * 1e3:9.3f} {100 * v / real:8.1f}%")
    kinds = defaultdict(float)
    for k, v in per.items():
        kinds[clk.kind[k]] += v
    print("\nby kind:")
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {k:30s} {v * 1e3:9.3f} ms {100 * v / real:6.1f}%")
    print(f"  {'python glue (real - ops)':30s} {(real - total) * 1e3:9.3f} ms {100 * (real - total) / real:6.1f}%")
    flops = spec.flops_per_example() * plan.m / spe
    print(f"\nmodel GFLOP/s of the real step (mean batch): {flops / real / 1e9:.1f}; "
          f"of the matmul ops alone: {flops / kinds['matmul'] / 1e9:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
