"""Optimizers against their formulas, the batch plan, and the coordinator over
1, 2 and 3 uneven in-process shards against single-shard training."""

import numpy as np
import pytest

from trainer.batches import BatchPlan
from trainer.coordinator import DivergedError, reduce_sums, train
from trainer.network import NetworkSpec, init_theta
from trainer.optimizers import Adam, GradientDescent, Momentum, make_optimizer
from trainer.pool import ShardSums
from workers.local_pool import LocalPool
from workers.shard import ShardWorker

G1 = np.array([0.5, -1.0, 2.0])
G2 = np.array([-0.25, 0.5, 1.0])
W0 = np.array([1.0, 2.0, -3.0])


def test_gd_two_steps():
    w, opt = W0.copy(), GradientDescent(0.1)
    opt.step(w, G1)
    opt.step(w, G2)
    np.testing.assert_allclose(w, W0 - 0.1 * G1 - 0.1 * G2)


def test_momentum_two_steps():
    w, opt = W0.copy(), Momentum(0.1, mu=0.9)
    opt.step(w, G1)
    opt.step(w, G2)
    v1 = -0.1 * G1
    v2 = 0.9 * v1 - 0.1 * G2
    np.testing.assert_allclose(w, W0 + v1 + v2)


def test_adam_two_steps():
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    w, opt = W0.copy(), Adam(lr, b1, b2, eps)
    opt.step(w, G1)
    opt.step(w, G2)
    m1, v1 = (1 - b1) * G1, (1 - b2) * G1**2
    w1 = W0 - lr * (m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * G2, b2 * v1 + (1 - b2) * G2**2
    w2 = w1 - lr * (m2 / (1 - b1**2)) / (np.sqrt(v2 / (1 - b2**2)) + eps)
    np.testing.assert_allclose(w, w2, rtol=1e-12)
    # Adam's first step moves each weight by ~lr whatever the gradient's scale.
    np.testing.assert_allclose(np.abs(w1 - W0), lr, rtol=1e-6)


@pytest.mark.parametrize("name", ["gd", "sgd", "momentum", "adam"])
def test_optimizer_state_round_trip(name):
    a, b = make_optimizer(name, 0.05), make_optimizer(name, 0.05)
    wa, wb = W0.copy(), W0.copy()
    a.step(wa, G1)
    b.step(wb, G1)
    b2 = make_optimizer(name, 0.05)
    b2.load_state({k: np.array(v) for k, v in b.state().items()})
    a.step(wa, G2)
    b2.step(wb, G2)
    np.testing.assert_array_equal(wa, wb)


def test_batch_plan_depends_only_on_seed_epoch_m_batch():
    p, q = BatchPlan(103, 20, seed=4), BatchPlan(103, 20, seed=4)
    assert p.steps_per_epoch == 6 and p.batch_size_of(5) == 3  # partial last batch kept
    for epoch in (0, 1):
        batches = [p.batch(epoch, k) for k in range(6)]
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(103))
        for k in range(6):
            np.testing.assert_array_equal(q.batch(epoch, k), batches[k])
    assert not np.array_equal(p.batch(0, 0), p.batch(1, 0))  # a new permutation per epoch
    assert not np.array_equal(p.batch(0, 0), BatchPlan(103, 20, seed=5).batch(0, 0))


def test_shard_batches_partition_each_batch():
    plan = BatchPlan(100, 32, seed=1)
    cuts = [0, 7, 58, 100]
    for k in range(plan.steps_per_epoch):
        parts = [plan.shard_batch(2, k, lo, hi) + lo for lo, hi in zip(cuts[:-1], cuts[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), np.sort(plan.batch(2, k)))


def test_full_batch_is_every_example_each_step():
    plan = BatchPlan(10, None, seed=0)
    assert plan.full and plan.steps_per_epoch == 1 and plan.batch_size_of(0) == 10
    assert plan.shard_batch(3, 0, 4, 9) == slice(0, 5)
    assert BatchPlan(10, 50, seed=0).full


def make_data(m=101, n_in=3, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n_in))
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    return X, np.eye(n_out)[labels]


def train_shards(cuts, optimizer, batch_size, epochs=3, dtype="float64", lr=0.05):
    X, Y = make_data()
    spec = NetworkSpec((3, 8, 3), "tanh", "softmax", "cross_entropy", dtype)
    plan = BatchPlan(len(X), batch_size, seed=11)
    pool = LocalPool([ShardWorker(spec, plan, lo, X[lo:hi], Y[lo:hi])
                      for lo, hi in zip(cuts[:-1], cuts[1:])])
    theta = init_theta(spec, "he", 0)
    result = train(pool, theta, make_optimizer(optimizer, lr), plan, epochs)
    return theta, result


