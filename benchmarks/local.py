#!/usr/bin/env python
"""Local-mode benchmark of rayprop on the workloads of WORKLOADS.md, next to numpy's
float32 matmul speed measured in the same run (and PyTorch, when importable).

    python benchmarks/local.py [--workloads W-tiny,W-mnist,W-wide] [--repeats N] [--quick]

Prints ONE JSON document to stdout; progress goes to stderr. Every figure carries
its unit in its key (`_ms`, `_s`, `_gflop_per_s`, `_per_second`, `ratio_`/`_ratio`
for unitless quotients). Absolute times depend on the machine and on whatever else
runs on it: only ratios measured in one run are comparable (see benchmarks/README.md).

The PyTorch comparison runs in a child process (this script with --torch-child), so
that torch's OpenMP/MKL thread pool and numpy's OpenBLAS threads never spin against
each other on the same cores; torch is never a dependency of rayprop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable from a checkout without an editable install
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from trainer.batches import BatchPlan  # noqa: E402
from trainer.coordinator import train  # noqa: E402
from trainer.network import NetworkSpec, init_theta  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402
from workers.builtin_sets import teacher_arrays  # noqa: E402
from workers.local_pool import LocalPool  # noqa: E402
from workers.shard import ShardWorker  # noqa: E402

PLAN_SEED = 0   # BatchPlan seed; the torch child uses the same, so both see the same batches
INIT_SEED = 2   # WORKLOADS.md: rng = default_rng(2) for the initial weights

# The workloads of WORKLOADS.md, and how long to measure each by default.
# One repeat = one call of the coordinator's train() for `epochs` epochs; the figures
# are medians over repeats, after `warmup_epochs` epochs that are not measured.
WORKLOADS = {
    "W-tiny": dict(source="teacher-tiny", layers=(2, 16, 16, 1), hidden="sigmoid",
                   output="sigmoid", cost="binary_cross_entropy", batch=None,
                   optimizer="gd", lr=0.5, warmup_epochs=20, epochs=100, repeats=5),
    "W-mnist": dict(source="teacher-mnist", layers=(784, 256, 128, 10), hidden="relu",
                    output="softmax", cost="cross_entropy", batch=1024,
                    optimizer="sgd", lr=0.1, warmup_epochs=1, epochs=1, repeats=5),
    "W-wide": dict(source="teacher-wide", layers=(1024, 2048, 2048, 10), hidden="relu",
                   output="softmax", cost="cross_entropy", batch=8192,
                   optimizer="sgd", lr=0.1, warmup_epochs=1, epochs=1, repeats=2),
}
QUICK_REPEATS = 1
MATMUL_N = 2048
MATMUL_RUNS = 7


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def median(xs):
    return statistics.median(xs) if xs else None


def rnd(x, digits=4):
    """Round for the report, keeping small figures readable."""
    if x is None or not isinstance(x, float) or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}") if abs(x) < 10 ** digits else round(x, 1)


# ---------------------------------------------------------------- machine and load

def cpu_model() -> dict:
    info = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and "model_name" not in info:
            info["model_name"] = value
        elif key == "cpu family" and "cpu_family" not in info:
            info["cpu_family"] = int(value)
        elif key == "model" and "cpu_model_number" not in info:
            info["cpu_model_number"] = int(value)
        elif key == "flags" and "simd" not in info:
            flags = set(value.split())
            info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512vl",
                                        "avx512_vnni", "amx_tile") if f in flags]
    return info


def machine_info() -> dict:
    info = {
        "nproc": os.cpu_count(),
        "cpus_available_to_process": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        **cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                             "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }
    try:
        import threadpoolctl
        info["threadpoolctl"] = [
            {k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads",
                                   "threading_layer", "architecture")}
            for p in threadpoolctl.threadpool_info()]
    except ImportError:
        info["threadpoolctl"] = None
    return info


def numpy_threads() -> int:
    """The threads numpy's BLAS uses (threadpoolctl), else the CPUs this process may use."""
    try:
        import threadpoolctl
        blas = [p for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
        if blas:
            return int(blas[0]["num_threads"])
    except ImportError:
        pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


LIVE_CHILDREN: set[int] = set()  # pids of running children whose CPU time counts as ours


class LoadMeter:
    """How much CPU OTHER processes used while we measured (the machine may be shared).

    busy CPU seconds of the whole machine (/proc/stat) minus this process tree's own CPU
    seconds, as a fraction of wall x nproc. Near 0 means the figures are clean; a few
    tenths means another process competed for the cores (BLAS threads suffer badly).
    """

    def __init__(self):
        self.t0, self.own0 = time.perf_counter(), self._own()
        self.busy0, self.steal0 = self._busy()
        self.load0 = os.getloadavg() if hasattr(os, "getloadavg") else None

    @staticmethod
    def _busy():
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None, None
        v = [int(x) for x in fields]
        # user nice system idle iowait irq softirq steal ...; (busy seconds, steal seconds)
        tck = os.sysconf("SC_CLK_TCK")
        steal = v[7] if len(v) > 7 else 0
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / tck, steal / tck

    @staticmethod
    def _own():
        """CPU seconds of this process, its waited-for children, and its live children
        (the torch child), which are ours, not "other processes"."""
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        for pid in LIVE_CHILDREN:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                own += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return own

    def report(self) -> dict:
        wall = time.perf_counter() - self.t0
        busy, steal = self._busy()
        out = {"wall_s": rnd(wall)}
        if busy is not None and self.busy0 is not None:
            cpu_wall = wall * (os.cpu_count() or 1)
            other = (busy - self.busy0) - (self._own() - self.own0)
            out["other_processes_cpu_fraction"] = rnd(max(other, 0.0) / cpu_wall, 3)
            # time the hypervisor gave our virtual CPUs to someone else
            out["vm_steal_cpu_fraction"] = rnd((steal - self.steal0) / cpu_wall, 3)
        if self.load0 is not None:
            out["loadavg_1min_start"] = rnd(self.load0[0], 3)
            out["loadavg_1min_end"] = rnd(os.getloadavg()[0], 3)
        return out


# ---------------------------------------------------------------- matmul reference

def measure_matmul(n: int = MATMUL_N, runs: int = MATMUL_RUNS, one_thread: bool = True) -> dict:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)

    def timed(count):
        np.matmul(a, b, out=c)  # warm-up: threads started, pages touched
        ts = []
        for _ in range(count):
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            ts.append(time.perf_counter() - t)
        return 2.0 * n ** 3 / median(ts) / 1e9, 2.0 * n ** 3 / min(ts) / 1e9

    gflops, best = timed(runs)
    out = {"shape": [n, n, n], "dtype": "float32", "runs": runs, "threads": numpy_threads(),
           "matmul_gflop_per_s": rnd(gflops), "matmul_best_gflop_per_s": rnd(best)}
    if one_thread:
        try:
            from threadpoolctl import threadpool_limits
            with threadpool_limits(limits=1, user_api="blas"):
                out["matmul_1thread_gflop_per_s"] = rnd(timed(2)[0])
        except ImportError:
            pass
    return out


