"""Data layer: range reads from Parquet/CSV/built-ins, schema, encoding, validation split."""


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.errors import ConfigError, DataError
from workers.data import builtin_sets
from workers.data.examples import (Schema, load_examples, load_split_examples, resolve_schema,
                              split_rows, train_index_range)
from workers.data.csv_source import CsvSource
from workers.data.sources import open_source

COLUMNS = ["x0", "x1", "y"]


def make_table(m, start=0):
    """x0 float (the global row number + 0.5), x1 int, y label in 0..2."""
    rows = np.arange(start, start + m)
    return pa.table({"x0": rows + 0.5, "x1": rows * 3, "y": rows % 3})


def full(source):
    return source.read(0, source.num_rows, COLUMNS)


def assert_ranges_match(source, ranges):
    whole = full(source)
    for lo, hi in ranges:
        got = source.read(lo, hi, COLUMNS)
        for c in COLUMNS:
            assert got[c].shape == (hi - lo,)
            np.testing.assert_array_equal(got[c], whole[c][lo:hi], err_msg=f"{c} [{lo},{hi})")


def boundary_ranges(edges, num_rows):
    """Every (lo, hi) over points on and next to the given boundaries."""
    points = sorted({p for e in edges for p in (e - 1, e, e + 1) if 0 <= p <= num_rows})
    return [(lo, hi) for lo in points for hi in points if lo <= hi]


def raises_data_error(call, *fragments):
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- Parquet file

@pytest.fixture
def parquet_file(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(make_table(103), path, row_group_size=10)   # 11 groups, last has 3 rows
    return path


def test_parquet_metadata_and_full_read(parquet_file):
    src = open_source(str(parquet_file))
    assert (src.num_rows, src.column_names) == (103, COLUMNS)
    np.testing.assert_array_equal(full(src)["x0"], np.arange(103) + 0.5)
    assert src.describe() == {"source": str(parquet_file), "kind": "parquet", "num_rows": 103,
                              "columns": {"x0": "double", "x1": "int64", "y": "int64"}}


def test_parquet_range_reads_equal_slices(parquet_file):
    src = open_source(str(parquet_file))
    assert_ranges_match(src, boundary_ranges(range(0, 104, 10), 103) + [(0, 103), (3, 97)])


def test_parquet_reads_only_overlapping_row_groups(parquet_file):
    src = open_source(str(parquet_file))
    expected = {(25, 37): [2, 3], (20, 30): [2], (19, 21): [1, 2], (0, 1): [0],
                (100, 103): [10], (0, 103): list(range(11)), (40, 40): []}
    for (lo, hi), groups in expected.items():
        src.read(lo, hi, ["x0"])
        assert src.last_row_groups_read == groups, (lo, hi)


def test_parquet_null_becomes_nan_and_is_reported(tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"x0": [1, 2, None, 4], "y": [0, 1, 0, 1]}), path)
    src = open_source(str(path))
    schema = resolve_schema(src, None, "y", [1, 2], "cross_entropy")
    raises_data_error(lambda: load_examples(src, schema, 0, 4, np.float32),
                      f"column 'x0' in {path} has a NaN at row 2")


# ------------------------------------------------------- directory of Parquet

