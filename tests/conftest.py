"""What every test module shares: the in-process `rayprop` runner.

`rayprop(*args)` calls `experiments.cli.rayprop.main(argv)` in this process, as the installed
command does, in a working directory of the test's own (so a stray `mlflow.db`,
`runs/` or output lands there, where the test can look for it), and returns the exit
code with everything written to stdout and stderr, captured at the file descriptors:
a line printed by a library's C code or a logging handler counts too. It saves the
interpreter start and the imports of a subprocess per call; the few tests that must
prove the installed command itself use `installed_rayprop` (a real subprocess).

The package is installed editable (`pip install -e '.[test]'`, as `.ci/run` does), so
subprocesses import this checkout without any PYTHONPATH.

Two more things are decided here for every module, so that a new module cannot forget
them: the tiers (`tiers.py`: the markers `ray`, `server`, `slow`) and where the suite may
write (`pytest_configure` below: nothing outside its temp folders and pytest's cache).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tiers import FIRST, markers_of

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    import experiments

    where = Path(experiments.__file__).resolve().parents[1]
    if where != REPO:
        raise pytest.UsageError(f"the tests import rayprop from {where}, not this checkout {REPO}: "
                                f"install it with  pip install -e '{REPO}[test]'")
    _keep_writes_in_temp_folders(config)


def _keep_writes_in_temp_folders(config) -> None:
    """Point every per-user folder the product, Ray, MLflow and matplotlib write to at
    folders of this session, before any of them is imported; subprocesses inherit it.

    HOME: a local `ray.init` writes `~/.ray/auth_token`, MLflow `~/.config/mlflow/`.
    RAY_TMPDIR: Ray's sessions and its `ray_current_cluster` record (a bare address would
    otherwise find another cluster of this machine there); short, for Ray's Unix sockets.
    XDG_CACHE_HOME: rayprop's empty-store template and matplotlib's font list. It lives in
    pytest's cache folder (.pytest_cache/, beside the tests, ignored by git), kept between
    sessions: MLflow takes 5-15 s to make the template, too long to pay in every run.
    """
    session = Path(tempfile.mkdtemp(prefix="rpt", dir="/tmp"))
    atexit.register(shutil.rmtree, session, True)  # after Ray's own exit handler (registered later)
    cache = config.cache.mkdir("xdg-cache") if getattr(config, "cache", None) else session / "cache"
    home = session / "home"
    # Ray's temp folder is RAY_TMPDIR/ray; it must exist: a Cluster given a temp_dir of
    # its own still writes its `ray_current_cluster` record there.
    for folder in (home, session / "ray", cache):
        folder.mkdir(parents=True, exist_ok=True)
    os.environ.update({"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                       "XDG_DATA_HOME": str(home / ".local" / "share"),
                       "XDG_STATE_HOME": str(home / ".local" / "state"),
                       "XDG_CACHE_HOME": str(cache), "MPLCONFIGDIR": str(cache / "matplotlib"),
                       "RAY_TMPDIR": str(session)})


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in markers_of(item):
            item.add_marker(name)
    # The longest modules first (tiers.FIRST), each module's tests in their own order.
    items.sort(key=lambda item: FIRST.index(item.module.__name__.rsplit(".", 1)[-1])
               if item.module.__name__.rsplit(".", 1)[-1] in FIRST else len(FIRST))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def returncode(self) -> int:  # the name subprocess.CompletedProcess uses
        return self.code


class Runner:
    """Runs `rayprop ARGS` in-process in `cwd`; see the module docstring."""

    def __init__(self, capfd, cwd: Path):
        self.capfd, self.cwd = capfd, Path(cwd)

    def __call__(self, *args, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
        from experiments.cli.rayprop import main

        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.update(env or {})
        os.chdir(cwd or self.cwd)
        self.capfd.readouterr()  # drop what earlier steps of the test printed
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, --version, usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.chdir(saved_cwd)
            # MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ:
            # one call must not choose the store of the next.
            os.environ.clear()
            os.environ.update(saved_env)
        out, err = self.capfd.readouterr()
        _no_run_left_active()
        return Result(code, out, err)


def _no_run_left_active() -> None:
    """A call that returned must not leave an MLflow run open in this process."""
    if "mlflow" not in sys.modules:
        return
    import mlflow  # waits for an import still running in rayprop's background thread

    if mlflow.active_run() is not None:
        run = mlflow.active_run()
        mlflow.end_run()
        raise AssertionError(f"rayprop left MLflow run {run.info.run_id} active")


@pytest.fixture(scope="module")
def ray_session(request):
    """A local Ray for the module that asks for it (cluster/connect.py), of the module's
    RAY_CPUS logical CPUs (3 unless it says), shut down after its last test."""
    from cluster.connect import connect

    with connect(None, getattr(request.module, "RAY_CPUS", 3)) as conn:
        yield conn


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback for the module that asks for it
    (tests/mlflowserver.py): started once, stopped after the module's last test."""
    from tests.mlflowserver import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture
def rayprop(capfd, tmp_path) -> Runner:
    """The in-process CLI, working in this test's tmp_path unless given `cwd=`."""
    return Runner(capfd, tmp_path)


RAYPROP = Path(sys.executable).with_name("rayprop")  # the console script of this venv


def installed_rayprop(*args, cwd: Path, env: dict[str, str] | None = None,
                      timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """The installed `rayprop` command as a user runs it: a new process, nothing in-process."""
    return subprocess.run([str(RAYPROP), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def one_line_exit_2(result, *words: str) -> str:
    """Bad input: exit 2, one line on stderr that names `words`, no traceback, no stdout."""
    err = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}; stderr:\n{err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err[-1500:]}"
    assert len(lines[0]) < 250, f"{len(lines[0])} characters: {lines[0]}"
    for w in words:
        assert w in lines[0], f"{w!r} not named in: {lines[0]}"
    assert result.stdout == "", result.stdout
    return lines[0]
