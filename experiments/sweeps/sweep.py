"""`rayprop sweep`: trials of a search space, side by side, as child runs of one parent run.

The trials are every point of the config's `sweep:` grid (the product of its axes,
in the order written), `sweep_samples` times with its distributions drawn
(trainer/search_space.py), prepared and checked beforehand by the command. They run
on one Ray connection, each with a pool of its own, as many at once as the
cluster's CPUs allow (capped by --concurrency / sweep_concurrency): each trial
reserves its workers' CPUs as a unit (cluster/placement.py) and is driven by a
thread of this process (experiments/sweeps/in_order.py). With --local the trials share
this process: one at a time unless --concurrency says more.

A trial trains exactly as the same config trained alone (the batches depend on the
config only); a worker lost in it is replaced within its reservation; a failure
ends that child FAILED and the sweep goes on. With `sweep_scheduler: asha` trials
behind at epoch milestones stop early (experiments/sweeps/early_stopping.py): their child
runs end FINISHED, tagged, with a checkpoint to `--resume` from. Ctrl-C stops every
trial after its step (checkpoint, KILLED run). Ranking: by validation loss, or the
final training loss when nothing is held out; failed trials rank last, never best.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

from experiments.jobs import pools
from experiments.jobs.fit import fit
from experiments.jobs.job import Job, Options
from experiments.jobs.output_folder import OutputClaim
from experiments.jobs.progress import ProgressBar
from experiments.sweeps import shared_processes as shared
from experiments.sweeps.in_order import run_in_order
from experiments.sweeps.results import Result, label, record_best, short_keys, shown, write_results
from experiments.tracking import stores
from experiments.tracking.tags import STOPPED_AT_TAG, STOPPED_EARLY_TAG, SWEEP_OUTPUT_TAG, SWEEP_TAG
from trainer import __version__
from trainer.config import Config
from trainer.coordinator import TrainingStopped
from trainer.errors import InputError, RunError, Stopped, describe, one_line
from trainer.search_space import trials as draw_trials



def trials(cfg: Config) -> list[dict[str, object]]:
    """[{key: value, ...}] for every trial of the config's sweep, in the sweep's order."""
    return draw_trials(cfg.sweep, cfg.sweep_samples, cfg.sweep_draw_seed)


def run_dir(out_root: Path, i: int) -> Path:
    """The folder of the sweep's i-th run (from 0): DIR/run-01, DIR/run-02, ..."""
    return out_root / f"run-{i + 1:02d}"


class SweepStopped(Stopped):
    """Ctrl-C or SIGTERM: every running trial stopped after its step (checkpoint, run
    KILLED) and no more started; `results` as far as they got."""

    def __init__(self, results: list[Result], parent_run_id: str, out_root: Path):
        killed = sum(r.status == "KILLED" for r in results)
        super().__init__(f"sweep stopped: {killed} trial{'s' if killed != 1 else ''} stopped after "
                         f"a step with a checkpoint")
        self.results, self.parent_run_id, self.out_root = results, parent_run_id, out_root


class _InProcess:
    """The slot of a trial in local mode: nothing to reserve, no worker processes."""

    strategy = None
    actors: list = []

    def release(self) -> None:
        pass


def _workers(flag: int | str | None, job: Job, local: bool) -> int:
    """A trial's shard workers: --workers, else cluster.workers (1 with --local); a pool
    has the fixed size of its reservation, so "auto" is cluster.min_workers (1 with
    --local): the trials share the cluster rather than each growing into it."""
    workers = flag or (1 if local else job.cfg.cluster.workers)
    if workers == "auto":
        return 1 if local else job.cfg.cluster.min_workers
    return workers


