#!/usr/bin/env python
"""rayprop's one benchmark harness: the shipped workload configs (w-tiny, w-mnist,
w-wide) in local mode, on N Ray workers, and beside PyTorch and Ray Train when they
import, in ONE run, printing ONE JSON document (progress on stderr).

    python benchmarks/bench.py [--workloads W-tiny,W-mnist] [--modes local,ray1,ray2,...]
                               [--repeats 5] [--job] [--resize] [--profile]
    python benchmarks/bench.py --sweep [--sweep-concurrency 2]

Modes: `local`; `rayN` (N workers, shared-memory plane; a 1-worker pool gets both
CPUs); `rayN-object-store` (every worker through ray.put/ray.get); `torch` (PyTorch
CPU, same layers, init, batches and threads, in a child process so the two BLAS
thread pools never spin against each other); `ray-train` (Ray Train TorchTrainer, 2
workers, gloo DDP, each taking half of every batch).

The rayprop modes train with the product's own pieces (experiments.jobs.training.prepare, the
pools, trainer.coordinator.train) with validation off, and their repeats ALTERNATE so
that a drift in the machine's speed hits them alike; torch repeats alternate with them
too; Ray Train runs between the first and second half of the repeats. Each step of a
rayprop mode is split as measured around the pool and the optimizer (no copy of the
hot path here): `compute_ms` (the slowest worker, timed by the worker), `transfer_ms`
(the rest of the pool's call: sending theta, waking workers, collecting sums),
`optimizer_ms`, and `reduce_ms` (the rest of the step: adding the sums, dividing by m,
the loss check). Only ratios inside one run compare: this machine drifts.

`--job` also times whole jobs as a user runs them: `rayprop train w-mnist --workers 2`
for 5 epochs (Ray start, actors, data, the MLflow run and model included), with the
moment each of its console lines appeared, next to the same 5 epochs through Ray Train.
`--resize` times what a change of the pool's size costs the step at whose boundary
it happens (W-mnist in float64, 1 -> 2 -> 1 workers on a local Ray; README: Faults and elasticity).
`--profile` writes a cProfile of the coordinator's process per mode to benchmarks/profiles/.

`--sweep` times only whole sweeps as a user runs them: two 6-trial sweeps (SWEEPS:
spirals, whose small steps are mostly the coordinator's Python, and digits with two
512-unit layers, whose steps are the worker's BLAS; 3 learning rates x 2 activations,
1 worker a trial) with trials one at a time (--concurrency 1) and side by side
(--concurrency N), alternating, each from process start (Ray start, pools, MLflow runs
included) to exit.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import configs
from experiments.jobs import training
from experiments.jobs.configfile import load_config
from trainer.coordinator import train
from trainer.optimizers import make_optimizer

CPUS = 2
# workload -> (shipped config, epochs per repeat)
WORKLOADS = {"W-tiny": ("w-tiny", 50), "W-mnist": ("w-mnist", 1), "W-wide": ("w-wide", 1)}
JOB_EPOCHS = 5
SWEEP_GRID = ["--grid", "train.learning_rate=0.003,0.01,0.03", "--grid", "model.hidden_activation=relu,tanh"]
# Two 6-trial sweeps: a trial trains for seconds in each, so a sweep is more than starting
# pools. spirals' steps are small (the coordinator's Python dominates); digits with two
# 512-unit layers has steps whose time is the worker's BLAS.
SWEEPS = {"spirals": ["spirals", "--set", "train.epochs=300"],
          "digits-512": ["digits", "--set", "model.layers=[64, 512, 512, 10]", "--set", "train.epochs=40"]}
SWITCH_PAUSE_S = 0.5


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def rnd(x, digits=4):
    return float(f"{x:.{digits}g}")


def med_ms(xs):
    return rnd(statistics.median(xs) * 1e3) if xs else None


class LoadMeter:
    """CPU that OTHER processes used while we measured, from /proc/stat: busy CPU
    seconds of the machine minus this process tree's, over wall x cores. Ray's actors
    are children of raylet, not of this process, so with Ray modes the fraction counts
    them too: read it as "the machine was this busy beyond the driver"."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()
        self.load0 = os.getloadavg()[0]

    @staticmethod
    def _busy():
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def report(self):
        wall = time.perf_counter() - self.t0
        other = (self._busy() - self.busy0) - (self._own() - self.own0)
        return {"wall_s": rnd(wall), "busy_beyond_driver_cpu_fraction": rnd(max(other, 0) / (wall * CPUS), 3),
                "loadavg_1min_start": rnd(self.load0, 3), "loadavg_1min_end": rnd(os.getloadavg()[0], 3)}


