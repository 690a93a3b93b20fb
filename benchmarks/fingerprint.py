"""What a job's data fingerprint costs (workers/data/fingerprint.py), printed as JSON.

Writes FILES Parquet files of ROWS W-mnist-shaped rows each (784 float32 features and
a label) into FOLDER/dirFILES (once), then times, best of 3: opening the folder as the
driver does (listing and every footer: the cost there was before), taking the
fingerprint of the opened source, and a worker's check of every file (a stat each).

    python benchmarks/fingerprint.py FOLDER [FILES] [ROWS]
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.data.fingerprint import take
from workers.data.sources import open_source


def write(folder: str, files: int, rows: int) -> None:
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(files):
        X = rng.standard_normal((rows, 784), dtype=np.float32)
        table = pa.table({**{f"x{j}": X[:, j] for j in range(784)}, "y": (X[:, 0] > 0).astype(np.int64)})
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"))


def best(call, n: int = 3):
    times, result = [], None
    for _ in range(n):
        t = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t)
    return min(times), result


def main(root: str, files: int = 200, rows: int = 300) -> dict:
    folder = os.path.join(root, f"dir{files}")
    if not os.path.isdir(folder):
        write(folder, files, rows)
    t_open, source = best(lambda: open_source(folder))
    t_take, fingerprint = best(lambda: take(source))
    worker = open_source(source.spec, source.handoff(), fingerprint)
    t_check, _ = best(lambda: [worker._open_file(i).verify() for i in range(files)])
    return {"files": files, "rows": files * rows,
            "bytes": sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)),
            "open_source_seconds": round(t_open, 3), "fingerprint_seconds": round(t_take, 4),
            "fingerprint_json_bytes": len(json.dumps(fingerprint)),
            "check_every_file_seconds": round(t_check, 4),
            "check_per_file_microseconds": round(t_check / files * 1e6, 1)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *map(int, sys.argv[2:4]))))
