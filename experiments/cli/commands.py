"""What each `rayprop` subcommand does; rayprop.py parses, this module acts.

Each function returns when the command succeeded (or an exit code of its own, as
`ui` and `submit` do). Anything else is an error of a kind (trainer/errors.py)
that rayprop.main turns into one line and an exit code; nothing is written before the
inputs have been checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from experiments import configs as example_configs
from experiments.cli.exit_codes import EXIT_UNDELIVERED
from experiments.jobs import training
from experiments.jobs.configfile import load_config, parse_grid
from experiments.jobs.output_folder import OutputClaim, check_writable_dir, default_output
from experiments.jobs.progress import print_summary
from experiments.tracking import stores
from trainer.errors import ConfigError, InputError, RunError
from trainer.gradcheck import DEFAULT_TOLERANCE, gradcheck as check_gradients
from trainer.model_io import load_model
from trainer.network import Workspace, forward
from workers.data.examples import Schema, load_examples, resolve_schema
from workers.data.locations import is_uri
from workers.data.sources import open_source
from workers.shard import EVAL_CHUNK, eval_sums


def _config(args):
    overrides = list(args.overrides)
    workers = getattr(args, "workers", None)
    if workers is not None and not getattr(args, "local", False):
        # --workers replaces cluster.workers, so min_workers and max_workers are checked
        # against it, not against the file's count (`--workers auto` with min_workers
        # above the file's workers is fine; `--workers 5` above max_workers is not).
        overrides.append(f"cluster.workers={workers}")
    try:
        if args.config is not None:
            cfg = load_config(example_configs.resolve(args.config), overrides)
        elif getattr(args, "resume", None):  # `rayprop train --resume RUN_ID`: the run's own config
            from experiments.jobs.run_config import config_of_run

            cfg = config_of_run(args.resume, args.tracking_uri, overrides)
        else:
            raise InputError("CONFIG is required (or --resume RUN_ID, to continue a run with its own config)")
    except ConfigError as e:
        if workers is not None and f"cluster.workers={workers}" in str(e):
            raise ConfigError(f"--workers {workers}: {e}") from None
        raise
    if getattr(args, "experiment", None):
        cfg = cfg.with_overrides({"experiment": args.experiment})  # a name, not YAML
    return cfg


def _options(args) -> training.Options:
    """What the command line adds to the config, for `train` and `sweep`."""
    return training.Options(args.config, workers=args.workers, local=args.local,
                            address=args.address, tracking_uri=args.tracking_uri,
                            init_from=args.init_from, output=args.output,
                            resume=getattr(args, "resume", None), quiet=args.quiet,
                            register_model=args.register_model)


def train(args) -> int | None:
    from experiments.tracking import registry

    registry.check_name(args.register_model)
    cfg = _config(args)
    summary, out_dir, undelivered = training.train(cfg, _options(args))
    print_summary(summary, out_dir)
    if undelivered:  # trained and written, but the tracking store missed some: said last
        print(undelivered, file=sys.stderr)
        if args.register_model:
            print(f"rayprop train: not registered as {args.register_model} (the store missed the model)",
                  file=sys.stderr)
        return EXIT_UNDELIVERED
    if args.register_model:
        store = stores.resolve_uri(args.tracking_uri, cfg.tracking.uri)
        _register(store, summary["run_id"], args.register_model, "train")
    return None


def _register(uri: str, run_id: str, name: str, command: str) -> None:
    from experiments.tracking import registry

    version = registry.register(uri, run_id, name)
    print(f"rayprop {command}: registered run {run_id}'s model as {version}; evaluate it with: "
          f"{shlex.join(['rayprop', 'evaluate', version, 'DATA', '--tracking-uri', stores.redact(uri)])}",
          file=sys.stderr)


def sweep(args) -> None:
    from experiments.sweeps import results as sweep_results, sweep as sweeps
    from experiments.sweeps.early_stopping import milestones
    from experiments.tracking.registry import check_name

    check_name(args.register_model)
    cfg = _config(args)
    if args.grid:
        cfg = cfg.with_sweep(dict(parse_grid(text) for text in args.grid))
    if not cfg.sweep:
        raise InputError(f"{args.config}: no sweep: section to run; add one, or give --grid key=v1,v2")
    base = cfg.without_sweep()
    children = []  # every trial is checked and prepared before anything runs
    for combo in sweeps.trials(cfg):
        try:
            children.append((combo, training.prepare(base.with_overrides(combo), args.init_from)))
        except InputError as e:
            raise InputError(f"sweep combination {sweep_results.label(combo)}: {e}") from None
    if cfg.sweep_scheduler == "asha" and not any(
            milestones(cfg.sweep_grace_epochs, cfg.sweep_reduction_factor, job.cfg.train.epochs)
            for _, job in children):
        raise InputError(f"sweep_grace_epochs: {cfg.sweep_grace_epochs} leaves asha no milestone "
                         f"before the last epoch (train.epochs); lower it or train longer")
    if args.output and is_uri(args.output):  # its trials' folders are claimed by lock (output_folder.py)
        raise InputError(f"--output {args.output}: a sweep writes to a local folder; a URI is for rayprop train")
    uri = stores.choose(args.tracking_uri, cfg.tracking.uri)
    resume = None
    if args.resume:  # a stopped or killed sweep goes on (experiments/sweeps/sweep_resume.py)
        from experiments.sweeps.sweep_resume import plan

        if cfg.sweep_scheduler == "asha":
            raise InputError(f"--resume {args.resume}: not with sweep_scheduler: asha (its stops depend on "
                             "every trial's milestones); go on with each trial: rayprop train --resume RUN_ID")
        resume = plan(uri, args.resume, cfg, children, sweeps.parent_params(cfg), args.output, sweeps.run_dir)
        out_root = resume.out_root
    else:
        out_root = Path(args.output).expanduser() if args.output else default_output(cfg, "sweep")
    check_writable_dir(out_root, "--output")
    for i in range(len(children)):  # each new run's folder must be free (one run per folder)
        if resume is None or (i not in resume.kept and i not in resume.resumed):
            OutputClaim(sweeps.run_dir(out_root, i)).check()
    try:
        results = sweeps.run(cfg, children, out_root, uri, _options(args), args.concurrency, resume)
    except sweeps.SweepStopped as e:
        print(sweep_results.table(e.results))
        from experiments.jobs.resume import where_flags

        e.hint = "continue the sweep with: " + shlex.join([
            "rayprop", "sweep", args.config, *[w for s in args.overrides for w in ("--set", s)],
            *[w for g in args.grid for w in ("--grid", g)], "--output", str(e.out_root),
            "--resume", e.parent_run_id, *where_flags(uri, args.local, args.address)])
        raise
    print(sweep_results.table(results))
    print(f"rayprop sweep: each run's files in {out_root}/run-NN/, the results in "
          f"{out_root / 'sweep.json'}", file=sys.stderr)
    top = sweep_results.best(results)
    if top is None:
        raise RunError(f"no run of the sweep finished (see {out_root / 'sweep.json'})")
    if args.register_model:  # the best trial by the sweep's metric, as ranked above
        _register(uri, top.run_id, args.register_model, "sweep")


def ui(args) -> int:
    from experiments.cli.ui import ui as run_ui

    return run_ui(stores.resolve_uri(args.tracking_uri, None), args.host, args.port)


def submit(args) -> int | None:
    from cluster.jobs import submit as submit_job
    from experiments.cli import fetch
    from workers.data.builtin_sets import BUILTIN_NAMES
    from workers.data.locations import is_uri

    from experiments.tracking.registry import check_name

    check_name(args.register_model)
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
    if args.register_model:  # the job registers its model on its tracking server
        train_args.append(f"--register-model {shlex.quote(args.register_model)}")
    uri = uri or cfg.tracking.uri or stores.DEFAULT_URI
    # --output URI: the job writes there. --output DIR: a folder here, where the model
    # comes (from the run's artifacts on the tracking server) once the job has finished.
    if args.output:
        from experiments.jobs.output_uri import check_spec

        check_spec(args.output)  # a URI the job could not write: refused here, before it is sent
    output_uri = args.output if args.output and is_uri(args.output) else None
    local_out = Path(args.output).expanduser() if args.output and not output_uri else None
    if not stores.is_server(uri) and not output_uri:
        # The job's folder and a local store are in Ray's session folder on the head,
        # deleted with the session: nothing of the run would be left to see.
        raise InputError(f"--tracking-uri: the job's run would stay in {stores.redact(uri)} on the head, "
                         "deleted with Ray's session; give --tracking-uri http://MLFLOW-HOST:PORT or --output URI")
    if local_out is not None:
        if not stores.is_server(uri):
            raise InputError(f"--output {local_out}: the model comes here from a tracking server; "
                             "give --tracking-uri http://MLFLOW-HOST:PORT")
        local_out = fetch.free_target(local_out)
    note = f"the job logs its MLflow run to {stores.redact(uri)}"
    if not stores.is_server(uri):
        note += f" on the cluster's node; its files go to {output_uri}"
    later = None
    if stores.is_server(uri):
        later = ("once it has finished, its model files come here with: "
                 + fetch.command("{job_id}", uri, str(local_out or "DIR")))
    job_id, run_id = submit_job(dataclasses.asdict(cfg), address, train_args, not args.no_wait,
                                lambda s: s in BUILTIN_NAMES, note, pip=args.pip,
                                output_uri=output_uri, later=later)
    if args.no_wait or local_out is None:
        return None
    if run_id is None:
        raise RunError(f"job {job_id} succeeded, but its log names no MLflow run to fetch the model from")
    # Chosen again: another submit to the same DIR may have filled it meanwhile.
    local_out = fetch.free_target(local_out)
    fetch.fetch(run_id, uri, local_out)
    print(f"rayprop submit: model.npz, model.json, summary.json of run {run_id} in {local_out}",
          file=sys.stderr)
    return None


def fetch(args) -> None:
    from experiments.cli import fetch as fetching

    from workers.data.locations import is_uri

    if is_uri(args.output):
        raise InputError(f"--output {args.output}: the model files come to a folder here, not a URI")
    uri = stores.resolve_uri(args.tracking_uri, None)
    out_dir = Path(args.output).expanduser()
    run_id = fetching.fetch(args.run_id, uri, out_dir)
    print(f"rayprop fetch: model.npz, model.json, summary.json of run {run_id} in {out_dir}",
          file=sys.stderr)


def gradcheck(args) -> None:
    cfg = _config(args)
    job = training.prepare(cfg)
    n = min(args.examples, job.plan.n_train)
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
    if worst > tol:
        raise RunError(f"largest relative error {worst:.3e} is above the tolerance {tol:g}")


def _model_and_source(args, need_targets: bool):
    from experiments.tracking.registry import ModelFolder

    with ModelFolder(args.model, getattr(args, "tracking_uri", None)) as folder:  # models:/ URIs too
        spec, theta, meta = load_model(folder)
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


def evaluate(args) -> None:
    spec, theta, meta, source, schema = _model_and_source(args, need_targets=True)
    n = source.num_rows

    def chunks():  # the source is read a chunk at a time, never whole
        for lo in range(0, n, EVAL_CHUNK):
            X, Y = load_examples(source, schema, lo, min(lo + EVAL_CHUNK, n), spec.dtype)
            yield X, np.ascontiguousarray(Y.T)

    loss_sum, correct, count = eval_sums(spec, theta, schema.encoding, chunks(), min(EVAL_CHUNK, n))
    result = {"model": str(args.model), "data": source.name, "rows": source.num_rows,
              "cost": spec.cost, "loss": loss_sum / source.num_rows}
    if count:
        result["accuracy"] = correct / count
    print(json.dumps(result, indent=2))


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


def predict(args) -> None:
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
    ws = Workspace(spec, min(EVAL_CHUNK, source.num_rows))
    tables = []
    for lo in range(0, source.num_rows, EVAL_CHUNK):
        hi = min(lo + EVAL_CHUNK, source.num_rows)
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
