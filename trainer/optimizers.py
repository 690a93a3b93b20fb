"""Gradient-descent steps on the flat parameter vector, in place.

Each optimizer is a small stateful object with one `step(theta, dtheta)`, where
dtheta = dC/dtheta is the MEAN gradient of the batch (the coordinator's sum of
shard sums divided by m). The learning-rate schedule, if any, lives outside and
sets `lr` between steps. `state()` / `load_state()` expose the buffers for
checkpoints, as plain arrays.

The steps write every intermediate into buffers kept from step to step (`_scratch`),
with the same operations in the same order as the plain expressions, so the results
are bitwise those of `theta -= lr * dtheta` and friends. A temporary the size of theta
each step is an allocation plus a page-faulting first touch when it is large (W-wide's
theta is 25 MB): that costs more than the arithmetic.
"""

from __future__ import annotations

import numpy as np


class GradientDescent:
    """Eq. 3: w <- w - lr dC/dw. `gd` runs it on the full batch, `sgd` on mini-batches."""

    def __init__(self, lr: float):
        self.lr = lr
        self.t = 0
        self._buffers: list[np.ndarray] = []

    def _scratch(self, like: np.ndarray, i: int = 0) -> np.ndarray:
        """Buffer i shaped like theta, made on first use."""
        while len(self._buffers) <= i:
            self._buffers.append(np.empty_like(like))
        buf = self._buffers[i]
        if buf.shape != like.shape or buf.dtype != like.dtype:
            buf = self._buffers[i] = np.empty_like(like)
        return buf

    def step(self, theta: np.ndarray, dtheta: np.ndarray) -> None:
        theta -= np.multiply(dtheta, self.lr, out=self._scratch(dtheta))  # = theta -= lr * dtheta
        self.t += 1

    def state(self) -> dict[str, np.ndarray]:
        return {"t": np.array(self.t)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])


class Momentum(GradientDescent):
    """Heavy ball: v <- mu v - lr dC/dw; w <- w + v (v starts at 0)."""

    def __init__(self, lr: float, mu: float = 0.9):
        super().__init__(lr)
        self.mu = mu
        self.v: np.ndarray | None = None

    def step(self, theta, dtheta):
        if self.v is None:
            self.v = np.zeros_like(theta)
        self.v *= self.mu
        self.v -= np.multiply(dtheta, self.lr, out=self._scratch(dtheta))
        theta += self.v
        self.t += 1

    def state(self):
        return {**super().state(), "v": self.v if self.v is not None else np.zeros(0)}

    def load_state(self, state):
        super().load_state(state)
        self.v = state["v"].copy() if state["v"].size else None


class Adam(GradientDescent):
    """Adam (Kingma & Ba 2015, Algorithm 1):
    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    w <- w - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, theta, dtheta):
        if self.m is None:
            self.m, self.v = np.zeros_like(theta), np.zeros_like(theta)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        s1, s2 = self._scratch(dtheta, 0), self._scratch(dtheta, 1)
        self.m *= b1
        self.m += np.multiply(dtheta, 1 - b1, out=s1)
        self.v *= b2
        np.square(dtheta, out=s1)
        self.v += np.multiply(s1, 1 - b2, out=s1)
        # Bias corrections folded into scalars: one pass over the vector fewer.
        step_size = self.lr / (1 - b1**self.t)
        denom = np.sqrt(np.divide(self.v, 1 - b2**self.t, out=s2), out=s2)
        denom += self.eps
        np.multiply(self.m, step_size, out=s1)
        theta -= np.divide(s1, denom, out=s1)

    def state(self):
        empty = np.zeros(0)
        return {**super().state(), "m": self.m if self.m is not None else empty,
                "v": self.v if self.v is not None else empty}

    def load_state(self, state):
        super().load_state(state)
        self.m = state["m"].copy() if state["m"].size else None
        self.v = state["v"].copy() if state["v"].size else None


OPTIMIZERS = ("gd", "sgd", "momentum", "adam")


def make_optimizer(name: str, lr: float, momentum: float = 0.9, beta1: float = 0.9,
                   beta2: float = 0.999, epsilon: float = 1e-8) -> GradientDescent:
    """The optimizer for the config word `train.optimizer`."""
    if name in ("gd", "sgd"):
        return GradientDescent(lr)
    if name == "momentum":
        return Momentum(lr, momentum)
    if name == "adam":
        return Adam(lr, beta1, beta2, epsilon)
    raise ValueError(f"unknown optimizer {name!r}")
