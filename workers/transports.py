"""How theta reaches the Ray pool's workers and their sums come back (cluster.data_plane).

Two transports behind one interface, chosen once when the pool is made:

    wire(actors, info)         the pool's workers, after every change of its layout
    unwire()                   before a change of layout, and at the end
    step(theta, epoch, k, bound, scales) -> [ShardSums]   one per node or per worker, in rank order
    evaluate(theta, bound) -> [EvalSums]

- `SharedMemoryPlanes` (`shm`, default): per node, one shared-memory plane
  (workers/plane_host.py, workers/plane_peer.py). On the coordinator's own node the
  coordinator hosts it: it writes theta into shared memory, wakes its workers with a
  12-byte message each, and reads their sums from their slots; Ray is not on that path
  at all. On every other node the worker of lowest rank hosts its node's plane (the
  node's *leader*): the coordinator sends theta once per node (one `ray.put`, fetched
  once by each node's object store), and each leader returns its node's sums already
  added up. So per step the coordinator sends N and receives N parameter-sized arrays
  for N nodes, whatever the number of workers (`traffic` counts them). A Ray Client
  driver is on no node: every node has a leader.
- `ObjectStore` (`object_store`): every worker through Ray's object store (one
  `ray.put` of theta, each worker's sums back through `ray.get`): W arrays back for W
  workers. The fallback where memfd or abstract Unix sockets are missing (not Linux).

Validation takes the same path as the steps, so each worker computes in one thread
only. A worker that dies or is silent past `bound` raises WorkersLost (by rank).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Protocol

import numpy as np
import ray

from trainer.errors import RunError, one_line
from trainer.pool import EvalSums, ShardSums, StepAbandoned
from workers.node_plane import OP_EVAL, OP_STEP, PeerLost
from workers.plane_host import PlaneHost
from workers.pool_waits import LOST_WORKER_ERRORS, Waits, WorkersLost, named
from workers.shard_actor import ATTACH_TIMEOUT_S, add_evals, node_sums, plane_layout


class Transport(Protocol):
    # Each rank's (compute seconds, batch rows) in the last step: what shows a straggler
    # (workers/rebalance.py), also inside a node whose sums were added on the node.
    timed: list[tuple[float, int]]

    def wire(self, actors: list, info: list[dict]) -> None: ...

    def unwire(self) -> None: ...

    def step(self, theta: np.ndarray, epoch: int, k: int, bound: float, scales=None) -> list[ShardSums]: ...

    def evaluate(self, theta: np.ndarray, bound: float) -> list[EvalSums]: ...


def make_transport(data_plane: str, spec, waits: Waits, traffic: dict, here: str | None,
                   exact: bool = False) -> Transport:
    """The transport of `cluster.data_plane`. spec: the network's (theta's size and
    type, and float32's exact-sum layout); waits: the pool's bounded waits; traffic:
    the pool's byte counts; here: the driver's node (None through Ray Client); exact:
    float32 sums taken exactly (train.exact_sums), which widens the plane's slots."""
    if data_plane == "shm":
        return SharedMemoryPlanes(spec, waits, traffic, here, exact)
    return ObjectStore(waits, traffic)


class ObjectStore:
    def __init__(self, waits: Waits, traffic: dict):
        self._waits, self._traffic = waits, traffic
        self._actors: list = []
        self._nodes = 0
        self.timed: list[tuple[float, int]] = []

    def wire(self, actors: list, info: list[dict]) -> None:
        self._actors, self._nodes = list(actors), len({i["node_id"] for i in info})

    def unwire(self) -> None:
        self._actors = []

    def step(self, theta, epoch, k, bound, scales=None):
        t0 = time.monotonic()
        theta_ref = ray.put(theta)  # one copy in the object store, read by every actor
        self._traffic["bytes_sent"] += theta.nbytes * self._nodes
        refs = [a.gradient_sums.remote(theta_ref, epoch, k, scales) for a in self._actors]
        parts = self._waits.all(refs, [[r] for r in range(len(self._actors))], t0 + bound)
        self.timed = [(p.compute_seconds, p.n) for p in parts]
        return parts

    def evaluate(self, theta, bound):
        t0 = time.monotonic()
        theta_ref = ray.put(theta)
        refs = [a.evaluate_sums.remote(theta_ref) for a in self._actors]
        return self._waits.all(refs, [[r] for r in range(len(self._actors))], t0 + bound)


# A leader waits `bound` for its node's peers; the driver waits for the leader a
# little longer, so that a hung peer is named by its leader, not taken for the leader.
def leader_deadline(t0: float, bound: float) -> float:
    return t0 + 1.5 * bound + 2.0


