"""Example sources that read a row range [lo, hi) without loading the rest.

A source is a table of named columns, one example per row. `read(lo, hi, columns)`
returns rows [lo, hi) of those columns as 1-D numpy arrays of length hi - lo: each
worker reads only its own range (docs/design.md section 3), so Parquet sources read only
the row groups (and, for a directory, only the files) that overlap the range. CSV has
no index, so a CSV source streams from the top and stops after hi.

Every user-caused problem (missing or unreadable file, unknown extension, no rows, a
FIFO or device where a file should be, compressed bytes under a .csv name, a header
that is not UTF-8, two columns of one name, a directory whose files disagree on a
column's type) is a `DataError` with one line naming the path; pyarrow's own errors
never leak.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from trainer.errors import DataError, one_line

# What pyarrow raises for bad files: ArrowInvalid & co. derive from ArrowException,
# ArrowIOError is an OSError.
ARROW_ERRORS = (pa.ArrowException, OSError)


class Source(Protocol):
    """What every source offers (files here, built-in sets in `builtin_sets`)."""

    name: str                     # shown in messages: absolute path or built-in name
    num_rows: int
    column_names: list[str]
    column_types: dict[str, str]  # column -> arrow type as a string, in column order

    def read(self, lo: int, hi: int, columns: list[str]) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...


# Leading bytes of formats that pyarrow's CSV reader would take for (garbled) text.
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"BZh": "bzip2-compressed",
                    b"\xfd7zXZ\x00": "xz-compressed", b"\x28\xb5\x2f\xfd": "zstd-compressed",
                    b"\x04\x22\x4d\x18": "lz4-compressed", b"PK\x03\x04": "a zip archive",
                    b"PAR1": "Parquet"}
MAX_NAME = 40  # characters of a column name shown in a message (a header can hold anything)


def show_name(name: str) -> str:
    """A column name for a message: control characters escaped, long names cut."""
    text = name if name.isprintable() else repr(name)[1:-1]
    return text if len(text) <= MAX_NAME else text[:MAX_NAME - 3] + "..."


def format_columns(names, limit: int = 10) -> str:
    """'a, b, y', shortened to the first `limit` names for wide tables (784 pixels)."""
    names = [show_name(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} columns)"


def check_regular_file(path: str) -> None:
    """Refuse what is not a regular file (after symlinks) before opening it: reading a
    FIFO blocks until someone writes, and /dev/zero or /dev/urandom never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataError(f"data.source: cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a directory" if stat.S_ISDIR(mode) else "not a regular file")
        raise DataError(f"data.source: {path} is {kind}, not a data file")


def named_types(path: str, schema: pa.Schema) -> dict[str, str]:
    """{column: arrow type} of a file's schema, refusing names that are not UTF-8 or
    appear twice (a dict would silently keep only the last of two same-named columns)."""
    try:
        names = [f.name for f in schema]
    except UnicodeDecodeError as err:   # pyarrow decodes names lazily, here
        raise DataError(f"data.source: {path}: column names are not UTF-8 text "
                        f"(byte 0x{err.object[err.start]:02x}); save the file as UTF-8") from None
    seen = set()
    for name in names:
        if name in seen:
            raise DataError(f"data.source: {path} has two columns named {show_name(name)!r}; "
                            "column names must be unique")
        seen.add(name)
    return {f.name: str(f.type) for f in schema}


class RangeSource:
    """Shared checks for every source; subclasses set the attributes and `_read`."""

    kind = ""
    spec = ""   # what `open_source` needs to reopen this source (a shard worker in a Ray actor reopens it by spec)
    name = ""
    num_rows = 0
    column_types: dict[str, str] = {}

    @property
    def column_names(self) -> list[str]:
        return list(self.column_types)

    def read(self, lo: int, hi: int, columns: list[str]) -> dict[str, np.ndarray]:
        """Rows [lo, hi) of `columns`: {column: 1-D array of length hi - lo}."""
        lo, hi = int(lo), int(hi)
        if not 0 <= lo <= hi <= self.num_rows:
            raise ValueError(f"row range [{lo}, {hi}) is outside 0..{self.num_rows} of {self.name}")
        for column in columns:
            if column not in self.column_types:
                raise DataError(f"column {column!r} not in {self.name} "
                                f"(columns: {format_columns(self.column_names)})")
        try:
            return self._read(lo, hi, list(columns))
        except ARROW_ERRORS as err:
            raise DataError(f"data.source: cannot read {self.name}: {self._explain(err)}") from err

    def _read(self, lo: int, hi: int, columns: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _explain(self, err: BaseException) -> str:
        return one_line(err)

    def describe(self) -> dict:
        """The dataset schema as logged with a run: source, kind, rows, column types."""
        return {"source": self.name, "kind": self.kind, "num_rows": self.num_rows,
                "columns": dict(self.column_types)}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} rows={self.num_rows}>"


