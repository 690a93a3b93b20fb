"""System metrics per node: CPU, memory and network of the coordinator and of each node
running workers, as MLflow system metrics (its charts' "System metrics" section).

The names are MLflow's own (mlflow/system_metrics: SystemMetricsMonitor with a
node_id): system/NODE/cpu_utilization_percentage, system_memory_usage_megabytes,
system_memory_usage_percentage, network_receive_megabytes, network_transmit_megabytes
(received and sent since the job began). NODE is `coordinator` for the process that
runs the coordinator, and node-XXXXXXXX (the first 8 hex digits of the Ray node id)
for each node holding a shard worker. The step is the sample's number, 0, 1, ...

Why not MLflow's monitor itself: it runs where the run's process runs, so it sees
the coordinator's machine only, and it logs nothing for a job shorter than its
interval. Here a thread of the coordinator samples its own machine every
SAMPLE_SECONDS and asks one small actor per other worker node (no CPU reserved,
psutil only) for that node's sample (the coordinator's own node, e.g. a job's local
Ray, is its own machine's sample: no actor); the points go through the run's outbox like every
metric (a slow or dead store costs training nothing). At the end one last sample
of each node, so even a short job has one. The step never waits for any of it:
a node's sample is a psutil call in another process every SAMPLE_SECONDS.

A sweep's runs share their nodes' actors (NodeSamplers): each would otherwise start
a Ray worker process per node (Python, Ray and psutil imported: about a second of CPU
on the machine its trials train on) and stop it at its end. A run's network figures
count from its own first sample of the node, as with an actor of its own; a node's
CPU figure is the node's utilization since the last sample any run took of it.
"""

from __future__ import annotations

import threading
import time

import psutil

PREFIX = "system/"
COORDINATOR = "coordinator"
SAMPLE_SECONDS = 10.0  # MLflow's default sampling interval for system metrics
ANSWER_SECONDS = 5.0   # how long a node's sample may take before it is skipped this time


class Sampler:
    """CPU, memory and network of this machine, named as MLflow's monitors name them."""

    def __init__(self):
        psutil.cpu_percent(interval=None)  # the first call starts the interval it reports on
        net = psutil.net_io_counters()
        self.recv0, self.sent0 = net.bytes_recv, net.bytes_sent

    def sample(self) -> dict[str, float]:
        memory, net = psutil.virtual_memory(), psutil.net_io_counters()
        return {"cpu_utilization_percentage": psutil.cpu_percent(interval=None),
                "system_memory_usage_megabytes": memory.used / 1e6,
                "system_memory_usage_percentage": memory.used / memory.total * 100,
                "network_receive_megabytes": (net.bytes_recv - self.recv0) / 1e6,
                "network_transmit_megabytes": (net.bytes_sent - self.sent0) / 1e6}


def node_label(node_id: str) -> str:
    return f"node-{node_id[:8]}"


