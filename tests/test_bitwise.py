"""float32 weights bit for bit whatever the worker count (README: The math, "Bit for
bit"): in-process pools of 1, 2, 3, 4 and 8 workers and uneven unions of blocks train
np.array_equal weights, with each optimizer; the exact sum is order-free where plain
float32 addition is not; a step whose block sums leave the scale's range is recomputed
to the same bits; a checkpoint resumes on another worker count to the same bits."""

import itertools

import numpy as np
import pytest

from experiments.jobs import training
from tests.raydata import config, write_parquet
from trainer.batches import BatchPlan
from trainer.checkpoint import Checkpointer, latest_checkpoint
from trainer.config import ConfigError, from_dict
from trainer.coordinator import DivergedError, TrainingStopped, train
from trainer.exact_sum import ExactSum, integer_bits
from trainer.network import NetworkSpec, init_theta
from trainer.optimizers import make_optimizer
from workers.local_pool import LocalPool
from workers.shard import ShardWorker

# (layers, hidden, output, cost, encoding, optimizers with batch sizes, m)
MNIST_LIKE = ((784, 256, 128, 10), "relu", "softmax", "cross_entropy", "one_hot")
TINY = ((2, 16, 16, 1), "sigmoid", "sigmoid", "binary_cross_entropy", "binary")
# Worker layouts as blocks per worker (train.blocks = 8): even and uneven unions.
LAYOUTS = [[8], [4, 4], [3, 3, 2], [2, 2, 2, 2], [1] * 8, [4, 2, 2], [1, 5, 2]]


def data(net, m, seed=0):
    layers, _, _, _, encoding = net
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, layers[0])).astype(np.float32)
    if encoding == "one_hot":
        Y = np.eye(layers[-1], dtype=np.float32)[X[:, : layers[-1]].argmax(1)]
    else:
        Y = (X[:, :1] * X[:, 1:2] > 0).astype(np.float32)
    return X, Y


def pool_of(net, plan, counts, X, Y, threads=1):
    """In-process workers holding counts[r] consecutive blocks each."""
    layers, hidden, output, cost, encoding = net
    spec = NetworkSpec(layers, hidden, output, cost, "float32")
    cuts = np.concatenate([[0], np.cumsum(counts)])
    workers = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        lo, hi = int(plan.bounds[a]), int(plan.bounds[b])
        workers.append(ShardWorker(spec, plan, lo, X[lo:hi], Y[lo:hi], encoding=encoding, threads=threads))
    return LocalPool(workers)


def trained(net, counts, optimizer, batch_size, m, epochs=2, threads=1, lr=0.05, **kw):
    X, Y = data(net, m)
    plan = BatchPlan(m, batch_size, seed=3)
    pool = pool_of(net, plan, counts, X, Y, threads)
    theta = init_theta(pool.spec, "he", 0)
    result = train(pool, theta, make_optimizer(optimizer, lr), plan, epochs, **kw)
    return theta, result


# W-mnist's layers on few rows (m and batch sizes not multiples of the blocks), and a
# tiny sigmoid net with binary cross-entropy.
CASES = [(MNIST_LIKE, "sgd", 64, 300), (MNIST_LIKE, "adam", 64, 300), (MNIST_LIKE, "momentum", 100, 300),
         (TINY, "gd", None, 1000), (TINY, "momentum", None, 1000), (TINY, "adam", 32, 300)]


@pytest.mark.parametrize("net,optimizer,batch_size,m", CASES,
                         ids=[f"{'mnist' if c[0] is MNIST_LIKE else 'tiny'}-{c[1]}" for c in CASES])
def test_every_worker_layout_trains_the_same_float32_bits(net, optimizer, batch_size, m):
    ref, ref_result = trained(net, [8], optimizer, batch_size, m, threads=2)
    assert ref.dtype == np.float32
    assert ref_result.history[-1]["epoch_loss"] < ref_result.history[0]["epoch_loss"]  # it trained
    for counts, threads in zip(LAYOUTS[1:], itertools.cycle([1, 2])):
        theta, _ = trained(net, counts, optimizer, batch_size, m, threads=threads)
        assert np.array_equal(theta, ref), f"{counts} ({threads} threads): max diff {np.abs(theta - ref).max():.3e}"


def test_data_source_with_validation_rows_on_1_2_3_4_8_workers(tmp_path):
    """Through ShardTask.ranges: source-row ranges cut at block boundaries, with the
    validation rows between training rows going to one side."""
    job = training.prepare(from_dict(config(write_parquet(tmp_path / "d.parquet"), "adam", 64, dtype="float32",
                                                  exact_sums=True)))
    thetas = []
    for workers in (1, 2, 3, 4, 8):
        pool = LocalPool.open(job.task, workers, job.source)
        assert pool.n_train == job.plan.n_train and pool.n_val == len(job.val_rows)
        theta = job.theta0.copy()
        train(pool, theta, make_optimizer("adam", 0.05), job.plan, 2)
        thetas.append(theta)
    for workers, theta in zip((2, 3, 4, 8), thetas[1:]):
        assert np.array_equal(theta, thetas[0]), f"{workers} workers"


