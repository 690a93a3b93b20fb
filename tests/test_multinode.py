"""Several Ray nodes (ray.cluster_utils.Cluster, all real raylets on this machine):
shard workers spread over the nodes, each reads only its rows, and training equals
local mode; the CLI joins the same cluster by address."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.raycluster import pinned_auth_mode
import yaml

from cluster.connect import connect
from experiments.jobs import training
from tests.raydata import config, write_parquet
from trainer.config import from_dict
from trainer.coordinator import train
from trainer.optimizers import make_optimizer
from workers.ray_pool import RayPool

NODES = 3
CPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # The nodes run in this process's children and inherit its environment. If the
    # driver later turned token mode on (cluster.connect does when ~/.ray/auth_token
    # exists) while the nodes run without it, every actor creation is cancelled. So
    # the mode is pinned, the same for nodes and driver, and restored afterwards.
    auth = pinned_auth_mode("token")
    auth.__enter__()
    # A short temp dir of our own: Ray's socket paths must stay under 108 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rpmn", dir="/tmp")
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": CPUS_PER_NODE, "include_dashboard": False, "temp_dir": temp_dir,
        "object_store_memory": 100 * 2**20})
    try:
        for _ in range(NODES - 1):
            c.add_node(num_cpus=CPUS_PER_NODE, object_store_memory=100 * 2**20)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()  # stops every raylet and store it started, by process
        shutil.rmtree(temp_dir, ignore_errors=True)
        auth.__exit__(None, None, None)


def make_pool(job, workers, data_plane="shm"):
    cluster = dataclasses.replace(job.cfg.cluster, data_plane=data_plane)
    return RayPool(job.task, cluster, workers, job.cfg.train.max_worker_failures)


def test_workers_spread_over_nodes_read_their_rows_and_train_as_local_mode(cluster, tmp_path):
    path = write_parquet(tmp_path / "d.parquet", row_group_size=100)
    job = training.prepare(from_dict(config(path, "momentum", 64, epochs=2)))
    ref = job.theta0.copy()
    t = job.cfg.train
    train(training.open_pool(job, 1, local=True), ref, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs)

    workers = NODES * CPUS_PER_NODE
    with connect(cluster.address, workers) as conn:
        assert conn.nodes == NODES and conn.kind == "cluster"
        for plane in ("shm", "object_store"):
            pool = make_pool(job, workers, plane)
            try:
                info = pool.info
                theta = job.theta0.copy()
                train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs)
                traffic = pool.traffic
            finally:
                pool.close()
            # Every node full: two workers on each, as the workers themselves report.
            assert pool.num_nodes == NODES
            assert sorted(np.unique([i["node_id"] for i in info], return_counts=True)[1]) == [2] * NODES
            for i in info:
                lo, hi = i["rows"]
                assert i["rows_held"] == hi - lo  # counted by the worker from what it holds
                # the Parquet row groups (100 rows each) its own reader opened: only its range's
                assert i["row_groups_read"] == list(range(lo // 100, (hi - 1) // 100 + 1))
            rel = np.max(np.abs(theta - ref)) / np.max(np.abs(ref))
            assert rel <= 1e-9, f"3 nodes ({plane}) vs local mode: relative difference {rel:.2e}"
            # Per step, the pool's own counters: through the shared-memory planes the
            # coordinator receives one array of sums per NODE (the workers of a node add
            # theirs first) and sends theta once per node; through the object store it
            # receives one per WORKER.
            steps, size = traffic["steps"], theta.nbytes
            assert steps == t.epochs * job.plan.steps_per_epoch
            received = NODES if plane == "shm" else workers
            assert traffic["bytes_received"] == steps * received * size, (plane, traffic)
            assert traffic["bytes_sent"] == steps * NODES * size, (plane, traffic)


def test_float32_on_three_nodes_is_bitwise_local_mode_with_float64_sums_per_node(cluster, tmp_path):
    """float32 (README: The math, "Bit for bit"): two workers on each of three nodes,
    through the planes and the object store, end with local mode's bits; the sums come
    back as float64 integers, still one theta-sized array per node per step (shm)."""
    path = write_parquet(tmp_path / "d.parquet", row_group_size=100)
    job = training.prepare(from_dict(config(path, "adam", 64, epochs=2, dtype="float32", exact_sums=True)))
    t = job.cfg.train
    ref = job.theta0.copy()
    train(training.open_pool(job, 1, local=True), ref, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs)
    workers = NODES * CPUS_PER_NODE
    with connect(cluster.address, workers):
        for plane in ("shm", "object_store"):
            pool = make_pool(job, workers, plane)
            try:
                theta = job.theta0.copy()
                train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs)
                traffic, nodes = pool.traffic, pool.num_nodes
            finally:
                pool.close()
            assert nodes == NODES
            assert theta.dtype == np.float32 and np.array_equal(theta, ref), f"3 nodes ({plane})"
            steps = traffic["steps"]  # calls: the first step is computed twice (its scale measured)
            assert t.epochs * job.plan.steps_per_epoch < steps <= t.epochs * job.plan.steps_per_epoch + 3
            received = NODES if plane == "shm" else workers
            assert traffic["bytes_received"] == steps * received * theta.size * 8, (plane, traffic)


def test_cli_joins_the_cluster_by_address(cluster, tmp_path):
    path = write_parquet(tmp_path / "d.parquet")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(config(path, "sgd", 64, epochs=1)))
    out = tmp_path / "out"
    # `--address auto` joins the cluster RAY_ADDRESS names; the job says which one that is.
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "train", str(cfg_file),
                           "--address", "auto", "--workers", str(NODES),
                           "--output", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"in the Ray cluster at {cluster.address}:" in proc.stderr, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == NODES and summary["nodes"] == NODES and summary["ray"] == "cluster"
    assert "3 workers on 3 nodes" in proc.stderr
    assert Path(out / "model.npz").is_file()


class RemoveNode:
    """A coordinator listener that removes (kills every process of) the node holding
    worker `rank` after step `at_step`."""

    def __init__(self, cluster, pool, rank, at_step):
        self.cluster, self.pool, self.rank, self.at_step = cluster, pool, rank, at_step
        self.removed = None

    def on_step(self, step, epoch, loss, n):
        if step == self.at_step:
            node_id = self.pool.info[self.rank]["node_id"]  # as the worker reported it
            node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
            self.cluster.remove_node(node)
            self.removed = node_id

    def on_epoch(self, epoch, metrics):
        pass


def test_a_removed_node_is_survived_with_the_undisturbed_weights(cluster, tmp_path):
    path = write_parquet(tmp_path / "d.parquet")
    job = training.prepare(from_dict(config(path, "sgd", 64, epochs=2)))
    t = job.cfg.train
    ref = job.theta0.copy()
    train(training.open_pool(job, 1, local=True), ref, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs)

    with connect(cluster.address, 2):
        # Two workers spread over three two-CPU nodes: room for a replacement elsewhere.
        pool = make_pool(job, 2)
        try:
            worker_nodes = {n.node_id for n in cluster.worker_nodes}
            rank = next(r for r, i in enumerate(pool.info) if i["node_id"] in worker_nodes)
            remover = RemoveNode(cluster, pool, rank, at_step=5)
            theta = job.theta0.copy()
            train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs, [remover])
            assert remover.removed and pool.failures == 1
            assert pool.info[rank]["node_id"] != remover.removed  # replaced on another node
            assert pool.info[rank]["rows_held"] == pool.ranges[rank][1] - pool.ranges[rank][0]
        finally:
            pool.close()
    cluster.add_node(num_cpus=CPUS_PER_NODE, object_store_memory=100 * 2**20)  # back to NODES for later tests
    cluster.wait_for_nodes()
    rel = np.max(np.abs(theta - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-9, f"relative difference to the undisturbed run {rel:.2e}"


class KillRank:
    """A coordinator listener that SIGKILLs worker `rank`'s process right after step `at_step`."""

    def __init__(self, pool, rank, at_step):
        self.pool, self.rank, self.at_step, self.killed = pool, rank, at_step, None

    def on_step(self, step, epoch, loss, n):
        if step == self.at_step:
            self.killed = self.pool.info[self.rank]["pid"]
            os.kill(self.killed, signal.SIGKILL)

    def on_epoch(self, epoch, metrics):
        pass


