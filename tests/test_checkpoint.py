"""Checkpoints and resuming (local mode): a run stopped mid-epoch and resumed from its
checkpoint ends with exactly the weights and epoch metrics of an undisturbed run;
a corrupt newest checkpoint falls back to the one before; a failed write leaves the
previous checkpoints intact."""

import numpy as np
import pytest

from trainer import checkpoint as ck
from trainer.batches import BatchPlan
from trainer.coordinator import DivergedError, TrainingStopped, train
from trainer.errors import RunError
from trainer.network import NetworkSpec, init_theta
from trainer.optimizers import make_optimizer
from trainer.pool import StepAbandoned
from workers.local_pool import LocalPool
from workers.shard import ShardWorker

SPEC = NetworkSpec((3, 8, 4), "tanh", "softmax", "cross_entropy", "float64")
M, BATCH, EPOCHS = 203, 32, 3  # 7 batches per epoch, the last of 11


def pool_and_plan(workers=2, spec=SPEC, batch=BATCH):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((M, 3))
    Y = np.eye(4)[rng.integers(0, 4, M)]
    plan = BatchPlan(M, batch, seed=5)
    cuts = [0, 90, M] if workers == 2 else [0, M]
    return LocalPool([ShardWorker(spec, plan, lo, X[lo:hi], Y[lo:hi]) for lo, hi in zip(cuts, cuts[1:])]), plan


def fresh(optimizer="adam"):
    return init_theta(SPEC, "he", 1), make_optimizer(optimizer, 0.05)


class StopAt:
    def __init__(self, step):
        self.step, self.seen = step, 0

    def on_step(self, step, epoch, loss, n):
        self.seen = step

    def on_epoch(self, epoch, metrics):
        pass

    def __call__(self):
        return self.seen >= self.step


def resume_from(directory, optimizer="adam", warn=print):
    pool, plan = pool_and_plan()
    c = ck.latest_checkpoint(directory, warn)
    theta, opt = c.theta.copy(), make_optimizer(optimizer, 0.05)
    opt.load_state(c.optimizer)
    return train(pool, theta, opt, plan, EPOCHS, resume=c.position), theta, c


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_stop_mid_epoch_then_resume_equals_an_undisturbed_run(tmp_path, optimizer):
    pool, plan = pool_and_plan()
    ref_theta, ref_opt = fresh(optimizer)
    ref = train(pool, ref_theta, ref_opt, plan, EPOCHS)

    pool, plan = pool_and_plan()
    theta, opt = fresh(optimizer)
    stop = StopAt(10)  # step 10 = batch 3 of epoch 2
    with pytest.raises(TrainingStopped) as info:
        train(pool, theta, opt, plan, EPOCHS, listeners=[stop], should_stop=stop,
              checkpointer=ck.Checkpointer(tmp_path, 1, {"run_id": "r1"}))
    assert (info.value.position.epoch, info.value.position.k, info.value.position.global_step) == (1, 3, 10)

    result, theta, c = resume_from(tmp_path, optimizer)
    assert c.meta == {"run_id": "r1"} and c.position.global_step == 10
    assert np.array_equal(theta, ref_theta)  # same steps in the same order: bit for bit
    assert result.steps == ref.steps == EPOCHS * plan.steps_per_epoch
    # the resumed epoch's metrics include its steps from before the stop
    assert result.history[0]["epoch_loss"] == pytest.approx(ref.history[1]["epoch_loss"], rel=1e-12)
    assert result.final_loss == ref.final_loss


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    pool, plan = pool_and_plan()
    ref_theta, ref_opt = fresh()
    train(pool, ref_theta, ref_opt, plan, EPOCHS)

    pool, plan = pool_and_plan()
    theta, opt = fresh()
    stop = StopAt(16)
    # max_seconds=0: a checkpoint after every step, of which the newest KEEP stay
    with pytest.raises(TrainingStopped):
        train(pool, theta, opt, plan, EPOCHS, listeners=[stop], should_stop=stop,
              checkpointer=ck.Checkpointer(tmp_path, 1, {}, max_seconds=0))
    files = ck.checkpoint_files(tmp_path)
    assert [f.name for f in files] == [f"ckpt-{s:09d}.npz" for s in (16, 15, 14)]
    files[0].write_bytes(files[0].read_bytes()[:200])  # the newest, cut short

    warnings = []
    _, theta, c = resume_from(tmp_path, warn=warnings.append)
    assert c.position.global_step == 15
    assert len(warnings) == 1 and "ckpt-000000016.npz" in warnings[0] and "falling back" in warnings[0]
    assert np.array_equal(theta, ref_theta)


def test_a_write_that_fails_midway_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    theta, opt = fresh()
    good = ck.write_checkpoint(tmp_path, ck.Checkpoint(theta, opt.state(), ck.Position(1, 0, 7)))

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.np, "savez", crash)
    with pytest.raises(RunError, match="cannot write .*ckpt-000000008.npz: disk full"):
        ck.write_checkpoint(tmp_path, ck.Checkpoint(theta * 2, opt.state(), ck.Position(1, 1, 8)))
    monkeypatch.undo()
    assert ck.checkpoint_files(tmp_path) == [good]  # no partial file under a checkpoint name
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # no temp left behind
    assert np.array_equal(ck.latest_checkpoint(tmp_path).theta, theta)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    spec = NetworkSpec((3, 8, 4), "relu", "linear", "mse", "float64")
    pool, plan = pool_and_plan(spec=spec)
    theta = init_theta(spec, "he", 1)
    opt = make_optimizer("sgd", 50.0)  # mse on a linear output: diverges within a few steps
    with np.errstate(all="ignore"), pytest.raises(DivergedError):
        train(pool, theta, opt, plan, EPOCHS, checkpointer=ck.Checkpointer(tmp_path, 1, {}, max_seconds=0))
    c = ck.latest_checkpoint(tmp_path)
    assert c is not None and np.isfinite(c.theta).all()


