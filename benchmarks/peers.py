"""The peers rayprop is timed beside: PyTorch CPU (the same layers, initial weights and
batches) in a child process, so its thread pool and numpy's never spin against each
other, and Ray Train's TorchTrainer with 2 gloo DDP workers, each taking half of every
batch. Neither is a dependency of rayprop: `pip install torch "ray[train]"`.

    python benchmarks/peers.py --torch-child WORKLOAD --epochs N [--cpu-clock]   (steps.py starts it)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import core
from core import WALL, Timing, prepare, rnd, use_timing


def torch_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


def ray_train_importable() -> bool:
    try:
        import ray.train.torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


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


def torch_child(name, epochs, timing: Timing = WALL):
    """Serve timed repeats of `name` in PyTorch over stdin/stdout, one JSON line each."""
    import torch

    torch.set_num_threads(timing.threads)
    clock = timing.clock
    job = prepare(name)
    model = torch_model(job.spec, job.theta0)
    opt = torch.optim.SGD(model.parameters(), lr=job.cfg.train.learning_rate)
    Xt, yt = torch_tensors(job)
    plan, epoch = job.plan, 0

    def run(n):
        nonlocal epoch
        stamps = [clock()]
        for _ in range(n):
            for k in range(plan.steps_per_epoch):
                idx = plan.batch(epoch, k)
                if isinstance(idx, slice):
                    xb, yb = Xt, yt
                else:
                    it = torch.from_numpy(np.sort(idx))
                    xb, yb = Xt.index_select(0, it), yt.index_select(0, it)
                torch_step(torch, model, opt, xb, yb)
                stamps.append(clock())
            epoch += 1
        return list(np.diff(stamps))

    run(1)  # warm-up
    print(json.dumps({"ready": torch.__version__}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"steps": run(epochs)}), flush=True)
    return 0


class TorchMode:
    """A mode of steps.py whose repeats run in the PyTorch child."""

    label = "torch"

    def __init__(self, name, epochs, timing: Timing = WALL):
        self.threads = timing.threads
        self.proc = subprocess.Popen([sys.executable, __file__, "--torch-child", name, "--epochs", str(epochs),
                                      *([] if timing.wall else ["--cpu-clock"])],
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
        out = {"torch": self.version, "threads": self.threads, "step_ms": rnd(step * 1e3),
               "examples_per_second": rnd(self.batch / step)}
        if local is not None:
            out["throughput_vs_local"] = rnd(local / step, 3)
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


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
            idx = np.arange(plan.n_train)[idx] if isinstance(idx, slice) else np.sort(idx)
            it = torch.from_numpy(np.array_split(idx, size)[rank])
            torch_step(torch, model, opt, Xt.index_select(0, it), yt.index_select(0, it))
            stamps.append(time.perf_counter())
    if rank == 0:  # Ray Train v2 keeps metrics only beside checkpoints: a file carries them
        Path(config["out"]).write_text(json.dumps([float(x) for x in np.diff(stamps)]))


def ray_train(name, epochs, warmup, storage):
    """Step seconds of `epochs` epochs of `name` on Ray Train, and fit()'s wall seconds."""
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray's workers cannot import these script-side modules: the loop travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(core)
    out = Path(storage) / f"steps-{name}-{time.time_ns()}.json"
    trainer = TorchTrainer(ray_train_loop, train_loop_config={"name": name, "epochs": epochs, "warmup": warmup,
                                                              "out": str(out)},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(storage_path=storage, name=f"bench-{name}"))
    t = time.perf_counter()
    trainer.fit()
    return json.loads(out.read_text()), time.perf_counter() - t


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torch-child", metavar="WORKLOAD", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--cpu-clock", action="store_true", help="one thread, timed by its CPU time")
    args = ap.parse_args()
    sys.exit(torch_child(args.torch_child, args.epochs, use_timing(args.cpu_clock)))