class SharedMemoryPlanes:
    def __init__(self, spec, waits: Waits, traffic: dict, here: str | None, exact: bool = False):
        self._spec, self._here, self._exact = spec, here, exact
        self._waits, self._traffic = waits, traffic
        self._host: PlaneHost | None = None  # the plane of the coordinator's node
        self._host_ranks: list[int] = []  # the workers on it, by slot
        self._leaders: list = []  # the actors hosting the other nodes' planes
        self._leader_ranks: list[list[int]] = []  # each leader's node's workers, by slot (the leader first)
        self.timed: list[tuple[float, int]] = []

    def wire(self, actors: list, info: list[dict]) -> None:
        """Group the workers by node and give each node its plane (see the module doc).
        A worker that dies or does not attach within ATTACH_TIMEOUT_S is lost (WorkersLost)."""
        self.unwire()
        try:
            self._wire_nodes(actors, info)
        except LOST_WORKER_ERRORS:
            raise  # a worker died while attaching: recovery replaces it
        except (TimeoutError, OSError) as e:  # from the planes (here or in an actor), or Ray's wait
            cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) else e
            raise RunError(f"the shared-memory data plane could not be wired: {one_line(cause, 120)}; "
                           "cluster.data_plane: object_store does without it") from None

    def _wire_nodes(self, actors: list, info: list[dict]) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for rank, i in enumerate(info):
            groups[i["node_id"]].append(rank)
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        refs, owners = [], []
        for node, ranks in groups.items():
            if node == self._here:
                spec = self._spec
                self._host = PlaneHost(spec.size, spec.dtype, len(ranks), *plane_layout(spec, self._exact))
                self._host_ranks = ranks
                attach = [actors[r].attach.remote(self._host.ticket, s) for s, r in enumerate(ranks)]
                self._accept(attach, ranks, deadline)
                refs += attach
                owners += [[r] for r in ranks]
            else:
                leader = actors[ranks[0]]
                (ticket,) = self._waits.all([leader.host.remote(len(ranks))], [ranks], deadline)
                refs += [actors[r].attach.remote(ticket, s) for s, r in enumerate(ranks[1:], 1)]
                owners += [[r] for r in ranks[1:]]
                refs.append(leader.accept.remote(len(ranks) - 1))
                owners.append(ranks)
                self._leaders.append(leader)
                self._leader_ranks.append(ranks)
        self._waits.all(refs, owners, deadline + 10)  # the leaders' accept times out first

    def _accept(self, attach: list, ranks: list[int], deadline: float) -> None:
        """The host's side of attaching: a second at a time, so that a worker that died
        before it attached is named at once rather than after ATTACH_TIMEOUT_S."""
        host = self._host
        assert host is not None
        while True:
            try:
                host.accept(len(ranks), min(1.0, max(deadline - time.monotonic(), 0.001)))
                return
            except TimeoutError:
                done, _ = ray.wait(attach, num_returns=len(attach), timeout=0)
                for ref in done:
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        raise WorkersLost([ranks[attach.index(ref)]],
                                          f"died while attaching ({one_line(e, 80)})") from None
                if self._waits.give_up():
                    raise StepAbandoned("stopped while the workers attached") from None
                if time.monotonic() >= deadline:
                    silent = [r for s, r in enumerate(ranks) if s not in host.peers]
                    raise WorkersLost(silent, f"did not attach within {ATTACH_TIMEOUT_S:g} s") from None

    def unwire(self) -> None:
        host, self._host, self._leaders = self._host, None, []
        self._host_ranks, self._leader_ranks = [], []
        if host is not None:
            host.close()

    def _gather_host(self, bound: float) -> dict:
        assert self._host is not None
        try:
            return self._host.gather(bound, self._waits.give_up)
        except PeerLost as e:
            raise named(e, self._host_ranks) from None

    def step(self, theta, epoch, k, bound, scales=None):
        t0 = time.monotonic()
        refs = []
        timed = [(0.0, 0)] * (len(self._host_ranks) + sum(len(r) for r in self._leader_ranks))
        if self._leaders:
            theta_ref = ray.put(theta)  # fetched once by each other node's object store
            refs = [leader.node_step.remote(theta_ref, epoch, k, bound, scales) for leader in self._leaders]
        parts = []
        if self._host is not None:
            # The coordinator's node: theta into shared memory, sums read in place. The
            # sums array is slot 0 of the plane, valid until the next step: the
            # coordinator adds it into its own buffer right away.
            self._host.send(OP_STEP, theta, epoch, k, scales)
            replies = self._gather_host(bound)
            for slot, (n, _, seconds) in replies.items():
                timed[self._host_ranks[slot]] = (seconds, n)
            n, loss_sum, seconds = self._host.reduce(replies)
            parts.append(node_sums(self._host, n, loss_sum, seconds))
        nodes = self._waits.all(refs, self._leader_ranks, leader_deadline(t0, bound))
        for ranks, node in zip(self._leader_ranks, nodes):
            for rank, each in zip(ranks, node.per_worker):  # by slot, the leader first
                timed[rank] = each
        self.timed = timed
        self._traffic["bytes_sent"] += theta.nbytes * (len(self._leaders) + (self._host is not None))
        return parts + nodes

    def evaluate(self, theta, bound):
        t0 = time.monotonic()
        refs = []
        if self._leaders:
            theta_ref = ray.put(theta)
            refs = [leader.node_evaluate.remote(theta_ref, bound) for leader in self._leaders]
        parts = []
        if self._host is not None:
            self._host.send(OP_EVAL, theta)
            parts.append(add_evals(self._gather_host(bound).values()))
        parts += self._waits.all(refs, self._leader_ranks, leader_deadline(t0, bound))
        return parts
