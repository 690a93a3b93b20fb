"""What each `rayprop` subcommand does; cli.py parses, this module acts.

Each function returns an exit code. Bad input raises InputError (cli.py turns it
into exit 2 and one line); nothing is written before the inputs have been checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import numpy as np

from experiments import configs as example_configs
from experiments import job as jobs
from experiments import launch, stores
from experiments.interrupts import StopFlag
from experiments.progress import ProgressBar, print_summary
from trainer.config import load_config, parse_grid
from trainer.coordinator import DivergedError, TrainingStopped
from trainer.costs import COSTS
from trainer.errors import InputError
from trainer.pool import WorkerLostError
from trainer.gradcheck import DEFAULT_TOLERANCE, gradcheck as check_gradients
from trainer.model_io import load_model
from trainer.network import Workspace, forward
from workers.examples import Schema, load_examples, resolve_schema
from workers.shard import count_correct
from workers.sources import open_source

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
CHUNK = 8192  # rows per chunk when evaluating or predicting a whole source


def _config(args):
    cfg = load_config(example_configs.resolve(args.config), args.overrides)
    if getattr(args, "experiment", None):
        cfg = cfg.with_overrides({"experiment": args.experiment})  # a name, not YAML
    return cfg


def check_writable_dir(path: Path, what: str) -> None:
    """InputError now, rather than a failure after training, if `path` cannot become a directory."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{what}: {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{what}: {parent} is not a directory, so {path} cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what}: no permission to write in {parent}")


def _tracking_uri(args, cfg) -> str:
    uri = stores.resolve_uri(args.tracking_uri, cfg.tracking.uri)
    stores.check(uri)
    return uri


