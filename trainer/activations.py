"""Activation functions g and their backward step delta = dA * g'(Z) (Eq. 12, first line).

Arrays are (n_l, m): units by examples (DESIGN section 1). Each activation has
`forward(Z, out)` writing A = g(Z) into `out` (which may be Z itself) and
`backward(dA, A, out)` writing delta = dA * g'(Z) into `out` (which may be dA).
Both take preallocated buffers because the training loop reuses its buffers
every step; both return `out`.

Every derivative here is a function of A alone (sigmoid' = A(1-A), tanh' = 1-A^2,
relu' = [A > 0]), so the network keeps no hidden Z: it computes Z into the A
buffer and applies g in place, which halves the memory traffic. Softmax couples the units of one example, so
its "derivative" is the Jacobian-vector product, delta = A * (dA - sum_k dA_k A_k);
with cross-entropy the cost short-cuts it to yhat - y (see costs.py).
"""

from __future__ import annotations

import numpy as np

LEAKY_SLOPE = 0.01  # slope of leaky_relu for Z < 0


class Sigmoid:
    def forward(self, Z, out):
        # sigmoid(z) = (1 + tanh(z/2)) / 2: same value as 1/(1+exp(-z)), but tanh
        # never overflows, so large |z| needs no special case.
        np.multiply(Z, 0.5, out=out)
        np.tanh(out, out=out)
        out *= 0.5
        out += 0.5
        return out

    def backward(self, dA, A, out):
        # g' = A (1 - A); computed as dA*A - dA*A*A without a temporary.
        np.multiply(dA, A, out=out)
        tmp = out * A
        out -= tmp
        return out


class Tanh:
    def forward(self, Z, out):
        return np.tanh(Z, out=out)

    def backward(self, dA, A, out):
        # g' = 1 - A^2
        sq = np.square(A)
        np.subtract(1.0, sq, out=sq)
        return np.multiply(dA, sq, out=out)


class ReLU:
    def forward(self, Z, out):
        return np.maximum(Z, 0, out=out)

    def backward(self, dA, A, out):
        # g' = 1 where Z > 0 (same as A > 0), else 0 (0 at the kink, as frameworks do).
        return np.multiply(dA, A > 0, out=out)


class LeakyReLU:
    def forward(self, Z, out):
        # max(z, a z) for 0 < a < 1
        return np.maximum(Z, Z * LEAKY_SLOPE, out=out)

    def backward(self, dA, A, out):
        slope = np.where(A > 0, 1.0, LEAKY_SLOPE).astype(dA.dtype, copy=False)
        return np.multiply(dA, slope, out=out)


class Linear:
    def forward(self, Z, out):
        if out is not Z:
            np.copyto(out, Z)
        return out

    def backward(self, dA, A, out):
        if out is not dA:
            np.copyto(out, dA)
        return out


class Softmax:
    """Softmax over the units of each example (axis 0); output layer only."""

    def forward(self, Z, out):
        # Subtracting the column max keeps exp from overflowing; the result is unchanged.
        np.subtract(Z, Z.max(axis=0, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=0, keepdims=True)
        return out

    def backward(self, dA, A, out):
        # Jacobian of softmax is diag(A) - A A^T per column, so
        # delta = A * (dA - sum_k dA_k A_k).
        dot = np.einsum("ij,ij->j", dA, A)
        np.subtract(dA, dot, out=out)
        out *= A
        return out


# Registry keyed by the config word (model.hidden_activation / model.output_activation).
ACTIVATIONS = {
    "sigmoid": Sigmoid(),
    "tanh": Tanh(),
    "relu": ReLU(),
    "leaky_relu": LeakyReLU(),
    "linear": Linear(),
    "softmax": Softmax(),
}

OUTPUT_ONLY = {"softmax"}