# ---------------------------------------------------------------- workloads

def workload_data(name: str):
    """(spec, X rows, Y rows, y labels, plan, theta0) for workload `name`."""
    w = WORKLOADS[name]
    spec = NetworkSpec(tuple(w["layers"]), w["hidden"], w["output"], w["cost"], "float32")
    X, y = teacher_arrays(w["source"])
    m, n_out = len(y), spec.layers[-1]
    Y = np.zeros((m, n_out), np.float32)
    if n_out == 1:
        Y[:, 0] = y           # binary: 0/1 column
    else:
        Y[np.arange(m), y] = 1  # one-hot rows
    plan = BatchPlan(m, w["batch"], PLAN_SEED)
    theta0 = init_theta(spec, "he", seed=INIT_SEED)
    return spec, X, Y, y, plan, theta0


def check_init(spec: NetworkSpec, theta0: np.ndarray) -> None:
    """WORKLOADS.md's recipe, written out, must give exactly init_theta(spec, 'he', seed=2)."""
    rng = np.random.default_rng(INIT_SEED)
    parts = []
    for n_out, n_in in zip(spec.layers[1:], spec.layers[:-1]):
        W = (rng.standard_normal((n_out, n_in)) * np.sqrt(2 / n_in)).astype(np.float32)
        parts += [W.ravel(), np.zeros(n_out, np.float32)]
    direct = np.concatenate(parts)
    assert theta0.dtype == np.float32 and np.array_equal(theta0, direct), \
        "init_theta(spec, 'he', seed=2) differs from WORKLOADS.md's initial weights"


