"""Peak memory of a job's driver and of each shard worker, next to the shard's size.

Writes Parquet sources (W-mnist-shaped rows: 784 float32 features and a label),
runs the real `rayprop train` on each with 2 Ray workers for 1 epoch, and prints ONE
JSON document: per case the file's size, its row groups, the driver's peak resident
memory and each worker's, and each shard's size in the training dtype (float32).

    python benchmarks/memory.py                         # every case below
    python benchmarks/memory.py --cases wmnist-1rg      # one case
    python benchmarks/memory.py --code /path/to/other/checkout   # the same jobs on other code

Cases: `tiny` (4,096 rows) gives the processes' size without data (Python, numpy,
pyarrow, Ray: the figures' floor, subtracted in `*_data_mb`); `wmnist-1rg` is teacher-mnist's 60,000 rows as pyarrow writes them by default
(one row group); `rand-256mb`, `rand-1gb` are random rows (incompressible) in row
groups of 32,768 rows; `rand-1gb-1rg` is the 1 GB file as one row group.

How it measures: the driver's peak is the `ru_maxrss` of the `rayprop` process itself
(getrusage at its exit, its children not included); workers' peaks are the VmHWM
of every `ray::ShardActor` process, read from /proc every 0.1 s while the job runs
(VmHWM only grows, so the last reading is the peak). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parents[1]
FEATURES, CLASSES = 784, 10
GROUP_ROWS = 32_768
ROW_BYTES = FEATURES * 4 + 8  # float32 features, int64 label, uncompressed

CASES = {  # name: (rows, rows per row group or None for one group, kind)
    "tiny": (4096, 4096, "random"),   # the processes' fixed size: interpreter, libraries, Ray
    "wmnist-1rg": (60_000, None, "teacher"),
    "rand-256mb": (256 * 2**20 // ROW_BYTES, GROUP_ROWS, "random"),
    "rand-1gb": (2**30 // ROW_BYTES, GROUP_ROWS, "random"),
    "rand-1gb-1rg": (2**30 // ROW_BYTES, None, "random"),
}


def write_source(path: Path, rows: int, group: int | None, kind: str) -> None:
    names = [f"x{j}" for j in range(FEATURES)]
    if kind == "teacher":
        sys.path.insert(0, str(HERE))
        from workers.data.builtin_sets import teacher_arrays

        X, y = teacher_arrays("teacher-mnist")
        table = pa.table({**{n: X[:, j] for j, n in enumerate(names)}, "y": y})
        pq.write_table(table, path)  # pyarrow's defaults: one row group below 1M rows
        return
    rng = np.random.default_rng(0)
    schema = pa.schema([*(pa.field(n, pa.float32()) for n in names), pa.field("y", pa.int64())])
    chunk = group or 16_384
    # No dictionary, no compression: the file is as large as the rows (random floats
    # would not compress anyway). One row group: the writer gets the whole table.
    with pq.ParquetWriter(path, schema, use_dictionary=False, compression="none") as writer:
        if group is None:
            X = rng.standard_normal((rows, FEATURES), dtype=np.float32)
            y = rng.integers(0, CLASSES, rows)
            writer.write_table(pa.table({**{n: X[:, j] for j, n in enumerate(names)}, "y": y}, schema=schema),
                               row_group_size=rows)
            return
        for start in range(0, rows, chunk):
            k = min(chunk, rows - start)
            X = rng.standard_normal((k, FEATURES), dtype=np.float32)
            y = rng.integers(0, CLASSES, k)
            writer.write_table(pa.table({**{n: X[:, j] for j, n in enumerate(names)}, "y": y}, schema=schema),
                               row_group_size=group)


# `rayprop train` (experiments.cli, as the console script runs it) that writes its own
# peak resident memory at exit: getrusage(RUSAGE_SELF) counts this process alone, not
# the Ray and MLflow processes it started and reaped (which wait4's figure would).
DRIVER = """
import atexit, resource, sys
atexit.register(lambda: open({peak_file!r}, "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
sys.argv[0] = "rayprop"
from experiments.cli import entry
entry()
"""


def vm_hwm(pid: int) -> int | None:
    """Peak resident set of a process in bytes (VmHWM), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descends_from(pid: int, root: int) -> bool:
    """Whether `root` is an ancestor of `pid` (the job's local Ray runs under its driver;
    other jobs on the machine have ShardActors of their own)."""
    while pid > 1:
        pid = parent(pid)
        if pid == root:
            return True
    return False


def shard_actors(root: int) -> list[int]:
    """The ray::ShardActor processes under process `root`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read(15).startswith(b"ray::ShardActor") and descends_from(int(entry), root):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


class WorkerWatch(threading.Thread):
    """Keeps the last VmHWM seen of every ShardActor process of the job while it runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.root = 0
        self.peaks: dict[int, int] = {}
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for pid in shard_actors(self.root) if self.root else ():
                peak = vm_hwm(pid)
                if peak:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0))

            time.sleep(0.1)


