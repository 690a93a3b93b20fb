#!/usr/bin/env python
"""The yardstick for rayprop's local step: the same network trained by a plain numpy
step (examples as rows, as a user would write it), on the same data, initial weights
and batches, in this process. Prints one JSON line.

    python benchmarks/numpy_step.py [--workload w-mnist] [--epochs 1]

bench.py's `numpy` mode runs `NumpyStep` beside rayprop and PyTorch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


class NumpyStep:
    """SGD on softmax cross-entropy for a ReLU MLP: forward, backward, update, nothing else."""

    @staticmethod
    def fits(job) -> bool:
        """The jobs this step is written for: a ReLU/softmax network, plain SGD, a teacher set."""
        from workers.data.builtin_sets import TEACHERS

        spec = job.spec
        return ((spec.hidden_activation, spec.output_activation, spec.cost) == ("relu", "softmax", "cross_entropy")
                and job.cfg.train.optimizer in ("sgd", "gd") and job.source.spec in TEACHERS)

    def __init__(self, job, clock=time.perf_counter):
        from workers.data.builtin_sets import teacher_arrays

        self.X, self.y = teacher_arrays(job.source.spec)
        self.plan, self.lr = job.plan, job.cfg.train.learning_rate
        Ws, bs = job.spec.views(job.theta0.copy())
        self.W = [np.ascontiguousarray(W.T) for W in Ws]  # (n_in, n_out): h = a @ W + b
        self.b = [b[:, 0].copy() for b in bs]
        self.epoch, self.clock = 0, clock

    def step(self, idx):
        X, y = self.X[np.sort(idx)], self.y[np.sort(idx)]
        acts = [X]
        for l, (W, b) in enumerate(zip(self.W, self.b)):
            h = acts[-1] @ W
            h += b
            if l < len(self.W) - 1:
                np.maximum(h, 0, out=h)
            acts.append(h)
        z = acts.pop()
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)  # softmax
        z[np.arange(len(y)), y] -= 1.0     # dL/dz = yhat - y
        d = z / len(y)
        for l in range(len(self.W) - 1, -1, -1):
            gW, gb = acts[l].T @ d, d.sum(axis=0)
            if l:
                d = d @ self.W[l].T
                d *= acts[l] > 0
            self.W[l] -= self.lr * gW
            self.b[l] -= self.lr * gb

    def theta(self, spec) -> np.ndarray:
        """The weights in rayprop's flat layout, to compare with its training."""
        flat = np.empty(spec.size, spec.dtype)
        Ws, bs = spec.views(flat)
        for W, b, W_rows, b_rows in zip(Ws, bs, self.W, self.b):
            W[...], b[:, 0] = W_rows.T, b_rows
        return flat

    def run(self, epochs: int) -> list[float]:
        """Step times (seconds) of `epochs` epochs of the plan."""
        stamps = [self.clock()]
        for _ in range(epochs):
            for k in range(self.plan.steps_per_epoch):
                idx = self.plan.batch(self.epoch, k)
                self.step(np.arange(self.plan.n_train)[idx] if isinstance(idx, slice) else idx)
                stamps.append(self.clock())
            self.epoch += 1
        return list(np.diff(stamps))


def main(argv=None) -> int:
    from experiments import configs

    from experiments.jobs import training
    from experiments.jobs.configfile import load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="w-mnist")
    p.add_argument("--epochs", type=int, default=1)
    a = p.parse_args(argv)
    job = training.prepare(load_config(configs.resolve(a.workload), ["data.validation_fraction=0"]))
    s = NumpyStep(job)
    s.run(1)  # warm-up
    step = statistics.median(s.run(a.epochs))
    print(json.dumps({"workload": a.workload, "step_ms": round(step * 1e3, 4),
                      "examples_per_second": round(job.plan.batch_size / step)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
