"""Run by a submitted job on the cluster before it trains: does this Python have
what rayprop needs? Without this the job would die on its first import with a
traceback that `rayprop submit` can only pass on.

Standard library only (it must run where nothing else is installed). Prints one
line starting with MARKER and exits EXIT_MISSING when something is missing;
`cluster/jobs.py` turns that into the submitter's one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# import name -> the name pip installs it by (rayprop's runtime dependencies, Ray aside)
DEPENDENCIES = {"numpy": "numpy", "pyarrow": "pyarrow", "mlflow": "mlflow", "yaml": "PyYAML",
                "pandas": "pandas", "matplotlib": "matplotlib", "tqdm": "tqdm",
                "threadpoolctl": "threadpoolctl"}
EXIT_MISSING = 4  # not 1, 2, 3 (rayprop train's own codes): the submitter tells them apart
MARKER = "rayprop: missing on the cluster:"


def missing() -> list[str]:
    """The pip names of the dependencies this Python cannot import ("ray" first when it
    lacks Ray itself: then it is not the cluster's Python at all)."""
    # Found, not imported: importing Ray takes a second, and the job imports it next anyway.
    gone = [] if importlib.util.find_spec("ray") is not None else ["ray"]
    for module, name in DEPENDENCIES.items():
        try:
            importlib.import_module(module)
        except Exception:  # ImportError, or a broken install failing in its own way
            gone.append(name)
    return gone


def main() -> int:
    gone = missing()
    if gone:
        print(f"{MARKER} {' '.join(gone)} (for {sys.executable})", flush=True)
        return EXIT_MISSING
    return 0


if __name__ == "__main__":
    sys.exit(main())