def run_job(source: Path, work: Path, code: Path, workers: int) -> dict:
    config = work / "job.yaml"
    config.write_text(json.dumps({
        "experiment": "memory", "model": {"layers": [FEATURES, 64, CLASSES], "dtype": "float32"},
        "data": {"source": str(source), "validation_fraction": 0.1},
        "train": {"optimizer": "sgd", "learning_rate": 0.05, "batch_size": 1024, "epochs": 1}}))
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_ADDRESS": ""}
    watch = WorkerWatch()
    t0 = time.monotonic()
    peak_file = work / "driver-peak"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(peak_file=str(peak_file)), "train", str(config), "--workers",
                             str(workers), "--output", str(work / "out"), "--quiet",
                             "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watch.root = proc.pid
    watch.start()
    stderr = proc.stderr.read()
    proc.wait()
    watch.done.set()
    watch.join()
    if proc.returncode != 0:
        raise SystemExit(f"rayprop train failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"seconds": round(time.monotonic() - t0, 1), "driver_peak_mb": int(peak_file.read_text()) // 1024,
            "worker_peaks_mb": sorted(round(p / 2**20) for p in watch.peaks.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--code", default=str(HERE), help="the rayprop checkout whose code runs the jobs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", help="a folder to write the sources into (and keep them)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="rayprop-memory-") as tmp:
        data_dir = Path(args.keep or tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        for name in args.cases.split(","):
            rows, group, kind = CASES[name]
            source = data_dir / f"{name}.parquet"
            if not source.exists():
                print(f"writing {source} ({rows} rows)", file=sys.stderr)
                write_source(source, rows, group, kind)
            meta = pq.ParquetFile(source).metadata
            work = Path(tmp) / f"job-{name}"
            work.mkdir()
            print(f"training on {name}", file=sys.stderr)
            job = run_job(source, work, Path(args.code), args.workers)
            cuts = [rows * r // args.workers for r in range(args.workers + 1)]
            shard_mb = [round((hi - lo) * (FEATURES + CLASSES) * 4 / 2**20) for lo, hi in zip(cuts, cuts[1:])]
            results.append({"case": name, "rows": rows, "file_mb": round(source.stat().st_size / 2**20),
                            "row_groups": meta.num_row_groups, **job,
                            "shard_mb_float32": shard_mb,
                            "worker_peak_over_shard": [round(p / s, 2) for p, s in
                                                       zip(job["worker_peaks_mb"], shard_mb)]})
            print(json.dumps(results[-1]), file=sys.stderr)
    floor = next((r for r in results if r["case"] == "tiny"), None)
    if floor:  # what the data costs on top of the processes' own size
        for r in results:
            r["driver_data_mb"] = r["driver_peak_mb"] - floor["driver_peak_mb"]
            worker_floor = max(floor["worker_peaks_mb"])
            r["worker_data_mb"] = [p - worker_floor for p in r["worker_peaks_mb"]]
            r["worker_data_over_shard"] = [round((p - worker_floor) / s, 2)
                                           for p, s in zip(r["worker_peaks_mb"], r["shard_mb_float32"])]
    print(json.dumps({"code": str(Path(args.code).resolve()), "workers": args.workers,
                      "self_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
