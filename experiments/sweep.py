"""`rayprop sweep`: every combination of a grid, as child runs of one parent run.

A sweep runs every combination of the config's `sweep:` grid (the product of its
axes, in the order written), prepared and checked beforehand by the command, one
after the other on one Ray connection with a new pool per run. Ranking: by
validation loss, or by the final training loss when nothing is held out; runs that
failed (a diverging learning rate, say) rank last and are never the best.
"""

from __future__ import annotations

import itertools
import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from experiments import stores, training
from experiments.output_folder import OutputClaim
from experiments.progress import ProgressBar
from experiments.training import Job
from trainer import __version__
from trainer.config import Config
from trainer.errors import InputError, RunError, describe, one_line
from trainer.model_io import write_json


def combinations(grid: dict[str, list]) -> list[dict[str, object]]:
    """[{key: value, ...}] for every point of the grid; the first axis varies slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def short_keys(keys: list[str]) -> dict[str, str]:
    """'train.learning_rate' -> 'learning_rate', unless two keys would then look the same."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def label(combo: dict[str, object]) -> str:
    """The run name of a combination: 'learning_rate=0.01 layers=[2, 32, 3]'."""
    names = short_keys(list(combo))
    return " ".join(f"{names[k]}={v}" for k, v in combo.items())


@dataclass
class Result:
    combo: dict[str, object]
    run_id: str = ""
    status: str = "FAILED"
    summary: dict = field(default_factory=dict)
    error: str = ""

    @property
    def score(self) -> float:
        """What the ranking minimizes: val_loss, else final_loss; inf for a failed run."""
        if self.status != "FINISHED":
            return math.inf
        value = self.summary.get("val_loss")
        return value if value is not None else self.summary.get("final_loss", math.inf)


def ranked(results: list[Result]) -> list[Result]:
    return sorted(results, key=lambda r: r.score)  # stable: ties keep the grid's order


def best(results: list[Result]) -> Result | None:
    top = ranked(results)
    return top[0] if top and top[0].status == "FINISHED" else None


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(results: list[Result]) -> str:
    """The results, best first, as aligned text columns."""
    keys = list(results[0].combo) if results else []
    names = short_keys(keys)
    head = ["rank", *(names[k] for k in keys), "val_loss", "val_accuracy", "final_loss", "status", "run_id"]
    rows = []
    for i, r in enumerate(ranked(results), start=1):
        s = r.summary
        rows.append([str(i), *(str(r.combo[k]) for k in keys), _num(s.get("val_loss"), ".4g"),
                     _num(s.get("val_accuracy"), ".1%"), _num(s.get("final_loss"), ".4g"),
                     r.status if r.status == "FINISHED" else f"{r.status} ({r.error})" if r.error else r.status,
                     r.run_id])
    widths = [max(len(row[j]) for row in [head, *rows]) for j in range(len(head) - 1)]
    lines = []
    for row in [head, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)



def run_dir(out_root: Path, i: int) -> Path:
    """The folder of the sweep's i-th run (from 0): DIR/run-01, DIR/run-02, ..."""
    return out_root / f"run-{i + 1:02d}"


def run(cfg: Config, children: list[tuple[dict, Job]], out_root: Path, uri: str,
        opts: training.Options) -> list[Result]:
    """Train the prepared `children` one after the other as child runs of one parent run.
    A child that fails while running (diverged, workers lost) ends FAILED with its one
    line and the sweep goes on."""
    from experiments import tracking

    local = opts.local
    counts = [opts.workers or (1 if local else job.cfg.cluster.workers) for _, job in children]
    results = [Result(combo) for combo, _ in children]
    pool = None
    with ExitStack() as stack:
        if local:
            where, kind = "local mode", "none"
        else:
            cpus = max(training.cpus_needed(job.cfg, n) for n, (_, job) in zip(counts, children))
            # One connection for every run.
            conn = training.connect_ray(opts.address or cfg.cluster.address, cpus, stack)
            where, kind = training.where(conn), conn.kind

        stack.callback(lambda: pool is not None and pool.close())
        # The first pool reads every row before the parent run exists: bad data is exit 2.
        pool = training.open_pool(children[0][1], counts[0], local)
        experiment_id = tracking.open_experiment(uri, cfg.experiment)
        axes = " x ".join(short_keys(list(cfg.sweep)).values())
        parent = stack.enter_context(tracking.TrackedRun(
            experiment_id, run_name=f"sweep: {axes} ({len(children)} runs)",
            tags={"rayprop.sweep": "parent", "rayprop.version": __version__}))
        parent.log_params({**tracking.run_params(cfg.without_sweep()),
                           **{f"sweep.{k}": str(v) for k, v in cfg.sweep.items()}})
        print(f"rayprop sweep: {len(children)} runs under MLflow run {parent.run_id} in experiment "
              f"{cfg.experiment!r} at {stores.where_to_see(uri, experiment_id, parent.run_id)}",
              file=sys.stderr)
        for i, ((combo, job), n, result) in enumerate(zip(children, counts, results)):
            name = f"run {i + 1}/{len(children)} {label(combo)}"
            try:
                if i:
                    pool.close()
                    pool = None
                    pool = training.open_pool(job, n, local)
                print(f"rayprop sweep: {name}: {training.describe(job, pool, where)}", file=sys.stderr)
                bar = ProgressBar(job.cfg.train.epochs, job.plan.steps_per_epoch, opts.quiet)
                try:
                    with OutputClaim(run_dir(out_root, i)) as claim, \
                            tracking.TrackedRun(experiment_id, run_name=label(combo), nested=True,
                                                tags={"rayprop.sweep": "child"},
                                                out_dir=run_dir(out_root, i)) as run:
                        claim.record(run.run_id)
                        result.run_id = run.run_id
                        result.summary = training.fit(job, pool, run, run_dir(out_root, i), [bar], kind)
                    if run.report:
                        print(run.report, file=sys.stderr)
                    result.status = "FINISHED"
                finally:
                    bar.close()
            except RunError as e:  # one diverging learning rate (or lost worker) does not end the sweep
                result.error = e.kind or one_line(e, 80)
                print(f"rayprop sweep: {name}: {describe(e)}", file=sys.stderr)
            except InputError as e:  # only when the sweep varies data.*: a later source's bad row
                result.error = one_line(e, 80)
                print(f"rayprop sweep: {name}: {describe(e)}", file=sys.stderr)
        _record_best(parent, results)
    write_json(out_root / "sweep.json", {
        "parent_run_id": parent.run_id, "best_run_id": getattr(best(results), "run_id", None),
        "runs": [{"run_id": r.run_id, "params": r.combo, "status": r.status, "error": r.error or None,
                  **{k: r.summary.get(k) for k in ("val_loss", "val_accuracy", "final_loss")}}
                 for r in ranked(results)]})
    return results


def _record_best(parent, results: list[Result]) -> None:
    """The parent run shows the best child: its id as a tag, its numbers as the parent's."""
    top = best(results)
    if top is None:
        return
    parent.set_tags({"best_run_id": top.run_id, "best_run_name": label(top.combo)})
    for key in ("val_loss", "val_accuracy", "final_loss"):
        if top.summary.get(key) is not None:
            parent.client.log_metric(parent.run_id, key, top.summary[key])
