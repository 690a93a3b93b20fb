#!/usr/bin/env python
"""float32 GEMM rate of the libraries a user can install from the package index, side
by side on this CPU, on the products of W-mnist's and W-wide's steps. Prints JSON.

    python benchmarks/gemm_libraries.py [--rounds 2] [--threads 1] [--mkl-lib DIR]

Libraries: numpy's bundled OpenBLAS (twice: as the environment sets it, and with
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset, so OpenBLAS picks its kernel for this CPU),
BLIS through the `blis` package, MKL's `cblas_sgemm` from the `mkl` wheel's
libmkl_rt (through ctypes; the wheel ships only the shared libraries), and PyTorch's
matmul (MKL inside). Each runs in its own process (two BLAS thread pools in one
process spin against each other), in rounds that alternate the libraries. The rate
is 2MNK over the median of one thread's CPU time with --threads 1 (steady on a loaded
machine), or of the wall clock otherwise. A library that does not import is left out.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# (M, K, N, what): C (M x N) = A (M x K) B (K x N), the shapes of the two workloads' products.
SHAPES = [(1024, 784, 256, "W-mnist Z1^T"), (256, 1024, 784, "W-mnist GW1"),
          (1024, 256, 128, "W-mnist Z2^T"), (2048, 8192, 2048, "W-wide GW2"),
          (8192, 2048, 2048, "W-wide Z2^T")]
LIBS = ["numpy", "numpy-own-kernel", "blis", "mkl", "torch"]


def gemm_for(lib: str, mkl_lib: str | None, threads: int):
    """A function (a, b, c) writing a @ b into c with `lib`, or None if it is not here."""
    if lib.startswith("numpy"):
        return lambda a, b, c: np.matmul(a, b, out=c)
    if lib == "blis":
        try:
            from blis.py import gemm
        except ImportError:
            return None
        return lambda a, b, c: gemm(a, b, out=c, beta=0.0)  # beta defaults to 1: accumulate
    if lib == "mkl":
        path = Path(mkl_lib or Path(sys.prefix) / "lib") / "libmkl_rt.so.3"
        if not path.exists():
            return None
        mkl = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        mkl.MKL_Set_Num_Threads(threads)
        f, P, I, F = mkl.cblas_sgemm, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        f.argtypes, f.restype = [I, I, I, I, I, I, F, P, I, P, I, F, P, I], None
        ROW_MAJOR, NO_TRANS = 101, 111

        def sgemm(a, b, c):
            (M, K), N = a.shape, b.shape[1]
            f(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, 1.0, a.ctypes.data, K, b.ctypes.data, N, 0.0, c.ctypes.data, N)
        return sgemm
    if lib == "torch":
        try:
            import torch
        except ImportError:
            return None
        torch.set_num_threads(threads)
        return lambda a, b, c: torch.matmul(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(c))
    raise ValueError(lib)


def child(lib: str, mkl_lib: str | None, threads: int) -> int:
    g = gemm_for(lib, mkl_lib, threads)
    if g is None:
        print(json.dumps(None))
        return 0
    clock = time.thread_time if threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    out = {}
    for M, K, N, what in SHAPES:
        a, b = rng.standard_normal((M, K), dtype=np.float32), rng.standard_normal((K, N), dtype=np.float32)
        c = np.empty((M, N), np.float32)
        g(a, b, c)
        ref = a.astype(np.float64) @ b
        times = []
        for _ in range(3 if M * N * K > 4e9 else 20):
            t = clock()
            g(a, b, c)
            times.append(clock() - t)
        out[what] = {"gflop_per_s": round(2 * M * N * K / statistics.median(times) / 1e9, 1),
                     "max_rel_err": float(f"{np.abs(c - ref).max() / np.abs(ref).max():.1e}")}
    print(json.dumps(out))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mkl-lib", help="folder holding libmkl_rt.so.3 (default: this Python's prefix/lib)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a.child, a.mkl_lib, a.threads)
    limits = {k: str(a.threads)
              for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "BLIS_NUM_THREADS")}
    runs: dict[str, list[dict]] = {lib: [] for lib in LIBS}
    for _ in range(a.rounds):
        for lib in LIBS:
            env = {**os.environ, **limits}
            if lib == "numpy-own-kernel":
                env.pop("OPENBLAS_CORETYPE", None)
                env.pop("OPENBLAS_L2_SIZE", None)
            if lib == "mkl":
                env["MKL_THREADING_LAYER"] = "SEQUENTIAL" if a.threads == 1 else "GNU"
            cmd = [sys.executable, __file__, "--child", lib, "--threads", str(a.threads),
                   *(["--mkl-lib", a.mkl_lib] if a.mkl_lib else [])]
            r = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
            if r is not None:
                runs[lib].append(r)
    report = {"threads": a.threads, "clock": "thread CPU" if a.threads == 1 else "wall",
              "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"), "gflop_per_s": {}}
    for lib, rs in runs.items():
        if rs:
            report["gflop_per_s"][lib] = {w: statistics.median(r[w]["gflop_per_s"] for r in rs) for w in rs[0]}
            report["gflop_per_s"][lib]["max_rel_err"] = max(v["max_rel_err"] for r in rs for v in r.values())
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