class NodeMetrics:
    """The sampling thread of one run: `start(pool, put)`, then `stop()` (idempotent).
    put(points): where the points go (the run's outbox)."""

    def __init__(self, pool, put, seconds: float = SAMPLE_SECONDS, samplers: NodeSamplers | None = None):
        """samplers: the nodes' actors, shared with other runs (a sweep's); None: its own."""
        self.pool, self.put, self.seconds = pool, put, seconds
        self.here = Sampler()
        self.samplers, self._own = (samplers, False) if samplers is not None else (NodeSamplers(), True)
        self.network0: dict[str, tuple[float, float]] = {}  # per node: its totals at this run's first sample
        self.own_node: str | None = None  # the Ray node this process runs on
        self.step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayprop-system-metrics", daemon=True)

    @classmethod
    def start(cls, pool, put, seconds: float = SAMPLE_SECONDS, samplers: NodeSamplers | None = None) -> NodeMetrics:
        metrics = cls(pool, put, seconds, samplers)
        metrics._thread.start()
        return metrics

    def _worker_nodes(self) -> list[str]:
        # A Ray pool's workers say where they run (workers/ray_pool.py); a local pool
        # and a Ray Client job's (whose coordinator is in the cluster) have none here.
        return sorted({i["node_id"] for i in getattr(self.pool, "info", None) or [] if i and i.get("node_id")})

    def _run(self) -> None:
        # The first sample right away (its actors start meanwhile), the job's baseline.
        while True:
            try:
                self.tick()
            except Exception:  # a node that went (elastic pools), Ray shutting down: next time
                pass
            if self._stop.wait(self.seconds):
                return

    def tick(self, wait: float = ANSWER_SECONDS) -> None:
        """One sample of every node, logged at step self.step."""
        here = self.here.sample()
        samples = {COORDINATOR: here}
        samples.update(self._node_samples(wait, here))
        from mlflow.entities import Metric  # here: a node's actor imports this module, not MLflow

        now = int(time.time() * 1000)
        self.put([Metric(f"{PREFIX}{node}/{key}", float(value), now, self.step)
                  for node, values in samples.items() for key, value in values.items()])
        self.step += 1

    def _node_samples(self, wait: float, here: dict[str, float]) -> dict[str, dict[str, float]]:
        nodes = self._worker_nodes()
        if not nodes:
            return {}
        import ray

        # The coordinator's own node is this machine, whose sample `here` is: an actor
        # there would be one more process importing Ray on the job's CPUs (0.5-1 s of
        # CPU while the first epoch trains) to report the same machine-wide figures.
        if self.own_node is None:
            self.own_node = ray.get_runtime_context().get_node_id()
        out = {node_label(node): here for node in nodes if node == self.own_node}
        nodes = [node for node in nodes if node != self.own_node]
        refs = {node: self.samplers.of(node).sample.remote() for node in nodes}
        if not refs:
            return out
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=wait)
        for node, ref in refs.items():
            if ref in ready:
                try:
                    out[node_label(node)] = self._since_first(node, ray.get(ref))
                except Exception:  # its actor died (its node went): a new one next time
                    self.samplers.drop(node)
        return out

    def _since_first(self, node: str, sample: dict[str, float]) -> dict[str, float]:
        """The network counts from this run's first sample of the node (the actor may be older)."""
        keys = ("network_receive_megabytes", "network_transmit_megabytes")
        first = self.network0.setdefault(node, tuple(sample[k] for k in keys))
        return {**sample, **{k: sample[k] - v for k, v in zip(keys, first)}}

    def stop(self) -> None:
        """The last sample of every node (each node's within ANSWER_SECONDS), then the
        actors go. Called once training has ended, before the run's outbox closes."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()  # at most one sample in flight: ANSWER_SECONDS
        try:
            self.tick()
        except Exception:
            pass
        if self._own:
            self.samplers.close()


class NodeSamplers:
    """One sampler actor per node, made on first use; close() stops them."""

    def __init__(self):
        self.actors: dict[str, object] = {}  # Ray node id -> its sampler actor
        self._lock = threading.Lock()  # a sweep's runs sample from threads of their own

    def of(self, node_id: str):
        with self._lock:
            if node_id not in self.actors:
                self.actors[node_id] = _actor_on(node_id)
            return self.actors[node_id]

    def drop(self, node_id: str) -> None:
        with self._lock:
            self.actors.pop(node_id, None)

    def close(self) -> None:
        with self._lock:
            actors, self.actors = list(self.actors.values()), {}
        if actors:
            import ray

            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:
                    pass


_SAMPLER_ACTOR = None  # the actor class, made once (Ray registers each class it is given)


def _actor_on(node_id: str):
    global _SAMPLER_ACTOR
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if _SAMPLER_ACTOR is None:
        _SAMPLER_ACTOR = ray.remote(num_cpus=0, max_restarts=0)(Sampler)
    return _SAMPLER_ACTOR.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
