"""Eq. 1 / Eq. 12 against independent references: finite differences, a network
worked out by hand, and the single-batch gradient for sums over uneven shards."""

import zlib

import numpy as np
import pytest

from trainer.activations import ACTIVATIONS, OUTPUT_ONLY
from trainer.costs import COSTS
from trainer.gradcheck import gradcheck
from trainer.network import ROWS_MIN_INPUTS, NetworkSpec, Workspace, backward_sums, forward, init_theta

HIDDEN = sorted(set(ACTIVATIONS) - OUTPUT_ONLY)
# Every output activation with every cost that fits it (costs.py `fits`).
OUTPUT_COST = [(out, cost) for cost, c in sorted(COSTS.items()) for out in c.fits]


def targets_for(cost, n_out, n, rng):
    if cost == "cross_entropy":
        return np.eye(n_out)[:, rng.integers(0, n_out, n)]
    if cost == "binary_cross_entropy":
        return rng.integers(0, 2, (n_out, n)).astype(np.float64)
    return rng.standard_normal((n_out, n))


def numeric_gradient(spec, theta, X_rows, Y, h=1e-6):
    """Central differences of C = (1/n) sum_j L, one parameter at a time."""
    def C(t):
        ZL, AL = forward(spec, t, X_rows)
        return COSTS[spec.cost].loss_sum(Y, AL, ZL) / X_rows.shape[0]
    g = np.empty_like(theta)
    for i in range(theta.size):
        t = theta.copy()
        t[i] += h
        up = C(t)
        t[i] -= 2 * h
        g[i] = (up - C(t)) / (2 * h)
    return g


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("output,cost", OUTPUT_COST)
def test_backward_matches_finite_differences(hidden, output, cost):
    rng = np.random.default_rng(zlib.crc32(f"{hidden}/{output}/{cost}".encode()))
    spec = NetworkSpec((3, 5, 4, 3), hidden, output, cost, "float64")
    theta = init_theta(spec, "xavier", seed=1) + rng.standard_normal(spec.size) * 0.1
    spec.views(theta)[1][-1][...] += 1.0  # output biases > 0 keep a relu output alive
    X = rng.standard_normal((7, 3))
    Y = targets_for(cost, 3, 7, rng)
    grad = np.empty_like(theta)
    backward_sums(spec, theta, X, Y, grad)
    grad /= 7
    num = numeric_gradient(spec, theta, X, Y)
    assert np.linalg.norm(num) > 1e-3, "degenerate case: the gradient is ~0"
    rel = np.linalg.norm(grad - num) / np.linalg.norm(grad + num)
    assert rel < 1e-7, f"{hidden}/{output}/{cost}: relative error {rel:.2e}"


def test_gradcheck_module_flags_a_wrong_gradient():
    """The gradcheck used by `rayprop gradcheck` passes a right network and fails a wrong one."""
    rng = np.random.default_rng(3)
    spec = NetworkSpec((2, 6, 3), "tanh", "softmax", "cross_entropy", "float64")
    theta = init_theta(spec, "he", 0) + rng.standard_normal(spec.size) * 0.1
    X, Y = rng.standard_normal((9, 2)), targets_for("cross_entropy", 3, 9, rng)
    assert max(e.rel for e in gradcheck(spec, theta, X, Y)) < 1e-7

    # A wrong g' (tanh' taken as 1 - A^2 / 2) must be noticed.
    from trainer import activations
    original = activations.Tanh.backward
    activations.Tanh.backward = lambda self, dA, A: np.multiply(dA, 1 - 0.5 * A * A, out=dA)
    try:
        assert max(e.rel for e in gradcheck(spec, theta, X, Y)) > 1e-3
    finally:
        activations.Tanh.backward = original


