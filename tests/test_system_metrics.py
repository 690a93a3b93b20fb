"""System metrics per node (experiments/tracking/system_metrics.py) on two real Ray nodes
(ray.cluster_utils.Cluster: two raylets on this machine, one CPU each, so the two
shard workers land on different nodes), logged by `rayprop train` run as a
subprocess into a real sqlite store: CPU, memory and network of the coordinator
and of each node running workers, named as MLflow names its system metrics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from tests.raycluster import pinned_auth_mode
from tests.raydata import config, write_parquet

KEYS = {"cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
        "network_receive_megabytes", "network_transmit_megabytes"}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # Token mode for nodes and driver alike (see tests/test_multinode.py), with the token
    # pinned_auth_mode keeps in the suite's HOME. (Not a token of this module's in the
    # environment: this process's Ray keeps the token it first read, so a new one made the
    # driver's GCS client refuse its own cluster, and every later test's.)
    auth = pinned_auth_mode("token")
    auth.__enter__()
    temp_dir = tempfile.mkdtemp(prefix="rpsm", dir="/tmp")
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "temp_dir": temp_dir, "object_store_memory": 100 * 2**20})
        c.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        c.wait_for_nodes()
        yield c
    finally:
        if c is not None:
            c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        auth.__exit__(None, None, None)


def test_each_node_running_workers_and_the_coordinator_have_system_metrics(cluster, tmp_path):
    from mlflow import MlflowClient

    from experiments.tracking.system_metrics import node_label

    path = write_parquet(tmp_path / "d.parquet")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(path, "sgd", 64, epochs=2)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "RAY_ADDRESS": cluster.address}
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "train", str(tmp_path / "c.yaml"),
                           "--address", "auto", "--workers", "2", "--output", str(tmp_path / "out"),
                           "--tracking-uri", uri, "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["nodes"] == 2

    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    by_node: dict[str, set[str]] = {}
    for key in run.data.metrics:
        # system/timing/ and system/workers/ are the step's timing (metric_names.py), not a machine's
        if key.startswith("system/") and not key.startswith(("system/timing/", "system/workers/")):
            _, node, name = key.split("/", 2)
            by_node.setdefault(node, set()).add(name)
    nodes = {node_label(n.node_id) for n in cluster.list_all_nodes()}
    assert set(by_node) == {"coordinator", *nodes}, by_node
    for node, names in by_node.items():
        assert names == KEYS, node
        memory = client.get_metric_history(run.info.run_id, f"system/{node}/system_memory_usage_percentage")
        assert memory and all(0 < m.value <= 100 for m in memory), node
        sent = sorted(client.get_metric_history(run.info.run_id, f"system/{node}/network_transmit_megabytes"),
                      key=lambda m: m.step)
        assert [m.step for m in sent] == list(range(len(sent)))  # one sample per step number
        assert all(m.value >= 0 for m in sent) and sent[-1].value >= sent[0].value


def test_the_coordinators_own_node_is_sampled_in_its_process():
    """A local Ray's only node is the coordinator's machine: its system/node-* sample
    is the coordinator's own (the same machine-wide figures), with no sampler actor,
    i.e. no extra process importing Ray beside the job's workers."""
    import ray

    from cluster.connect import connect
    from experiments.tracking.system_metrics import NodeMetrics, node_label

    points = []
    with connect(None, 1):
        own = ray.get_runtime_context().get_node_id()
        pool = type("Pool", (), {"info": [{"node_id": own}, {"node_id": own}]})()
        metrics = NodeMetrics(pool, points.extend)
        metrics.tick()
        actors = dict(metrics.samplers.actors)
    assert actors == {}
    got = {m.key: m.value for m in points}
    for key in KEYS:
        assert got[f"system/{node_label(own)}/{key}"] == got[f"system/coordinator/{key}"], key
