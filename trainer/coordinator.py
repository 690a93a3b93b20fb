"""The coordinator loop: add the shard sums, divide by m once, take one step.

For step t of epoch e it asks the pool for every worker's sums over batch k,
adds them in rank order into one buffer, divides by the batch's m (the number of
examples in the batch, counted by the workers and checked against the plan),
and hands the mean gradient to the optimizer (Eq. 3). It never sees Ray: any
`WorkerPool` will do.

Listeners (progress bar, MLflow) get every step's loss and each epoch's metrics;
the coordinator itself prints and logs nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from trainer.batches import BatchPlan
from trainer.checkpoint import Checkpointer, Position
from trainer.errors import DivergedError, Stopped
from trainer.exact_sum import ExactSum
from trainer.optimizers import GradientDescent
from trainer.param_hash import param_hash
from trainer.pool import ShardSums, StepAbandoned, WorkerPool


class TrainingStopped(Stopped):
    """Training stopped on request (Ctrl-C, SIGTERM) after a whole step, at `position`."""

    def __init__(self, position: Position):
        super().__init__(f"stopped after step {position.global_step}")
        self.position = position


class Listener(Protocol):
    def on_step(self, step: int, epoch: int, loss: float, n: int) -> None: ...

    def on_epoch(self, epoch: int, metrics: dict[str, float | str]) -> None:
        """metrics: floats, and `param_hash` (str, trainer/param_hash.py)."""


@dataclass
class TrainResult:
    steps: int = 0
    epochs: int = 0
    final_loss: float = math.nan  # last epoch's training loss
    val_loss: float | None = None
    val_accuracy: float | None = None
    examples_per_second: float = 0.0  # over all epochs' training steps
    wall_seconds: float = 0.0
    history: list[dict[str, float | str]] = field(default_factory=list)  # one dict per epoch
    # The parameters' hash after each epoch run here, by epoch (1-based): equal hashes,
    # bitwise-equal weights, so runs compare without loading their models.
    param_hashes: dict[int, str] = field(default_factory=dict)
    stopped_early: bool = False  # `end_early` ended training before its last epoch


def reduce_sums(sums: list[ShardSums], out: np.ndarray) -> tuple[int, float]:
    """out <- sum_k GW_k (in rank order, in place); returns (n, loss sum)."""
    n, loss_sum = 0, 0.0
    first = True
    for s in sums:
        if s.n == 0:
            continue  # no batch member in this worker's range: its sums are zeros
        if first:
            np.copyto(out, s.grad)
            first = False
        else:
            out += s.grad
        n += s.n
        loss_sum += s.loss_sum
    if first:
        out.fill(0)
    return n, loss_sum


def float32_step(pool: WorkerPool, exact: ExactSum, theta: np.ndarray, epoch: int, k: int,
                 grad: np.ndarray, total: np.ndarray, step: int,
                 should_stop=None) -> tuple[list[ShardSums], int, float]:
    """grad (float32) <- the exact mean gradient of batch k (trainer/exact_sum.py): the
    workers' integer sums added in float64 (any order gives the same bits), scaled back
    and divided by m once. A step whose block sums left the scale's range is computed
    again at the new scale; every worker count decides alike, from the same maxima."""
    while True:
        sums = pool.gradient_sums(theta, epoch, k, should_stop=should_stop, scales=exact.scales)
        parts = [s for s in sums if s.n]
        n, loss_sum = sum(s.n for s in parts), sum(s.loss_sum for s in parts)
        if not parts:
            grad.fill(0)
            return sums, n, loss_sum
        block_max = np.max([s.block_max for s in parts if s.block_max is not None], axis=0)
        if not (math.isfinite(loss_sum) and np.isfinite(block_max).all()):
            bad = loss_sum if not math.isfinite(loss_sum) else block_max[~np.isfinite(block_max)][0]
            what = "loss" if not math.isfinite(loss_sum) else "gradient"
            raise DivergedError(f"{what} became {bad} at step {step} (epoch {epoch + 1})")
        if not exact.rescale(block_max):
            break
    if len(parts) == 1:  # one node (or worker): its exact sum is the total
        exact.mean(parts[0].grad, n, grad, total)
        return sums, n, loss_sum
    np.copyto(total, parts[0].grad)
    for s in parts[1:]:
        total += s.grad  # integers below 2^53: exact in any order
    exact.mean(total, n, grad, total)
    return sums, n, loss_sum


def evaluate(pool: WorkerPool, theta: np.ndarray, should_stop=None) -> tuple[float | None, float | None]:
    """(validation loss, accuracy) over the pool's validation rows, or (None, None)."""
    if pool.n_val == 0:
        return None, None  # nothing held out: no round trip to the workers
    parts = pool.evaluate_sums(theta, should_stop=should_stop)
    n = sum(p.n for p in parts)
    if n == 0:
        return None, None
    count = sum(p.count for p in parts)
    accuracy = sum(p.correct for p in parts) / count if count else None
    return sum(p.loss_sum for p in parts) / n, accuracy


