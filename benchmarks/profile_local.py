#!/usr/bin/env python
"""cProfile of rayprop's local-mode training loop on one workload of WORKLOADS.md.

    python benchmarks/profile_local.py W-mnist [--epochs N] [--top 25] [--sort tottime]

Builds the workload exactly as benchmarks/local.py does, runs one warm-up epoch, then
profiles `epochs` epochs of the coordinator's train() and prints (to stdout) the top
functions by own time, plus a coarse split of the profiled time into matmul, elementwise
(activations, costs, broadcasting), gather, optimizer and the rest (Python overhead).
cProfile sees numpy's C functions only as "{built-in method numpy...}" or "{method ... of
numpy.ndarray}"; for the split inside them, use py-spy with --native (see README.md).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local  # noqa: E402  (benchmarks/local.py)

from trainer.coordinator import train  # noqa: E402
from trainer.optimizers import make_optimizer  # noqa: E402
from workers.local_pool import LocalPool  # noqa: E402
from workers.shard import ShardWorker  # noqa: E402


def category(func) -> str:
    """A coarse bucket for a pstats function key (file, line, name).

    numpy ufuncs (np.matmul, np.add, np.maximum, ...) are not C functions to cProfile:
    their time is the OWN time of the Python function that calls them. So network.py's
    forward/backward_sums own time is the matmuls plus the in-line `Z += b`, and the
    activations' and costs' own time is their elementwise ufuncs.
    """
    file, _, name = func
    if file.endswith("network.py") and name in ("forward", "backward_sums"):
        return "network.py forward/backward: matmuls + in-line ufuncs"
    if file.endswith("activations.py"):
        return "activations (elementwise ufuncs)"
    if file.endswith("costs.py") or "_sum64" in name:
        return "cost: loss sum + output delta (elementwise)"
    if "take" in name:
        return "gather (ndarray.take)"
    if file.endswith("optimizers.py"):
        return "optimizer"
    if name == "reduce_sums":
        return "coordinator reduce_sums (copy of the grad)"
    if name.startswith("<method 'reduce'") or "isfinite" in name or name.startswith("<method 'all'"):
        return "reductions (max/sum/isfinite)"
    return "python (interpreter, views, calls, small objects)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=list(local.WORKLOADS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime")
    args = ap.parse_args(argv)
    w = local.WORKLOADS[args.workload]
    epochs = args.epochs or {"W-tiny": 500, "W-mnist": 3, "W-wide": 1}[args.workload]
    spec, X, Y, _, plan, theta0 = local.workload_data(args.workload)
    pool = LocalPool([ShardWorker(spec, plan, 0, X, Y)])
    theta = theta0.copy()
    opt = make_optimizer(w["optimizer"], w["lr"])
    train(pool, theta, opt, plan, max(1, w["warmup_epochs"]))
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    train(pool, theta, opt, plan, epochs, start_epoch=w["warmup_epochs"])
    prof.disable()
    wall = time.perf_counter() - t
    steps = epochs * plan.steps_per_epoch
    print(f"{args.workload}: {epochs} epoch(s), {steps} steps, {wall:.3f} s under cProfile "
          f"({wall / steps * 1e3:.3f} ms/step; cProfile adds overhead per Python call)")
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())
    total = sum(v[2] for v in st.stats.values())  # own (tottime) seconds of every function
    buckets: dict[str, float] = {}
    for func, (cc, nc, tt, ct, callers) in st.stats.items():
        key = category(func)
        buckets[key] = buckets.get(key, 0.0) + tt
    print("own time by bucket:")
    for key, v in sorted(buckets.items(), key=lambda kv: -kv[1]):
        print(f"  {key:45s} {v * 1e3 / steps:9.3f} ms/step  {100 * v / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