def prepare(name):
    config, _ = WORKLOADS[name]
    return training.prepare(load_config(configs.resolve(config), ["data.validation_fraction=0"]))


# ------------------------------------------------------------------ rayprop modes

class TimedPool:
    """The pool, with the wall time of each gradient_sums call and its slowest worker."""

    def __init__(self, pool):
        self.pool, self.calls = pool, []

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def gradient_sums(self, theta, epoch, k, should_stop=None):
        t = time.perf_counter()
        sums = self.pool.gradient_sums(theta, epoch, k, should_stop)
        self.calls.append((time.perf_counter() - t, max(s.compute_seconds for s in sums)))
        return sums


class TimedOptimizer:
    def __init__(self, optimizer):
        self.optimizer, self.seconds = optimizer, []

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def step(self, theta, grad):
        t = time.perf_counter()
        self.optimizer.step(theta, grad)
        self.seconds.append(time.perf_counter() - t)


class StepClock:
    def __init__(self):
        self.stamps = []

    def on_step(self, step, epoch, loss, n):
        self.stamps.append(time.perf_counter())

    def on_epoch(self, epoch, metrics):
        pass


class RaypropMode:
    def __init__(self, label, job, pool, profile_dir=None):
        self.label, self.job, self.pool = label, job, TimedPool(pool)
        t = job.cfg.train
        self.theta = job.theta0.copy()
        self.optimizer = TimedOptimizer(make_optimizer(t.optimizer, t.learning_rate))
        self.epoch, self.steps, self.split = 0, [], []
        self.profiler = cProfile.Profile() if profile_dir else None
        self.profile_dir = profile_dir

    def run(self, epochs, measure=True):
        clock = StepClock()
        self.pool.calls, self.optimizer.seconds = [], []
        if self.profiler:
            self.profiler.enable()
        t0 = time.perf_counter()
        train(self.pool, self.theta, self.optimizer, self.job.plan, epochs, [clock], start_epoch=self.epoch)
        if self.profiler:
            self.profiler.disable()
        self.epoch += epochs
        if measure:
            walls = np.diff([t0, *clock.stamps])
            self.steps += list(walls)
            for wall, (call, compute), opt in zip(walls, self.pool.calls, self.optimizer.seconds):
                self.split.append((compute, call - compute, opt, wall - call - opt))

    def report(self, local=None):
        plan = self.job.plan
        step = statistics.median(self.steps)
        split = np.median(np.array(self.split), axis=0)
        out = {"step_ms": rnd(step * 1e3), "examples_per_second": rnd(plan.batch_size / step),
               "compute_ms": rnd(split[0] * 1e3), "transfer_ms": rnd(split[1] * 1e3),
               "optimizer_ms": rnd(split[2] * 1e3), "reduce_ms": rnd(split[3] * 1e3)}
        if local is not None:
            out["throughput_vs_local"] = rnd(local / step, 3)
        traffic = getattr(self.pool.pool, "traffic", None)
        if traffic and traffic["steps"]:
            out["bytes_received_per_step"] = traffic["bytes_received"] // traffic["steps"]
            out["bytes_sent_per_step"] = traffic["bytes_sent"] // traffic["steps"]
        if self.profiler:
            self.profile_dir.mkdir(exist_ok=True)
            self.profiler.dump_stats(self.profile_dir / f"{self.job.cfg.experiment}-{self.label}.prof")
        return out


def ray_pool(job, workers, plane):
    from workers.ray_pool import RayPool

    cluster = dataclasses.replace(job.cfg.cluster, data_plane=plane, cpus_per_worker=max(CPUS // workers, 1))
    return RayPool(job.task, cluster, workers, job.cfg.train.max_worker_failures)


def make_mode(label, job, profile_dir):
    if label == "local":
        return RaypropMode(label, job, training.open_pool(job, 1, local=True), profile_dir)
    workers = int(label[3:].split("-")[0])
    plane = "object_store" if label.endswith("-object-store") else "shm"
    return RaypropMode(label, job, ray_pool(job, workers, plane), profile_dir)


# ------------------------------------------------------------------ PyTorch (child process)

def torch_model(spec, theta0):
    import torch

    Ws, bs = spec.views(theta0)
    layers = []
    for l, (W, b) in enumerate(zip(Ws, bs)):
        lin = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.array(W)))
            lin.bias.copy_(torch.from_numpy(np.array(b[:, 0])))
        layers.append(lin)
        if l < len(Ws) - 1:
            layers.append(torch.nn.ReLU() if spec.hidden_activation == "relu" else torch.nn.Sigmoid())
    return torch.nn.Sequential(*layers)