def test_two_layer_network_by_hand():
    """[2, 2, 1], relu hidden, linear output, mse; two examples.

    W1 = [[1, -1], [0.5, 2]], b1 = [0, -1]; W2 = [[1, -2]], b2 = [0.5]
    X = [[1, 3], [2, 1]] (columns x1 = (1,2), x2 = (3,1)), Y = [[1, -1]]
      Z1 = W1 X + b1 = [[-1, 2], [3.5, 2.5]]        A1 = relu = [[0, 2], [3.5, 2.5]]
      Z2 = W2 A1 + b2 = [[-6.5, -2.5]] = A2
      losses (yhat - y)^2 = 56.25, 2.25 -> sum 58.5
      delta2 = 2 (A2 - Y) = [[-15, -3]]
      GW2 = delta2 A1^T = [[-15*0 - 3*2, -15*3.5 - 3*2.5]] = [[-6, -60]];  Gb2 = -18
      dA1 = W2^T delta2 = [[-15, -3], [30, 6]];  relu'(Z1) = [[0, 1], [1, 1]]
      delta1 = [[0, -3], [30, 6]]
      GW1 = delta1 X^T = [[0 - 9, 0 - 3], [30 + 18, 60 + 6]] = [[-9, -3], [48, 66]]
      Gb1 = [[-3], [36]]
    """
    for dtype in ("float64", "float32"):
        spec = NetworkSpec((2, 2, 1), "relu", "linear", "mse", dtype)
        theta = np.empty(spec.size, dtype)
        (W1, W2), (b1, b2) = spec.views(theta)
        W1[...] = [[1, -1], [0.5, 2]]
        b1[...] = [[0], [-1]]
        W2[...] = [[1, -2]]
        b2[...] = [[0.5]]
        X_rows = np.array([[1, 2], [3, 1]], dtype)  # rows: x1, x2
        Y = np.array([[1, -1]], dtype)
        ZL, AL = forward(spec, theta, X_rows)
        np.testing.assert_array_equal(AL, [[-6.5, -2.5]])
        grad = np.empty_like(theta)
        loss_sum = backward_sums(spec, theta, X_rows, Y, grad)
        assert loss_sum == 58.5
        (GW1, GW2), (Gb1, Gb2) = spec.views(grad)
        np.testing.assert_array_equal(GW2, [[-6, -60]])
        np.testing.assert_array_equal(Gb2, [[-18]])
        np.testing.assert_array_equal(GW1, [[-9, -3], [48, 66]])
        np.testing.assert_array_equal(Gb1, [[-3], [36]])


@pytest.mark.parametrize("cuts", [[0, 50], [0, 17, 50], [0, 3, 41, 50]])
def test_shard_sums_over_m_equal_the_batch_gradient(cuts):
    """1, 2 and 3 uneven shards: sum of shard sums / m == single-batch gradient."""
    rng = np.random.default_rng(5)
    spec = NetworkSpec((4, 8, 6, 3), "tanh", "softmax", "cross_entropy", "float64")
    theta = init_theta(spec, "he", 7)
    X = rng.standard_normal((50, 4))
    Y = targets_for("cross_entropy", 3, 50, rng)
    whole = np.empty_like(theta)
    whole_loss = backward_sums(spec, theta, X, Y, whole)
    whole /= 50

    total, loss, part = np.zeros_like(theta), 0.0, np.empty_like(theta)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        loss += backward_sums(spec, theta, X[lo:hi], Y[:, lo:hi], part)
        total += part
    total /= 50
    np.testing.assert_allclose(total, whole, rtol=1e-12, atol=1e-15)
    assert loss == pytest.approx(whole_loss, rel=1e-12)
    # and the batch gradient itself is right
    np.testing.assert_allclose(whole, numeric_gradient(spec, theta, X, Y), rtol=1e-6, atol=1e-9)