def _at_once(cap: int | None, count: int, local: bool, cpus_per_trial: int) -> int:
    """How many trials run at once: the cap (local mode: 1 unless given), at most what
    the cluster's CPUs hold side by side, at most the number of trials."""
    if local:
        return max(min(cap or 1, count), 1)
    from cluster.placement import cluster_cpus

    fits = int(cluster_cpus() // cpus_per_trial)
    return max(min(cap or count, count, fits), 1)


def parent_params(cfg: Config) -> dict[str, str]:
    """What the parent run logs: the base config, the sweep's axes and its settings."""
    from experiments.tracking.params import run_params

    return {**run_params(cfg.without_sweep()),
            **{f"sweep.{k}": str(v) for k, v in cfg.sweep.items()},
            **{k: str(v) for k, v in cfg.sweep_settings().items()}}


def run(cfg: Config, children: list[tuple[dict, Job]], out_root: Path, uri: str,
        opts: Options, concurrency: int | None = None, resume=None) -> list[Result]:
    """Train the prepared `children` (trials in the sweep's order) as child runs of one
    parent run, side by side (module doc). A child that fails while running (diverged,
    workers lost) ends FAILED with its one line and the sweep goes on. Raises
    SweepStopped after Ctrl-C, once every trial has ended. `resume`: a stopped sweep's
    Plan (experiments/sweeps/sweep_resume.py): its parent run goes on, its kept trials are not
    trained again, its stopped ones go on in their own runs."""
    from experiments.jobs.interrupts import StopFlag, ThreadStop
    from experiments.sweeps.early_stopping import SuccessiveHalving

    local = opts.local
    if not local:  # MLflow's imports (seconds) in a thread while Ray starts, as `rayprop train` does
        from experiments.jobs.overlap import warm_up

        warm_up(plot=any(job.spec.layers[0] == 2 for _, job in children))
    counts = [_workers(opts.workers, job, local) for _, job in children]
    cpus = [n * job.cfg.cluster.cpus_per_worker for n, (_, job) in zip(counts, children)]
    results = [Result(combo) for combo, _ in children]
    if resume is not None:
        results = [resume.kept.get(i, r) for i, r in enumerate(results)]
    todo = [i for i in range(len(children)) if resume is None or i not in resume.kept]
    first = todo[0] if todo else None
    cap = concurrency or cfg.sweep_concurrency
    parent = None
    with ExitStack() as stack:
        if local:
            where, kind = "local mode", "none"
        else:
            address = opts.address or cfg.cluster.address or os.environ.get("RAY_ADDRESS")
            # A local Ray started for the sweep gets the CPUs of `cap` trials at once;
            # a cluster has what it has, and must hold one trial.
            need = max(cpus) * ((cap or 1) if address is None else 1)
            conn = pools.connect_ray(address, need, stack)
            where, kind = pools.where(conn), conn.kind
        at_once = _at_once(cap, max(len(todo), 1), local, max(cpus))
        # Worker processes of a trial that ended go to the next trial of their shape
        # (workers/actor_keeper.py); all stopped before Ray is let go.
        keeper = None if local else stack.enter_context(shared.keeping())
        samplers = None if local else stack.enter_context(shared.sampling())  # system metrics' actors, one per node

        def shape(i: int) -> tuple:
            return counts[i], children[i][1].cfg.cluster.cpus_per_worker

        def reserve(i: int, give_up=lambda: False):
            if local:
                return _InProcess()
            from cluster.placement import Reservation
            from workers.actor_keeper import Kept

            kept = keeper.take(shape(i))
            if kept is not None:  # CPUs and workers of a trial that ended
                return kept
            keeper.release_all()  # workers kept for another shape would hold CPUs this one waits for
            slot = Reservation(counts[i], children[i][1].cfg.cluster.cpus_per_worker,
                               name=f"rayprop-sweep-{os.getpid()}-trial-{i + 1}")
            return Kept(shape(i), slot) if slot.wait(give_up) else None

        # The first trial's pool reads every row before the parent run exists: bad data is exit 2.
        first_slot = reserve(first) if todo else _InProcess()
        stack.callback(first_slot.release)
        first_pool = [pools.open_pool(children[first][1], counts[first], local, first_slot.strategy)] \
            if todo else []
        stack.callback(lambda: first_pool and first_pool[0].close())
        from experiments.tracking import run as tracking  # once the rows are checked (warmed up meanwhile)

        if resume is None:
            experiment_id = tracking.open_experiment(uri, cfg.experiment)
        else:
            experiment_id = resume.experiment_id
        # DIR is this sweep's while it runs (a lock the kernel drops at exit, kill -9 too):
        # a --resume of it meanwhile is refused rather than training its trials twice.
        root = stack.enter_context(OutputClaim(out_root))
        stop = stack.enter_context(StopFlag())  # before the runs: their SIGTERM hook defers to it
        axes = " x ".join(short_keys(list(cfg.sweep)).values())
        parent = stack.enter_context(tracking.TrackedRun(
            experiment_id, run_name=f"sweep: {axes} ({len(children)} runs)", stop=stop,
            resume_run_id=resume.parent_id if resume is not None else None,
            tags={SWEEP_TAG: "parent", "rayprop.version": __version__,
                  "rayprop.sweep.concurrency": at_once}))
        root.record(parent.run_id)
        if resume is None:
            parent.log_params(parent_params(cfg))
            parent.set_tags({SWEEP_OUTPUT_TAG: str(out_root.resolve())})  # where --resume finds the trials
        going_on = "" if resume is None else (
            f" (resumed: {len(resume.kept)} kept, {len(resume.resumed)} going on, "
            f"{len(todo) - len(resume.resumed)} to start)")
        print(f"rayprop sweep: {len(children)} runs{going_on}, {at_once} at a time, under MLflow run "
              f"{parent.run_id} in experiment {cfg.experiment!r} at "
              f"{stores.where_to_see(uri, experiment_id, parent.run_id)}", file=sys.stderr)
        halving = None
        if cfg.sweep_scheduler == "asha":
            halving = SuccessiveHalving(cfg.sweep_grace_epochs, cfg.sweep_reduction_factor, stop)
        trial_stop = ThreadStop(stop)

        def work(i: int, slot) -> None:
            combo, job = children[i]
            pool = first_pool.pop() if i == first else None
            try:
                if pool is None:
                    pool = pools.open_pool(job, counts[i], local, slot.strategy, kept=slot.actors)
                _train_trial(i, len(children), combo, job, pool, results[i], run_dir(out_root, i),
                             experiment_id, parent.run_id, where, kind, trial_stop, halving,
                             quiet=opts.quiet or at_once > 1,  # bars side by side would garble
                             resumed=resume.resumed.get(i) if resume is not None else None, samplers=samplers)
            except (RunError, InputError) as e:  # opening the pool: no run was started
                results[i].status = "FAILED"
                results[i].error = getattr(e, "kind", None) or one_line(e, 80)
                print(f"rayprop sweep: run {i + 1}/{len(children)} {label(combo)}: {describe(e)}",
                      file=sys.stderr)
            finally:
                if halving is not None:
                    halving.end(i)
                # Only a trial that ended well hands its workers on; a failed or stopped
                # one may leave a broken worker behind, and is stopped with its pool.
                if pool is not None and keeper is not None and results[i].status == "FINISHED" and not stop():
                    keeper.keep(shape(i), slot.slot, pool.hand_over())
                else:
                    if pool is not None:
                        pool.close()
                    slot.release()

        run_in_order(len(todo), at_once, lambda k: first_slot if k == 0 else reserve(todo[k], stop),
                     lambda k, slot: work(todo[k], slot), stop)
        record_best(parent, results)
        if stop():
            write_results(out_root, parent.run_id, results)
            raise SweepStopped(results, parent.run_id, out_root)
    write_results(out_root, parent.run_id, results)
    return results


def _train_trial(i: int, count: int, combo: dict, job: Job, pool, result: Result, out_dir: Path,
                 experiment_id: str, parent_run_id: str, where: str, kind: str, stop, halving,
                 quiet: bool, resumed=None, samplers=None) -> None:
    """One child run on its own pool, in the calling thread; the outcome goes into `result`.
    resumed: (its child run, the checkpoint to go on from or None) for a stopped trial."""
    from experiments.tracking import run as tracking

    child_id, ckpt = resumed or (None, None)
    name = f"run {i + 1}/{count} {label(combo)}"
    print(f"rayprop sweep: {name}: {pools.describe(job, pool, where)}", file=sys.stderr)
    bar = ProgressBar(job.cfg.train.epochs, job.plan.steps_per_epoch, quiet)
    try:
        with OutputClaim(out_dir, child_id) as claim, \
                tracking.TrackedRun(experiment_id, run_name=label(combo), nested=True,
                                    parent_run_id=parent_run_id, tags={SWEEP_TAG: "child"},
                                    out_dir=out_dir, stop=stop, resume_run_id=child_id) as run:
            claim.record(run.run_id)
            result.run_id = run.run_id
            if child_id is not None:
                at = f"step {ckpt.position.global_step}" if ckpt is not None else "its first step (no checkpoint)"
                print(f"rayprop sweep: {name}: resuming MLflow run {child_id} at {at}", file=sys.stderr)
            end_early = halving.hook(i, job.cfg.train.epochs) if halving is not None else None
            done = _trained(out_dir, child_id) if ckpt is not None and ckpt.position.epoch >= job.cfg.train.epochs \
                else None
            if done is not None:  # killed while its model went to the store: send it, end the run
                from experiments.tracking.run_artifacts import log_outputs

                run.deliver("model artifacts",
                            lambda: log_outputs(out_dir, job.resolved_cfg, job.source, job.schema, job.spec))
                result.summary = done
            else:
                result.summary = fit(job, pool, run, out_dir, [bar], kind, resume=ckpt,
                                     should_stop=stop, end_early=end_early, samplers=samplers)
            result.stopped_at = result.summary.get("stopped_early_at_epoch")
            if result.stopped_at is not None:
                run.set_tags({STOPPED_EARLY_TAG: "true", STOPPED_AT_TAG: result.stopped_at})
        if run.report:
            print(run.report, file=sys.stderr)
        result.status = "FINISHED"
        s = result.summary
        how = "finished" if result.stopped_at is None else f"stopped early after epoch {result.stopped_at}"
        score = f"val_loss {s['val_loss']:.4g}" if s.get("val_loss") is not None else \
            f"final_loss {shown(s.get('final_loss'), '.4g')}"
        print(f"rayprop sweep: {name}: {how}, {score}", file=sys.stderr)
    except TrainingStopped as e:  # Ctrl-C: the run has ended KILLED after a whole step
        result.status, result.error = "KILLED", "stopped"
        print(f"rayprop sweep: {name}: {e}; checkpoint in {out_dir / 'checkpoints'}", file=sys.stderr)
    except RunError as e:  # one diverging learning rate (or lost worker) does not end the sweep
        result.status, result.error = "FAILED", e.kind or one_line(e, 80)
        print(f"rayprop sweep: {name}: {describe(e)}", file=sys.stderr)
    except InputError as e:  # only when the sweep varies data.*: a later source's bad row
        result.status, result.error = "FAILED", one_line(e, 80)
        print(f"rayprop sweep: {name}: {describe(e)}", file=sys.stderr)
    finally:
        bar.close()


def _trained(out_dir: Path, run_id: str) -> dict | None:
    """The summary.json of run `run_id` in `out_dir` (its training had ended), else None."""
    import json

    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("run_id") == run_id else None