@pytest.fixture
def parquet_dir(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    # Written out of name order; read in sorted name order: a (7), b (23), c (12).
    for name, start, m in [("c.parquet", 30, 12), ("a.parquet", 0, 7), ("b.parquet", 7, 23)]:
        pq.write_table(make_table(m, start), folder / name, row_group_size=5)
    (folder / "README.txt").write_text("not data")
    return folder


def test_directory_concatenates_in_name_order(parquet_dir):
    src = open_source(str(parquet_dir))
    assert src.num_rows == 42
    np.testing.assert_array_equal(full(src)["x1"], np.arange(42) * 3)
    assert src.describe()["kind"] == "parquet_dir"


def test_directory_range_reads_equal_slices(parquet_dir):
    src = open_source(str(parquet_dir))
    assert_ranges_match(src, boundary_ranges([0, 5, 7, 12, 17, 30, 35, 40, 42], 42))


def test_directory_reads_only_overlapping_files_and_groups(parquet_dir):
    src = open_source(str(parquet_dir))
    src.read(10, 14, COLUMNS)            # b.parquet rows 3..6
    assert src.last_row_groups_read == [("b.parquet", 0), ("b.parquet", 1)]
    src.read(6, 8, COLUMNS)              # across the a/b boundary
    assert src.last_row_groups_read == [("a.parquet", 1), ("b.parquet", 0)]
    src.read(36, 42, COLUMNS)            # c.parquet rows 6..11
    assert src.last_row_groups_read == [("c.parquet", 1), ("c.parquet", 2)]


def test_directory_errors(tmp_path, parquet_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    raises_data_error(lambda: open_source(str(empty)), f"no .parquet files in directory {empty}")
    pq.write_table(pa.table({"x0": [1.0], "z": [1]}), parquet_dir / "d.parquet")
    raises_data_error(lambda: open_source(str(parquet_dir)), "d.parquet has columns (x0, z)")


# ------------------------------------------------------------------------ CSV

def write_csv(path, header, rows):
    path.write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def test_csv_range_reads_across_batches(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "d.csv", "x0,x1,y", [(i + 0.5, i * 3, i % 3) for i in range(500)])
    monkeypatch.setattr(CsvSource, "block_size", 256)   # many small batches
    src = open_source(str(path))
    assert (src.num_rows, src.column_names) == (500, COLUMNS)
    np.testing.assert_array_equal(full(src)["x1"], np.arange(500) * 3)
    assert_ranges_match(src, boundary_ranges([0, 1, 37, 38, 100, 250, 499, 500], 500))
    assert src.describe()["columns"] == {"x0": "double", "x1": "int64", "y": "int64"}


def test_csv_int_column_with_later_floats_is_widened(tmp_path, monkeypatch):
    rows = [(i, i % 2) for i in range(300)] + [(1.5, 0)]
    monkeypatch.setattr(CsvSource, "block_size", 256)
    src = open_source(str(write_csv(tmp_path / "w.csv", "x0,y", rows)))
    assert src.column_types["x0"] == "double"
    assert src.read(299, 301, ["x0"])["x0"].tolist() == [299.0, 1.5]


def test_csv_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    raises_data_error(lambda: open_source(str(empty)), f"data.source: {empty} is empty")
    header_only = tmp_path / "header.csv"
    header_only.write_text("x0,y\n")
    raises_data_error(lambda: open_source(str(header_only)), f"data.source: {header_only} has no rows")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("x0,y\n1,2\n3\n")
    raises_data_error(lambda: open_source(str(ragged)), f"data.source: cannot read {ragged}")


def test_csv_bad_values_name_column_and_row(tmp_path):
    rows = [(i, i, "a" if i % 2 else "b", i % 3) for i in range(30)]
    rows[17] = (17, "nan", "a", 2)
    path = write_csv(tmp_path / "data.csv", "x0,x1,s,y", rows)
    src = open_source(str(path))
    nan_schema = resolve_schema(src, ["x0", "x1"], "y", [2, 3], "cross_entropy")
    raises_data_error(lambda: load_examples(src, nan_schema, 0, 30, np.float64),
                      f"column 'x1' in {path} has a NaN at row 17")
    X, _ = load_examples(src, nan_schema, 0, 17, np.float64)     # rows before 17 are fine
    assert X.shape == (17, 2)
    str_schema = resolve_schema(src, ["x0", "s"], "y", [2, 3], "cross_entropy")
    raises_data_error(lambda: load_examples(src, str_schema, 0, 5, np.float64),
                      f"column 's' in {path} is not numeric (type string)")


# ---------------------------------------------------------------- open_source

def test_open_source_errors(tmp_path):
    missing = tmp_path / "nope.parquet"
    raises_data_error(lambda: open_source(str(missing)), f"data.source: no such file: {missing}")
    other = tmp_path / "data.json"
    other.write_text("{}")
    raises_data_error(lambda: open_source(str(other)), "unknown file type '.json'", str(other))
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_text("hello")
    raises_data_error(lambda: open_source(str(corrupt)), f"data.source: cannot read {corrupt}")
    no_rows = tmp_path / "none.parquet"
    pq.write_table(make_table(0), no_rows)
    raises_data_error(lambda: open_source(str(no_rows)), f"data.source: {no_rows} has no rows")


def test_open_source_expands_home(tmp_path, monkeypatch, parquet_file):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_source("~/data.parquet").name == str(parquet_file)


def test_read_checks_range_and_columns(parquet_file):
    src = open_source(str(parquet_file))
    with pytest.raises(ValueError):
        src.read(5, 200, ["x0"])
    raises_data_error(lambda: src.read(0, 5, ["f9"]), "column 'f9' not in", "(columns: x0, x1, y)")


# ------------------------------------------------------------------ built-ins

def test_xor():
    src = open_source("xor")
    cols = src.read(0, 4, ["x0", "x1", "y"])
    assert cols["x0"].tolist() == [0, 0, 1, 1] and cols["x1"].tolist() == [0, 1, 0, 1]
    assert cols["y"].tolist() == [0, 1, 1, 0]


def test_spirals():
    X, y = builtin_sets.spiral_arrays()
    X2, y2 = builtin_sets.spiral_arrays()
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    assert X.shape == (900, 2) and X.dtype == np.float64 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [300, 300, 300]
    assert set(y[-90:].tolist()) == {0, 1, 2}           # shuffled: a tail split has every class
    assert np.abs(X).max() <= 1.0 + 1e-12
    src = open_source("spirals")
    assert src is open_source("spirals")                # cached per process
    np.testing.assert_array_equal(src.read(0, 900, ["x1"])["x1"], X[:, 1])


def test_digits():
    src = open_source("digits")
    assert src.num_rows == 1797 and src.column_names == [f"x{j}" for j in range(64)] + ["y"]
    X, Y = load_examples(src, resolve_schema(src, None, "y", [64, 10], "cross_entropy"), 0, 1797, np.float32)
    assert X.shape == (1797, 64) and X.min() == 0 and X.max() == 1
    assert Y.shape == (1797, 10) and (Y.sum(axis=0) > 150).all()   # all 10 classes present


def test_teacher_tiny_matches_workloads_recipe():
    m, n = 10_000, 2
    X = np.random.default_rng(0).standard_normal((m, n), dtype=np.float32)
    trng = np.random.default_rng(1)
    T1 = (trng.standard_normal((n, 32)) / np.sqrt(n)).astype(np.float32)
    T2 = trng.standard_normal((32, 2)).astype(np.float32)
    y = np.argmax(np.tanh(X @ T1) @ T2, axis=1)
    Xb, yb = builtin_sets.teacher_arrays("teacher-tiny")
    assert Xb.dtype == np.float32 and yb.dtype == np.int64 and not Xb.flags.writeable
    np.testing.assert_array_equal(Xb, X)
    np.testing.assert_array_equal(yb, y)
    assert 0.2 < y.mean() < 0.8                              # both labels occur
    src = open_source("teacher-tiny")
    schema = resolve_schema(src, None, "y", [2, 16, 16, 1], "binary_cross_entropy")
    Xs, Ys = load_examples(src, schema, 100, 200, np.float32)
    np.testing.assert_array_equal(Xs, X[100:200])
    np.testing.assert_array_equal(Ys[:, 0], y[100:200])


def test_a_teacher_set_generates_only_the_rows_up_to_the_highest_read():
    X, y = builtin_sets.teacher_arrays("teacher-mnist")
    # A new source, not the process's cached one: an earlier test in this process may
    # have read that one whole (tests/test_benchmarks.py trains W-mnist in process).
    builtin_sets.builtin_source.cache_clear()
    src = open_source("teacher-mnist")
    schema = resolve_schema(src, None, "y", [784, 10], "cross_entropy")
    assert src._rows == 0  # the driver's checks need no rows
    Xs, Ys = load_examples(src, schema, 29_000, 30_001, np.float32)
    assert src._rows == 30_001  # a worker over [29000, 30001) drew 30,001 rows, not 60,000
    np.testing.assert_array_equal(Xs, X[29_000:30_001])
    np.testing.assert_array_equal(Ys.argmax(axis=1), y[29_000:30_001])
    for lo, hi in ((8_000, 8_300), (30_001, 30_002), (59_990, 60_000)):  # across a chunk; on; back
        Xs, Ys = load_examples(src, schema, lo, hi, np.float32)
        np.testing.assert_array_equal(Xs, X[lo:hi])
        np.testing.assert_array_equal(Ys.argmax(axis=1), y[lo:hi])


def test_teacher_mnist_shape():
    X, y = builtin_sets.teacher_arrays("teacher-mnist")
    assert X.shape == (60_000, 784) and y.shape == (60_000,)
    assert np.unique(y).tolist() == list(range(10))


# --------------------------------------------------------------------- schema

@pytest.fixture
def tiny_csv(tmp_path):
    return open_source(str(write_csv(tmp_path / "t.csv", "a,b,y", [(1, 2, 0), (3, 4, 2), (5, 6, 1)])))


def test_schema_defaults(tiny_csv):
    assert resolve_schema(tiny_csv, None, "y", [2, 8, 3], "cross_entropy") == \
        Schema(("a", "b"), ("y",), "one_hot", 2, 3)
    assert resolve_schema(tiny_csv, ["b"], ["a", "y"], [1, 2], "mse") == \
        Schema(("b",), ("a", "y"), "numeric", 1, 2)
    assert resolve_schema(tiny_csv, ["a", "b"], "y", [2, 1], "binary_cross_entropy").encoding == "binary"


def test_schema_errors(tiny_csv):
    path = tiny_csv.name
    raises_data_error(lambda: resolve_schema(tiny_csv, ["a", "f9"], "y", [2, 3], "cross_entropy"),
                      f"data.features: column 'f9' not in {path} (columns: a, b, y)")
    raises_data_error(lambda: resolve_schema(tiny_csv, None, "label", [2, 3], "cross_entropy"),
                      f"data.target: column 'label' not in {path}")
    raises_data_error(lambda: resolve_schema(tiny_csv, ["a", "y"], "y", [2, 3], "cross_entropy"),
                      "data.features: column 'y' is also the target")
    raises_data_error(lambda: resolve_schema(tiny_csv, None, "y", [5, 3], "cross_entropy"),
                      "model.layers[0] is 5 but data.features has 2 columns (a, b)")
    raises_data_error(lambda: resolve_schema(tiny_csv, ["a"], ["b", "y"], [1, 2], "cross_entropy"),
                      "data.target: cost cross_entropy needs one column of class labels")
    raises_data_error(lambda: resolve_schema(tiny_csv, None, "y", [2, 3], "mse"),
                      "model.layers[-1] is 3 but data.target has 1 column (y)")
    with pytest.raises(ConfigError, match="model.cost"):
        resolve_schema(tiny_csv, None, "y", [2, 3], "hinge")


# ------------------------------------------------------------------- encoding

def test_one_hot_encoding_and_layout(tiny_csv):
    schema = resolve_schema(tiny_csv, None, "y", [2, 3], "cross_entropy")
    X, Y = load_examples(tiny_csv, schema, 0, 3, np.float64)
    assert X.dtype == Y.dtype == np.float64 and X.flags.c_contiguous and Y.flags.c_contiguous
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(Y, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    X, Y = load_examples(tiny_csv, schema, 1, 2, np.float32)
    assert X.shape == (1, 2) and Y.shape == (1, 3) and X.dtype == np.float32


def test_label_and_target_errors(tmp_path):
    path = write_csv(tmp_path / "l.csv", "x0,y", [(0.1, 0), (0.2, 7), (0.3, 1)])
    src = open_source(str(path))
    schema = resolve_schema(src, None, "y", [1, 3], "cross_entropy")
    raises_data_error(lambda: load_examples(src, schema, 0, 3, np.float32),
                      f"column 'y' in {path}: label 7 at row 1 does not fit an output layer of 3 classes")
    raises_data_error(lambda: load_examples(src, schema.__class__(("y",), ("x0",), "one_hot", 1, 3), 0, 3,
                                            np.float32), "label 0.1 at row 0 is not a whole class number")
    binary = resolve_schema(src, None, "y", [1, 1], "binary_cross_entropy")
    raises_data_error(lambda: load_examples(src, binary, 0, 3, np.float32),
                      f"column 'y' in {path}: target 7 at row 1 is not 0 or 1")
    inf = open_source(str(write_csv(tmp_path / "i.csv", "x0,y", [(1.0, 0), ("inf", 1)])))
    raises_data_error(lambda: load_examples(inf, resolve_schema(inf, None, "y", [1, 1], "mse"), 0, 2, np.float32),
                      "column 'x0'", "has an infinite value (inf) at row 1")
    big = open_source(str(write_csv(tmp_path / "b.csv", "x0,y", [(1e300, 0)])))
    raises_data_error(lambda: load_examples(big, resolve_schema(big, None, "y", [1, 1], "mse"), 0, 1, np.float32),
                      "has value 1e+300 at row 0, too large for float32")


# ---------------------------------------------------------- validation split

def test_split_rows():
    train, val = split_rows(1000, 0.1, seed=3)
    again_train, again_val = split_rows(1000, 0.1, seed=3)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(val, again_val)
    assert len(val) == 100 and len(train) == 900 and train.dtype == val.dtype == np.int64
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(1000))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    np.testing.assert_array_equal(val, np.sort(np.random.default_rng(3).permutation(1000)[:100]))
    assert not np.array_equal(split_rows(1000, 0.1, seed=4)[1], val)
    assert len(split_rows(1000, 0.0, 0)[1]) == 0
    assert len(split_rows(10, 0.01, 0)[1]) == 1                # at least one
    assert len(split_rows(1, 0.3, 0)[0]) == 1                  # one row: nothing to spare
    raises_data_error(lambda: split_rows(2, 0.9, 0), "leaves no rows for training")


def test_train_index_range():
    train = np.array([1, 2, 5, 6, 9], dtype=np.int64)
    assert train_index_range(train, 0, 10) == (0, 5)
    assert train_index_range(train, 2, 6) == (1, 3)
    assert train_index_range(train, 3, 5) == (2, 2)
    # Row ranges that tile 0..10 give index ranges that tile 0..5.
    rows = [(0, 0), (0, 5), (5, 5), (5, 9), (9, 10), (10, 10)]
    assert [train_index_range(train, lo, hi) for lo, hi in rows] == [(0, 0), (0, 2), (2, 2), (2, 4), (4, 5), (5, 5)]


def test_load_split_examples_over_ranges_concatenates_to_whole(parquet_dir):
    src = open_source(str(parquet_dir))
    schema = resolve_schema(src, ["x0", "x1"], "y", [2, 3], "cross_entropy")
    train, val = split_rows(src.num_rows, 0.25, seed=0)
    X, Y = load_examples(src, schema, 0, src.num_rows, np.float64)
    for bounds in ([0, 42], [0, 6, 7, 20, 30, 42], [0, 1, 2, 3, 41, 42]):
        parts = [load_split_examples(src, schema, lo, hi, train, val, np.float64)
                 for lo, hi in zip(bounds[:-1], bounds[1:])]
        for k, expected in enumerate([X[train], Y[train], X[val], Y[val]]):
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), expected)
    # A worker's row range holds exactly the training indices inside it.
    tlo, thi = train_index_range(train, 10, 20)
    Xt, Yt, _, _ = load_split_examples(src, schema, 10, 20, train, val, np.float64)
    np.testing.assert_array_equal(Xt, X[train[tlo:thi]])