class StepClock:
    """A coordinator listener: timestamps every step (so per-step times include all the
    coordinator's per-step and per-epoch work) and keeps the losses."""

    def __init__(self):
        self.stamps, self.losses = [], []

    def start(self):
        self.stamps = [time.perf_counter()]

    def on_step(self, step, epoch, loss, n):
        self.stamps.append(time.perf_counter())
        self.losses.append(loss)

    def on_epoch(self, epoch, metrics):
        pass

    def step_seconds(self):
        return list(np.diff(self.stamps))


def summarize(spec, plan, epochs, repeat_walls, step_times, first_epoch_loss, matmul_gflops, extra=None):
    """The report block shared by rayprop and torch."""
    steps = plan.steps_per_epoch
    epoch_s = median([w / epochs for w in repeat_walls])
    step_s = median([w / (epochs * steps) for w in repeat_walls])
    gflops = spec.flops_per_example() * plan.m / epoch_s / 1e9
    out = {
        "repeats": len(repeat_walls),
        "epochs_per_repeat": epochs,
        "step_ms": rnd(step_s * 1e3),
        "step_ms_per_repeat": [rnd(w / (epochs * steps) * 1e3) for w in repeat_walls],
        "epoch_ms": rnd(epoch_s * 1e3),
        "examples_per_second": rnd(plan.m / epoch_s),
        "model_gflop_per_s": rnd(gflops),
        "ratio_to_matmul": rnd(gflops / matmul_gflops, 3),
        "single_step_ms_median": rnd(median(step_times) * 1e3),
        "single_step_ms_min": rnd(min(step_times) * 1e3),
        "first_epoch_loss": rnd(first_epoch_loss, 9),
    }
    if plan.batch_size < plan.m:  # the full-size steps alone (the last, partial one excluded)
        full = [t for i, t in enumerate(step_times) if i % steps != steps - 1] or step_times
        out["full_batch_step_ms_median"] = rnd(median(full) * 1e3)
    out.update(extra or {})
    return out


class RaypropRun:
    """rayprop's local mode on one workload: warm-up, then timed repeats of train()."""

    def __init__(self, name: str, epochs: int, warmup: int):
        w = WORKLOADS[name]
        self.spec, X, Y, _, self.plan, theta0 = workload_data(name)
        check_init(self.spec, theta0)
        self.pool = LocalPool([ShardWorker(self.spec, self.plan, 0, X, Y)])  # all examples, no validation rows
        self.theta = theta0.copy()
        self.optimizer = make_optimizer(w["optimizer"], w["lr"])
        self.name, self.epochs, self.warmup_epochs = name, epochs, warmup
        self.clock = StepClock()
        self.walls, self.step_times, self.compute, self.coordination = [], [], [], []
        self.first_epoch_loss, self.final_loss, self.epoch = None, None, 0

    def warmup(self):
        self.clock.start()
        res = train(self.pool, self.theta, self.optimizer, self.plan, self.warmup_epochs,
                    listeners=[self.clock], start_epoch=0)
        self.first_epoch_loss, self.epoch = res.history[0]["epoch_loss"], self.warmup_epochs

    def repeat(self) -> float:
        self.clock.start()
        t = time.perf_counter()
        res = train(self.pool, self.theta, self.optimizer, self.plan, self.epochs,
                    listeners=[self.clock], start_epoch=self.epoch)
        self.walls.append(time.perf_counter() - t)
        self.step_times += self.clock.step_seconds()
        self.compute += [h["compute_seconds"] for h in res.history]
        self.coordination += [h["coordination_seconds"] for h in res.history]
        self.epoch += self.epochs
        self.final_loss = res.final_loss
        return self.walls[-1] / (self.epochs * self.plan.steps_per_epoch)

    def report(self, matmul_gflops: float) -> dict:
        extra = {"coordinator_compute_ms_per_step": rnd(median(self.compute) * 1e3),
                 "coordinator_coordination_ms_per_step": rnd(median(self.coordination) * 1e3),
                 "final_loss": rnd(self.final_loss, 7)}
        return summarize(self.spec, self.plan, self.epochs, self.walls, self.step_times,
                         self.first_epoch_loss, matmul_gflops, extra)