def test_workspace_reuse_for_smaller_shards_gives_same_result():
    """Buffers sized for 64 columns, used for 64 then 10 then 37: same as fresh ones."""
    rng = np.random.default_rng(9)
    spec = NetworkSpec((5, 7, 2), "sigmoid", "sigmoid", "binary_cross_entropy", "float32")
    theta = init_theta(spec, "xavier", 1)
    ws = Workspace(spec, 64)
    for n in (64, 10, 37):
        X = rng.standard_normal((n, 5)).astype(np.float32)
        Y = rng.integers(0, 2, (2, n)).astype(np.float32)
        a, b = np.empty_like(theta), np.empty_like(theta)
        la = backward_sums(spec, theta, X, Y, a, ws)
        lb = backward_sums(spec, theta, X, Y, b)
        np.testing.assert_array_equal(a, b)
        assert la == lb


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("output,cost,n_out", [(out, cost, n) for out, cost in OUTPUT_COST for n in (1, 3)
                                               if not (out == "softmax" and n == 1)])
def test_both_activation_layouts_compute_the_same(hidden, output, cost, n_out):
    """Examples as rows (wide inputs) and as columns (the finite-difference tests above,
    whose inputs are narrow): the same loss, outputs and gradient sums, in float64 to
    rounding; n_out = 1 takes the outer-product path of dA."""
    rng = np.random.default_rng(zlib.crc32(f"layout/{hidden}/{output}/{cost}/{n_out}".encode()))
    spec = NetworkSpec((3, 6, 5, n_out), hidden, output, cost, "float64")
    theta = init_theta(spec, "xavier", seed=1) + rng.standard_normal(spec.size) * 0.1
    X = rng.standard_normal((23, 3))
    Y = targets_for(cost, n_out, 23, rng)
    out = {}
    for rows in (False, True):
        ws = Workspace(spec, 23)
        ws.rows = rows
        grad = np.empty_like(theta)
        loss = backward_sums(spec, theta, X, Y, grad, ws)
        ZL, AL = forward(spec, theta, X, ws)
        out[rows] = loss, grad, ZL.copy(), AL.copy()
    (l0, g0, z0, a0), (l1, g1, z1, a1) = out[False], out[True]
    assert l1 == pytest.approx(l0, rel=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(z1, z0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a1, a0, rtol=1e-12, atol=1e-14)


def test_activation_layout_follows_the_input_width():
    """Rows from ROWS_MIN_INPUTS input features up (W-mnist, W-wide), columns below (W-tiny)."""
    assert Workspace(NetworkSpec((784, 256, 128, 10)), 8).rows
    assert Workspace(NetworkSpec((1024, 2048, 2048, 10)), 8).rows
    assert not Workspace(NetworkSpec((2, 16, 16, 1), "sigmoid", "sigmoid", "binary_cross_entropy"), 8).rows
    assert Workspace(NetworkSpec((ROWS_MIN_INPUTS, 4, 2)), 8).rows
    assert not Workspace(NetworkSpec((ROWS_MIN_INPUTS - 1, 4, 2)), 8).rows


def test_float32_agrees_with_float64():
    rng = np.random.default_rng(2)
    spec64 = NetworkSpec((6, 16, 4), "relu", "softmax", "cross_entropy", "float64")
    spec32 = NetworkSpec((6, 16, 4), "relu", "softmax", "cross_entropy", "float32")
    theta = init_theta(spec64, "he", 3)
    X, Y = rng.standard_normal((40, 6)), targets_for("cross_entropy", 4, 40, rng)
    g64, g32 = np.empty(spec64.size), np.empty(spec32.size, np.float32)
    l64 = backward_sums(spec64, theta, X, Y, g64)
    l32 = backward_sums(spec32, theta.astype(np.float32), X.astype(np.float32), Y.astype(np.float32), g32)
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-5)
    assert l32 == pytest.approx(l64, rel=1e-5)


@pytest.mark.parametrize("output,cost", [("sigmoid", "binary_cross_entropy"), ("softmax", "cross_entropy")])
def test_costs_are_finite_for_huge_logits(output, cost):
    """No overflow in exp and no log(0): logits of +-1000 give finite loss and delta."""
    spec = NetworkSpec((1, 2), "relu", output, cost, "float64")
    theta = np.array([1000.0, -1000.0, 0.0, 0.0])  # W = [[1000], [-1000]], b = 0
    X = np.array([[1.0], [-1.0]])
    Y = np.array([[0.0, 1.0], [1.0, 0.0]])  # confidently wrong on both examples
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        grad = np.empty_like(theta)
        loss = backward_sums(spec, theta, X, Y, grad)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    # sigmoid: each of the 4 unit-example pairs is wrong by a logit of 1000 -> 1000 each;
    # softmax: each example puts its target 2000 below the other -> 2000 each.
    assert loss == pytest.approx(4000.0, rel=1e-9)


