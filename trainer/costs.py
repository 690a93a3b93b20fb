"""Cost functions: per-example loss summed over a shard, and the output-layer delta.

Y, A and Z are (n_L, n): outputs by examples. `loss_sum` returns the SUM of the
per-example losses L(y_j, yhat_j) over the n columns (a Python float, accumulated
in float64); the caller divides by the batch's m once (docs/design.md section 1: the cost
is C = (1/m) sum_j L). `output_delta` returns delta[L] = dL/dZ[L] per column, also
unscaled by m, so that the backward sums of Eq. 12 are sums over examples; like
the activations' backward it may overwrite A, which the caller no longer needs.

Each cost names the output activations it fits (`fits`) and how its targets are
encoded (`encoding`: "one_hot" class labels, "binary" 0/1 columns, "numeric" values;
workers/data/examples.py builds Y by it). Two pairs are fused:
sigmoid + binary cross-entropy and softmax + cross-entropy have delta = yhat - y
exactly, and their loss is computed from the logits Z (log-sum-exp / softplus),
so no log(0) and no overflow in exp, whatever the logits.
"""

from __future__ import annotations

import numpy as np

from trainer.activations import ACTIVATIONS


def _sum64(x) -> float:
    return float(np.sum(x, dtype=np.float64))


class MeanSquaredError:
    """L = sum_k (yhat_k - y_k)^2, so dL/dyhat = 2 (yhat - y)."""

    fits = ("sigmoid", "tanh", "relu", "leaky_relu", "linear", "softmax")
    encoding = "numeric"

    def loss_sum(self, Y, A, Z):
        diff = A - Y
        return _sum64(np.square(diff, out=diff))

    def output_delta(self, Y, A, Z, activation, out):
        np.subtract(A, Y, out=out)
        out *= 2.0
        return ACTIVATIONS[activation].backward(out, A)


class MeanAbsoluteError:
    """L = sum_k |yhat_k - y_k|, so dL/dyhat = sign(yhat - y)."""

    fits = MeanSquaredError.fits
    encoding = "numeric"

    def loss_sum(self, Y, A, Z):
        return _sum64(np.abs(A - Y))

    def output_delta(self, Y, A, Z, activation, out):
        np.subtract(A, Y, out=out)
        np.sign(out, out=out)
        return ACTIVATIONS[activation].backward(out, A)


class BinaryCrossEntropy:
    """L = -sum_k [y log yhat + (1-y) log(1-yhat)] with yhat = sigmoid(z).

    From the logit: -log sigmoid(z) = softplus(-z), -log(1-sigmoid(z)) = softplus(z),
    so L = sum_k max(z,0) - y z + log(1 + exp(-|z|)), finite for every z.
    """

    fits = ("sigmoid",)
    encoding = "binary"

    def loss_sum(self, Y, A, Z):
        # softplus(-|z|) = -log sigmoid(|z|) = -log max(A, 1 - A): one log of a
        # number in [1/2, 1] from the output we already have, instead of exp and
        # log1p (numpy's float32 log1p is not vectorized). Accurate to an absolute
        # 1 ulp of 1 per element, far below any loss worth reporting.
        t = np.subtract(1.0, A)
        np.maximum(t, A, out=t)
        np.log(t, out=t)
        loss = _sum64(np.maximum(Z, 0)) - _sum64(t)
        return loss - _sum64(np.multiply(Y, Z, out=t))

    def output_delta(self, Y, A, Z, activation, out):
        # dL/dz = sigmoid(z) - y: the (1 - yhat) yhat of sigmoid' cancels the
        # 1 / (yhat (1 - yhat)) of dL/dyhat.
        return np.subtract(A, Y, out=out)


class CrossEntropy:
    """L = -sum_k y_k log yhat_k with yhat = softmax(z) over the units of a column.

    log softmax(z)_k = z_k - max(z) - log sum_i exp(z_i - max(z)) never overflows
    and is finite even where yhat_k rounds to 0.
    """

    fits = ("softmax",)
    encoding = "one_hot"

    def loss_sum(self, Y, A, Z):
        shifted = Z - Z.max(axis=0, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=0, keepdims=True))
        shifted -= log_norm  # log yhat
        return -_sum64(np.multiply(Y, shifted, out=shifted))

    def output_delta(self, Y, A, Z, activation, out):
        # dL/dz = softmax(z) - y for targets that sum to 1 per column.
        return np.subtract(A, Y, out=out)


# Registry keyed by the config word (model.cost).
COSTS = {
    "mse": MeanSquaredError(),
    "mae": MeanAbsoluteError(),
    "binary_cross_entropy": BinaryCrossEntropy(),
    "cross_entropy": CrossEntropy(),
}
ENCODINGS = tuple(dict.fromkeys(cost.encoding for cost in COSTS.values()))  # every target encoding