class Clock:
    """Training time as a listener sees it: `per_step` seconds per step, exactly."""

    def __init__(self, per_step):
        self.per_step, self.steps = per_step, 0

    def __call__(self):
        return self.steps * self.per_step

    def on_step(self, step, epoch, loss, n):
        self.steps = step

    def on_epoch(self, epoch, metrics):
        pass


@pytest.mark.parametrize("min_seconds, last_epoch, expected", [
    (0.0, None, 400), (2.0, None, 5), (2.0, 400, 6)])
def test_one_step_epochs_checkpoint_by_wall_time(tmp_path, min_seconds, last_epoch, expected):
    # Full-batch epochs of one step each, 30 ms apiece: every epoch is due a checkpoint,
    # but with a floor of 2 s only steps 67, 134, 201, 268, 335 write one (12 s in all),
    # and the run's last epoch when it is named.
    pool, plan = pool_and_plan(batch=M)
    theta, opt = fresh("sgd")
    clock = Clock(0.03)
    ckpt = ck.Checkpointer(tmp_path, 1, {"run_id": "r"}, min_seconds=min_seconds, clock=clock,
                           last_epoch=last_epoch)
    train(pool, theta, opt, plan, 400, listeners=[clock], checkpointer=ckpt)
    assert len(ckpt.written) == expected
    assert len(ck.checkpoint_files(tmp_path)) == min(expected, ck.KEEP)


def test_a_run_prunes_only_its_own_checkpoints(tmp_path):
    theta, opt = fresh()
    for step in (100, 101, 102):  # another run's, with higher step numbers
        ck.write_checkpoint(tmp_path, ck.Checkpoint(theta, opt.state(), ck.Position(9, 0, step), {"run_id": "B"}))
    a = ck.Checkpointer(tmp_path, 1, {"run_id": "A"})
    for step in range(1, 5):
        a.save(theta * step, opt, ck.Position(step, 0, step))
    names = sorted(p.name for p in ck.checkpoint_files(tmp_path))
    assert names == [f"ckpt-{s:09d}.npz" for s in (2, 3, 4, 100, 101, 102)]
    # resumed in a new process, run A goes on pruning its own older files
    again = ck.Checkpointer(tmp_path, 1, {"run_id": "A"})
    again.save(theta * 5, opt, ck.Position(5, 0, 5))
    assert [ck.run_of(p) for p in ck.checkpoint_files(tmp_path)] == ["B"] * 3 + ["A"] * 3
    warnings = []
    latest = ck.latest_checkpoint(tmp_path, warnings.append, run_id="A")
    assert latest.position.global_step == 5 and np.array_equal(latest.theta, theta * 5)
    assert len(warnings) == 1 and "another run" in warnings[0]
    assert ck.latest_checkpoint(tmp_path, run_id="B").position.global_step == 102
    assert ck.latest_checkpoint(tmp_path, run_id="C", warn=warnings.append) is None


class AbandonAt(LocalPool):
    """A pool whose step `step` (1-based), or whose `evaluation`-th evaluation, is given
    up on a stop request, as a Ray pool does while a worker hangs."""

    def __init__(self, workers, step=None, evaluation=None):
        super().__init__(workers)
        self.step, self.evaluation, self.steps, self.evaluations = step, evaluation, 0, 0

    def gradient_sums(self, theta, epoch, k, should_stop=None):
        self.steps += 1
        if self.steps == self.step:
            raise StepAbandoned("stopped while waiting for the workers")
        return super().gradient_sums(theta, epoch, k, should_stop)

    def evaluate_sums(self, theta, should_stop=None):
        self.evaluations += 1
        if self.evaluations == self.evaluation:
            raise StepAbandoned("stopped while waiting for the workers")
        return super().evaluate_sums(theta, should_stop)


@pytest.mark.parametrize("abandon, position", [({"step": 11}, (1, 3, 10)),  # batch 3 of epoch 2 in flight
                                               ({"evaluation": 1}, (1, 0, 7))])  # epoch 1's validation
def test_a_step_given_up_on_a_stop_checkpoints_the_last_completed_step(tmp_path, abandon, position):
    pool, plan = pool_and_plan()
    ref_theta, ref_opt = fresh()
    ref = train(pool, ref_theta, ref_opt, plan, EPOCHS)

    pool, plan = pool_and_plan()
    rng = np.random.default_rng(1)
    X_val, Y_val = rng.standard_normal((20, 3)), np.eye(4)[rng.integers(0, 4, 20)]  # so that there is a validation
    pool = AbandonAt([ShardWorker(SPEC, plan, w.lo, w.X, w.Y.T, X_val, Y_val) for w in pool.workers], **abandon)
    theta, opt = fresh()
    with pytest.raises(TrainingStopped) as info:
        train(pool, theta, opt, plan, EPOCHS, checkpointer=ck.Checkpointer(tmp_path, 100, {"run_id": "r1"}))
    p = info.value.position
    assert (p.epoch, p.k, p.global_step) == position

    result, theta, c = resume_from(tmp_path)
    assert c.position.global_step == position[2]
    assert np.array_equal(theta, ref_theta)
    assert result.final_loss == ref.final_loss
