"""Small real data files for the Ray tests (not a test module)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(path, m=1003, row_group_size=100, seed=0):
    """m rows (not a multiple of any worker count used), 4 features, 3 classes."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, 4))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] * X[:, 2] > 0.3)
    cols = {f"x{j}": X[:, j] for j in range(4)}
    cols["y"] = y
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def config(path, optimizer="adam", batch_size=64, epochs=2, dtype="float64", **train):
    return {"experiment": "raytest",
            "model": {"layers": [4, 12, 3], "hidden_activation": "tanh", "dtype": dtype},
            "data": {"source": str(path), "validation_fraction": 0.1},
            "train": {"optimizer": optimizer, "learning_rate": 0.05, "epochs": epochs,
                      **({} if batch_size is None else {"batch_size": batch_size}), **train}}
