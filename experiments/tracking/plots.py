"""The decision boundary of a network with two inputs, as a matplotlib figure.

Only for 2-D inputs (xor, spirals, teacher-tiny): the network is evaluated on a
grid over the sampled points' range, the regions are coloured by predicted class
(or by output value for one sigmoid or linear output), and the sample is drawn on
top. Uses matplotlib's object API (no pyplot): no global figure state, no display.
"""

from __future__ import annotations

import numpy as np

from trainer.network import NetworkSpec, forward

GRID = 200      # points per axis
MARGIN = 0.1    # of the data's range, around it
MAX_POINTS = 2000


def decision_boundary(spec: NetworkSpec, theta: np.ndarray, X: np.ndarray, Y: np.ndarray,
                      encoding: str, features: list[str], title: str):
    """A Figure, or None when matplotlib is not installed or the input is not 2-D.

    X: (k, 2) sampled examples as rows; Y: (k, n_L) their targets as rows.
    """
    if spec.layers[0] != 2 or len(X) == 0:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = (hi - lo) * MARGIN + 1e-9
    g0 = np.linspace(lo[0] - pad[0], hi[0] + pad[0], GRID)
    g1 = np.linspace(lo[1] - pad[1], hi[1] + pad[1], GRID)
    G0, G1 = np.meshgrid(g0, g1)
    grid = np.column_stack([G0.ravel(), G1.ravel()]).astype(spec.dtype)
    _, AL = forward(spec, theta, grid)

    fig = Figure(figsize=(6, 5), dpi=100)
    ax = fig.add_subplot()
    X, Y = X[:MAX_POINTS], Y[:MAX_POINTS]
    size = 40 if len(X) < 100 else 10  # xor's four points must be visible
    if encoding == "one_hot":
        k = spec.layers[-1]
        regions = AL.argmax(axis=0).reshape(G0.shape)
        ax.contourf(G0, G1, regions, levels=np.arange(k + 1) - 0.5, cmap="tab10", vmin=0, vmax=9,
                    alpha=0.35)
        ax.scatter(X[:, 0], X[:, 1], c=Y.argmax(axis=1), cmap="tab10", vmin=0, vmax=9, s=size,
                   edgecolors="k", linewidths=0.3)
    else:
        out = AL[0].reshape(G0.shape)
        levels = np.linspace(0, 1, 21) if encoding == "binary" else 20
        filled = ax.contourf(G0, G1, out, levels=levels, cmap="coolwarm", alpha=0.6)
        if encoding == "binary":
            ax.contour(G0, G1, out, levels=[0.5], colors="k", linewidths=1.0)
        fig.colorbar(filled, ax=ax, label="network output")
        ax.scatter(X[:, 0], X[:, 1], c=Y[:, 0], cmap="coolwarm", s=size, edgecolors="k", linewidths=0.3)
    ax.set_xlabel(features[0])
    ax.set_ylabel(features[1])
    ax.set_title(title)
    return fig
