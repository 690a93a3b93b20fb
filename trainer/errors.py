"""What can go wrong, by kind; the CLI maps each kind to its exit code in one place.

- `InputError`: the user's to fix (a config field, a data file, a command-line
  value); nothing has been written. Exit 2. (`DataChangedError`, the data changed
  under a running job, is found mid-run: the run ends FAILED, its checkpoint kept.)
- `RunError`: a failure while running (the loss diverged, workers were lost); the
  run ends FAILED and the last good checkpoint is kept. Exit 1.
- `Stopped`: stopped on request (Ctrl-C, SIGTERM) after a whole step. Exit 130.
Anything else is a bug, and gets a traceback.

Each error's `str()` is its one line (see `one_line`); an optional `hint` says what
to do next (a smaller learning rate, the checkpoint to resume from).
"""

from __future__ import annotations

MAX_LINE = 200  # characters of a message on the console; the rest is cut


class InputError(ValueError):
    """Bad input from the user; `str(err)` is one line naming the field, file or value."""

    hint = ""


class ConfigError(InputError):
    """A config key has a wrong name, type or value."""


class DataError(InputError):
    """A data source is missing, unreadable, or holds values that do not fit the model."""


class DataChangedError(DataError):
    """The data source changed under a running job (a worker that re-reads its rows
    found a file other than the job's fingerprint says), or since the run being
    resumed: bad input, exit 2; mid-run the run ends FAILED, the last checkpoint kept."""


class RunError(RuntimeError):
    """A failure while running: the run ends FAILED."""

    kind = ""  # how the CLI introduces it ("diverged"); "" for none
    hint = ""


class DivergedError(RunError):
    """The loss or the weights stopped being finite."""

    kind = "diverged"
    hint = "try a smaller train.learning_rate"


class WorkerLostError(RunError):
    """Shard workers were lost beyond what the pool may replace, or no replacement
    could be placed: training stops (run FAILED, last checkpoint kept)."""


class Stopped(Exception):
    """Stopped on request; nothing failed."""

    hint = ""


def one_line(err: BaseException | str, limit: int = MAX_LINE) -> str:
    """The first line of an error's message (or its class name when it has none),
    cut to `limit` characters: what a console line shows of someone else's error."""
    text = err if isinstance(err, str) else str(err)
    line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


def describe(err: BaseException) -> str:
    """The line an error becomes for the user: its kind ("diverged: "), its one line,
    then what to do about it (its hint)."""
    kind = getattr(err, "kind", "")
    hint = getattr(err, "hint", "")
    return f"{kind + ': ' if kind else ''}{one_line(err)}{'; ' + hint if hint else ''}"


def short(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: never print a whole (huge) value back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
