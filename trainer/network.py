"""The multilayer perceptron: parameter layout, initialization, Eq. 1 forward and
Eq. 12 backward as SUMS over the columns of one shard.

Conventions (docs/design.md section 1): X is (n_0, n) with examples as columns; W[l] is
(n_l, n_{l-1}), b[l] is (n_l, 1); Z[l] = W[l] A[l-1] + b[l], A[l] = g[l](Z[l]).

All parameters live in ONE flat vector `theta`, layer by layer (W1, b1, W2, b2,
...), and `W[l]`, `b[l]` are views into it; the gradient sums use the same layout.
One flat buffer is one message to a worker and one vectorized optimizer update.

Callers pass examples as ROWS (`X_rows` is (n, n_0), as read from a table), and the
network keeps every activation and delta in that layout too: the workspace stores
A[l] as an (n, n_l) row-major block and hands out its transpose, so A[l], Z[L] and
delta[l] have the shapes of the math ((n_l, n)) with examples contiguous per row of
the buffer. The products then run as OpenBLAS runs them fastest here, with the
examples as the long dimension of the output: Z[l]^T = A[l-1]^T W[l]^T, dA[l-1]^T =
delta[l]^T W[l], GW[l] = (delta[l]^T)^T A[l-1]^T. Measured on this machine's CPU with
one thread (docs/speed-log.md): the same with OpenBLAS's Haswell kernel, and the
step's products 7% faster with its SkylakeX kernel, than with examples as columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.activations import ACTIVATIONS
from trainer.costs import COSTS

INITIALIZERS = ("he", "xavier", "normal")
NORMAL_INIT_STD = 0.01  # `normal`: W ~ N(0, 0.01^2), the classic small-random start


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

    def views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """W and b views into a flat vector laid out as theta; W[0] is layer 1."""
        assert flat.shape == (self.size,), f"flat vector of {flat.shape}, spec needs ({self.size},)"
        Ws, bs, at = [], [], 0
        for (wshape, bshape) in self.shapes:
            nw = wshape[0] * wshape[1]
            Ws.append(flat[at : at + nw].reshape(wshape))
            at += nw
            bs.append(flat[at : at + bshape[0]].reshape(bshape))
            at += bshape[0]
        return Ws, bs

    def views_of_rows(self, rows: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """views() of every row of a (q, size) array at once: W[l] as (q, n_l, n_{l-1}),
        b[l] as (q, n_l)."""
        Ws, bs, at = [], [], 0
        for (wshape, bshape) in self.shapes:
            nw = wshape[0] * wshape[1]
            Ws.append(rows[:, at : at + nw].reshape(-1, *wshape))
            at += nw
            bs.append(rows[:, at : at + bshape[0]])
            at += bshape[0]
        return Ws, bs

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


class Workspace:
    """Preallocated activations for up to `capacity` columns, reused every step.

    For n <= capacity columns, `A(l, n)` is the (n_l, n) transpose of a contiguous
    (n, n_l) block at the start of layer l's buffer (the first n*n_l elements, so
    shards of any size stay BLAS-friendly); `rows(A)` gives that block back.
    Hidden layers keep only A (Z is computed in place, see activations.py); the
    output layer keeps Z[L] too, because the stable costs read the logits.
    """

    def __init__(self, spec: NetworkSpec, capacity: int):
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

    @staticmethod
    def _view(buf, rows, n):
        return buf[: rows * n].reshape(n, rows).T

    def A(self, l: int, n: int) -> np.ndarray:
        return self._view(self._A[l - 1], self.spec.layers[l], n)

    def ZL(self, n: int) -> np.ndarray:
        return self._view(self._ZL, self.spec.layers[-1], n)

    def D(self, which: int, rows: int, n: int) -> np.ndarray:
        return self._view(self._D[which], rows, n)


class Blocks:
    """Blocks of rows [s, e) of one call, back to back from row 0, whose products must
    each see their own rows alone (_rows_product says why); `width` is their common
    width, or 0 if they differ."""

    __slots__ = ("spans", "width")

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = spans
        w = spans[0][1] - spans[0][0]
        self.width = w if all(e - s == w for s, e in spans) else 0

    def __len__(self) -> int:
        return len(self.spans)


def _stacked(a: np.ndarray, q: int, w: int) -> np.ndarray:
    """Rows [0, q*w) of a 2-D array as q blocks of w rows, (q, w, a.shape[1]): splitting
    one axis, so always a view, whatever the strides."""
    return a[: q * w].reshape(q, w, a.shape[1])


def _rows_product(a_rows: np.ndarray, b: np.ndarray, out_rows: np.ndarray, cuts: Blocks | None) -> None:
    """out_rows = a_rows @ b: one product, or one per block of rows [s, e) in `cuts`.

    Why per block (float32 exact sums, workers/block_sums.py): OpenBLAS's bits for one
    example depend on how many examples the call holds, so a block's products must see
    the block alone, whatever else its worker holds. Each row of the result depends on
    its own row of `a_rows` only, so the elementwise work around it may run over all
    blocks at once. Blocks of one width go to numpy as one stacked product, which makes
    the same BLAS call per block in C (tests/test_network.py checks the bits)."""
    if cuts is None:
        np.matmul(a_rows, b, out=out_rows)
        return
    w = cuts.width
    if w:
        np.matmul(_stacked(a_rows, len(cuts), w), b, out=_stacked(out_rows, len(cuts), w))
        return
    for s, e in cuts.spans:
        np.matmul(a_rows[s:e], b, out=out_rows[s:e])


def _block_sums(delta: np.ndarray, A_prev: np.ndarray, ones: np.ndarray, GW: np.ndarray, Gb: np.ndarray,
                cuts: Blocks) -> None:
    """Each block's GW[l] = delta A[l-1]^T and Gb[l] = row sums of delta, into its own
    row of sums: GW (q, n_l, n_{l-1}) and Gb (q, n_l), views into the rows of sums."""
    w = cuts.width
    if w:  # one stacked product each, as in _rows_product
        D = _stacked(delta.T, len(cuts), w)  # (q, w, n_l)
        np.matmul(D.transpose(0, 2, 1), _stacked(A_prev.T, len(cuts), w), out=GW)
        np.matmul(ones[:w], D, out=Gb)
        return
    for r, (s, e) in enumerate(cuts.spans):
        np.matmul(delta[:, s:e], A_prev.T[s:e], out=GW[r])
        np.matmul(ones[: e - s], delta.T[s:e], out=Gb[r])


def forward(spec: NetworkSpec, theta: np.ndarray, X_rows: np.ndarray,
            ws: Workspace | None = None, cuts: Blocks | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1 for every layer. Returns (Z[L], A[L]), each (n_L, n).

    With a workspace the results are views into it, valid until its next use.
    cuts: blocks of rows whose products run on their own (_rows_product).
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
        _rows_product(A_prev.T, W.T, Z.T, cuts)  # Z^T = A[l-1]^T W^T, into Z's row-major block
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
    else:  # each tensor of every block's row of sums at once: (q, n_l, n_{l-1}) and (q, n_l)
        GWs, Gbs = spec.views_of_rows(grad[: len(cuts)])
    ones = ws.ones[:n]
    L = spec.L
    delta = cost.output_delta(Y, AL, ZL, spec.output_activation, ws.D(0, spec.layers[L], n))
    for l in range(L, 0, -1):
        A_prev = X_rows.T if l == 1 else ws.A(l - 1, n)
        if cuts is None:
            np.matmul(delta, A_prev.T, out=GWs[l - 1])       # GW[l] = delta A[l-1]^T
            np.matmul(ones, delta.T, out=Gbs[l - 1][:, 0])    # Gb[l] = row sums of delta
        else:
            _block_sums(delta, A_prev, ones, GWs[l - 1], Gbs[l - 1], cuts)
        if l == 1:
            break  # dA[0] = W[1]^T delta[1] is never needed
        dA = ws.D((L - l + 1) % 2, spec.layers[l - 1], n)   # the other D buffer
        W = Ws[l - 1]
        if W.shape[0] == 1:
            # dA[l-1] = W[l]^T delta[l] with ONE output unit is an outer product; as a
            # gemm with inner dimension 1, OpenBLAS runs it ~20x slower than this.
            np.multiply(delta.T, W, out=dA.T)
        else:
            _rows_product(delta.T, W, dA.T, cuts)          # dA[l-1]^T = delta[l]^T W[l]
        # A[l-1] is dead after this (GW[l] is done), so g' may use its buffer.
        delta = ACTIVATIONS[spec.activation(l - 1)].backward(dA, A_prev)
    return loss_sum