def test_more_workers_than_blocks_is_refused_naming_the_key(tmp_path):
    raw = config(tmp_path / "d.parquet", dtype="float32")
    with pytest.raises(ConfigError, match=r"cluster\.workers.*train\.blocks=8"):
        from_dict({**raw, "cluster": {"workers": 9}})
    from_dict({**raw, "cluster": {"workers": 9}, "train": {**raw["train"], "blocks": 9}})  # fine with 9 blocks


def test_exact_sum_ignores_order_where_float32_does_not():
    """Hand-worked: three blocks' sums of one weight. In float32, (1e8 + 1) - 1e8 is 0
    (1e8's ulp is 8) but (1e8 - 1e8) + 1 is 1; as integers at scale 2^s every order
    gives the same."""
    blocks = np.array([1e8, 1.0, -1e8], np.float32)
    orders = list(itertools.permutations(range(3)))
    plain = {float(np.float32(np.float32(blocks[a] + blocks[b]) + blocks[c])) for a, b, c in orders}
    assert plain == {0.0, 1.0}  # plain float32 summation order shows: the test can fail
    exact = ExactSum([1, 1], blocks=3)  # one tensor W (1x1) and b; only W used here
    exact.rescale(np.array([1e8, 0.0]))  # the scale for the largest |block sum|
    s = int(exact.scales[0])
    assert s + 27 <= exact.target  # 1e8 < 2^27: at most 2^target
    ints = np.trunc(blocks * np.float32(2.0**s)).astype(np.float64)
    sums = set()
    for order in orders:
        total = np.zeros(2)
        for i in order:
            total[0] += ints[i]
        out = np.empty(2, np.float32)
        sums.add(float(exact.mean(total, 1, out)[0]))
    assert sums == {1.0}


def test_integer_bound_keeps_any_order_exact():
    """Every block's integers are below 2^integer_bits(blocks): `blocks` of them, added
    in any order in float64, never round."""
    for blocks in (1, 2, 3, 8, 9, 1024):
        top = 2.0 ** integer_bits(blocks) - 1
        assert blocks * top < 2.0**53
        vals = [top] * blocks + [-1.0]
        assert sum(vals) == sum(reversed(vals)) == blocks * top - 1


def test_a_step_outside_the_scale_is_recomputed_to_the_same_bits():
    """Steps at a scale far too large (overflow) or too small (coarse) are recomputed at
    the measured one: the weights are those of a run that started right; a resumed run
    starts at the checkpoint's scales and recomputes nothing."""
    ref, ref_result = trained(MNIST_LIKE, [8], "sgd", 64, 300, epochs=1)
    for start in (100, -100):
        scales = (start,) * 6
        from trainer.checkpoint import Position

        theta, _ = trained(MNIST_LIKE, [4, 4], "sgd", 64, 300, epochs=1, resume=Position(0, 0, 0, sum_scales=scales))
        assert np.array_equal(theta, ref), f"start at 2^{start}"


def test_recomputes_are_rare_and_counted():
    X, Y = data(MNIST_LIKE, 300)
    plan = BatchPlan(300, 64, seed=3)
    pool = pool_of(MNIST_LIKE, plan, [3, 3, 2], X, Y)
    calls = []
    inner = pool.gradient_sums
    pool.gradient_sums = lambda *a, **kw: calls.append(a[:3]) or inner(*a, **kw)
    theta = init_theta(pool.spec, "he", 0)
    result = train(pool, theta, make_optimizer("sgd", 0.05), plan, 2)
    # The first step is computed twice (its scale is measured), later ones once or
    # rarely twice (a tensor's largest block sum moved 2^8 up or 2^16 down in one step).
    assert calls[0][1:] == calls[1][1:] == (0, 0) and len(calls) <= result.steps + 3


def test_divergence_is_the_diverged_error_not_a_retry_loop():
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((64, 4)) * 10).astype(np.float32)
    Y = (X @ rng.standard_normal((4, 1))).astype(np.float32)
    spec = NetworkSpec((4, 1), "relu", "linear", "mse", "float32")
    plan = BatchPlan(64, 8, seed=0)
    pool = LocalPool([ShardWorker(spec, plan, 0, X, Y, encoding="numeric")])
    with pytest.raises(DivergedError, match=r"(loss|gradient) became .* at step \d+"):
        train(pool, init_theta(spec, "he", 0), make_optimizer("sgd", 10.0), plan, 1000)