# ---------------------------------------------------------------- PyTorch (child process)

class TorchRun:
    """The same workload in PyTorch (runs in the child): same layers, init, batches;
    float32, plain SGD."""

    def __init__(self, name: str, threads: int, epochs: int, warmup: int):
        import warnings

        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        torch.set_num_threads(threads)
        w = WORKLOADS[name]
        self.spec, X, Y, y, self.plan, theta0 = workload_data(name)
        Ws, bs = self.spec.views(theta0)
        self.params = []
        for W, b in zip(Ws, bs):
            self.params += [torch.tensor(W).requires_grad_(), torch.tensor(b[:, 0]).requires_grad_()]
        with warnings.catch_warnings():  # the cached teacher arrays are read-only; we only read
            warnings.simplefilter("ignore")
            self.Xt = torch.from_numpy(X)
        self.binary = self.spec.layers[-1] == 1
        self.Yt = torch.from_numpy(Y[:, 0].copy()) if self.binary else torch.from_numpy(y.copy())
        self.act = {"relu": torch.relu, "sigmoid": torch.sigmoid}[self.spec.hidden_activation]
        self.lr, self.epochs, self.warmup_epochs, self.epoch = w["lr"], epochs, warmup, 0

    def step(self, xb, yb):
        torch, F, params = self.torch, self.F, self.params
        a = xb
        L = self.spec.L
        for l in range(L):
            a = F.linear(a, params[2 * l], params[2 * l + 1])
            if l < L - 1:
                a = self.act(a)
        if self.binary:
            loss = F.binary_cross_entropy_with_logits(a[:, 0], yb)
        else:
            loss = F.cross_entropy(a, yb)
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= self.lr * p.grad
                p.grad = None
        return loss.item()

    def run_epoch(self, stamps):
        plan, loss_sum = self.plan, 0.0
        for k in range(plan.steps_per_epoch):
            idx = plan.batch(self.epoch, k)
            if isinstance(idx, slice):
                xb, yb = self.Xt, self.Yt
            else:
                it = self.torch.from_numpy(np.sort(idx))  # sorted, as rayprop's shard gathers
                xb, yb = self.Xt.index_select(0, it), self.Yt.index_select(0, it)
            loss_sum += self.step(xb, yb) * xb.shape[0]
            stamps.append(time.perf_counter())
        self.epoch += 1
        return loss_sum / plan.m

    def warmup(self) -> dict:
        first = None
        for _ in range(self.warmup_epochs):
            loss = self.run_epoch([])
            first = loss if first is None else first
        return {"first_epoch_loss": first}

    def repeat(self) -> dict:
        stamps = [time.perf_counter()]
        for _ in range(self.epochs):
            loss = self.run_epoch(stamps)
        return {"wall": stamps[-1] - stamps[0], "step_times": list(np.diff(stamps)), "final_loss": loss}

    def finish(self) -> dict:
        # torch's own float32 matmul speed on these threads, for the context of its ratio
        torch, n = self.torch, MATMUL_N
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            torch.mm(a, b)
            ts.append(time.perf_counter() - t)
        return {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "torch_matmul_gflop_per_s": 2.0 * n ** 3 / median(ts) / 1e9}


def torch_child(name: str, threads: int, epochs: int, warmup: int) -> int:
    """Serve TorchRun over stdin/stdout, one JSON line per command (ready/warmup/repeat/finish)."""
    run = TorchRun(name, threads, epochs, warmup)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "warmup":
            out = run.warmup()
        elif cmd == "repeat":
            out = run.repeat()
        elif cmd == "finish":
            print(json.dumps(run.finish()), flush=True)
            return 0
        else:
            out = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(out), flush=True)
    return 0


