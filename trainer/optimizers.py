"""Gradient-descent steps on the flat parameter vector, in place.

Each optimizer is a small stateful object with one `step(theta, dtheta)`, where
dtheta = dC/dtheta is the MEAN gradient of the batch (the coordinator's sum of
shard sums divided by m). The learning-rate schedule, if any, lives outside and
sets `lr` between steps. `state()` / `load_state()` expose the buffers for
checkpoints, as plain arrays.
"""

from __future__ import annotations

import numpy as np


class GradientDescent:
    """Eq. 3: w <- w - lr dC/dw. `gd` runs it on the full batch, `sgd` on mini-batches."""

    def __init__(self, lr: float):
        self.lr = lr
        self.t = 0

    def step(self, theta: np.ndarray, dtheta: np.ndarray) -> None:
        theta -= self.lr * dtheta  # one temporary; tiny next to the step's matmuls
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
        self.v -= self.lr * dtheta
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
        self.m *= b1
        self.m += (1 - b1) * dtheta
        self.v *= b2
        self.v += (1 - b2) * np.square(dtheta)
        # Bias corrections folded into scalars: one pass over the vector fewer.
        step_size = self.lr / (1 - b1**self.t)
        denom = np.sqrt(self.v / (1 - b2**self.t))
        denom += self.eps
        theta -= step_size * self.m / denom

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
