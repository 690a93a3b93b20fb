"""A worker alive but silent (its process stopped with SIGSTOP) on a real local Ray is a
lost worker: declared lost within seconds (a bound from the run's own step times),
killed, replaced, and the weights end as an undisturbed run's. A Ctrl-C or SIGTERM
while a worker hangs stops the job at once, with the last completed step
checkpointed. A worker that dies or hangs while the pool starts, or dies while a
replacement reads its rows, is replaced like one lost mid-training."""

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from experiments.jobs import training
from tests.raydata import config, prepared, ray_pool, trained, write_parquet
from trainer.checkpoint import latest_checkpoint
from workers.ray_pool import RayPool
from workers.shard import ShardTask


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("d"), epochs=2)


@pytest.fixture(scope="module")
def reference(job):
    """The weights of an undisturbed run (local mode, one worker)."""
    return trained(job, training.open_pool(job, 1, local=True))


def relative_difference(theta, ref):
    return float(np.max(np.abs(theta - ref)) / np.max(np.abs(ref)))


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def release(pid: int) -> None:
    """Teardown: a stopped process that is still there is woken and killed."""
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return


class StopWorker:
    """A coordinator listener that SIGSTOPs worker `rank`'s process after step
    `at_step` (so the next step waits for it), and notes when the process is gone."""

    def __init__(self, pool, rank, at_step):
        self.pool, self.rank, self.at_step = pool, rank, at_step
        self.pid = self.stopped_at = self.gone_at = self.next_step_at = None

    def on_step(self, step, epoch, loss, n):
        if step == self.at_step:
            self.pid = self.pool.info[self.rank]["pid"]
            self._stop()
        elif self.pool.events and self.next_step_at is None:  # the first step after the replacement
            self.next_step_at = time.monotonic()

    def _stop(self):
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped_at = time.monotonic()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while alive(self.pid) and time.monotonic() - self.stopped_at < 120:
            time.sleep(0.05)
        self.gone_at = time.monotonic()

    def on_epoch(self, epoch, metrics):
        pass


@pytest.mark.parametrize("data_plane", ["shm", "object_store"])
def test_a_stopped_worker_is_lost_within_seconds_and_replaced(ray_session, job, reference, data_plane):
    pool = ray_pool(job, 2, data_plane=data_plane)  # hang_seconds: auto
    stopper = StopWorker(pool, rank=1, at_step=5)
    try:
        theta = trained(job, pool, [stopper])
        assert pool.failures == 1 and len(pool.events) == 1, pool.events
        assert "worker 1 (rows 502-1003) lost" in pool.events[0] and "no answer" in pool.events[0], pool.events
        assert pool.info[1]["pid"] != stopper.pid
    finally:
        pool.close()
        release(stopper.pid)
    lost_after = stopper.gone_at - stopper.stopped_at
    print(f"\n{data_plane}: SIGSTOP -> process killed {lost_after:.1f} s, "
          f"-> next step {stopper.next_step_at - stopper.stopped_at:.1f} s")
    assert lost_after < 30, f"the stopped worker was killed {lost_after:.1f} s after SIGSTOP"
    assert relative_difference(theta, reference) <= 1e-9


@dataclasses.dataclass(frozen=True)
class DyingTask(ShardTask):
    """A shard task whose worker SIGKILLs its own process while reading its rows, once
    `arm` exists and only once (`fired` is created first, atomically)."""

    arm: str = ""
    fired: str = ""
    signal: int = signal.SIGKILL  # or SIGSTOP: the worker hangs while reading its rows

    def open(self, lo, hi, source=None, held=None, threads=1):
        if os.path.exists(self.arm):
            try:
                fd = os.open(self.fired, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), self.signal)
        return super().open(lo, hi, source, held, threads)


def dying_task(job, tmp_path, armed: bool, sig=signal.SIGKILL) -> DyingTask:
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors unpickle DyingTask
    task = DyingTask(*(getattr(job.task, f.name) for f in dataclasses.fields(job.task)),
                     arm=str(tmp_path / "arm"), fired=str(tmp_path / "fired"), signal=int(sig))
    if armed:
        (tmp_path / "arm").touch()
    return task


def test_a_worker_killed_while_the_pool_starts_is_replaced(ray_session, job, reference, tmp_path):
    pool = RayPool(dying_task(job, tmp_path, armed=True), job.cfg.cluster, 2, 3)
    try:
        assert (tmp_path / "fired").exists(), "no worker was killed"
        assert pool.failures == 1 and "died while starting" in pool.events[0], pool.events
        theta = trained(job, pool)
    finally:
        pool.close()
    assert relative_difference(theta, reference) <= 1e-9


