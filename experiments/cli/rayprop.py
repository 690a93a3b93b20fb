"""The `rayprop` command line.

Exit codes (README, "Exit codes"; their numbers in exit_codes.py), mapped here and
nowhere else from the kind of error (trainer/errors.py): 0 done; 2 bad input, with one
line on stderr naming the field, file or value and nothing written; 1 failure while
running; 130 stopped.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading

from experiments.cli.exit_codes import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_PIPE_CLOSED,
                                        EXIT_STOPPED)
from trainer import __version__
from trainer.config import MAX_WORKERS
from trainer.errors import InputError, RunError, Stopped, describe



class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    value = _positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WORKERS}, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be at most 65535, got {value}")
    return value


def _training_flags(p: argparse.ArgumentParser, output: str, config_optional: bool = False) -> None:
    """The flags `train` and `sweep` share."""
    p.add_argument("config", metavar="CONFIG", nargs="?" if config_optional else None,
                   help="YAML config file, or the name of a shipped example (xor, spirals, digits, w-tiny, ...)"
                   + ("; with --resume it may be left out: the run's own config is used" if config_optional else ""))
    p.add_argument("--local", action="store_true", help="single-process mode, no Ray")
    p.add_argument("--address", metavar="ADDR",
                   help="Ray to use: auto (a running local cluster), HOST:PORT, or ray://HOST:PORT "
                   "(Ray Client); default: RAY_ADDRESS, cluster.address, else a local Ray started "
                   "for this job")
    p.add_argument("--workers", type=_workers, metavar="N",
                   help="shard workers, or auto: as many as the cluster's free CPUs, growing when "
                   "nodes join (default: cluster.workers; 1 with --local)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store or server: sqlite:///PATH.db, http://HOST:PORT, ... (default: "
                   "MLFLOW_TRACKING_URI, tracking.uri, else sqlite:///mlflow.db here)")
    p.add_argument("--experiment", metavar="NAME", help="experiment name (overrides `experiment:`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.learning_rate=0.05 (repeatable)")
    p.add_argument("--init-from", metavar="MODEL.npz", help="start from these weights (shapes checked)")
    p.add_argument("--output", metavar="DIR", help=output)
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    _register_flag(p)


def _register_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--register-model", metavar="NAME",
                   help="register the final model (a sweep's: the best trial's) as a new version of "
                   "this registered model in the tracking store; it loads as models:/NAME/VERSION")


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory or its model.npz, or an MLflow "
                   "model URI: models:/NAME/VERSION, models:/NAME@ALIAS, models:/MODEL_ID")
    p.add_argument("data", metavar="DATA", help="built-in set name, .parquet file or directory, or .csv")
    p.add_argument("--tracking-uri", metavar="URI", help="where a models:/ URI is looked up "
                   "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rayprop", description="Data-parallel back-propagation for multilayer "
                "perceptrons on Ray, tracked in MLflow.")
    p.add_argument("--version", action="version", version=f"rayprop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    t = sub.add_parser("train", help="train a network from a YAML config",
                       description="Train a network from a YAML config; the job is one MLflow run.")
    _training_flags(t, output="where model.npz, model.json, summary.json and checkpoints go: a folder "
                    "or a URI (s3://, gs://, file://, ...); a taken DIR gives DIR-2, ... "
                    "(default: train.output, else runs/EXPERIMENT-TIMESTAMP)", config_optional=True)
    t.add_argument("--resume", metavar="RUN_ID",
                   help="continue this MLflow run from its latest checkpoint, with the run's logged "
                   "config (a CONFIG given is checked against it)")

    w = sub.add_parser("sweep", help="train the trials of the config's sweep: section side by side",
                       description="Train every combination of the config's `sweep:` grid (and of "
                       "--grid axes), its distributions drawn sweep_samples times, as child runs of one "
                       "MLflow run on one Ray connection, as many at once as the CPUs allow; with "
                       "sweep_scheduler: asha, trials behind at epoch milestones stop early. Prints "
                       "the results sorted by validation loss. The parent run records the best child.")
    _training_flags(w, output="one run-NN folder per combination and sweep.json go here "
                    "(default: runs/EXPERIMENT-sweep-TIMESTAMP)")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="add (or replace) an axis of the grid, values as YAML scalars, e.g. "
                   "--grid train.learning_rate=0.01,0.1 (repeatable)")
    w.add_argument("--resume", metavar="PARENT_RUN_ID",
                   help="continue this sweep (its parent run) in its --output DIR: finished trials are "
                   "kept, stopped or killed ones go on from their checkpoints, the others start")
    w.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help="trials at once, at most (default: sweep_concurrency, else as many as the "
                   "cluster's CPUs hold; 1 with --local)")

    u = sub.add_parser("ui", help="the MLflow UI on the tracking store",
                       description="Run the MLflow UI on the tracking store (the same one `train` "
                       "uses) and wait; Ctrl-C stops it. A tracking server's address is just printed.")
    u.add_argument("--tracking-uri", metavar="URI",
                   help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    u.add_argument("--host", default="127.0.0.1", metavar="HOST",
                   help="interface to bind (default 127.0.0.1, this machine only)")
    u.add_argument("--port", type=_port, default=5000, metavar="PORT", help="default 5000")

    s = sub.add_parser("submit", help="run a training job on a remote cluster through Ray Jobs",
                       description="Submit the same training job to a Ray cluster's Jobs API, "
                       "ship rayprop and the config (and a small data file) with it, and follow "
                       "its log to the end; the exit code is the job's.")
    s.add_argument("config", metavar="CONFIG", help="YAML config file or shipped example name")
    s.add_argument("--address", metavar="http://HEAD:8265",
                   help="the cluster's dashboard / Jobs API address (default: RAY_ADDRESS)")
    s.add_argument("--workers", type=_workers, metavar="N")
    s.add_argument("--experiment", metavar="NAME")
    s.add_argument("--tracking-uri", metavar="URI", help="where the job logs its MLflow run "
                   "(default: MLFLOW_TRACKING_URI here, else tracking.uri); use a server the "
                   "cluster can reach, http://HOST:PORT")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--output", metavar="DIR|URI",
                   help="DIR: wait for the job, then put its model.npz, model.json, summary.json "
                   "here (from its run on the tracking server); URI (s3://, gs://, file://...): "
                   "the job writes its files there")
    s.add_argument("--no-wait", action="store_true",
                   help="print the job id (and how to fetch its model later) and return")
    _register_flag(s)
    s.add_argument("--pip", action="store_true", help="have Ray pip-install rayprop's dependencies "
                   "for the job (runtime_env pip), for a cluster whose Python lacks them")

    f = sub.add_parser("fetch", help="a finished run's model files from its MLflow artifacts",
                       description="Download model.npz, model.json and summary.json of a finished "
                       "run (trained here, elsewhere, or by `rayprop submit`) from the tracking "
                       "store into a folder.")
    f.add_argument("run_id", metavar="RUN_OR_JOB_ID",
                   help="the MLflow run id, or the job id `rayprop submit` printed")
    f.add_argument("--output", required=True, metavar="DIR", help="where the files go (created if needed)")
    f.add_argument("--tracking-uri", metavar="URI",
                   help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")

    g = sub.add_parser("gradcheck", help="check Eq. 12 against finite differences",
                       description="Compare the back-propagated gradient with central finite "
                       "differences in float64 on a small batch of the config's data.")
    g.add_argument("config", metavar="CONFIG", help="YAML config file or shipped example name")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--examples", type=_positive_int, default=16, metavar="N",
                   help="examples in the batch (default 16)")
    g.add_argument("--tolerance", type=float, default=None, metavar="TOL",
                   help="largest relative error that passes (default 1e-6)")

    e = sub.add_parser("evaluate", help="loss and accuracy of a saved model on a data source",
                       description="Print the loss (and accuracy) of a saved model on a data source, as JSON.")
    _model_flags(e)

    r = sub.add_parser("predict", help="outputs of a saved model for each row of a data source",
                       description="Write the network's outputs for each row of DATA as CSV "
                       "(stdout) or to --output FILE (.csv or .parquet).")
    _model_flags(r)
    r.add_argument("--output", metavar="FILE", help="write .csv or .parquet here instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit code of how it ended (the only place that maps them)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, a usage error (its line is printed)
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C stops every command, even one started with SIGINT ignored (a script's
        # background job): `rayprop ui` would otherwise outlive it, and its server too.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    prog = f"rayprop {args.command}"
    try:
        from experiments.cli import commands  # heavy imports only after the arguments parse

        code = getattr(commands, args.command)(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return EXIT_OK if code is None else code
    except InputError as e:
        print(f"{prog}: error: {describe(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunError as e:  # the run has ended FAILED
        print(f"{prog}: {describe(e)}", file=sys.stderr)
        return EXIT_FAILED
    except Stopped as e:  # the run has ended KILLED, after a whole step
        print(f"{prog}: {describe(e)}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_STOPPED
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_PIPE_CLOSED


def _drop_stdout() -> None:
    """The reader of stdout has gone (`rayprop predict ... | head -1`): say nothing, as
    Unix tools do, and point stdout at /dev/null so that the flush at exit does not
    raise BrokenPipeError again (Python's documented recipe, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (captured in tests)
        pass


def entry() -> None:
    code = main()
    # Not one more pass of the collector over Ray's and MLflow's objects at exit: it
    # took 3-7 s on a busy machine, after a Ctrl-C had already stopped the job.
    gc.freeze()
    sys.exit(code)