@pytest.mark.parametrize("optimizer,batch_size", [("gd", None), ("sgd", 16), ("momentum", 16), ("adam", 16)])
def test_one_two_three_uneven_shards_train_the_same_weights(optimizer, batch_size):
    """m = 101 with batches of 16: 7 steps per epoch, the last one has 5 examples."""
    ref, ref_result = train_shards([0, 101], optimizer, batch_size)
    for cuts in ([0, 30, 101], [0, 1, 64, 101]):
        theta, result = train_shards(cuts, optimizer, batch_size)
        rel = np.max(np.abs(theta - ref)) / np.max(np.abs(ref))
        assert rel <= 1e-9, f"{cuts}: relative difference {rel:.2e}"
        assert result.steps == ref_result.steps
    assert ref_result.steps == 3 * (1 if batch_size is None else 7)
    # and training did something: the loss went down
    assert ref_result.history[-1]["epoch_loss"] < ref_result.history[0]["epoch_loss"]


def test_single_shard_matches_a_plain_numpy_loop():
    """The coordinator with one shard equals SGD written out directly (independent loop)."""
    X, Y = make_data()
    theta, _ = train_shards([0, 101], "sgd", 16, epochs=2)
    spec = NetworkSpec((3, 8, 3), "tanh", "softmax", "cross_entropy", "float64")
    t = init_theta(spec, "he", 0)
    (W1, W2), (b1, b2) = spec.views(t)
    for epoch in range(2):
        perm = np.random.default_rng([11, epoch]).permutation(101)
        for k in range(7):
            idx = perm[k * 16 : (k + 1) * 16]
            A0, y = X[idx].T, Y[idx].T
            A1 = np.tanh(W1 @ A0 + b1)
            Z2 = W2 @ A1 + b2
            A2 = np.exp(Z2 - Z2.max(0)) / np.exp(Z2 - Z2.max(0)).sum(0)
            d2 = A2 - y
            d1 = (W2.T @ d2) * (1 - A1**2)
            m = len(idx)
            W2 -= 0.05 * d2 @ A1.T / m
            b2 -= 0.05 * d2.sum(1, keepdims=True) / m
            W1 -= 0.05 * d1 @ A0.T / m
            b1 -= 0.05 * d1.sum(1, keepdims=True) / m
    np.testing.assert_allclose(theta, t, rtol=1e-10, atol=1e-12)


def test_float32_training_stays_float32_and_close_to_float64():
    t32, _ = train_shards([0, 50, 101], "adam", 16, dtype="float32")
    t64, _ = train_shards([0, 50, 101], "adam", 16, dtype="float64")
    assert t32.dtype == np.float32
    np.testing.assert_allclose(t32, t64, rtol=1e-3, atol=1e-3)


def test_reduce_skips_empty_shards_and_counts_examples():
    out = np.empty(3)
    n, loss = reduce_sums([ShardSums(np.zeros(3), 0.0, 0), ShardSums(np.array([1.0, 2, 3]), 1.5, 4),
                           ShardSums(np.array([1.0, 1, 1]), 0.5, 2)], out)
    assert (n, loss) == (6, 2.0)
    np.testing.assert_array_equal(out, [2, 3, 4])


def test_divergence_stops_with_the_step():
    """Linear regression with a learning rate far past 2/lambda_max blows up."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)) * 10
    Y = X @ rng.standard_normal((4, 1))
    spec = NetworkSpec((4, 1), "relu", "linear", "mse", "float64")
    plan = BatchPlan(64, 8, seed=0)
    pool = LocalPool([ShardWorker(spec, plan, 0, X, Y, encoding="numeric")])
    with pytest.raises(DivergedError, match=r"at step \d+"):
        train(pool, init_theta(spec, "he", 0), make_optimizer("sgd", 10.0), plan, 1000)


def test_validation_metrics_per_epoch():
    X, Y = make_data()
    spec = NetworkSpec((3, 8, 3), "tanh", "softmax", "cross_entropy", "float64")
    plan = BatchPlan(81, 16, seed=1)
    pool = LocalPool([ShardWorker(spec, plan, 0, X[:81], Y[:81], X[81:], Y[81:])])
    theta = init_theta(spec, "he", 0)
    result = train(pool, theta, make_optimizer("adam", 0.05), plan, 30)
    assert len(result.history) == 30
    last = result.history[-1]
    assert {"epoch_loss", "val_loss", "val_accuracy", "examples_per_second", "step_seconds"} <= set(last)
    # independent check of the reported validation accuracy
    (W1, W2), (b1, b2) = spec.views(theta)
    pred = (W2 @ np.tanh(W1 @ X[81:].T + b1) + b2).argmax(0)
    assert last["val_accuracy"] == pytest.approx((pred == Y[81:].argmax(1)).mean())
    assert last["val_accuracy"] > 0.8
