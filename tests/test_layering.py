"""The layering of docs/design.md section 3: imports flow one way,
`trainer <- workers <- cluster <- experiments`, and only experiments/ imports mlflow.

Two checks:
- dynamic: in a fresh interpreter where `ray` and `mlflow` (and every submodule) are
  made unimportable, `trainer` and every module of the trainer package import fine;
- static: every import statement (module level, function level, `if TYPE_CHECKING:`,
  `__import__("x")`, `importlib.import_module("x")`) in trainer/, workers/, cluster/
  and experiments/ is parsed with `ast` and checked against the allowed directions.
  The checker itself is tested on synthetic bad sources, so this test can fail.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "workers", "cluster", "experiments")

# What each layer must never import (top-level module names).
FORBIDDEN: dict[str, frozenset[str]] = {
    "trainer": frozenset({"workers", "cluster", "experiments", "ray", "mlflow"}),
    "workers": frozenset({"cluster", "experiments", "mlflow"}),
    "cluster": frozenset({"experiments", "mlflow"}),
    "experiments": frozenset(),
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


# ---- dynamic: trainer imports with ray and mlflow blocked -------------------------------

BLOCKER = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = ("ray", "mlflow")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked by test_layering", name=name)
            return None

    for mod in list(sys.modules):
        if mod.split(".")[0] in BLOCKED:
            del sys.modules[mod]
    sys.meta_path.insert(0, Blocker())

    # The blocker works: ray, mlflow and their submodules cannot be imported.
    for name in ("ray", "ray.util", "mlflow", "mlflow.pyfunc"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"blocker failed: {name} imported")
""")

