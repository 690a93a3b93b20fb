#!/usr/bin/env python
"""Summarize a py-spy `--native -f raw` profile of rayprop's training loop.

    py-spy record --native -r 500 -f raw -o /tmp/w.raw -- python benchmarks/profile_local.py W-mnist --pyspy
    python benchmarks/pyspy_summary.py /tmp/w.raw [--top 40]

Keeps the samples taken inside the coordinator's train() and groups them by the
deepest Python source line (which numpy call) and by where the native code was:
OpenBLAS (split into compute kernels, packing copies and thread sync/wait), numpy's
C loops (ufuncs, take, reductions), libc (memcpy/memset/malloc), or the interpreter.
Only the main thread is sampled: OpenBLAS's worker threads are not Python threads,
so a sample in "BLAS" means the main thread was in a BLAS call (the wall time of
that call), and the figures are shares of the main thread's wall time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

PY_FRAME = re.compile(r"^(?P<name>.+) \((?P<file>[^()]+\.py):(?P<line>\d+)\)$")
NATIVE_FRAME = re.compile(r"^(?P<name>.+) \((?P<lib>[^()]+)\)$")

BLAS_SYNC = ("sched_yield", "exec_blas", "blas_thread", "pthread", "futex", "inner_thread",
             "__lll_lock", "syscall")
BLAS_PACK = ("copy", "icopy", "ocopy", "beta")


def native_category(natives: list[tuple[str, str]]) -> str:
    if not natives:
        return "interpreter (Python code)"
    libs = " ".join(lib for _, lib in natives)
    leaf = natives[-1][0]
    if "openblas" in libs.lower():
        if any(k in leaf for k in BLAS_SYNC):
            return "BLAS: thread sync / wait"
        if any(k in leaf for k in BLAS_PACK):
            return "BLAS: packing / beta copies"
        if "gemv" in leaf:
            return "BLAS: gemv kernel"
        if "kernel" in leaf:
            return "BLAS: gemm compute kernel"
        return f"BLAS: other ({leaf})"
    if "_multiarray_umath" in libs:
        names = " ".join(n for n, _ in natives)
        if "take" in names.lower() or "mapiter" in names.lower():
            return "numpy: gather (take)"
        if "reduce" in names.lower():
            return "numpy: reduction"
        if "memcpy" in leaf or "memset" in leaf or "memmove" in leaf:
            return "numpy: memcpy/memset"
        if "cast" in names.lower() or "_to_" in names:
            return "numpy: dtype cast"
        if any(k in leaf for k in ("FLOAT_", "DOUBLE_", "BOOL_", "simd", "AVX", "avx")):
            return "numpy: ufunc inner loop"
        return "numpy: call/dispatch overhead"
    if "libm" in libs:
        return "libm (math functions)"
    if "libc" in libs:
        return f"libc ({leaf})"
    if "python" in libs.lower():
        return "interpreter (Python code)"
    return f"other native ({leaf})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--root", default="train (trainer/coordinator.py",
                    help="keep only samples with a frame starting like this")
    args = ap.parse_args(argv)
    by_line: dict[str, float] = defaultdict(float)
    by_cat: dict[str, float] = defaultdict(float)
    by_line_cat: dict[tuple[str, str], float] = defaultdict(float)
    sources: dict[str, list[str]] = {}
    total = 0
    for row in Path(args.raw).read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        if not stack or args.root not in stack:
            continue
        n = int(count)
        frames = stack.split(";")
        root = next(i for i, f in enumerate(frames) if f.startswith(args.root))
        frames = frames[root:]
        last_py = max(i for i, f in enumerate(frames) if PY_FRAME.match(f))
        m = PY_FRAME.match(frames[last_py])
        file, line = m["file"], int(m["line"])
        src = ""
        path = next((p for p in (Path(file), Path.cwd() / file) if p.exists()), None)
        if path is not None:
            lines = sources.setdefault(str(path), path.read_text().splitlines())
            src = lines[line - 1].strip() if line <= len(lines) else ""
        where = f"{Path(file).name}:{line} {m['name'].split('.')[-1]}: {src[:70]}"
        natives = [(nm["name"], nm["lib"]) for f in frames[last_py + 1:] if (nm := NATIVE_FRAME.match(f))]
        cat = native_category(natives)
        by_line[where] += n
        by_cat[cat] += n
        by_line_cat[(where, cat)] += n
        total += n
    if not total:
        print("no samples under", args.root)
        return 1
    print(f"{total} samples inside train()\n\nby where the main thread was (native):")
    for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * v / total:5.1f} %  {k}")
    print("\nby Python source line (the numpy call being made):")
    for k, v in sorted(by_line.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {100 * v / total:5.1f} %  {k}")
    print("\nby line and native category:")
    for (k, c), v in sorted(by_line_cat.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {100 * v / total:5.1f} %  {k}  [{c}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
