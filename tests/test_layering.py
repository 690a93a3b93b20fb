"""The layering (docs/design.md section 3): imports flow one way, `trainer <- workers <- cluster <-
experiments` (and inside experiments/, `cli <- sweeps <- jobs <- tracking`), trainer/ is numpy
only, only experiments/ imports mlflow, and no package's modules import each other in a circle.

The rules are import-linter contracts in pyproject.toml ([tool.importlinter]); import-linter
reads every import statement, function-level and `if TYPE_CHECKING:` ones included.
Three checks:
- the contracts hold on this tree;
- the same contracts break on small trees with one bad import each (so they can fail);
- dynamic: in a fresh interpreter where the packages the trainer contract forbids (ray,
  mlflow, pyarrow, yaml) are made unimportable, every module of trainer/ imports fine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "pyproject.toml"
LINT = ("import sys\nfrom importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))\n")


def contracts() -> dict[str, dict]:
    section = tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in section["contracts"]}


TRAINER_ONLY_NUMPY = "trainer is numpy only"
LAYERS = "imports flow one way: trainer <- workers <- cluster <- experiments"
MLFLOW_ON_TOP = "only experiments imports mlflow"
NO_CIRCLES = "no import circles"
EXPERIMENTS = "experiments: cli <- sweeps <- jobs <- tracking"
ALL = {TRAINER_ONLY_NUMPY, LAYERS, MLFLOW_ON_TOP, NO_CIRCLES, EXPERIMENTS}


def lint(folder: Path) -> subprocess.CompletedProcess:
    """lint-imports with pyproject.toml of `folder`, importing the packages found there first
    (`python -c` puts the working directory ahead of the installed checkout)."""
    return subprocess.run([sys.executable, "-c", LINT], cwd=folder, capture_output=True, text=True,
                          timeout=120)


def test_the_contracts_hold():
    assert set(contracts()) == ALL
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(ALL)} kept, 0 broken" in proc.stdout, proc.stdout


# ---- the contracts break on a bad import ----------------------------------------------------

SKELETON = {  # a tree with the four packages and an allowed import in each direction
    "trainer/__init__.py": "import numpy\n",
    "trainer/network.py": "from trainer import config\n",
    "trainer/config.py": "",
    "workers/__init__.py": "",
    "workers/shard.py": "import pyarrow\nimport ray\nfrom trainer.network import config\n",
    "cluster/__init__.py": "",
    "cluster/connect.py": "import ray\nfrom workers import shard\n",
    "experiments/__init__.py": "",
    "experiments/cli/__init__.py": "",
    "experiments/cli/rayprop.py": "from experiments.cli import commands\n",
    "experiments/cli/commands.py": "from experiments.sweeps import sweep\n",
    "experiments/sweeps/__init__.py": "",
    "experiments/sweeps/sweep.py": "from experiments.jobs import training\n",
    "experiments/jobs/__init__.py": "",
    "experiments/jobs/training.py": "from cluster import connect\nfrom experiments.tracking import run\n"
                                    "from trainer import network\n",
    "experiments/tracking/__init__.py": "",
    "experiments/tracking/run.py": "import mlflow\n",
}

BAD = [
    # (file, source, the contract it breaks)
    ("trainer/bad.py", "import ray\n", TRAINER_ONLY_NUMPY),
    ("trainer/bad.py", "def f():\n    import mlflow.pyfunc\n", TRAINER_ONLY_NUMPY),
    ("trainer/bad.py", "import pyarrow.parquet as pq\n", TRAINER_ONLY_NUMPY),
    ("trainer/bad.py", "class C:\n    def m(self):\n        from workers import shard\n", LAYERS),
    ("trainer/bad.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
     "    from experiments.jobs.training import Job\n", LAYERS),
    ("workers/bad.py", "from cluster import connect\n", LAYERS),
    ("cluster/bad.py", "import experiments.jobs.training as training\n", LAYERS),
    ("workers/bad.py", "try:\n    import mlflow\nexcept ImportError:\n    mlflow = None\n", MLFLOW_ON_TOP),
    ("cluster/bad.py", "from mlflow.tracking import MlflowClient\n", MLFLOW_ON_TOP),
    # a circle hidden in a function: network imports config, config imports network
    ("trainer/config.py", "def f():\n    from trainer import network\n", NO_CIRCLES),
    ("experiments/cli/commands.py", "def code():\n    from experiments.cli.rayprop import EXIT\n", NO_CIRCLES),
    ("experiments/tracking/bad.py", "from experiments.jobs.training import Job\n", EXPERIMENTS),
    ("experiments/jobs/bad.py", "def f():\n    from experiments.cli import rayprop\n", EXPERIMENTS),
]


def _tree(folder: Path, extra: dict[str, str]) -> Path:
    (folder / "pyproject.toml").write_text(CONFIG.read_text())
    for name, text in {**SKELETON, **extra}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_the_skeleton_keeps_the_contracts(tmp_path):
    proc = lint(_tree(tmp_path, {}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(ALL)} kept, 0 broken" in proc.stdout, proc.stdout


@pytest.mark.parametrize("path, source, contract", BAD, ids=[f"{b[0]}:{b[1].splitlines()[-1].strip()}"
                                                             for b in BAD])
def test_a_bad_import_breaks_its_contract(tmp_path, path, source, contract):
    proc = lint(_tree(tmp_path, {path: source}))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{contract} BROKEN" in proc.stdout, proc.stdout
    module = path.replace("/", ".").removesuffix(".py")
    # a layer names the module; a circle names its package and the sibling (".config")
    assert module in proc.stdout or "." + module.rsplit(".", 1)[1] in proc.stdout, proc.stdout


# ---- dynamic: trainer imports with the forbidden packages blocked --------------------------

BLOCKER = textwrap.dedent("""
    import importlib, importlib.abc, pkgutil, sys

    BLOCKED = tuple(sys.argv[1:])

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{name} is blocked by test_layering", name=name)
            return None

    for mod in list(sys.modules):
        if mod.split(".")[0] in BLOCKED:
            del sys.modules[mod]
    sys.meta_path.insert(0, Blocker())

    # The blocker works: each blocked package and a submodule cannot be imported.
    for name in BLOCKED:
        for target in (name, name + ".sub"):
            try:
                importlib.import_module(target)
            except ImportError:
                pass
            else:
                raise SystemExit(f"blocker failed: {target} imported")
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


def _run(code: str, blocked) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *blocked], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_trainer_imports_without_what_its_contract_forbids():
    blocked = contracts()[TRAINER_ONLY_NUMPY]["forbidden_modules"]
    assert {"ray", "mlflow", "pyarrow", "yaml"} <= set(blocked)
    proc = _run(IMPORT_TRAINER, blocked)
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
    proc = _run(BLOCKER + "import ray.util\n", ["ray", "mlflow"])
    assert proc.returncode != 0
    assert "blocked by test_layering" in proc.stderr
    proc = _run(BLOCKER + "def f():\n    import mlflow\nf()\n", ["ray", "mlflow"])
    assert proc.returncode != 0
    assert "blocked by test_layering" in proc.stderr
