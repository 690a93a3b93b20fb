"""Run by a submitted job on the cluster before it trains: does this Python have
what rayprop needs? Without this the job would die on its first import with a
traceback that `rayprop submit` can only pass on.

What rayprop needs is written once, in pyproject.toml's dependencies: the submitter
reads them (`requirements`: the installed rayprop's metadata, else the checkout's
pyproject.toml) and passes their names on this script's command line
(`python -m cluster.depcheck numpy pyarrow ...`), since rayprop itself is not
installed on the cluster.

Standard library only (it must run where nothing else is installed). Prints one
line starting with MARKER and exits EXIT_MISSING when something is missing;
`cluster/jobs.py` turns that into the submitter's one line.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

EXIT_MISSING = 4  # not 1, 2, 3 (rayprop train's own codes): the submitter tells them apart
MARKER = "rayprop: missing on the cluster:"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements() -> list[str]:
    """rayprop's runtime dependencies as pip requirements (`numpy>=1.26`), Ray aside (the
    cluster runs its own), from the installed distribution, else from pyproject.toml."""
    try:
        wanted = metadata.requires("rayprop") or []
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        import tomllib

        wanted = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return [r.split(";")[0].strip() for r in wanted if "extra ==" not in r and name_of(r).lower() != "ray"]


def name_of(requirement: str) -> str:
    """'PyYAML>=6.0' -> 'PyYAML', 'ray[default]>=2.40' -> 'ray'."""
    return re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)


@functools.cache
def _modules_by_distribution() -> dict[str, list[str]]:
    """Distribution name (lower case) -> the top-level modules it installs (PyYAML -> yaml)."""
    out: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            if not module.startswith("_"):
                out.setdefault(dist.lower(), []).append(module)
    return out


def missing(names: list[str]) -> list[str]:
    """The names of the distributions this Python lacks or cannot import ("ray" first when
    it lacks Ray itself: then it is not the cluster's Python at all)."""
    # Found, not imported: importing Ray takes a second, and the job imports it next anyway.
    gone = [] if importlib.util.find_spec("ray") is not None else ["ray"]
    for name in names:
        try:
            metadata.distribution(name)
            # imported, not only found: a broken install fails here in its own way
            for module in sorted(_modules_by_distribution().get(name.lower(), [])):
                importlib.import_module(module)
        except Exception:  # not installed, ImportError, or a broken install failing in its own way
            gone.append(name)
    return gone


def main(names: list[str]) -> int:
    gone = missing(names)
    if gone:
        print(f"{MARKER} {' '.join(gone)} (for {sys.executable})", flush=True)
        return EXIT_MISSING
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
