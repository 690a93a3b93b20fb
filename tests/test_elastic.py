"""Elastic jobs on several real Ray nodes (ray.cluster_utils.Cluster, one CPU each):
the pool grows when a node joins and shrinks when one leaves with no CPU free for a
replacement, a killed run resumes on another number of workers and in local mode,
and below cluster.min_workers the job stops clearly. Every run ends with the weights
of an undisturbed 2-worker run (float64, relative 1e-9), since a step depends only on
the parameters and (epoch, batch).

Nodes join and leave from a coordinator listener at given steps, and the listener
waits for what Ray reports (free CPUs, the new workers ready) before the next step,
so each change happens at a known step boundary, not after a sleep."""

import json
import os
import shutil
import tempfile
import time

import mlflow
import numpy as np
import pytest

from tests.raycluster import pinned_auth_mode
import yaml

from experiments.jobs import pools, training
from tests.raydata import config, write_parquet
from trainer.config import from_dict
from trainer.coordinator import train
from trainer.model_io import expected_shapes, read_arrays, theta_from_arrays
from trainer.optimizers import make_optimizer
from workers import ray_pool
from workers.reshard import reassign

EPOCHS = 4
STEPS = EPOCHS * 15  # 902 training rows in batches of 64
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # As in test_multinode: the auth mode pinned for nodes and driver alike, and a short
    # temp dir of our own (Ray's socket paths must stay under 108 bytes).
    auth = pinned_auth_mode("token")
    auth.__enter__()
    temp_dir = tempfile.mkdtemp(prefix="rpel", dir="/tmp")
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False, "temp_dir": temp_dir})
    try:
        c.add_node(**NODE)  # two nodes of one CPU: one worker each
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        auth.__exit__(None, None, None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The data file, and the weights of an undisturbed run on 2 in-process workers."""
    path = write_parquet(tmp_path_factory.mktemp("elastic") / "d.parquet")
    job = training.prepare(from_dict(config(path, "adam", 64, epochs=EPOCHS)))
    theta = job.theta0.copy()
    t = job.cfg.train
    train(training.open_pool(job, 2, local=True), theta, make_optimizer(t.optimizer, t.learning_rate),
          job.plan, t.epochs)
    return path, job, theta


def write_config(tmp_path, path, **cluster):
    raw = config(path, "adam", 64, epochs=EPOCHS, checkpoint_seconds=0)
    raw["cluster"] = cluster
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "c.yaml"


class Script:
    """Stands in for the progress bar (a coordinator listener) and does `actions[step]`
    after that step; remembers the pools the job opened, and their sizes then."""

    actions: dict = {}
    pools: list = []
    sizes: list = []

    def __init__(self, *args, **kwargs):
        pass

    def on_step(self, step, epoch, loss, n):
        if step in self.actions:
            self.actions[step](self.pools[-1])

    def on_epoch(self, epoch, metrics):
        pass

    def close(self):
        pass


@pytest.fixture
def script(monkeypatch):
    Script.actions, Script.pools, Script.sizes = {}, [], []
    open_pool = pools.open_pool

    def recording_open_pool(*args, **kwargs):
        Script.pools.append(open_pool(*args, **kwargs))
        Script.sizes.append(Script.pools[-1].num_workers)
        return Script.pools[-1]

    monkeypatch.setattr(pools, "open_pool", recording_open_pool)
    monkeypatch.setattr("experiments.jobs.progress.ProgressBar", Script)
    monkeypatch.setattr(ray_pool, "GROW_CHECK_SECONDS", 0.0)  # look for free CPUs at every step
    return Script


def wait_for(condition, what, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.1)


def add_node(cluster):
    import ray

    def action(pool):
        cluster.add_node(**NODE)
        wait_for(lambda: ray.available_resources().get("CPU", 0) >= 1, "free CPU seen by the driver")
    return action


def wait_for_joining(pool):
    import ray

    if pool.joining:  # started at this step's boundary: let them be ready for the next one
        ray.wait(pool.joining, num_returns=len(pool.joining), timeout=120)


def remove_node(cluster, rank=None):
    """Remove the node of worker `rank` (as the worker reported it), or of any worker off
    the head node (never the head's: the driver runs there)."""
    def action(pool):
        nodes = {n.node_id: n for n in cluster.worker_nodes}
        ranks = [r for r, i in enumerate(pool.info) if i["node_id"] in nodes]
        cluster.remove_node(nodes[pool.info[ranks[0] if rank is None else rank]["node_id"]])
    return action


def weights(job, out):
    path = out / "model.npz"
    return theta_from_arrays(job.spec, read_arrays(path, expected_shapes(job.spec)), path)


def relative_difference(theta, ref):
    return float(np.max(np.abs(theta - ref)) / np.max(np.abs(ref)))


def the_run(uri):
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("raytest").experiment_id])
    assert len(runs) == 1, f"{len(runs)} MLflow runs"
    return client, runs[0]