def test_resume_on_another_worker_count_is_bitwise(tmp_path):
    """Stopped after step 7 (in epoch 2) on one worker, resumed on 3 uneven ones from its checkpoint:
    the weights of a run never stopped."""
    ref, _ = trained(MNIST_LIKE, [8], "adam", 64, 300, epochs=2)
    X, Y = data(MNIST_LIKE, 300)
    plan = BatchPlan(300, 64, seed=3)
    first = pool_of(MNIST_LIKE, plan, [8], X, Y, threads=2)
    theta = init_theta(first.spec, "he", 0)
    optimizer = make_optimizer("adam", 0.05)
    steps = []
    listener = type("L", (), {"on_step": lambda self, step, *a: steps.append(step), "on_epoch": lambda *a: None})()
    ckpt = Checkpointer(tmp_path, 1, {"run_id": "r"})
    with pytest.raises(TrainingStopped):
        train(first, theta, optimizer, plan, 2, [listener], checkpointer=ckpt,
              should_stop=lambda: len(steps) >= 7)  # mid-epoch 2
    saved = latest_checkpoint(tmp_path, run_id="r")
    assert saved.position.global_step == 7 and saved.position.sum_scales is not None
    second = pool_of(MNIST_LIKE, plan, [1, 4, 3], X, Y)
    theta2 = saved.theta.astype(np.float32)
    optimizer2 = make_optimizer("adam", 0.05)
    optimizer2.load_state(saved.optimizer)
    train(second, theta2, optimizer2, plan, 2, resume=saved.position)
    assert np.array_equal(theta2, ref)


def test_exact_sums_off_by_default_auto_where_blocks_are_large_and_rows_move_only_where_the_weights_stay(
        tmp_path):
    """train.exact_sums is off by default (README: Speed); "auto" turns them on when a
    step's blocks hold 512 examples or more on average in a network that keeps examples
    as rows (trainer/exact_sum.py: elsewhere a step costs more). A float32 job without them
    adds its sums in rank order, and no straggler rebalancing moves its rows (each move
    would change its last bits); float64, or exact sums, may move them."""
    from trainer.batches import EXACT_AUTO_MIN_EXAMPLES
    from trainer.exact_sum import exact_by_default
    from workers.rebalance import keeps_weights

    path = write_parquet(tmp_path / "d.parquet")
    plain = training.prepare(from_dict(config(path, "adam", 64, dtype="float32")))
    exact = training.prepare(from_dict(config(path, "adam", 64, dtype="float32", exact_sums=True)))
    wide = training.prepare(from_dict(config(path, "adam", 64, dtype="float64")))
    assert plain.cfg.train.exact_sums is False
    auto = training.prepare(from_dict(config(path, "adam", 64, dtype="float32", exact_sums="auto")))
    assert not auto.plan.exact  # 64-example batches: blocks of 8
    assert not plain.plan.exact and exact.plan.exact
    assert not keeps_weights(plain.task) and keeps_weights(exact.task) and keeps_weights(wide.task)
    assert LocalPool.open(plain.task, 3, plain.source, rebalance_seconds=5).balance is None
    assert LocalPool.open(exact.task, 3, exact.source, rebalance_seconds=5).balance is not None
    wide, thin = NetworkSpec((784, 16, 10)), NetworkSpec((2, 16, 1), "sigmoid", "sigmoid", "binary_cross_entropy")
    for batch, blocks, on in ((4096, 8, True), (4095, 8, False), (1024, 2, True), (1024, 8, False),
                              (EXACT_AUTO_MIN_EXAMPLES * 8, 8, True)):
        assert exact_by_default(wide, batch, blocks) is on, (batch, blocks)
    # A thin network keeps examples as columns, which exact sums would give away; float64 needs none.
    assert not exact_by_default(thin, 10**4, 8)
    assert not exact_by_default(NetworkSpec((784, 16, 10), dtype="float64"), 10**4, 8)
    big = training.prepare(from_dict(config(path, "adam", 4096, dtype="float32")))
    assert big.plan.batch_size < 4096 and not big.plan.exact  # the file's rows cap the batch


def test_a_workers_blocks_split_into_consecutive_groups_of_about_equal_members():
    from workers.block_sums import split_runs

    runs = [(0, 0, 10), (1, 10, 12), (2, 12, 40), (3, 40, 41), (4, 41, 60)]
    for groups in (1, 2, 3, 5, 9):
        parts = split_runs(runs, groups)
        assert parts[0][0] == 0 and parts[-1][1] == len(runs) and len(parts) <= groups
        assert all(i < j for i, j in parts) and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert split_runs(runs, 2) == [(0, 3), (3, 5)]  # a group ends with the run that reaches its share (30 of 60)
    assert split_runs([(7, 0, 5)], 2) == [(0, 1)]


def test_block_threads_compute_quietly_like_their_callers():
    """A diverging step overflows inside the block threads; numpy's error state is per
    thread, so without their own quiet one each thread printed RuntimeWarnings beside
    the coordinator's one 'diverged' line."""
    import warnings

    X, Y = data(MNIST_LIKE, 600)
    plan = BatchPlan(600, 512, seed=3)
    pool = pool_of(MNIST_LIKE, plan, [8], X, Y, threads=2)
    theta = np.full(pool.spec.size, 1e30, np.float32)  # every product overflows
    with warnings.catch_warnings(record=True) as seen, np.errstate(over="ignore", invalid="ignore"):
        warnings.simplefilter("always")
        pool.gradient_sums(theta, 0, 0, scales=np.zeros(6, np.int64))
    assert not [w for w in seen if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in seen]