def column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """One arrow column as numpy; numeric nulls become NaN so validation reports them."""
    kind = column.type
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    if column.null_count and numeric:
        column = column.cast(pa.float64())   # without this, a null int/bool gives objects
    return column.to_numpy()


def table_to_numpy(table: pa.Table, columns: list[str]) -> dict[str, np.ndarray]:
    return {c: column_to_numpy(table.column(c)) for c in columns}


class ParquetFileSource(RangeSource):
    """One Parquet file; a range read touches only the row groups that overlap it."""

    kind = "parquet"

    def __init__(self, path: str):
        self.name = self.spec = path
        try:
            self._file = pq.ParquetFile(path)
        except ARROW_ERRORS as err:
            raise DataError(f"data.source: cannot read {path}: {one_line(err)}") from err
        meta = self._file.metadata
        counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        # starts[g] is the first row of group g; starts[-1] == num_rows.
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.num_rows = int(meta.num_rows)
        self.column_types = named_types(path, self._file.schema_arrow)
        self.last_row_groups_read: list[int] = []   # for tests: which groups the last read opened

    def _read(self, lo, hi, columns):
        if lo == hi:
            self.last_row_groups_read = []
            return table_to_numpy(self._file.schema_arrow.empty_table(), columns)
        # 'right' so that empty row groups sharing a start are skipped.
        first = int(np.searchsorted(self._starts, lo, side="right")) - 1
        last = int(np.searchsorted(self._starts, hi - 1, side="right")) - 1
        groups = list(range(first, last + 1))
        self.last_row_groups_read = groups
        table = self._file.read_row_groups(groups, columns=columns)
        return table_to_numpy(table.slice(lo - int(self._starts[first]), hi - lo), columns)


class ParquetDirSource(RangeSource):
    """A directory of Parquet files, concatenated in sorted name order."""

    kind = "parquet_dir"

    def __init__(self, path: str):
        self.name = self.spec = path
        names = sorted(n for n in os.listdir(path) if n.endswith(".parquet") and not n.startswith("."))
        if not names:
            raise DataError(f"data.source: no .parquet files in directory {path}")
        for n in names:
            check_regular_file(os.path.join(path, n))
        self._files = [ParquetFileSource(os.path.join(path, n)) for n in names]
        first = self._files[0]
        for f in self._files[1:]:
            if f.column_names != first.column_names:
                raise DataError(f"data.source: {f.name} has columns ({format_columns(f.column_names)}) "
                                f"but {first.name} has ({format_columns(first.column_names)})")
            for column, kind in f.column_types.items():
                # Read as one table, a column must have one type; pyarrow would fail
                # mid-training on the first range that spans both files.
                if kind != first.column_types[column]:
                    raise DataError(f"data.source: {f.name} has column {show_name(column)!r} of type "
                                    f"{show_name(kind)}, but {os.path.basename(first.name)} has "
                                    f"{show_name(first.column_types[column])}")
        self._starts = np.concatenate([[0], np.cumsum([f.num_rows for f in self._files], dtype=np.int64)])
        self.num_rows = int(self._starts[-1])
        self.column_types = dict(first.column_types)
        self.last_row_groups_read: list[tuple[str, int]] = []   # (file name, row group)

    def _read(self, lo, hi, columns):
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        self.last_row_groups_read = []
        for f, start in zip(self._files, self._starts[:-1].tolist()):
            a, b = max(lo, start), min(hi, start + f.num_rows)
            if a >= b:
                continue
            got = f.read(a - start, b - start, columns)
            self.last_row_groups_read += [(os.path.basename(f.name), g) for g in f.last_row_groups_read]
            for c in columns:
                parts[c].append(got[c])
        if lo == hi:
            return self._files[0].read(0, 0, columns)
        return {c: p[0] if len(p) == 1 else np.concatenate(p) for c, p in parts.items()}