def torch_tensors(job):
    import torch

    from workers.data.builtin_sets import teacher_arrays

    X, y = teacher_arrays(job.source.spec)
    Xt = torch.from_numpy(np.array(X))
    yt = torch.from_numpy(y.astype(np.float32)) if job.spec.layers[-1] == 1 else torch.from_numpy(np.array(y))
    return Xt, yt


def torch_step(torch, model, opt, xb, yb):
    out = model(xb)
    if out.shape[1] == 1:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], yb)
    else:
        loss = torch.nn.functional.cross_entropy(out, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def torch_child(name, epochs):
    """Serve timed repeats of `name` in PyTorch over stdin/stdout, one JSON line each."""
    import torch

    torch.set_num_threads(CPUS)
    job = prepare(name)
    model = torch_model(job.spec, job.theta0)
    opt = torch.optim.SGD(model.parameters(), lr=job.cfg.train.learning_rate)
    Xt, yt = torch_tensors(job)
    plan, epoch = job.plan, 0

    def run(n):
        nonlocal epoch
        stamps = [time.perf_counter()]
        for _ in range(n):
            for k in range(plan.steps_per_epoch):
                idx = plan.batch(epoch, k)
                if isinstance(idx, slice):
                    xb, yb = Xt, yt
                else:
                    it = torch.from_numpy(np.sort(idx))
                    xb, yb = Xt.index_select(0, it), yt.index_select(0, it)
                torch_step(torch, model, opt, xb, yb)
                stamps.append(time.perf_counter())
            epoch += 1
        return list(np.diff(stamps))

    run(1)  # warm-up
    print(json.dumps({"ready": torch.__version__}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"steps": run(epochs)}), flush=True)
    return 0