def test_init_is_seeded_and_matches_the_workloads_recipe():
    spec = NetworkSpec((784, 256, 128, 10), "relu", "softmax", "cross_entropy", "float32")
    a, b = init_theta(spec, "he", 2), init_theta(spec, "he", 2)
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(2)  # docs/workloads.md: W = N(0,1) * sqrt(2/n_in), b = 0, layer order
    Ws, bs = spec.views(a)
    for W, bvec in zip(Ws, bs):
        n_out, n_in = W.shape
        expected = (rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in)).astype(np.float32)
        np.testing.assert_array_equal(W, expected)
        assert not bvec.any()
    assert a.dtype == np.float32
    assert not np.array_equal(init_theta(spec, "he", 3), a)
    xs = init_theta(spec, "xavier", 2)
    assert np.std(spec.views(xs)[0][0]) == pytest.approx(np.sqrt(2 / (784 + 256)), rel=0.02)


def test_flops_per_example_counts_the_workloads_way():
    spec = NetworkSpec((1024, 2048, 2048, 10), "relu", "softmax", "cross_entropy")
    w = [1024 * 2048, 2048 * 2048, 2048 * 10]
    assert spec.flops_per_example() == 6 * sum(w) - 2 * w[0]


@pytest.mark.parametrize("layers,hidden,output,cost", [((784, 256, 128, 10), "relu", "softmax", "cross_entropy"),
                                                       ((2, 16, 16, 1), "sigmoid", "sigmoid", "binary_cross_entropy")])
def test_blocks_of_one_width_give_the_bits_of_each_block_alone(layers, hidden, output, cost):
    """Per-block sums (float32 exact sums; the blocks keep examples as rows whatever the
    network's layout) are a function of the block alone: a stacked product over blocks of
    one width (one numpy call), a loop over blocks of unequal widths (small ones too: as
    columns, blocks under 8 examples got other bits), and the block on its own give the
    same bits; in float64 they add up to the sums over all rows at once."""
    from trainer.network import Blocks

    rng = np.random.default_rng(4)
    widths = [40, 40, 40, 41, 3, 1, 5, 7, 2]
    starts = np.concatenate([[0], np.cumsum(widths)])
    spans = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
    n = int(starts[-1])
    for dtype in ("float32", "float64"):
        spec = NetworkSpec(layers, hidden, output, cost, dtype)
        theta = init_theta(spec, "he", 1)
        X = rng.standard_normal((n, layers[0])).astype(dtype)
        Y = targets_for(cost, layers[-1], n, rng).astype(dtype)
        ws = Workspace(spec, n, rows=True)
        stacked = np.empty((3, spec.size), dtype)  # blocks of 40, 40, 40: one product per layer
        backward_sums(spec, theta, X[:120], Y[:, :120], stacked, ws, Blocks(spans[:3]))
        looped = np.empty((len(spans), spec.size), dtype)  # a product per block
        backward_sums(spec, theta, X, Y, looped, ws, Blocks(spans))
        for r, (a, b) in enumerate(spans):
            alone = np.empty(spec.size, dtype)
            backward_sums(spec, theta, X[a:b], Y[:, a:b], alone, Workspace(spec, b - a, rows=True))
            assert np.array_equal(looped[r], alone), (dtype, r)
            if r < 3:
                assert np.array_equal(stacked[r], alone), (dtype, r)
        if dtype == "float64":
            whole = np.empty(spec.size)
            backward_sums(spec, theta, X, Y, whole)  # the network's own layout
            np.testing.assert_allclose(looped.sum(axis=0), whole, rtol=1e-9, atol=1e-12)
