"""Activation functions g and their backward step delta = dA * g'(Z) (Eq. 12, first line).

Arrays are (n_l, m): units by examples (docs/design.md section 1). Each activation has
`forward(Z, out)`, writing A = g(Z) into `out` (which may be Z itself), and
`backward(dA, A)`, writing delta = dA * g'(Z) into dA. Both work in the training
loop's preallocated buffers and return the array they wrote.

Every derivative here is a function of A alone (sigmoid' = A(1-A), tanh' = 1-A^2,
relu' = [A > 0]), so the network keeps no hidden Z: it computes Z into the A
buffer and applies g in place, which halves the memory traffic. `backward` may
also use A's buffer as scratch (it overwrites A): by the time the backward pass
reaches g'[l], A[l] has served its last use (GW[l+1] = delta[l+1] A[l]^T), and
allocating a temporary every step costs more than the arithmetic.

Softmax couples the units of one example, so its "derivative" is the
Jacobian-vector product, delta = A * (dA - sum_k dA_k A_k); with cross-entropy the
cost short-cuts it to yhat - y (see costs.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

LEAKY_SLOPE = 0.01  # slope of leaky_relu for Z < 0


class Activation(Protocol):
    """What the network asks of an activation (ACTIVATIONS' values)."""

    def forward(self, Z: np.ndarray, out: np.ndarray) -> np.ndarray: ...

    def backward(self, dA: np.ndarray, A: np.ndarray) -> np.ndarray: ...


class Sigmoid:
    def forward(self, Z, out):
        # 1 / (1 + exp(-z)): numpy's float32 exp is vectorized (its tanh is not).
        # For z < -88, exp(-z) overflows to inf and the result is exactly 0, the
        # correctly rounded value, so the overflow warning is silenced, not handled.
        with np.errstate(over="ignore"):
            np.negative(Z, out=out)
            np.exp(out, out=out)
        out += 1.0
        return np.reciprocal(out, out=out)

    def backward(self, dA, A):
        # g' = A (1 - A), with A's buffer holding (1 - A).
        np.multiply(dA, A, out=dA)
        np.subtract(1.0, A, out=A)
        return np.multiply(dA, A, out=dA)


class Tanh:
    def forward(self, Z, out):
        return np.tanh(Z, out=out)

    def backward(self, dA, A):
        # g' = 1 - A^2, computed in A's buffer.
        np.square(A, out=A)
        np.subtract(1.0, A, out=A)
        return np.multiply(dA, A, out=dA)


class ReLU:
    def forward(self, Z, out):
        return np.maximum(Z, 0, out=out)

    def backward(self, dA, A):
        # g' = 1 where Z > 0 (same as A > 0), else 0 (0 at the kink, as frameworks do).
        return np.multiply(dA, A > 0, out=dA)


class LeakyReLU:
    def forward(self, Z, out):
        # max(z, a z) for 0 < a < 1
        return np.maximum(Z, Z * LEAKY_SLOPE, out=out)

    def backward(self, dA, A):
        slope = np.where(A > 0, 1.0, LEAKY_SLOPE).astype(dA.dtype, copy=False)
        return np.multiply(dA, slope, out=dA)


class Linear:
    def forward(self, Z, out):
        if out is not Z:
            np.copyto(out, Z)
        return out

    def backward(self, dA, A):
        return dA  # g' = 1


class Softmax:
    """Softmax over the units of each example (axis 0); output layer only."""

    def forward(self, Z, out):
        # Subtracting the column max keeps exp from overflowing; the result is unchanged.
        np.subtract(Z, Z.max(axis=0, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=0, keepdims=True)
        return out

    def backward(self, dA, A):
        # Jacobian of softmax is diag(A) - A A^T per column, so
        # delta = A * (dA - sum_k dA_k A_k).
        dot = np.einsum("ij,ij->j", dA, A)
        dA -= dot
        dA *= A
        return dA


# Registry keyed by the config word (model.hidden_activation / model.output_activation).
ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Sigmoid(),
    "tanh": Tanh(),
    "relu": ReLU(),
    "leaky_relu": LeakyReLU(),
    "linear": Linear(),
    "softmax": Softmax(),
}

OUTPUT_ONLY = {"softmax"}
