"""The `rayprop` command line: `rayprop.py` reads the arguments and maps each kind of
error to its exit code, `commands.py` does what each subcommand says, `ui.py` and
`fetch.py` are the `ui` and `fetch` subcommands whole.

`experiments.cli:entry` is the console script; `python -m experiments.cli` runs the same.
"""

from experiments.cli.rayprop import entry

__all__ = ["entry"]
