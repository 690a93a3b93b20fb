"""Every file path and module the project's text points to exists: after files move
(experiments/ in subpackages, data input in workers/data/), a README line, a
docstring or a test that still names the old place sends the reader nowhere.

Checked in README.md, pyproject.toml, docs/, benchmarks/, cluster/, tests/ and the packages' files:
paths under the project's folders (`workers/data/fingerprint.py`); modules where only
a module can stand (`from X import`, `import X`, `-m X`, `X:entry`); and in the
Markdown files, dotted names in backticks (`experiments.cli`, a module, or
`experiments.cli.entry`, a name in one)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "workers", "cluster", "experiments")
TOPS = "|".join(PACKAGES)
PATH = re.compile(rf"(?<![\w./-])((?:{TOPS}|tests|benchmarks|docs)/[\w/.-]*\w\.(?:py|sh|md|yaml|toml))")
NAME = r"(?:{})(?:\.[a-z_][a-z0-9_]*)".format("|".join(PACKAGES))
MODULE = re.compile(rf"^\s*from\s+({NAME}*)\s+import\b|^\s*import\s+({NAME}*)\b|-m[\"',\s]+({NAME}*)\b|({NAME}*):\w")
DOTTED = re.compile(rf"`({NAME}+)`")
# Paths a test makes up to show what is refused (tests/test_layering.py writes bad.py).
MADE_UP = ("bad.py",)


def texts():
    yield ROOT / "README.md"
    yield ROOT / "pyproject.toml"  # the console script's module
    for folder in ("docs", "benchmarks", "tests", *PACKAGES):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".md", ".sh", ".yaml") and path != Path(__file__).resolve():
                yield path


def found(pattern, suffixes=(".py", ".md", ".sh", ".yaml", ".toml")):
    """(file:line, the first non-empty group) of every match."""
    for path in texts():
        if path.suffix not in suffixes:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                yield f"{path.relative_to(ROOT)}:{n}", next(g for g in m.groups() if g)


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent is missing
        return False


def test_every_path_named_exists():
    paths = list(found(PATH))
    assert len(paths) > 100  # the pattern finds the project's own references
    missing = [(where, p) for where, p in paths if not (ROOT / p).exists() and not p.endswith(MADE_UP)]
    assert not missing, missing


def test_every_module_imported_or_run_exists():
    names = list(found(MODULE))
    assert len(names) > 100
    missing = [(where, name) for where, name in names if not is_module(name)]
    assert not missing, missing


def test_every_dotted_name_in_the_docs_exists():
    def exists(name):
        parent, _, attr = name.rpartition(".")
        return is_module(name) or (is_module(parent) and hasattr(importlib.import_module(parent), attr))

    names = list(found(DOTTED, (".md",)))
    assert names
    # `cluster.workers` and the like are the config's section, not the package.
    missing = [(where, name) for where, name in names if not name.startswith("cluster.") and not exists(name)]
    assert not missing, missing