def torch_available() -> str | None:
    """torch's version if it imports (checked in a child, so this process never loads it)."""
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class TorchChild:
    """The main process's handle on a torch child: send a command, read one JSON line."""

    def __init__(self, name, threads, epochs, warmup):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-child", name,
               "--threads", str(threads), "--epochs", str(epochs), "--warmup", str(warmup)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        LIVE_CHILDREN.add(self.proc.pid)
        self.walls, self.step_times = [], []

    def wait_ready(self):
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch child exited with code {self.proc.wait()}")
        return json.loads(line)

    def call(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        LIVE_CHILDREN.discard(self.proc.pid)
        try:
            self.proc.stdin.close()  # a child still reading commands ends at EOF
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


TEACHER_M = {"teacher-tiny": 10_000, "teacher-mnist": 60_000, "teacher-wide": 65_536}
SWITCH_PAUSE_S = 0.3  # idle gap between rayprop and torch phases: lets spinning BLAS/OpenMP threads sleep


def matmul_sample() -> float:
    """A quick numpy matmul GFLOP/s reading (1 warm-up + median of 3 timed 2048^3 products)."""
    return measure_matmul(runs=3, one_thread=False)["matmul_gflop_per_s"]


def run_workload(name, repeats, threads, with_torch) -> tuple[dict, dict | None, list[float]]:
    """rayprop and (optionally) torch on one workload, their repeats ALTERNATING, so that a
    drift in the machine's speed hits both alike; a matmul reading before and after each
    rayprop repeat.
    Returns (rayprop report, torch report or None, matmul readings)."""
    w = WORKLOADS[name]
    epochs, warmup = w["epochs"], w["warmup_epochs"]
    child, tw, torch_report, samples = None, None, None, []
    if with_torch:
        try:  # the child sets up (imports torch, makes the data) while we make ours
            child = TorchChild(name, threads, epochs, warmup)
        except OSError as e:
            log(f"  torch {name}: {e}")
            child = None
    try:
        ray = RaypropRun(name, epochs, warmup)
        if child:
            child.wait_ready()
        meter = LoadMeter()  # one for the whole alternating section: both ran under the same load
        ray.warmup()
        if child:
            time.sleep(SWITCH_PAUSE_S)
            tw = child.call("warmup")
        for r in range(repeats):
            time.sleep(SWITCH_PAUSE_S)
            samples.append(matmul_sample())
            ms = ray.repeat() * 1e3
            samples.append(matmul_sample())
            log(f"  rayprop {name} repeat {r + 1}/{repeats}: {ms:.3f} ms/step")
            if child:
                time.sleep(SWITCH_PAUSE_S)
                got = child.call("repeat")
                child.walls.append(got["wall"])
                child.step_times += got["step_times"]
                child.final_loss = got["final_loss"]
                log(f"  torch   {name} repeat {r + 1}/{repeats}: "
                    f"{got['wall'] / (epochs * ray.plan.steps_per_epoch) * 1e3:.3f} ms/step")
        matmul_gflops = median(samples)
        ray_report = ray.report(matmul_gflops)
        load = meter.report()
        ray_report["load"] = load
        if child:
            fin = child.call("finish")
            extra = {"version": fin["torch"], "threads": fin["threads"],
                     "torch_matmul_gflop_per_s": rnd(fin["torch_matmul_gflop_per_s"]),
                     "final_loss": rnd(child.final_loss, 7)}
            torch_report = summarize(ray.spec, ray.plan, epochs, child.walls, child.step_times,
                                     tw["first_epoch_loss"], matmul_gflops, extra)
            torch_report["load"] = load
    finally:
        if child:
            child.close()
    return ray_report, torch_report, samples


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats per workload (default: 5 for W-tiny and W-mnist, 2 for W-wide)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} repeat per workload")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--torch-child", metavar="WORKLOAD", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.torch_child:
        return torch_child(args.torch_child, args.threads, args.epochs, args.warmup)

    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")

    meter = LoadMeter()
    report = {"benchmark": "rayprop local mode (benchmarks/local.py)",
              "note": "absolute times depend on the machine and its load; compare only ratios from one run",
              "machine": machine_info()}
    threads = numpy_threads()
    log(f"numpy float32 matmul {MATMUL_N}^3 on {threads} thread(s) ...")
    mm_meter = LoadMeter()
    report["matmul"] = measure_matmul()
    report["matmul"]["load"] = mm_meter.report()
    mm = report["matmul"]["matmul_gflop_per_s"]
    log(f"  {mm} GFLOP/s")

    torch_version = None if args.no_torch else torch_available()
    report["torch_version"] = torch_version
    if torch_version is None and not args.no_torch:
        log("torch is not importable: skipping the PyTorch comparison")

    report["workloads"] = {}
    for name in names:
        w = WORKLOADS[name]
        repeats = QUICK_REPEATS if args.quick else (args.repeats or w["repeats"])
        spec = NetworkSpec(tuple(w["layers"]), w["hidden"], w["output"], w["cost"])
        entry = {"layers": list(spec.layers), "hidden_activation": w["hidden"],
                 "output_activation": w["output"], "cost": w["cost"], "optimizer": w["optimizer"],
                 "learning_rate": w["lr"], "m": TEACHER_M[w["source"]],
                 "batch_size": w["batch"] or TEACHER_M[w["source"]],
                 "steps_per_epoch": BatchPlan(TEACHER_M[w["source"]], w["batch"], PLAN_SEED).steps_per_epoch,
                 "parameters": spec.size, "flops_per_example": spec.flops_per_example(),
                 "warmup_epochs": w["warmup_epochs"]}
        log(f"{name}: rayprop local mode"
            + (f" alternating with torch {torch_version} ({threads} threads)" if torch_version else "")
            + f", {repeats} x {w['epochs']} epoch(s) after {w['warmup_epochs']} warm-up ...")
        try:
            entry["rayprop"], entry["torch"], samples = run_workload(name, repeats, threads, torch_version is not None)
        except RuntimeError as e:  # the torch child died: measure rayprop alone
            log(f"  {e}; measuring rayprop without torch")
            entry["rayprop"], entry["torch"], samples = run_workload(name, repeats, threads, False)
            entry["torch"] = {"error": str(e)}
        # The machine's speed drifts (seen: +-10-30% within minutes), so each workload's
        # ratio_to_matmul is against matmul sampled right before and after each of its repeats.
        local_mm = median(samples)
        entry["matmul_gflop_per_s_samples"] = [rnd(x) for x in samples]
        entry["matmul_gflop_per_s_reference"] = rnd(local_mm)
        entry["matmul_gflop_per_s_best_sample"] = rnd(max(samples))
        for side in ("rayprop", "torch"):
            if entry[side] and "model_gflop_per_s" in entry[side]:
                entry[side]["ratio_to_matmul"] = rnd(entry[side]["model_gflop_per_s"] / local_mm, 3)
                entry[side]["ratio_to_best_matmul_sample"] = rnd(entry[side]["model_gflop_per_s"] / max(samples), 3)
                entry[side]["ratio_to_run_start_matmul"] = rnd(entry[side]["model_gflop_per_s"] / mm, 3)
        if entry["torch"] and "step_ms" in entry["torch"]:
            entry["rayprop_over_torch_step_time_ratio"] = rnd(
                entry["rayprop"]["step_ms"] / entry["torch"]["step_ms"], 3)
            # same init, same batches: the first epoch's losses must agree to float32 noise
            a, b = entry["rayprop"]["first_epoch_loss"], entry["torch"]["first_epoch_loss"]
            entry["first_epoch_loss_rel_diff_rayprop_vs_torch"] = rnd(abs(a - b) / abs(b), 3)
        r = entry["rayprop"]
        log(f"  rayprop {r['step_ms']} ms/step, {r['model_gflop_per_s']} GFLOP/s "
            f"({r['ratio_to_matmul']} of matmul)"
            + (f"; torch {entry['torch']['step_ms']} ms/step" if (entry.get("torch") or {}).get("step_ms") else ""))
        report["workloads"][name] = entry
    report["load"] = meter.report()
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