def test_reassign_keeps_unchanged_ranges_and_moves_before_starting():
    # a lost worker's range goes to a new worker; the others keep theirs
    assert reassign([(0, 3), (6, 9)], [(0, 3), (3, 6), (6, 9)]) == [0, None, 1]
    # growing 2 -> 3: both move (their ranges changed), one new worker
    assert reassign([(0, 5), (5, 9)], [(0, 3), (3, 6), (6, 9)]) == [0, 1, None]
    # shrinking 3 -> 2 with one lost: the two left move, nothing is started
    assert reassign([(0, 3), (6, 9)], [(0, 4), (4, 9)]) == [0, 1]
    assert reassign([(4, 9)], [(0, 4), (4, 9)]) == [None, 0]


def test_a_worker_moved_to_other_rows_reads_only_those_it_did_not_hold(data):
    path, job, _ = data
    task, source = job.task, job.source
    for old, new in [((0, 501), (0, 334)), ((501, 1003), (334, 668)), ((0, 334), (0, 501)),
                     ((334, 668), (501, 1003)), ((0, 1003), (300, 700)), ((0, 300), (500, 1003))]:
        moved = task.open(*new, source, held=(*old, task.open(*old, source)))
        fresh = task.open(*new, source)
        assert moved.lo == fresh.lo and moved.hi == fresh.hi, (old, new)
        for name in ("X", "Y", "X_val", "Y_val"):
            assert np.array_equal(getattr(moved, name), getattr(fresh, name)), (old, new, name)


def test_grows_when_a_node_joins_and_shrinks_when_one_leaves(cluster, data, script, rayprop, tmp_path):
    path, job, ref = data
    cfg = write_config(tmp_path, path, workers="auto", max_workers=3, replace_seconds=2)
    script.actions = {5: add_node(cluster), 6: wait_for_joining, 25: remove_node(cluster, 2)}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = rayprop("train", cfg, "--address", cluster.address, "--output", "out", "--tracking-uri", uri)
    assert result.code == 0, result.stderr[-3000:]

    lines = [line for line in result.stderr.splitlines() if " workers: " in line]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("rayprop: step 7: 2 -> 3 workers: free CPUs"), lines
    assert lines[1].startswith("rayprop: step 26: 3 -> 2 workers: worker 2 (rows 668-1003) lost"), lines
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["workers"], summary["resizes"], summary["steps"]) == (2, 2, STEPS)
    pool = script.pools[-1]
    assert pool.ranges == [(0, 501), (501, 1003)]
    for (lo, hi), info in zip(pool.ranges, pool.info):  # as each worker reported it after the last move
        assert tuple(info["rows"]) == (lo, hi) and info["rows_held"] == hi - lo
    # Moving from 3 to 2 workers, each read only the rows it did not hold yet: worker 0
    # held 0-334 and read 334-501, worker 1 held 334-668 and read 668-1003; the Parquet
    # row groups (100 rows each) their readers opened were those rows' only.
    assert [i["rows_read"] for i in pool.info] == [501 - 334, 1003 - 668]
    assert [i["row_groups_read"] for i in pool.info] == [[3, 4, 5], [6, 7, 8, 9, 10]]

    client, run = the_run(uri)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, STEPS + 1))
    sizes = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "workers"))
    assert sizes[0] == (1, 2) and (7, 3) in sizes and (26, 2) in sizes and sizes[-1] == (STEPS, 2), sizes

    rel = relative_difference(weights(job, tmp_path / "out"), ref)
    print(f"\n2 -> 3 -> 2 workers (grow at step 7, shrink at step 26): max relative difference {rel:.2e}")
    assert rel <= 1e-9, f"relative difference to the undisturbed 2-worker run {rel:.2e}"