def train(pool: WorkerPool, theta: np.ndarray, optimizer: GradientDescent, plan: BatchPlan,
          epochs: int, listeners: Sequence[Listener] = (),
          resume: Position | None = None, checkpointer: Checkpointer | None = None,
          should_stop=None, end_early=None) -> TrainResult:
    """Run synchronous data-parallel gradient descent on theta, in place.

    Epochs 0 .. epochs - 1, or, with `resume` (a checkpoint's position), from batch
    resume.k of epoch resume.epoch to the end of epoch epochs - 1, counting steps on
    from resume.global_step.
    `checkpointer` writes checkpoints (trainer/checkpoint.py); `should_stop()` is
    asked after every step, and when it says so the coordinator writes a checkpoint
    and raises TrainingStopped: an interrupt loses at most the step in flight. A pool
    that cannot finish the step in flight (a worker does not answer) gives it up on the
    stop request (StepAbandoned): the checkpoint is then the last completed step's.
    `end_early(epochs_done, metrics)` is asked after every epoch but the last (a sweep's
    early-stopping scheduler): True ends training there, as if it were the last epoch,
    with a checkpoint to go on from.
    """
    assert plan.n_train == pool.n_train, f"plan has n_train={plan.n_train}, pool holds {pool.n_train} training examples"
    grad = np.empty_like(theta)
    result = TrainResult()
    end_epoch = epochs
    pos = resume or Position(0, 0, 0)
    # float32: block sums combined exactly, so the weights do not depend on the worker count.
    exact = ExactSum(pool.spec.layers, plan.blocks, pos.sum_scales) if theta.dtype == np.float32 and plan.exact \
        else None
    total = np.empty(theta.size, np.float64)  # float32: the workers' integer sums, added

    def position(epoch: int, k: int, steps: int, loss_sum: float = 0.0, seconds: float = 0.0,
                 compute: float = 0.0) -> Position:
        return Position(epoch, k, steps, loss_sum, seconds, compute,
                        sum_scales=None if exact is None else tuple(int(s) for s in exact.scales))
    result.steps = pos.global_step
    t_run = time.perf_counter()
    train_seconds = 0.0
    for epoch in range(pos.epoch, end_epoch):
        first_k = pos.k if epoch == pos.epoch else 0
        # An epoch resumed mid-way carries the sums of its steps before the checkpoint.
        carried = pos if first_k else Position(epoch, 0, result.steps)
        t_epoch = time.perf_counter() - carried.epoch_seconds
        epoch_loss_sum, compute = carried.epoch_loss_sum, carried.epoch_compute
        for k in range(first_k, plan.steps_per_epoch):
            try:
                if exact is not None:
                    sums, n, loss_sum = float32_step(pool, exact, theta, epoch, k, grad, total, result.steps + 1,
                                                     should_stop)
                else:
                    sums = pool.gradient_sums(theta, epoch, k, should_stop=should_stop)
            except StepAbandoned:  # a stop while a worker did not answer: the step never happened
                here = position(epoch, k, result.steps, epoch_loss_sum, time.perf_counter() - t_epoch, compute)
                _final_checkpoint(checkpointer, theta, optimizer, here)
                raise TrainingStopped(here) from None
            if exact is None:
                n, loss_sum = reduce_sums(sums, grad)
                grad /= n  # the one division by m (docs/design.md, section 1)
            assert n == plan.batch_size_of(k), f"workers summed {n} examples, batch {k} has {plan.batch_size_of(k)}"
            loss = loss_sum / n
            if not math.isfinite(loss):
                raise DivergedError(f"loss became {loss} at step {result.steps + 1} (epoch {epoch + 1})")
            optimizer.step(theta, grad)
            result.steps += 1
            epoch_loss_sum += loss_sum
            compute += max(s.compute_seconds for s in sums)
            for lst in listeners:
                lst.on_step(result.steps, epoch, loss, n)
            if k + 1 < plan.steps_per_epoch:
                here = position(epoch, k + 1, result.steps, epoch_loss_sum,
                                time.perf_counter() - t_epoch, compute)
                if should_stop is not None and should_stop():
                    _final_checkpoint(checkpointer, theta, optimizer, here)
                    raise TrainingStopped(here)
                if checkpointer is not None and np.isfinite(theta).all():
                    checkpointer.after_step(theta, optimizer, here)
        seconds = time.perf_counter() - t_epoch
        train_seconds += seconds
        if not np.isfinite(theta).all():
            raise DivergedError(f"weights stopped being finite in epoch {epoch + 1}")
        try:
            val_loss, val_acc = evaluate(pool, theta, should_stop)
        except StepAbandoned:
            # The epoch's steps are done but not its validation: a checkpoint at the next
            # epoch (whose resume goes on without this epoch's validation metrics), or,
            # after the last epoch (a position past the plan), the checkpoints so far.
            here = position(epoch + 1, 0, result.steps)
            if epoch + 1 < end_epoch:
                _final_checkpoint(checkpointer, theta, optimizer, here)
            raise TrainingStopped(here) from None
        epoch_loss = epoch_loss_sum / plan.n_train
        metrics: dict[str, float | str] = {"epoch_loss": epoch_loss,
                   "examples_per_second": plan.n_train / seconds,
                   "step_seconds": seconds / plan.steps_per_epoch,
                   # How a step's time splits: the slowest worker's compute, and the rest
                   # (sending parameters, gathering and adding sums, the optimizer).
                   "compute_seconds": compute / plan.steps_per_epoch,
                   "coordination_seconds": max(seconds - compute, 0.0) / plan.steps_per_epoch}
        if val_loss is not None:
            metrics["val_loss"] = val_loss
        if val_acc is not None:
            metrics["val_accuracy"] = val_acc
        metrics["param_hash"] = result.param_hashes[epoch + 1] = param_hash(theta)
        result.history.append(metrics)
        result.epochs += 1
        result.final_loss, result.val_loss, result.val_accuracy = epoch_loss, val_loss, val_acc
        for lst in listeners:
            lst.on_epoch(epoch, metrics)
        here = position(epoch + 1, 0, result.steps)
        if checkpointer is not None:
            checkpointer.after_epoch(theta, optimizer, here, epoch + 1)
        if should_stop is not None and should_stop() and epoch + 1 < end_epoch:
            _final_checkpoint(checkpointer, theta, optimizer, here)
            raise TrainingStopped(here)
        if end_early is not None and epoch + 1 < end_epoch and end_early(epoch + 1, metrics):
            _final_checkpoint(checkpointer, theta, optimizer, here)
            result.stopped_early = True
            break
    result.wall_seconds = time.perf_counter() - t_run
    result.examples_per_second = plan.n_train * result.epochs / train_seconds if train_seconds else 0.0
    return result


def _final_checkpoint(checkpointer, theta, optimizer, position: Position) -> None:
    if checkpointer is not None and np.isfinite(theta).all():
        checkpointer.save(theta, optimizer, position)