class TorchMode:
    label = "torch"

    def __init__(self, name, epochs):
        self.proc = subprocess.Popen([sys.executable, __file__, "--torch-child", name, "--epochs", str(epochs)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = json.loads(self.proc.stdout.readline())["ready"]
        self.steps, self.batch = [], prepare(name).plan.batch_size

    def run(self, epochs, measure=True):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        steps = json.loads(self.proc.stdout.readline())["steps"]
        if measure:
            self.steps += steps

    def report(self, local=None):
        step = statistics.median(self.steps)
        out = {"torch": self.version, "threads": CPUS, "step_ms": rnd(step * 1e3),
               "examples_per_second": rnd(self.batch / step)}
        if local is not None:
            out["throughput_vs_local"] = rnd(local / step, 3)
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def torch_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


# ------------------------------------------------------------------ Ray Train

def ray_train_loop(config):
    """One Ray Train worker: the workload's model under DDP, half of every batch."""
    import torch
    from ray import train as rt
    from ray.train.torch import prepare_model

    torch.set_num_threads(1)
    job = prepare(config["name"])
    model = prepare_model(torch_model(job.spec, job.theta0))
    opt = torch.optim.SGD(model.parameters(), lr=job.cfg.train.learning_rate)
    Xt, yt = torch_tensors(job)
    ctx = rt.get_context()
    rank, size = ctx.get_world_rank(), ctx.get_world_size()
    plan = job.plan
    stamps = []
    for epoch in range(config["warmup"] + config["epochs"]):
        if epoch == config["warmup"]:
            stamps = [time.perf_counter()]
        for k in range(plan.steps_per_epoch):
            idx = plan.batch(epoch, k)
            idx = np.arange(plan.m)[idx] if isinstance(idx, slice) else np.sort(idx)
            it = torch.from_numpy(np.array_split(idx, size)[rank])
            torch_step(torch, model, opt, Xt.index_select(0, it), yt.index_select(0, it))
            stamps.append(time.perf_counter())
    if rank == 0:  # Ray Train v2 keeps metrics only beside checkpoints: a file carries them
        Path(config["out"]).write_text(json.dumps([float(x) for x in np.diff(stamps)]))


def ray_train(name, epochs, warmup, storage):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(storage) / f"steps-{name}-{time.time_ns()}.json"
    trainer = TorchTrainer(ray_train_loop, train_loop_config={"name": name, "epochs": epochs, "warmup": warmup,
                                                              "out": str(out)},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(storage_path=storage, name=f"bench-{name}"))
    t = time.perf_counter()
    trainer.fit()
    return json.loads(out.read_text()), time.perf_counter() - t


def ray_train_importable() -> bool:
    try:
        import ray.train.torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ one workload

def bench_workload(name, modes, repeats, profile_dir):
    from cluster.connect import connect

    config, epochs = WORKLOADS[name]
    job = prepare(name)
    entry = {"layers": list(job.spec.layers), "m": job.plan.m, "batch_size": job.plan.batch_size,
             "steps_per_epoch": job.plan.steps_per_epoch, "parameters": job.spec.size,
             "epochs_per_repeat": epochs, "modes": {}}
    ray_modes = [m for m in modes if m.startswith("ray") and m != "ray-train"]
    # Logical CPUs for every pool at once (they run in turn); each limits its BLAS threads.
    with connect(None, CPUS * (len(ray_modes) + 2)) as conn, tempfile.TemporaryDirectory() as storage:
        runs = [make_mode(m, job, profile_dir) for m in modes if m == "local" or m in ray_modes]
        if "torch" in modes and torch_importable():
            runs.append(TorchMode(name, epochs))
        try:
            for run in runs:
                run.run(1, measure=False)  # warm-up: first calls, allocations, BLAS threads
            rt = None
            for r in range(repeats):
                if r == repeats // 2 and "ray-train" in modes and ray_train_importable():
                    log(f"  {name} ray-train")
                    steps, _ = ray_train(name, epochs * max(repeats // 2, 1), 1, storage)
                    rt = {"workers": 2, "step_ms": med_ms(steps),
                          "examples_per_second": rnd(job.plan.batch_size / statistics.median(steps))}
                for run in runs:
                    # An idle gap at each switch: OpenBLAS's and OpenMP's threads spin for a
                    # while after their last call, and would take the next mode's cores.
                    time.sleep(SWITCH_PAUSE_S)
                    run.run(epochs)
                    log(f"  {name} {run.label} repeat {r + 1}/{repeats}: {statistics.median(run.steps[-job.plan.steps_per_epoch * epochs:]) * 1e3:.3f} ms/step")
            local = statistics.median(runs[0].steps) if runs[0].label == "local" else None
            for run in runs:
                entry["modes"][run.label] = run.report(None if run.label == "local" else local)
            if rt is not None:
                rt["throughput_vs_local"] = rnd(local / (rt["step_ms"] / 1e3), 3) if local else None
                entry["modes"]["ray-train"] = rt
            ref = runs[0].theta
            entry["max_rel_weight_diff_between_rayprop_modes"] = rnd(max(
                (float(np.abs(r.theta - ref).max() / np.abs(ref).max()) for r in runs[1:] if hasattr(r, "theta")),
                default=0.0), 3)
        finally:
            for run in runs:
                getattr(run, "pool", None) and run.pool.close()
                getattr(run, "proc", None) and run.close()
        entry["nodes"] = conn.nodes
    if name == "W-wide" and "local" in entry["modes"]:
        entry["modes"]["local"].update(wide_flops(job, statistics.median(runs[0].steps)))
    return entry


def wide_flops(job, step_seconds):
    """GFLOP/s executed (2 forward + 4 backward per weight per example, less the first
    layer's input gradient) beside numpy's float32 matmul measured now."""
    layers, m = job.spec.layers, job.plan.batch_size
    weights = sum(a * b for a, b in zip(layers[:-1], layers[1:]))
    flops = 6 * weights * m - 2 * layers[0] * layers[1] * m
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    sgemm = 2 * n ** 3 / statistics.median(times) / 1e9
    gflops = flops / step_seconds / 1e9
    return {"gflop_per_s": rnd(gflops), "sgemm_gflop_per_s": rnd(sgemm), "fraction_of_sgemm": rnd(gflops / sgemm, 3)}


# ------------------------------------------------------------------ whole jobs

RAY_TRAIN_JOB = f"""
import time, ray, tempfile, sys
t0 = time.perf_counter()
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import bench
ray.init(address="local", num_cpus={CPUS}, include_dashboard=False, logging_level="ERROR",
         runtime_env={{"env_vars": {{"PYTHONPATH": {str(Path(__file__).resolve().parent)!r}}}}})
t1 = time.perf_counter()
with tempfile.TemporaryDirectory() as d:
    steps, fit = bench.ray_train("W-mnist", {JOB_EPOCHS}, 0, d)
print("RESULT", time.perf_counter() - t0, t1 - t0, fit, sum(steps), flush=True)
ray.shutdown()
"""


def bench_jobs():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["rayprop", "train", "w-mnist", "--workers", "2", "--set", f"train.epochs={JOB_EPOCHS}",
               "--output", f"{tmp}/out", "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
        log("  job: " + " ".join(cmd[:6]))
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=tmp,
                                bufsize=1)
        lines = []
        for line in proc.stderr:
            if line.strip() and "\r" not in line:
                lines.append((rnd(time.perf_counter() - t0, 3), line.strip()[:100]))
        proc.wait()
        total = time.perf_counter() - t0
        summary = json.loads(Path(f"{tmp}/out/summary.json").read_text()) if proc.returncode == 0 else {}
        out["rayprop"] = {"command": " ".join(cmd[:6]), "exit_code": proc.returncode, "wall_s": rnd(total),
                          "training_s": rnd(summary.get("wall_seconds", float("nan"))),
                          "console_lines_at_s": lines}
        if ray_train_importable():
            log("  job: Ray Train")
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", RAY_TRAIN_JOB], capture_output=True, text=True, cwd=tmp)
            total = time.perf_counter() - t0
            fields = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
            if fields:
                _, inner, init, fit, steps = fields[-1].split()
                out["ray_train"] = {"wall_s": rnd(total), "ray_init_s": rnd(float(init)),
                                    "fit_s": rnd(float(fit)), "training_steps_s": rnd(float(steps))}
            else:
                out["ray_train"] = {"error": res.stderr[-500:]}
    return out


def bench_sweeps(concurrency: int, repeats: int) -> dict:
    """Each of SWEEPS timed by bench_sweep."""
    return {name: bench_sweep(args, concurrency, repeats) for name, args in SWEEPS.items()}


def bench_sweep(sweep_args: list[str], concurrency: int, repeats: int) -> dict:
    """Wall seconds of one sweep command per repeat, concurrency 1 against `concurrency`."""
    walls: dict[int, list[float]] = {1: [], concurrency: []}
    trial_s: dict[int, list[float]] = {1: [], concurrency: []}
    for r in range(repeats):
        for n in (1, concurrency) if r % 2 == 0 else (concurrency, 1):  # alternate: drift hits both
            with tempfile.TemporaryDirectory() as tmp:
                cmd = ["rayprop", "sweep", *sweep_args, *SWEEP_GRID, "--workers", "1", "--concurrency", str(n),
                       "--quiet", "--output", f"{tmp}/out",
                       "--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
                log(f"  sweep, concurrency {n}")
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
                walls[n].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    return {"error": proc.stderr[-500:]}
                runs = json.loads(Path(f"{tmp}/out/sweep.json").read_text())["runs"]
                trial_s[n].append(sum(json.loads(Path(f"{tmp}/out/run-{i + 1:02d}/summary.json").read_text())
                                      ["wall_seconds"] for i in range(len(runs))))
                time.sleep(SWITCH_PAUSE_S)
    return {"command": f"rayprop sweep {' '.join(sweep_args)} {' '.join(SWEEP_GRID)} --workers 1 --concurrency N",
            "trials": 6, **{f"concurrency_{n}": {"wall_s": [rnd(w) for w in walls[n]],
                                                 "median_wall_s": rnd(statistics.median(walls[n])),
                                                 "training_s_summed_over_trials": [rnd(t) for t in trial_s[n]]}
                            for n in walls},
            "speedup": rnd(statistics.median(walls[1]) / statistics.median(walls[concurrency]), 3)}


def bench_resize(name="W-mnist", epochs=2):
    """One `workers: auto` pool on a local Ray of CPUS CPUs, one of them held by another
    actor at the start: it starts with 1 worker, grows to 2 when that actor goes (the new
    worker reads its rows while the steps go on; the boundary step re-splits the rows),
    then shrinks to 1 when a worker is killed (replace_seconds 0: no wait for a
    replacement), and grows again once Ray sees that worker's CPU free. In float64, so
    that the weights' difference to local mode shows the order of additions only.
    Reported: each boundary step's wall time beside the median step."""
    import ray

    from cluster.connect import connect
    from workers import ray_pool

    job = training.prepare(load_config(configs.resolve(WORKLOADS[name][0]),
                                       ["data.validation_fraction=0", "model.dtype=float64"]))
    t = job.cfg.train
    ref = job.theta0.copy()
    train(training.open_pool(job, 1, local=True), ref, make_optimizer(t.optimizer, t.learning_rate), job.plan, epochs)
    third = job.plan.steps_per_epoch * epochs // 3
    ray_pool.GROW_CHECK_SECONDS = 0.0  # look for free CPUs at every boundary (else every 5 s)
    with connect(None, CPUS):
        holder = ray.remote(num_cpus=1)(StepClock).remote()
        ray.get(holder.on_epoch.remote(0, {}))
        cluster = dataclasses.replace(job.cfg.cluster, workers="auto", max_workers=CPUS, replace_seconds=0)
        pool = ray_pool.RayPool(job.task, cluster, "auto", 3)
        clock = StepClock()

        class Script:
            def on_step(self, step, epoch, loss, n):
                if step == third:
                    ray.kill(holder)  # a CPU comes free
                    while ray.available_resources().get("CPU", 0) < 1:
                        time.sleep(0.05)
                if pool.joining:  # let the new worker be ready at the next boundary
                    ray.wait(pool.joining, num_returns=len(pool.joining), timeout=120)
                if step == 2 * third:  # a worker lost (ray.kill: a SIGKILL would get a raylet line on stdout)
                    ray.kill(pool.actors[-1])

            def on_epoch(self, epoch, metrics):
                pass

        theta = job.theta0.copy()
        sizes = []
        try:
            size_clock = type("Sizes", (), {"on_step": lambda self, *a: sizes.append(pool.num_workers),
                                            "on_epoch": lambda self, *a: None})()
            t0 = time.perf_counter()
            # The script's waits come before the clock's stamp: they count in the step before
            # the boundary, not in the boundary step.
            train(pool, theta, make_optimizer(t.optimizer, t.learning_rate), job.plan, epochs,
                  [Script(), size_clock, clock])
        finally:
            pool.close()
    walls = np.diff([t0, *clock.stamps])
    changes = [i for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]]
    return {"workload": name, "steps": len(walls), "pool_sizes": [sizes[0], *(sizes[i] for i in changes)],
            "resizes": pool.resizes, "median_step_ms": med_ms(list(walls)),
            "boundary_step_ms": [rnd(walls[i] * 1e3) for i in changes],
            "max_rel_weight_diff_vs_local": rnd(float(np.abs(theta - ref).max() / np.abs(ref).max()), 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W-tiny,W-mnist")
    ap.add_argument("--modes", default="local,ray1,ray2,ray2-object-store,torch,ray-train")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--job", action="store_true", help="also time whole W-mnist jobs (rayprop CLI, Ray Train)")
    ap.add_argument("--resize", action="store_true", help="also time a grow and a shrink at a step boundary")
    ap.add_argument("--profile", action="store_true", help="cProfile each rayprop mode into benchmarks/profiles/")
    ap.add_argument("--sweep", action="store_true", help="only time a 6-trial sweep, sequential against parallel")
    ap.add_argument("--sweep-concurrency", type=int, default=CPUS, help="trials at once in the parallel sweep")
    ap.add_argument("--torch-child", metavar="WORKLOAD", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.torch_child:
        return torch_child(args.torch_child, args.epochs)
    if args.sweep:
        meter = LoadMeter()
        report = {"benchmark": "rayprop sweeps (benchmarks/bench.py --sweep)", "cpus": os.cpu_count(),
                  "repeats": args.repeats, "sweep": bench_sweeps(args.sweep_concurrency, args.repeats)}
        report["load"] = meter.report()
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    names = [n for n in args.workloads.split(",") if n]
    modes = [m for m in args.modes.split(",") if m]
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]}; known: {', '.join(WORKLOADS)}")
    report = {"benchmark": "rayprop (benchmarks/bench.py)", "note": "compare only ratios from one run",
              "cpus": os.cpu_count(), "modes": modes, "repeats": args.repeats, "workloads": {}}
    profile_dir = Path(__file__).resolve().parent / "profiles" if args.profile else None
    for name in names:
        log(f"{name}: {', '.join(modes)}; {args.repeats} repeats")
        meter = LoadMeter()
        report["workloads"][name] = bench_workload(name, modes, args.repeats, profile_dir)
        report["workloads"][name]["load"] = meter.report()
    if args.resize:
        log("resize: W-mnist, 1 -> 2 -> 1 (-> 2) workers")
        meter = LoadMeter()
        report["resize"] = bench_resize()
        report["resize"]["load"] = meter.report()
    if args.job:
        meter = LoadMeter()
        report["jobs"] = bench_jobs()
        report["jobs"]["load"] = meter.report()
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