def test_a_killed_run_resumes_on_other_worker_counts_and_in_local_mode(cluster, data, script, rayprop, tmp_path):
    path, job, ref = data
    cfg = write_config(tmp_path, path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def kill(pool):
        raise KeyboardInterrupt  # the job dies mid-epoch, after the epoch's checkpoint

    script.actions = {20: kill}
    first = rayprop("train", cfg, "--address", cluster.address, "--workers", 2, "--output", "out",
                    "--tracking-uri", uri)
    assert first.code == 130 and script.sizes == [2], first.stderr[-2000:]
    client, run = the_run(uri)
    run_id = run.info.run_id

    script.actions = {40: kill}
    second = rayprop("train", cfg, "--address", cluster.address, "--workers", 1, "--resume", run_id,
                     "--tracking-uri", uri)
    assert second.code == 130 and "resuming at step 15" in second.stderr, second.stderr[-2000:]
    assert script.sizes == [2, 1]

    script.actions = {}
    last = rayprop("train", cfg, "--local", "--workers", 3, "--resume", run_id, "--tracking-uri", uri)
    assert last.code == 0 and "resuming at step 30" in last.stderr, last.stderr[-2000:]
    assert script.sizes == [2, 1, 3]

    client, run = the_run(uri)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(1, STEPS + 1))
    rel = relative_difference(weights(job, tmp_path / "out"), ref)
    print(f"\nresumed 2 Ray workers -> 1 Ray worker -> 3 local workers: max relative difference {rel:.2e}")
    assert rel <= 1e-9, f"relative difference to the undisturbed 2-worker run {rel:.2e}"


def test_below_min_workers_the_run_stops_clearly(cluster, data, script, rayprop, tmp_path):
    path, job, ref = data
    cfg = write_config(tmp_path, path, workers=2, min_workers=2, replace_seconds=1)
    script.actions = {20: remove_node(cluster)}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = rayprop("train", cfg, "--address", cluster.address, "--output", "out", "--tracking-uri", uri)
    assert result.code == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "1 left is fewer than cluster.min_workers=2" in line and "last good checkpoint" in line, line
    client, run = the_run(uri)
    assert run.info.status == "FAILED"
    assert list((tmp_path / "out" / "checkpoints").glob("ckpt-*.npz")), "the checkpoint is kept"


def test_ctrl_c_while_waiting_for_a_replacement_stops_without_the_wait(cluster, data, script, rayprop, tmp_path):
    import signal
    import threading

    path, job, ref = data
    if not cluster.worker_nodes:  # the test above removed one: two nodes of one CPU again
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
    cfg = write_config(tmp_path, path, workers=2, replace_seconds=600)
    timer = threading.Timer(2, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C, 2 s after the node left

    def leave_then_interrupt(pool):
        remove_node(cluster)(pool)
        timer.start()

    script.actions = {20: leave_then_interrupt}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        result = rayprop("train", cfg, "--address", cluster.address, "--output", "out", "--tracking-uri", uri)
    finally:
        timer.cancel()
    assert result.code == 130, result.stderr[-2000:]
    # The pool stopped waiting (600 s) for a CPU that would not come, and went on with one worker.
    assert "2 -> 1 workers" in result.stderr and "no CPU for a replacement (stopping: no wait)" in result.stderr, \
        result.stderr[-2000:]
    client, run = the_run(uri)
    assert run.info.status == "KILLED"


def test_a_stopped_worker_on_another_node_is_lost_and_replaced(cluster, data, script, rayprop, tmp_path):
    """The worker off the coordinator's node leads its node's plane: stopped (SIGSTOP),
    it is declared lost after the hang bound, killed by Ray, and replaced."""
    import signal

    path, job, ref = data
    if not cluster.worker_nodes:  # a test above removed one: two nodes of one CPU again
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
    cfg = write_config(tmp_path, path, workers=2)
    nodes = {n.node_id for n in cluster.worker_nodes}
    stopped = []

    def stop_the_other_nodes_worker(pool):
        (rank,) = [r for r, i in enumerate(pool.info) if i["node_id"] in nodes]
        stopped.append((pool.info[rank]["pid"], time.monotonic()))
        os.kill(stopped[0][0], signal.SIGSTOP)

    script.actions = {20: stop_the_other_nodes_worker}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        result = rayprop("train", cfg, "--address", cluster.address, "--output", "out", "--tracking-uri", uri)
    finally:
        for pid, _ in stopped:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
    assert result.code == 0, result.stderr[-3000:]
    pool = script.pools[-1]
    assert pool.failures == 1 and "lost (hung: no answer within" in pool.events[0], pool.events
    assert stopped[0][0] not in [i["pid"] for i in pool.info]
    rel = relative_difference(weights(job, tmp_path / "out"), ref)
    assert rel <= 1e-9, f"relative difference to the undisturbed 2-worker run {rel:.2e}"
