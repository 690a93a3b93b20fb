"""Check Eq. 12 against central finite differences of the cost, in float64.

For a parameter w, dC/dw ~ (C(w + h) - C(w - h)) / 2h with C the mean loss over a
small batch. The error of each layer is reported relative to that layer's largest
gradient entry, so an entry that is almost zero does not blow the ratio up:

    rel[l] = max_i |analytic_i - numeric_i| / max_i max(|analytic_i|, |numeric_i|)

Central differences in float64 are accurate to about h^2 plus rounding (~1e-10),
so a right Eq. 12 gives ~1e-8 or better and a wrong equation gives ~1e-1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from trainer.costs import COSTS
from trainer.network import NetworkSpec, backward_sums, forward

DEFAULT_TOLERANCE = 1e-6
STEP = 1e-6
MAX_CHECKED = 300  # entries per W or b checked; larger ones are sampled (seeded)


@dataclass
class LayerError:
    name: str  # "W1", "b1", ...
    checked: int  # entries compared
    max_abs: float
    rel: float


def mean_cost(spec: NetworkSpec, theta: np.ndarray, X_rows: np.ndarray, Y: np.ndarray) -> float:
    ZL, AL = forward(spec, theta, X_rows)
    return COSTS[spec.cost].loss_sum(Y, AL, ZL) / X_rows.shape[0]


def gradcheck(spec: NetworkSpec, theta: np.ndarray, X_rows: np.ndarray, Y: np.ndarray,
              seed: int = 0) -> list[LayerError]:
    """Compare backward_sums / n with central differences for every W[l] and b[l]."""
    spec = replace(spec, dtype="float64")
    theta = theta.astype(np.float64)
    X_rows, Y = X_rows.astype(np.float64), Y.astype(np.float64)
    analytic = np.empty_like(theta)
    backward_sums(spec, theta, X_rows, Y, analytic)
    analytic /= X_rows.shape[0]

    rng = np.random.default_rng(seed)
    Ws, bs = spec.views(np.arange(spec.size))  # views of indices: where each entry lives
    errors = []
    for l in range(1, spec.L + 1):
        for name, where in ((f"W{l}", Ws[l - 1]), (f"b{l}", bs[l - 1])):
            flat_idx = where.ravel()
            if flat_idx.size > MAX_CHECKED:
                flat_idx = rng.choice(flat_idx, MAX_CHECKED, replace=False)
            numeric = np.empty(flat_idx.size)
            for j, i in enumerate(flat_idx):
                saved = theta[i]
                theta[i] = saved + STEP
                c_plus = mean_cost(spec, theta, X_rows, Y)
                theta[i] = saved - STEP
                c_minus = mean_cost(spec, theta, X_rows, Y)
                theta[i] = saved
                numeric[j] = (c_plus - c_minus) / (2 * STEP)
            a = analytic[flat_idx]
            diff = np.abs(a - numeric)
            scale = max(np.abs(a).max(), np.abs(numeric).max())
            errors.append(LayerError(name, flat_idx.size, float(diff.max()),
                                     float(diff.max() / scale) if scale > 0 else float(diff.max())))
    return errors