def train(args) -> int:
    cfg = _config(args)
    job = jobs.prepare(cfg, args.init_from)
    uri = _tracking_uri(args, cfg)
    resume, experiment_id = None, None
    if args.resume:
        if args.init_from:
            raise InputError("--resume and --init-from: give one (a resumed run has its own weights)")
        from experiments.resume import find_checkpoint

        resume, resumed_out, experiment_id = find_checkpoint(uri, args.resume, job)
        out_dir = Path(args.output).expanduser() if args.output else resumed_out
    else:
        out_dir = Path(args.output).expanduser() if args.output else jobs.default_output(cfg)
    check_writable_dir(out_dir, "--output")
    workers = args.workers or (1 if args.local else cfg.cluster.workers)
    if cfg.sweep:
        print("rayprop train: the config's sweep: section is for `rayprop sweep`; training the "
              "base config once", file=sys.stderr)
    checkpointers, run = [], None
    try:
        with ExitStack() as stack:
            # The pool reads (and checks) every row: bad data is exit 2 before a run exists.
            if args.local:
                where, kind = "local mode", "none"
            else:
                conn = launch.connect_ray(args.address or cfg.cluster.address,
                                          workers * cfg.cluster.cpus_per_worker, stack)
                where, kind = launch.where(conn), conn.kind
            pool = launch.open_pool(job, workers, args.local)
            stack.callback(pool.close)
            from experiments import tracking  # mlflow: ~2 s, paid only once the inputs are good

            if experiment_id is None:
                experiment_id = tracking.open_experiment(uri, cfg.experiment)
            bar = ProgressBar(cfg.train.epochs, job.plan.steps_per_epoch, args.quiet)
            stack.callback(bar.close)
            print(f"rayprop: training {launch.describe(job, pool, where)}", file=sys.stderr)
            stop = stack.enter_context(StopFlag())  # before the run: its SIGTERM hook defers to this
            run = stack.enter_context(tracking.TrackedRun(experiment_id, resume_run_id=args.resume))
            verb = f"resuming at step {resume.position.global_step}: MLflow run" if resume else "MLflow run"
            print(f"rayprop: {verb} {run.run_id} ({run.run_name}) in experiment "
                  f"{cfg.experiment!r} at {stores.redact(uri)}", file=sys.stderr)
            summary = launch.train_tracked(job, pool, run, out_dir, [bar], kind, resume=resume,
                                           should_stop=stop, checkpointer_out=checkpointers)
    except TrainingStopped as e:  # the run has ended KILLED
        print(f"rayprop train: stopped after step {e.position.global_step}; checkpoint in "
              f"{out_dir / 'checkpoints'}; continue with: rayprop train {args.config} "
              f"--resume {run.run_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DivergedError, WorkerLostError) as e:  # the run has ended FAILED
        last = checkpointers[0].latest if checkpointers else None
        kept = f"; last good checkpoint {last}" if last else ""
        if isinstance(e, DivergedError):
            print(f"rayprop train: diverged: {e}; try a smaller train.learning_rate{kept}", file=sys.stderr)
        else:
            print(f"rayprop train: {e}{kept}", file=sys.stderr)
        return EXIT_FAILED
    print_summary(summary, out_dir)
    return EXIT_OK


def sweep(args) -> int:
    from experiments import sweep as sweeps

    cfg = _config(args)
    if args.grid:
        cfg = cfg.with_sweep(dict(parse_grid(text) for text in args.grid))
    if not cfg.sweep:
        raise InputError(f"{args.config}: no sweep: section to run; add one, or give --grid key=v1,v2")
    base = cfg.without_sweep()
    children = []  # every combination is checked and prepared before anything runs
    for combo in sweeps.combinations(cfg.sweep):
        try:
            children.append((combo, jobs.prepare(base.with_overrides(combo), args.init_from)))
        except InputError as e:
            raise InputError(f"sweep combination {sweeps.label(combo)}: {e}") from None
    out_root = (Path(args.output).expanduser() if args.output
                else Path("runs") / f"{cfg.experiment}-sweep-{datetime.now():%Y%m%d-%H%M%S}")
    check_writable_dir(out_root, "--output")
    uri = _tracking_uri(args, cfg)
    results = sweeps.run(cfg, children, out_root, uri, local=args.local,
                         address=args.address or cfg.cluster.address, workers=args.workers,
                         quiet=args.quiet)
    print(sweeps.table(results))
    return EXIT_OK if sweeps.best(results) is not None else EXIT_FAILED


def ui(args) -> int:
    from experiments.ui import ui as run_ui

    return run_ui(stores.resolve_uri(args.tracking_uri, None), args.host, args.port)


def submit(args) -> int:
    from cluster.jobs import submit as submit_job
    from workers.builtin_sets import BUILTIN_NAMES

    cfg = _config(args)  # a bad config fails here, before anything reaches the cluster
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address or not address.startswith(("http://", "https://")):
        raise InputError(f"--address: expected the Jobs API address http://HEAD:8265, got {address!r}")
    train_args = [f"--workers {args.workers}"] if args.workers else []
    # The job logs where this command was told to: the flag, or MLFLOW_TRACKING_URI here
    # (a config's tracking.uri travels in the config itself).
    uri = args.tracking_uri or os.environ.get(stores.ENV)
    if uri:
        train_args.append(f"--tracking-uri {shlex.quote(uri)}")
    uri = uri or cfg.tracking.uri or stores.DEFAULT_URI
    note = f"the job logs its MLflow run to {stores.redact(uri)}"
    if not stores.is_server(uri):
        note += " on the cluster's node (give --tracking-uri http://MLFLOW-HOST:PORT to see it here)"
    return submit_job(dataclasses.asdict(cfg), address, train_args, not args.no_wait,
                      lambda s: s in BUILTIN_NAMES, note)


def gradcheck(args) -> int:
    cfg = _config(args)
    job = jobs.prepare(cfg)
    n = min(args.examples, job.plan.m)
    rows = job.train_rows[:n]
    X, Y = load_examples(job.source, job.schema, int(rows[0]), int(rows[-1]) + 1, np.float64)
    keep = rows - rows[0]
    X, Y = X[keep], Y[keep]
    # Check at a point other than the initial one too: b = 0 there hides bias bugs.
    theta = job.theta0.astype(np.float64)
    theta += np.random.default_rng(cfg.train.seed).standard_normal(theta.size) * 0.01
    tol = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    errors = check_gradients(job.spec, theta, X, Y.T.copy(), seed=cfg.train.seed)
    print(f"gradcheck: {list(job.spec.layers)} {job.spec.hidden_activation}/"
          f"{job.spec.output_activation}/{job.spec.cost}, {n} examples, float64, "
          f"central differences; tolerance {tol:g}")
    print(f"{'param':<6} {'checked':>8} {'max abs err':>12} {'rel err':>10}")
    worst = 0.0
    for err in errors:
        worst = max(worst, err.rel)
        flag = "" if err.rel <= tol else "  FAIL"
        print(f"{err.name:<6} {err.checked:>8} {err.max_abs:>12.3e} {err.rel:>10.3e}{flag}")
    print(f"{'PASS' if worst <= tol else 'FAIL'}: largest relative error {worst:.3e}")
    return EXIT_OK if worst <= tol else EXIT_FAILED


def _model_and_source(args, need_targets: bool):
    spec, theta, meta = load_model(args.model)
    source = open_source(args.data)
    features = meta.get("features") or []
    targets = meta.get("targets") or []
    encoding = meta.get("encoding", "numeric")
    if need_targets:
        target = targets[0] if encoding == "one_hot" else targets
        schema = resolve_schema(source, features, target, list(spec.layers), spec.cost)
    else:
        missing = [f for f in features if f not in source.column_names]
        if missing:
            raise InputError(f"{source.name} lacks the model's feature column {missing[0]!r}")
        schema = Schema(tuple(features), (), "numeric", len(features), 0)
    return spec, theta, meta, source, schema


def evaluate(args) -> int:
    spec, theta, meta, source, schema = _model_and_source(args, need_targets=True)
    cost = COSTS[spec.cost]
    ws = Workspace(spec, min(CHUNK, source.num_rows))
    loss_sum, correct, count = 0.0, 0, 0
    for lo in range(0, source.num_rows, CHUNK):
        hi = min(lo + CHUNK, source.num_rows)
        X, Y = load_examples(source, schema, lo, hi, spec.dtype)
        Yc = np.ascontiguousarray(Y.T)
        ZL, AL = forward(spec, theta, X, ws)
        loss_sum += cost.loss_sum(Yc, AL, ZL)
        c, k = count_correct(AL, Yc, schema.encoding)
        correct, count = correct + c, count + k
    result = {"model": str(args.model), "data": source.name, "rows": source.num_rows,
              "cost": spec.cost, "loss": loss_sum / source.num_rows}
    if count:
        result["accuracy"] = correct / count
    print(json.dumps(result, indent=2))
    return EXIT_OK


def _prediction_columns(spec, meta, AL: np.ndarray) -> dict[str, np.ndarray]:
    encoding, targets = meta.get("encoding"), meta.get("targets") or []
    if encoding == "one_hot":
        cols = {f"p{k}": AL[k] for k in range(AL.shape[0])}
        cols["prediction"] = AL.argmax(axis=0)
        return cols
    names = targets if len(targets) == AL.shape[0] else [f"y{k}" for k in range(AL.shape[0])]
    cols = {name: AL[k] for k, name in enumerate(names)}
    if encoding == "binary":
        cols.update({f"{name}_class": (AL[k] > 0.5).astype(np.int64) for k, name in enumerate(names)})
    return cols


def predict(args) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    spec, theta, meta, source, schema = _model_and_source(args, need_targets=False)
    out = Path(args.output).expanduser() if args.output else None
    if out is not None:
        if out.suffix not in (".csv", ".parquet"):
            raise InputError(f"--output: {out} must end in .csv or .parquet")
        if not out.parent.is_dir():
            raise InputError(f"--output: directory {out.parent} does not exist")
        if out.is_dir():
            raise InputError(f"--output: {out} is a directory")
    ws = Workspace(spec, min(CHUNK, source.num_rows))
    tables = []
    for lo in range(0, source.num_rows, CHUNK):
        hi = min(lo + CHUNK, source.num_rows)
        X, _ = load_examples(source, schema, lo, hi, spec.dtype)
        _, AL = forward(spec, theta, X, ws)
        tables.append(pa.table(_prediction_columns(spec, meta, AL.copy())))
    table = pa.concat_tables(tables)
    if out is None:
        pacsv.write_csv(table, sys.stdout.buffer)
    elif out.suffix == ".parquet":
        pq.write_table(table, out)
    else:
        pacsv.write_csv(table, out)
    if out is not None:
        print(f"rayprop predict: {table.num_rows} rows written to {out}", file=sys.stderr)
    return EXIT_OK