def test_a_worker_lost_behind_another_nodes_leader_is_replaced(cluster, tmp_path):
    """On a node other than the coordinator's, the worker of lowest rank adds its node's
    sums; a dead worker behind it reaches the coordinator as that leader's failed step."""
    import ray

    path = write_parquet(tmp_path / "d.parquet")
    job = training.prepare(from_dict(config(path, "adam", 64, epochs=2)))
    t = job.cfg.train
    ref = job.theta0.copy()
    train(training.open_pool(job, 1, local=True), ref, make_optimizer(t.optimizer, t.learning_rate),
          job.plan, t.epochs)

    workers = NODES * CPUS_PER_NODE
    with connect(cluster.address, workers):
        pool = make_pool(job, workers)
        try:
            here = ray.get_runtime_context().get_node_id()
            remote = [r for r, i in enumerate(pool.info) if i["node_id"] != here]
            node = pool.info[remote[0]]["node_id"]
            behind = [r for r in remote if pool.info[r]["node_id"] == node][1]  # not the leader
            killer = KillRank(pool, behind, at_step=4)
            theta = job.theta0.copy()
            train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, t.epochs, [killer])
            assert killer.killed and pool.failures == 1
            assert pool.info[behind]["pid"] != killer.killed
            assert pool.traffic["steps"] == t.epochs * job.plan.steps_per_epoch  # each step counted once
        finally:
            pool.close()
    rel = np.max(np.abs(theta - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-9, f"relative difference to the undisturbed run {rel:.2e}"
