"""Errors a user can cause, kept apart from bugs.

Anything raised as an `InputError` is the user's to fix (a config field, a data
file, a command-line value): the CLI prints its one-line message and exits 2.
Everything else is a failure while running (exit 1) or a bug (a traceback).
"""


class InputError(ValueError):
    """Bad input from the user; `str(err)` is one line naming the field, file or value."""


class ConfigError(InputError):
    """A config key has a wrong name, type or value."""


class DataError(InputError):
    """A data source is missing, unreadable, or holds values that do not fit the model."""
