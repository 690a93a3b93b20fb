"""The multilayer perceptron: parameter layout, initialization, Eq. 1 forward and
Eq. 12 backward as SUMS over the columns of one shard.

Conventions (docs/design.md section 1): X is (n_0, n) with examples as columns; W[l] is
(n_l, n_{l-1}), b[l] is (n_l, 1); Z[l] = W[l] A[l-1] + b[l], A[l] = g[l](Z[l]).

All parameters live in ONE flat vector `theta`, layer by layer (W1, b1, W2, b2,
...), and `W[l]`, `b[l]` are views into it; the gradient sums use the same layout.
One flat buffer is one message to a worker and one vectorized optimizer update.

Callers pass examples as ROWS (`X_rows` is (n, n_0), as read from a table). A network
with wide inputs (n_0 >= ROWS_MIN_INPUTS) keeps every activation and delta in that
layout too: the workspace stores A[l] as an (n, n_l) row-major block and hands out its
transpose, so A[l], Z[L] and delta[l] have the shapes of the math ((n_l, n)) with
examples contiguous per row of the buffer, and the products run with the examples as
the long dimension of the output: Z[l]^T = A[l-1]^T W[l]^T, dA[l-1]^T = delta[l]^T
W[l], GW[l] = (delta[l]^T)^T A[l-1]^T. Measured on this machine's CPU with one thread
(docs/speed-log.md): W-mnist's step the same with OpenBLAS's Haswell kernel, and 3-7%
faster with its SkylakeX kernel, than with examples as columns. A network with few
inputs keeps A[l] as (n_l, n) row-major blocks (examples as columns): there the first
layer's products are small, and what the rows layout costs dominates: an elementwise
pass against a per-unit vector (Z += b, a one-unit output's outer product) or a
reduction over the units (softmax) runs numpy's inner loop over one row of n_l values,
n times. W-tiny ([2, 16, 16, 1]) takes 1.2-1.3x the time per step as rows, [2, 16, 16,
10] with softmax 2.2-2.4x. Either way a network's layout depends on its spec alone, so
every worker of a job computes alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.activations import ACTIVATIONS
from trainer.costs import COSTS

INITIALIZERS = ("he", "xavier", "normal")
NORMAL_INIT_STD = 0.01  # `normal`: W ~ N(0, 0.01^2), the classic small-random start
ROWS_MIN_INPUTS = 256  # Workspace: activations as rows from this many input features up (above)


@dataclass(frozen=True)
class NetworkSpec:
    """What defines a network's shapes and functions; saved as model.json."""

    layers: tuple[int, ...]  # (n_0, n_1, ..., n_L)
    hidden_activation: str = "relu"
    output_activation: str = "softmax"
    cost: str = "cross_entropy"
    dtype: str = "float32"

    @property
    def L(self) -> int:
        return len(self.layers) - 1

    def activation(self, l: int) -> str:
        """Name of g[l] for l = 1..L."""
        return self.output_activation if l == self.L else self.hidden_activation

    @property
    def shapes(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """[(W[l].shape, b[l].shape) for l = 1..L]."""
        n = self.layers
        return [((n[l], n[l - 1]), (n[l], 1)) for l in range(1, len(n))]

    @property
    def size(self) -> int:
        """Number of parameters, the length of theta."""
        return sum(w[0] * w[1] + b[0] for w, b in self.shapes)

    def _spans(self):
        """Per layer: (W's shape, where W starts, where b starts, where b ends) in theta."""
        at = 0
        for (wshape, bshape) in self.shapes:
            w_end = at + wshape[0] * wshape[1]
            yield wshape, at, w_end, w_end + bshape[0]
            at = w_end + bshape[0]

    def views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """W and b views into a flat vector laid out as theta; W[0] is layer 1."""
        assert flat.shape == (self.size,), f"flat vector of {flat.shape}, spec needs ({self.size},)"
        spans = list(self._spans())
        return ([flat[a:w].reshape(wshape) for wshape, a, w, _ in spans],
                [flat[w:b].reshape(-1, 1) for _, _, w, b in spans])

    def views_of_rows(self, rows: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """views() of every row of a (q, size) array at once: W[l] as (q, n_l, n_{l-1}),
        b[l] as (q, n_l)."""
        spans = list(self._spans())
        return ([rows[:, a:w].reshape(-1, *wshape) for wshape, a, w, _ in spans],
                [rows[:, w:b] for _, _, w, b in spans])

    def flops_per_example(self) -> int:
        """Multiply-adds x2 of one forward + backward pass (docs/workloads.md): 2 per weight
        forward, 4 backward (dW and dA), less the dA[0] product nobody computes."""
        weights = [w[0] * w[1] for w, _ in self.shapes]
        return 6 * sum(weights) - 2 * weights[0]


def init_theta(spec: NetworkSpec, init: str = "he", seed: int = 0) -> np.ndarray:
    """Seeded initial parameters: W by `init`, b = 0.

    he: N(0, 2/n_in); xavier (Glorot normal): N(0, 2/(n_in + n_out)); normal: N(0, 0.01^2).
    Layers draw in order from one default_rng(seed), in float64, then cast, so the
    same seed gives the same start in float32 and float64 (and docs/workloads.md's
    initial weights are init=he, seed=2).
    """
    if init not in INITIALIZERS:
        raise ValueError(f"unknown initializer {init!r}")
    rng = np.random.default_rng(seed)
    theta = np.zeros(spec.size, dtype=spec.dtype)
    Ws, _ = spec.views(theta)
    for W in Ws:
        n_out, n_in = W.shape
        std = {"he": np.sqrt(2.0 / n_in), "xavier": np.sqrt(2.0 / (n_in + n_out)),
               "normal": NORMAL_INIT_STD}[init]
        W[...] = rng.standard_normal((n_out, n_in)) * std
    return theta


class Blocks:
    """Blocks of examples [s, e) of one call, back to back from the first, whose products
    must each see their own examples alone (float32 exact sums, workers/block_sums.py):
    OpenBLAS's bits for one example depend on how many examples the call holds, so a
    block's products must see the block alone, whatever else its worker holds. Each
    example's activations depend on that example alone, so the elementwise work around
    the products may run over all blocks at once. `width` is the blocks' common width,
    or 0 if they differ: blocks of one width go to numpy as one stacked product, which
    makes the same BLAS call per block in C (tests/test_network.py checks the bits)."""

    __slots__ = ("spans", "width")

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = spans
        w = spans[0][1] - spans[0][0]
        self.width = w if all(e - s == w for s, e in spans) else 0

    def __len__(self) -> int:
        return len(self.spans)


def _blocks_of_columns(M: np.ndarray, q: int, w: int) -> np.ndarray:
    """The first q*w columns of a 2-D array as q blocks of w columns, (q, M.shape[0], w):
    splitting one axis, so always a view, whatever the strides."""
    return M[:, : q * w].reshape(M.shape[0], q, w).transpose(1, 0, 2)


class Workspace:
    """Preallocated activations for up to `capacity` columns, reused every step.

    For n <= capacity columns, `A(l, n)` is an (n_l, n) view of the first n*n_l
    elements of layer l's buffer (so shards of any size stay BLAS-friendly): with
    `rows` the transpose of a contiguous (n, n_l) block, else that contiguous block.
    Hidden layers keep only A (Z is computed in place, see activations.py); the
    output layer keeps Z[L] too, because the stable costs read the logits.
    """

    def __init__(self, spec: NetworkSpec, capacity: int, rows: bool | None = None):
        """rows: the layout; None: by the input width (module docstring). The exact sums'
        blocks always take rows (workers/block_sums.py says why)."""
        self.spec, self.capacity = spec, capacity
        dt = np.dtype(spec.dtype)
        self._A = [np.empty(n * capacity, dt) for n in spec.layers[1:]]
        self._ZL = np.empty(spec.layers[-1] * capacity, dt)
        # dA / delta for the widest layer below the output, reused layer by layer;
        # two, since dA[l-1] is written while delta[l] is still being read.
        widest = max(spec.layers[1:])
        self._D = [np.empty(widest * capacity, dt), np.empty(widest * capacity, dt)]
        self.ones = np.ones(capacity, dt)  # Gb[l] = delta[l] @ ones: row sums as a gemv
        self._views: dict[int, tuple[np.ndarray, tuple]] = {}
        # Examples as rows only where the first layer's products gain by it (module docstring).
        self.rows = spec.layers[0] >= ROWS_MIN_INPUTS if rows is None else rows
        self.view_slots = 3  # buffers whose views are kept (theta and grad; a block worker: more)

    def views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """spec.views(flat), built once per buffer: a step reuses the same theta and
        gradient buffers, and W-tiny's whole step is ~40 small numpy calls."""
        key = id(flat)
        hit = self._views.get(key)
        if hit is None or hit[0] is not flat:  # the held reference makes an id match exact
            if len(self._views) >= self.view_slots:  # theta and grad; a Ray worker gets a new theta each
                self._views.clear()         # step, and must not pin old ones in the object store
            hit = self._views[key] = (flat, self.spec.views(flat))
        return hit[1]

    def _view(self, buf, rows, n):
        if self.rows:
            return buf[: rows * n].reshape(n, rows).T
        return buf[: rows * n].reshape(rows, n)

    def matmul(self, P: np.ndarray, Q: np.ndarray, out: np.ndarray, cuts: Blocks | None = None) -> None:
        """out = P @ Q into one of this workspace's views, with the examples as the long
        side of the row-major output BLAS writes: out^T = Q^T P^T in the rows layout.
        With `cuts`, one product per block of examples (columns of Q and out)."""
        if cuts is None:
            if self.rows:
                np.matmul(Q.T, P.T, out=out.T)
            else:
                np.matmul(P, Q, out=out)
        elif cuts.width:
            q, w = len(cuts), cuts.width
            Qb, Ob = _blocks_of_columns(Q, q, w), _blocks_of_columns(out, q, w)
            if self.rows:
                np.matmul(Qb.transpose(0, 2, 1), P.T, out=Ob.transpose(0, 2, 1))
            else:
                np.matmul(P, Qb, out=Ob)
        else:
            for s, e in cuts.spans:
                self.matmul(P, Q[:, s:e], out[:, s:e])

    def row_sums(self, delta: np.ndarray, out: np.ndarray, cuts: Blocks | None = None) -> None:
        """out = delta's row sums (Gb[l]) as a gemv against ones; with `cuts`, one row of
        out per block of columns."""
        ones = self.ones
        if cuts is None:
            n = delta.shape[1]
            if self.rows:
                np.matmul(ones[:n], delta.T, out=out)
            else:
                np.matmul(delta, ones[:n], out=out)
        elif cuts.width:
            D = _blocks_of_columns(delta, len(cuts), cuts.width)  # (q, n_l, w)
            if self.rows:
                np.matmul(ones[: cuts.width], D.transpose(0, 2, 1), out=out)
            else:
                np.matmul(D, ones[: cuts.width], out=out)
        else:
            for r, (s, e) in enumerate(cuts.spans):
                self.row_sums(delta[:, s:e], out[r])

    def A(self, l: int, n: int) -> np.ndarray:
        return self._view(self._A[l - 1], self.spec.layers[l], n)

    def ZL(self, n: int) -> np.ndarray:
        return self._view(self._ZL, self.spec.layers[-1], n)

    def D(self, which: int, rows: int, n: int) -> np.ndarray:
        return self._view(self._D[which], rows, n)


def forward(spec: NetworkSpec, theta: np.ndarray, X_rows: np.ndarray,
            ws: Workspace | None = None, cuts: Blocks | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1 for every layer. Returns (Z[L], A[L]), each (n_L, n).

    With a workspace the results are views into it, valid until its next use.
    cuts: blocks of examples whose products run on their own (Blocks).
    """
    n = X_rows.shape[0]
    if ws is None or ws.capacity < n:
        ws = Workspace(spec, n)
    Ws, bs = ws.views(theta)
    A_prev = X_rows.T  # A[0], (n_0, n)
    for l in range(1, spec.L + 1):
        W, b = Ws[l - 1], bs[l - 1]
        A = ws.A(l, n)
        Z = ws.ZL(n) if l == spec.L else A
        ws.matmul(W, A_prev, Z, cuts)  # Z = W A[l-1]
        Z += b
        ACTIVATIONS[spec.activation(l)].forward(Z, A)
        A_prev = A
    return ws.ZL(n), A_prev


def backward_sums(spec: NetworkSpec, theta: np.ndarray, X_rows: np.ndarray,
                  Y: np.ndarray, grad: np.ndarray, ws: Workspace | None = None,
                  cuts: Blocks | None = None) -> float:
    """Eq. 12 over one shard, as SUMS over its n columns.

    X_rows: (n, n_0) examples as rows; Y: (n_L, n) targets as columns.
    Writes GW[l] = delta[l] @ A[l-1].T and Gb[l] = sum over columns of delta[l]
    into `grad` (theta's layout, overwritten) and returns the shard's loss sum.
    The caller adds the sums of all shards and divides by the batch's m once.

    cuts: blocks of rows (workers/block_sums.py): every product runs per block, and
    `grad` is (len(cuts), theta's size), one row of sums per block.
    """
    n = X_rows.shape[0]
    assert Y.shape == (spec.layers[-1], n), f"Y is {Y.shape}, expected {(spec.layers[-1], n)}"
    if ws is None or ws.capacity < n:
        ws = Workspace(spec, n)
    ZL, AL = forward(spec, theta, X_rows, ws, cuts)
    cost = COSTS[spec.cost]
    loss_sum = cost.loss_sum(Y, AL, ZL)

    Ws, _ = ws.views(theta)
    if cuts is None:
        GWs, Gbs = ws.views(grad)
        Gbs = [b[:, 0] for b in Gbs]
    else:  # each tensor of every block's row of sums at once: (q, n_l, n_{l-1}) and (q, n_l)
        GWs, Gbs = spec.views_of_rows(grad[: len(cuts)])
    L = spec.L
    delta = cost.output_delta(Y, AL, ZL, spec.output_activation, ws.D(0, spec.layers[L], n))
    for l in range(L, 0, -1):
        A_prev = X_rows.T if l == 1 else ws.A(l - 1, n)
        if cuts is None:
            np.matmul(delta, A_prev.T, out=GWs[l - 1])       # GW[l] = delta A[l-1]^T
        elif cuts.width:  # each block's GW[l], one stacked product
            q, w = len(cuts), cuts.width
            np.matmul(_blocks_of_columns(delta, q, w), _blocks_of_columns(A_prev, q, w).transpose(0, 2, 1),
                      out=GWs[l - 1])
        else:
            for r, (s, e) in enumerate(cuts.spans):
                np.matmul(delta[:, s:e], A_prev[:, s:e].T, out=GWs[l - 1][r])
        ws.row_sums(delta, Gbs[l - 1], cuts)                 # Gb[l] = row sums of delta
        if l == 1:
            break  # dA[0] = W[1]^T delta[1] is never needed
        dA = ws.D((L - l + 1) % 2, spec.layers[l - 1], n)   # the other D buffer
        W = Ws[l - 1]
        if W.shape[0] == 1:
            # dA[l-1] = W[l]^T delta[l] with ONE output unit is an outer product; as a
            # gemm with inner dimension 1, OpenBLAS runs it ~20x slower than this.
            np.multiply(W.T, delta, out=dA)
        else:
            ws.matmul(W.T, delta, dA, cuts)               # dA[l-1] = W[l]^T delta[l]
        # A[l-1] is dead after this (GW[l] is done), so g' may use its buffer.
        delta = ACTIVATIONS[spec.activation(l - 1)].backward(dA, A_prev)
    return loss_sum