IMPORT_TRAINER = BLOCKER + textwrap.dedent("""
    import trainer
    names = [info.name for info in pkgutil.walk_packages(trainer.__path__, "trainer.")]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("IMPORTED", len(names), " ".join(names))
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)


def test_trainer_imports_without_ray_and_mlflow():
    proc = _run(IMPORT_TRAINER)
    assert proc.returncode == 0, proc.stderr
    line = [l for l in proc.stdout.splitlines() if l.startswith("IMPORTED")][-1]
    imported = line.split()[2:]
    # Every module file of trainer/ was imported (walk_packages found them all).
    on_disk = {f"trainer.{p.stem}" for p in (REPO / "trainer").glob("*.py") if p.stem != "__init__"}
    assert on_disk <= set(imported), on_disk - set(imported)
    for core in ("trainer.network", "trainer.coordinator", "trainer.config", "trainer.model_io"):
        assert core in imported


def test_blocked_import_is_detected():
    """The same harness fails when a module under test does import a blocked package."""
    proc = _run(BLOCKER + "import ray.util\n")
    assert proc.returncode != 0
    assert "blocked by test_layering" in proc.stderr
    proc = _run(BLOCKER + "def f():\n    import mlflow\nf()\n")
    assert proc.returncode != 0
    assert "blocked by test_layering" in proc.stderr


# ---- static: ast over every file ------------------------------------------------------

def _module_name(package: str, relpath: Path) -> str:
    """'trainer', Path('sub/mod.py') -> 'trainer.sub.mod'; __init__ -> the package."""
    parts = [package, *relpath.with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, at any nesting level.

    `module` is the dotted name of the file (for relative imports). A relative import
    beyond the top-level package is returned as '<beyond top level>'.
    """
    tree = ast.parse(source)
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                keep = len(package_parts) - (node.level - 1)
                if keep < 1:
                    found.append((node.lineno, "<beyond top level>"))
                    continue
                base = ".".join(package_parts[:keep] + ([node.module] if node.module else []))
            found.append((node.lineno, base))
            # `from pkg import x`: x may be a submodule too
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name)
                      for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            name = (func.id if isinstance(func, ast.Name)
                    else func.attr if isinstance(func, ast.Attribute) else None)
            if (name in ("__import__", "import_module") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(source: str, layer: str, module: str, is_package: bool = False) -> list[str]:
    bad = []
    for line, name in imported_modules(source, module, is_package):
        top = name.split(".")[0]
        if name == "<beyond top level>" or top in FORBIDDEN[layer]:
            bad.append(f"{module}:{line} imports {name} ({layer} must not import {top})")
    return bad


def _files():
    for package in PACKAGES:
        root = REPO / package
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            yield package, path, _module_name(package, path.relative_to(root))


def test_every_layer_imports_only_downward():
    found_files = {p: 0 for p in PACKAGES}
    bad = []
    for package, path, module in _files():
        found_files[package] += 1
        bad += violations(path.read_text(encoding="utf-8"), package, module,
                          is_package=path.name == "__init__.py")
    assert all(found_files.values()), f"a layer has no .py files: {found_files}"
    assert found_files["trainer"] >= 5 and found_files["workers"] >= 3, found_files
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_the_scan_sees_real_imports():
    """The checker is not vacuous on the real tree: it finds the known downward imports."""
    text = (REPO / "experiments" / "commands.py").read_text()
    names = {n for _, n in imported_modules(text, "experiments.commands")}
    assert {"trainer.costs", "workers.sources", "experiments.training"} <= names
    text = (REPO / "workers" / "sources.py").read_text()
    names = {n for _, n in imported_modules(text, "workers.sources")}
    assert "workers.builtin_sets" in names or "workers" in names  # the function-level import


BAD_SOURCES = [
    # (layer, module, source, the name that must be flagged)
    ("trainer", "trainer.network", "import ray\n", "ray"),
    ("trainer", "trainer.network", "import ray.util.queue as q\n", "ray.util.queue"),
    ("trainer", "trainer.network", "from mlflow import log_metric\n", "mlflow"),
    ("trainer", "trainer.coordinator", "def f():\n    from workers.shard import ShardWorker\n",
     "workers.shard"),
    ("trainer", "trainer.coordinator",
     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from experiments.job import Job\n",
     "experiments.job"),
    ("trainer", "trainer.config", "class C:\n    def m(self):\n        import cluster\n", "cluster"),
    ("trainer", "trainer.config", "mod = __import__('mlflow')\n", "mlflow"),
    ("trainer", "trainer.config", "import importlib\nm = importlib.import_module('ray')\n", "ray"),
    ("workers", "workers.shard", "def f():\n    import mlflow.pyfunc\n", "mlflow.pyfunc"),
    ("workers", "workers.shard", "from cluster import connect\n", "cluster"),
    ("workers", "workers.sub.mod", "from ...experiments import cli\n", "<beyond top level>"),
    ("cluster", "cluster.jobs", "from experiments.commands import train\n", "experiments.commands"),
    ("cluster", "cluster.jobs", "try:\n    import mlflow\nexcept ImportError:\n    mlflow = None\n",
     "mlflow"),
]


@pytest.mark.parametrize("layer, module, source, name", BAD_SOURCES)
def test_checker_flags_bad_imports(layer, module, source, name):
    found = violations(source, layer, module)
    assert found, f"checker missed {name!r} in {layer}"
    assert any(f"imports {name} " in v for v in found), found


GOOD_SOURCES = [
    ("trainer", "trainer.network", "import numpy as np\nfrom trainer.costs import COSTS\n"
     "from . import activations\nfrom .errors import InputError\nimport raylib_not_ray\n"),
    ("trainer", "trainer.config", "t = __import__('types')\n"),
    ("workers", "workers.pool", "import ray\nfrom trainer.pool import ShardSums\n"),
    ("cluster", "cluster.connect", "import ray\nfrom workers.shard import ShardWorker\n"),
    ("experiments", "experiments.tracking", "import mlflow\nfrom cluster import x\n"
     "from workers import y\nfrom trainer import z\n"),
]


@pytest.mark.parametrize("layer, module, source", GOOD_SOURCES)
def test_checker_allows_downward_imports(layer, module, source):
    assert violations(source, layer, module) == []


def test_relative_imports_resolve_to_their_package():
    got = imported_modules("from .errors import InputError\nfrom .. import x\n", "workers.sub.mod")
    names = [n for _, n in got]
    assert "workers.sub.errors" in names and "workers" in names and "workers.x" in names
    got = imported_modules("from . import network\n", "trainer", is_package=True)
    assert [n for _, n in got] == ["trainer", "trainer.network"]
    got = imported_modules("from experiments import job as jobs\n", "experiments.commands")
    assert [n for _, n in got] == ["experiments", "experiments.job"]
