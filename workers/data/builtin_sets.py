"""Built-in demo sets, generated in memory when read (never to count or name them).

Each is a source (see `source.Source`) with feature columns x0..x{n-1} and a label
column y, rows are examples:

- `xor`            4 rows, n=2, y = x0 xor x1, in the natural order 00, 01, 10, 11
- `spirals`        900 rows, n=2, y in {0,1,2}: three interleaved arms (CS231n)
- `digits`         1797 rows, n=64 (8x8 pixels / 16, in [0, 1]), y in 0..9 (scikit-learn's file)
- `teacher-tiny`   10,000 rows, n=2, y in {0,1}       (W-tiny of docs/workloads.md)
- `teacher-mnist`  60,000 rows, n=784, y in 0..9      (W-mnist)
- `teacher-wide`   65,536 rows, n=1024, y in 0..9     (W-wide, 268 MB of float32)

The cached arrays are read-only, so a caller cannot change the set for the next one.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np
import pyarrow as pa

from trainer.errors import DataError
from workers.data.source import RangeSource

# (n, n_out, m) per teacher set, from the workload table of docs/workloads.md.
TEACHERS = {
    "teacher-tiny": (2, 1, 10_000),
    "teacher-mnist": (784, 10, 60_000),
    "teacher-wide": (1024, 10, 65_536),
}
BUILTIN_NAMES = ("xor", "spirals", "digits", *TEACHERS)
TEACHER_CHUNK = 8192  # rows of a teacher set drawn at a time


class MemorySource(RangeSource):
    """A source over in-memory arrays: X rows (m, n) -> columns x0..x{n-1}, y (m,)."""

    kind = "builtin"
    classes: int | None = None  # how many labels y can hold, known without generating the set
    params: dict = {}  # its generator's parameters, for the fingerprint (subclasses assign their own)
    _columns: dict[str, np.ndarray] | None = None  # None: not generated (yet); a TeacherSource never is

    def __init__(self, name: str, X: np.ndarray, y: np.ndarray):
        self.name = self.spec = name
        self.num_rows = len(y)
        # Column views into X (no copy); read() slices them.
        self._columns = {f"x{j}": X[:, j] for j in range(X.shape[1])}
        self._columns["y"] = y
        self.column_types = {c: str(pa.from_numpy_dtype(a.dtype)) for c, a in self._columns.items()}

    def _pieces(self, lo, hi, columns):
        yield lo, {c: self._columns[c][lo:hi] for c in columns}

    def _empty(self, columns):
        return {c: self._columns[c][:0] for c in columns} if self._columns is not None else \
            {c: np.zeros(0, np.float32 if t == "float" else np.float64 if t == "double" else np.int64)
             for c, t in ((c, self.column_types[c]) for c in columns)}

    def fingerprint(self) -> list:
        return [[self.name, None, self.num_rows]]

    def facts(self) -> dict:
        """No files: the set is its name and its generator's parameters (the job's fingerprint)."""
        return {"builtin": {"name": self.name, "rows": self.num_rows, **self.params}}


def _frozen(*arrays):
    for a in arrays:
        a.setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=None)
def teacher_weights(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The teacher network (T1, T2) of set `name` (float32), drawn from default_rng(1). Read-only."""
    n, n_out, _ = TEACHERS[name]
    trng = np.random.default_rng(1)
    T1 = (trng.standard_normal((n, 32)) / np.sqrt(n)).astype(np.float32)
    T2 = trng.standard_normal((32, max(2, n_out))).astype(np.float32)
    return _frozen(T1, T2)


def teacher_labels(X: np.ndarray, T1: np.ndarray, T2: np.ndarray) -> np.ndarray:
    """y = argmax over K = max(2, n_out) teacher outputs, one label per row of X."""
    return np.argmax(np.tanh(X @ T1) @ T2, axis=1).astype(np.int64)