# ------------------------------------------------- folders with hive partitions, URIs

def test_hive_folders_become_columns(tmp_path):
    """part=K/ folders add `part` as a column; rows come in path order, so the table is
    the rows of part=0 then part=1 (written independently here with their key)."""
    root = tmp_path / "hive"
    pieces = {0: make_table(7), 1: make_table(9, start=7)}
    for key, table in pieces.items():
        (root / f"part={key}").mkdir(parents=True)
        pq.write_table(table, root / f"part={key}" / "f.parquet", row_group_size=4)
    (root / "_SUCCESS").write_text("")  # skipped, as pyarrow skips it
    src = open_source(str(root))
    assert src.column_names == [*COLUMNS, "part"] and src.column_types["part"] == "int64"
    whole = src.read(0, 16, [*COLUMNS, "part"])
    np.testing.assert_array_equal(whole["x0"], np.arange(16) + 0.5)
    np.testing.assert_array_equal(whole["part"], [0] * 7 + [1] * 9)
    assert src.read(5, 9, ["part"])["part"].tolist() == [0, 0, 1, 1]   # the key alone reads no file
    src.read(6, 12, ["x0", "part"])
    assert src.last_row_groups_read == [("part=0/f.parquet", 1), ("part=1/f.parquet", 0),
                                        ("part=1/f.parquet", 1)]
    (root / "other=1").mkdir()
    pq.write_table(make_table(2), root / "other=1" / "g.parquet")
    raises_data_error(lambda: open_source(str(root)), "partition folders (part)", "other=1/g.parquet has (other)")