def test_a_worker_that_hangs_while_the_pool_starts_is_replaced(ray_session, job, reference, tmp_path, monkeypatch):
    from workers import pool_launch

    # Not 300 s and 10x: the others read their rows in a second or two here.
    monkeypatch.setattr(pool_launch, "FIRST_S", 3.0)
    monkeypatch.setattr(pool_launch, "FACTOR", 2.0)
    pool, pid = None, None
    try:
        pool = RayPool(dying_task(job, tmp_path, armed=True, sig=signal.SIGSTOP), job.cfg.cluster, 2, 3)
        pid = int((tmp_path / "fired").read_text())
        assert pool.failures == 1 and "died while starting (hung: its rows not read within" in pool.events[0], \
            pool.events
        assert pid not in [i["pid"] for i in pool.info]
        theta = trained(job, pool)
    finally:
        if pool is not None:
            pool.close()
        if pid is None and (tmp_path / "fired").exists():
            pid = int((tmp_path / "fired").read_text())
        if pid is not None:
            release(pid)
    assert relative_difference(theta, reference) <= 1e-9


class KillThenArm:
    """At step `at_step`: arm the task (the next worker to read rows kills itself), then
    SIGKILL worker `rank`: its replacement dies while reading its rows."""

    def __init__(self, pool, arm, rank, at_step):
        self.pool, self.arm, self.rank, self.at_step = pool, arm, rank, at_step

    def on_step(self, step, epoch, loss, n):
        if step == self.at_step:
            self.arm.touch()
            os.kill(self.pool.info[self.rank]["pid"], signal.SIGKILL)

    def on_epoch(self, epoch, metrics):
        pass


def test_a_replacement_killed_while_reading_its_rows_is_replaced(ray_session, job, reference, tmp_path):
    pool = RayPool(dying_task(job, tmp_path, armed=False), job.cfg.cluster, 2, 3)
    try:
        theta = trained(job, pool, [KillThenArm(pool, tmp_path / "arm", rank=0, at_step=4)])
        assert (tmp_path / "fired").exists(), "no replacement was killed"
        assert pool.failures == 2, pool.events
        assert any("died while starting as a replacement" in e for e in pool.events), pool.events
    finally:
        pool.close()
    assert relative_difference(theta, reference) <= 1e-9


# ---- Ctrl-C and SIGTERM to `rayprop train` while a worker hangs -------------------------

def descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every process below `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    found[child] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            todo.append(child)
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_a_worker_hangs_ends_the_job_at_once(tmp_path, sig):
    import mlflow

    path = write_parquet(tmp_path / "d.parquet")
    raw = config(path, "adam", 64, epochs=100000, checkpoint_seconds=0)
    raw["cluster"] = {"workers": 2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", "train", "c.yaml", "--quiet",
                             "--output", "out", "--tracking-uri", uri], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    stopped = None
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "out" / "checkpoints").glob("ckpt-*.npz")):  # workers up, steps taken
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the job took no step in 3 minutes"
            time.sleep(0.1)
        tree = descendants(proc.pid)
        stopped = next(pid for pid, cmd in tree.items() if cmd.startswith("ray::ShardActor"))
        os.kill(stopped, signal.SIGSTOP)
        time.sleep(1)  # the next step is waiting for it now (it would not be noticed for 10 s)
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
        left = [pid for pid in tree if alive(pid)]
        wait_until = time.monotonic() + 10  # the kernel reaps what Ray's shutdown killed
        while left and time.monotonic() < wait_until:
            time.sleep(0.1)
            left = [pid for pid in left if alive(pid)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if stopped is not None:
            release(stopped)
    print(f"\n{signal.Signals(sig).name} while a worker hangs -> exit {proc.returncode} in {seconds:.1f} s")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert seconds < 10, f"exit {seconds:.1f} s after {signal.Signals(sig).name}"
    assert not left, f"left behind: {[tree[pid] for pid in left]}"
    client = mlflow.MlflowClient(uri)
    (run_,) = client.search_runs([client.get_experiment_by_name("raytest").experiment_id])
    assert run_.info.status == "KILLED"
    # The checkpoint is of the last completed step: the last one whose loss was logged.
    logged = max(p.step for p in client.get_metric_history(run_.info.run_id, "loss"))
    ckpt = latest_checkpoint(tmp_path / "out" / "checkpoints", run_id=run_.info.run_id)
    assert ckpt.position.global_step == logged, (ckpt.position, logged)