def teacher_arrays(name: str, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic teacher set `name`, exactly as docs/workloads.md generates it, or
    its first `rows` rows (the same values: X is drawn row after row from one stream,
    and each label depends on its own row only).

    Returns X rows (m, n) float32 and y (m,) int64 (argmax over K = max(2, n_out)
    teacher outputs, so 0/1 when n_out = 1). Read-only.
    """
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher set {name!r} (expected one of {', '.join(TEACHERS)})")
    n, n_out, m = TEACHERS[name]
    rows = m if rows is None else min(rows, m)
    X = np.random.default_rng(0).standard_normal((rows, n), dtype=np.float32)
    return _frozen(X, teacher_labels(X, *teacher_weights(name)))


class TeacherSource(MemorySource):
    """A teacher set drawn as it is read, TEACHER_CHUNK rows at a time from the one
    stream (so the rows equal `teacher_arrays`'), keeping only the rows asked for: the
    driver, which needs the row count and the columns, draws nothing, and a shard
    worker over rows [lo, hi) draws hi rows but holds only its own. The stream goes on
    from where the last read stopped (evaluate's chunks in order cost one pass)."""

    def __init__(self, name: str):
        n, n_out, m = TEACHERS[name]
        self.name = self.spec = name
        self.num_rows, self._n, self._rows = m, n, 0   # _rows: drawn so far from the stream
        self._rng = None
        self.classes = max(2, n_out)  # y is the argmax over max(2, n_out) teacher outputs
        self.params = {"n": n, "n_out": n_out, "x_seed": 0, "teacher_seed": 1}
        self.column_types = {**{f"x{j}": "float" for j in range(n)}, "y": "int64"}

    def _pieces(self, lo, hi, columns):
        if self._rng is None or lo < self._rows:   # behind the stream: draw again from row 0
            self._rng, self._rows = np.random.default_rng(0), 0
        weights = teacher_weights(self.name)
        while self._rows < hi:
            start = self._rows
            X = self._rng.standard_normal((min(TEACHER_CHUNK, hi - start), self._n), dtype=np.float32)
            self._rows += len(X)
            a, b = max(lo, start), min(hi, self._rows)   # this chunk's rows in [lo, hi)
            if a < b:
                X = X[a - start:b - start]
                yield a, {c: teacher_labels(X, *weights) if c == "y" else X[:, int(c[1:])] for c in columns}


class LazySet(MemorySource):
    """A small built-in set whose shape is known up front: the driver, which needs
    only the row count and the columns, never generates it; a reader generates it
    whole (a few hundred kB) on its first read."""

    def __init__(self, name: str, rows: int, n: int, classes: int, make, params: dict | None = None):
        self.name = self.spec = name
        self.num_rows, self.classes, self._make = rows, classes, make
        self.params = {"n": n, "classes": classes, **(params or {})}
        self.column_types = {**{f"x{j}": "double" for j in range(n)}, "y": "int64"}

    def _pieces(self, lo, hi, columns):
        if self._columns is None:
            MemorySource.__init__(self, self.name, *_frozen(*self._make()))
        return super()._pieces(lo, hi, columns)


def xor_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 4 XOR examples: X (4, 2) float64 in order 00, 01, 10, 11; y (4,) int64."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return X, y


def spiral_arrays(points_per_class: int = 300, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """CS231n's interleaved spirals: X (N*K, 2) float64, y (N*K,) int64, shuffled.

    Arm k: radius r = linspace(0, 1), angle t = linspace(4k, 4(k+1)) + 0.2 * noise.
    The rows are shuffled (same seed) so that a tail split is not all one class.
    """
    rng = np.random.default_rng(0)
    N, K = points_per_class, classes
    X = np.empty((N * K, 2))
    y = np.repeat(np.arange(K, dtype=np.int64), N)
    for k in range(K):
        r = np.linspace(0.0, 1.0, N)
        t = np.linspace(4.0 * k, 4.0 * (k + 1), N) + rng.standard_normal(N) * 0.2
        X[k * N:(k + 1) * N] = np.column_stack([r * np.sin(t), r * np.cos(t)])
    order = rng.permutation(N * K)
    return X[order], y[order]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: X (1797, 64) float64 in [0, 1], y (1797,) int64.

    Read straight from sklearn/datasets/data/digits.csv.gz (64 pixel counts 0..16,
    then the label) without importing scikit-learn, which takes a second.
    """
    table = np.loadtxt(digits_path(), delimiter=",")
    return table[:, :64] / 16.0, table[:, 64].astype(np.int64)


def digits_path() -> str:
    """scikit-learn's digits.csv.gz, or a DataError saying what is missing."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source: the built-in set 'digits' needs scikit-learn, which is not "
                        "installed (pip install scikit-learn)")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not os.path.exists(path):
        raise DataError(f"data.source: the built-in set 'digits' needs {path}, which is missing "
                        "from this scikit-learn installation")
    return path


@functools.lru_cache(maxsize=None)
def builtin_source(name: str) -> MemorySource:
    """The built-in set `name` (one of BUILTIN_NAMES) as a source, cached per process;
    its rows are generated on the first read, not here."""
    if name in TEACHERS:
        return TeacherSource(name)
    if name == "xor":
        return LazySet(name, 4, 2, 2, xor_arrays)
    if name == "spirals":
        return LazySet(name, 900, 2, 3, spiral_arrays, {"points_per_class": 300, "seed": 0})
    if name == "digits":
        digits_path()  # scikit-learn's file is there (or one line saying it is not), not read yet
        return LazySet(name, 1797, 64, 10, digits_arrays, {"file": "sklearn digits.csv.gz"})
    raise DataError(f"data.source: no built-in set {name!r} (built-in sets: {', '.join(BUILTIN_NAMES)})")