def test_file_uri_reads_like_the_path(parquet_file):
    src = open_source(parquet_file.as_uri())
    assert src.name == parquet_file.as_uri() and src.num_rows == 103
    np.testing.assert_array_equal(full(src)["x0"], full(open_source(str(parquet_file)))["x0"])


def test_a_worker_reopens_a_csv_without_counting_it(tmp_path, monkeypatch):
    from workers.data import csv_source

    path = write_csv(tmp_path / "d.csv", "x0,x1,y", [(i + 0.5, i * 3, i % 3) for i in range(50)])
    driver = open_source(str(path))
    monkeypatch.setattr(csv_source, "_count_rows", lambda reader: pytest.fail("counted again"))
    worker = open_source(str(path), driver.handoff())
    assert (worker.num_rows, worker.column_types) == (50, driver.column_types)
    np.testing.assert_array_equal(worker.read(10, 20, ["x1"])["x1"], np.arange(10, 20) * 3)


def test_the_driver_generates_no_built_in_set():
    from experiments.jobs.job import prepare
    from trainer.config import from_dict

    builtin_sets.builtin_source.cache_clear()
    for name, layers in (("spirals", [2, 64, 3]), ("teacher-mnist", [784, 64, 10])):
        job = prepare(from_dict({"data": {"source": name}}))   # layers inferred: classes known
        assert list(job.spec.layers) == layers
        source = builtin_sets.builtin_source(name)
        assert source._columns is None, f"{name} was generated in the driver"
    builtin_sets.builtin_source.cache_clear()


def test_the_label_count_comes_from_parquet_statistics(tmp_path, monkeypatch):
    from experiments.jobs.job import largest_label
    from workers.data.parquet import ParquetFileSource

    path = tmp_path / "d.parquet"
    pq.write_table(make_table(103), path, row_group_size=10)
    src = open_source(str(path))
    monkeypatch.setattr(ParquetFileSource, "_pieces", lambda *a: pytest.fail("read data pages"))
    assert largest_label(src, "y") == 2


def test_the_driver_reads_a_csv_once_even_to_count_classes(tmp_path, monkeypatch):
    from experiments.jobs.job import prepare
    from trainer.config import from_dict

    path = write_csv(tmp_path / "d.csv", "x0,x1,y", [(i + 0.5, i * 3, i % 4) for i in range(50)])
    opened = []
    real = CsvSource._open
    monkeypatch.setattr(CsvSource, "_open", lambda self, columns=None: opened.append(1) or real(self, columns))
    job = prepare(from_dict({"data": {"source": str(path)}}))   # layers inferred: 4 classes
    assert list(job.spec.layers) == [2, 64, 4] and opened == [1]