class CsvSource(RangeSource):
    """A CSV file with a header row, streamed in blocks; types fixed once at open."""

    kind = "csv"
    block_size = 1 << 20   # bytes per streamed batch (tests make it small to cross batches)

    def __init__(self, path: str):
        self.name = self.spec = path
        self._types = None
        _refuse_binary(path)
        try:
            reader = self._open()
            inferred = reader.schema
            self.column_types = named_types(path, inferred)
            try:
                self.num_rows = _count_rows(reader)
            except pa.ArrowInvalid as err:
                if "conversion error" not in str(err):
                    raise
                # Types are inferred from the first block; a column that looked like ints
                # (or was empty) there may hold 1.5 further down. Widen those and rescan.
                self._types = {f.name: pa.float64() if pa.types.is_integer(f.type) or pa.types.is_null(f.type)
                               else f.type for f in inferred}
                reader = self._open()
                self.num_rows = _count_rows(reader)
        except ARROW_ERRORS as err:
            if "Empty CSV file" in str(err):
                raise DataError(f"data.source: {path} is empty") from err
            raise DataError(f"data.source: cannot read {path}: {self._explain(err)}") from err
        # Fix the types so that every later range read parses the columns alike.
        self._types = {f.name: f.type for f in reader.schema}
        self.column_types = {name: str(t) for name, t in self._types.items()}

    def _open(self, columns=None):
        convert = pacsv.ConvertOptions(column_types=self._types, include_columns=columns)
        return pacsv.open_csv(self.name, read_options=pacsv.ReadOptions(block_size=self.block_size),
                              convert_options=convert)

    def _explain(self, err: BaseException) -> str:
        """pyarrow says 'CSV column #2'; say the column's name instead."""
        message, names = one_line(err), self.column_names
        match = re.search(r"CSV column #(\d+)", message)
        if match and int(match.group(1)) < len(names):
            message = message.replace(match.group(0), f"column {names[int(match.group(1))]!r}")
        return message

    def _read(self, lo, hi, columns):
        reader = self._open(columns)
        batches, row = [], 0
        try:
            for batch in reader:
                n = batch.num_rows
                if row + n > lo and row < hi:   # the batch overlaps [lo, hi)
                    start = max(lo - row, 0)
                    batches.append(batch.slice(start, min(hi - row, n) - start))
                row += n
                if row >= hi:
                    break
        finally:
            reader.close()
        return table_to_numpy(pa.Table.from_batches(batches, schema=reader.schema), columns)


def _refuse_binary(path: str) -> None:
    """A compressed file (or Parquet) named .csv would be parsed as text and fail
    somewhere deep in pyarrow; say what it is instead."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise DataError(f"data.source: cannot read {path}: {err.strerror}") from None
    for magic, what in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"data.source: {path} holds {what} data, not CSV text; "
                            + ("name it .parquet" if what == "Parquet" else "decompress it first"))


def _count_rows(reader) -> int:
    try:
        return sum(batch.num_rows for batch in reader)
    finally:
        reader.close()


def open_source(spec: str) -> Source:
    """A built-in set name (`builtin_sets.BUILTIN_NAMES`), a .parquet file, a directory
    of .parquet files, or a .csv file (`~` expanded) -> a Source with at least one row."""
    from workers import builtin_sets   # imported here: builtin_sets builds on RangeSource

    spec = os.fspath(spec)
    if spec in builtin_sets.BUILTIN_NAMES:
        return builtin_sets.builtin_source(spec)
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.exists(path):
        raise DataError(f"data.source: no such file: {path} "
                        f"(built-in sets: {', '.join(builtin_sets.BUILTIN_NAMES)})")
    extension = os.path.splitext(path)[1].lower()
    if not os.path.isdir(path):
        check_regular_file(path)
    if os.path.isdir(path):
        source = ParquetDirSource(path)
    elif extension == ".parquet":
        source = ParquetFileSource(path)
    elif extension == ".csv":
        source = CsvSource(path)
    else:
        raise DataError(f"data.source: unknown file type {extension or '(no extension)'!r} for {path} "
                        "(expected .parquet, a directory of .parquet files, or .csv)")
    if source.num_rows == 0:
        raise DataError(f"data.source: {path} has no rows")
    return source
