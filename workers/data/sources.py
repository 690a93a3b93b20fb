"""Example sources that read a row range [lo, hi) without loading the rest.

A source is a table of named columns, one example per row, in a local file or folder
or behind a URI (workers/data/locations.py). `pieces(lo, hi, columns)` streams rows
[lo, hi) of those columns as pieces of 1-D numpy arrays, and `read` joins them: each
worker reads only its own range (docs/design.md section 3), so Parquet sources read
only the row groups (and, for a directory, only the files) that overlap the range,
and keep only the range's rows. CSV has no index, so a CSV source streams from the
top and stops after hi.

A piece is a run of rows and SOME of the columns: Parquet (workers/data/parquet.py) is
read a few columns of one row group at a time.

Opening a source reads metadata only: Parquet footers (row counts, names, types), a
folder's listing, and for CSV one counting pass. What a shard worker needs to reopen
it without doing that again is `handoff()`, which the driver ships with the task.

The driver's `facts()` are what the job's fingerprint records (workers/data/fingerprint.py);
a worker's source is told them (`expect`) and checks each file it reads against them.

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
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from trainer.errors import DataError, one_line
from workers.data import fingerprint as fp
from workers.data.locations import Location, explain, locate

# What pyarrow raises for bad files: ArrowInvalid & co. derive from ArrowException,
# ArrowIOError is an OSError.
ARROW_ERRORS = (pa.ArrowException, OSError)


class Source(Protocol):
    """What every source offers (CSV here, Parquet in `parquet`, built-in sets in `builtin_sets`)."""

    name: str                     # shown in messages: absolute path or built-in name
    num_rows: int
    column_names: list[str]
    column_types: dict[str, str]  # column -> arrow type as a string, in column order

    def read(self, lo: int, hi: int, columns: list[str]) -> dict[str, np.ndarray]: ...

    def pieces(self, lo: int, hi: int, columns: list[str]): ...

    def handoff(self) -> dict | None: ...

    def column_max(self, column: str) -> float | None: ...

    def describe(self) -> dict: ...

    def fingerprint(self) -> list: ...

    def facts(self) -> dict: ...

    def expect(self, fingerprint: dict) -> None: ...


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
    """Shared checks for every source; subclasses set the attributes and `_pieces`."""

    kind = ""
    spec = ""   # what `open_source` needs to reopen this source (a shard worker in a Ray actor reopens it by spec)
    name = ""
    remote = False
    num_rows = 0
    column_types: dict[str, str] = {}
    schema: pa.Schema | None = None   # for the empty read; None where _empty is overridden

    @property
    def column_names(self) -> list[str]:
        return list(self.column_types)

    def _check(self, lo: int, hi: int, columns: list[str]) -> tuple[int, int]:
        lo, hi = int(lo), int(hi)
        if not 0 <= lo <= hi <= self.num_rows:
            raise ValueError(f"row range [{lo}, {hi}) is outside 0..{self.num_rows} of {self.name}")
        for column in columns:
            if column not in self.column_types:
                raise DataError(f"column {column!r} not in {self.name} "
                                f"(columns: {format_columns(self.column_names)})")
        return lo, hi

    def pieces(self, lo: int, hi: int, columns: list[str]):
        """Rows [lo, hi) of `columns` as (first row, {column: 1-D array}) pieces: each
        (row, column) comes in exactly one piece, a column's pieces in row order; a
        piece may hold only some of the columns."""
        lo, hi = self._check(lo, hi, columns)
        if lo == hi:
            if hasattr(self, "last_row_groups_read"):
                self.last_row_groups_read = []
            return
        self.verify()  # a file that changed since the fingerprint is not read
        try:
            yield from self._pieces(lo, hi, list(columns))
        except ARROW_ERRORS as err:
            raise DataError(f"data.source: cannot read {self.name}: {self._explain(err)}") from err

    def read(self, lo: int, hi: int, columns: list[str]) -> dict[str, np.ndarray]:
        """Rows [lo, hi) of `columns`: {column: 1-D array of length hi - lo}."""
        lo, hi = self._check(lo, hi, columns)
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        for _, piece in self.pieces(lo, hi, columns):
            for c, values in piece.items():
                parts[c].append(values)
        if lo == hi:
            return self._empty(list(columns))
        return {c: p[0] if len(p) == 1 else np.concatenate(p) for c, p in parts.items()}

    def _pieces(self, lo: int, hi: int, columns: list[str]):
        raise NotImplementedError

    def _empty(self, columns: list[str]) -> dict[str, np.ndarray]:
        return table_to_numpy(self.schema.empty_table(), columns)

    def _explain(self, err: BaseException) -> str:
        return explain(err) if self.remote else one_line(err)

    def column_max(self, column: str) -> float | None:
        """A numeric column's largest value from metadata (footer statistics, the CSV
        counting pass), or None when the metadata does not say: then read the column."""
        return None

    def handoff(self) -> dict | None:
        """What `open_source(spec, known)` needs to reopen this source without reading
        its metadata again (a CSV's count, a folder's listing); None: nothing to hand."""
        return None

    def describe(self) -> dict:
        """The dataset schema as logged with a run: source, kind, rows, column types."""
        return {"source": self.name, "kind": self.kind, "num_rows": self.num_rows,
                "columns": dict(self.column_types)}

    def fingerprint(self) -> list:
        """[name, bytes, rows] of each file, from metadata: what the dataset digest hashes."""
        return [[self.name, None, self.num_rows]]

    def facts(self) -> dict:
        """What the job's fingerprint records of this source (workers/data/fingerprint.py)."""
        return {"files": [fp.file_entry(self.name, None, None, self.num_rows)]}

    def expect(self, fingerprint: dict) -> None:
        """Check the files read from now on against the job's fingerprint (a worker)."""

    def verify(self) -> None:
        """DataChangedError if the file has changed since the fingerprint (see `expect`)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} rows={self.num_rows}>"


def column_to_numpy(column) -> np.ndarray:
    """One arrow column (Array or ChunkedArray) as numpy; numeric nulls become NaN so
    validation reports them."""
    kind = column.type
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    if column.null_count and numeric:
        column = column.cast(pa.float64())   # without this, a null int/bool gives objects
    if isinstance(column, pa.ChunkedArray):
        return column.to_numpy()
    return column.to_numpy(zero_copy_only=False)


def table_to_numpy(table, columns: list[str]) -> dict[str, np.ndarray]:
    return {c: column_to_numpy(table.column(c)) for c in columns}


class CsvSource(RangeSource):
    """A CSV file with a header row, streamed in blocks; types fixed once at open,
    rows counted once (by the driver; workers get the count and the types)."""

    kind = "csv"
    block_size = 1 << 20   # bytes per streamed batch (tests make it small to cross batches)

    def __init__(self, location: Location, known: dict | None = None):
        self.name = self.spec = location.name
        self.remote, self._location = location.remote, location
        self._types, self.size, self.mtime_ns, self.expected = None, None, None, None
        if known is not None:
            self.schema, self.num_rows, self.size = known["schema"], known["num_rows"], known["size"]
            self._types = {f.name: f.type for f in self.schema}
            self.column_types = {name: str(t) for name, t in self._types.items()}
            return
        self._refuse_binary()
        try:
            reader = self._open()
            inferred = reader.schema
            self.column_types = named_types(self.name, inferred)
            try:
                self.num_rows, self._max = _count_rows(reader)
            except pa.ArrowInvalid as err:
                if "conversion error" not in str(err):
                    raise
                # Types are inferred from the first block; a column that looked like ints
                # (or was empty) there may hold 1.5 further down. Widen those and rescan.
                self._types = {f.name: pa.float64() if pa.types.is_integer(f.type) or pa.types.is_null(f.type)
                               else f.type for f in inferred}
                reader = self._open()
                self.num_rows, self._max = _count_rows(reader)
        except ARROW_ERRORS as err:
            if "Empty CSV file" in str(err):
                raise DataError(f"data.source: {self.name} is empty") from err
            raise DataError(f"data.source: cannot read {self.name}: {self._explain(err)}") from err
        # Fix the types so that every later range read parses the columns alike.
        self.schema = reader.schema
        self._types = {f.name: f.type for f in reader.schema}
        self.column_types = {name: str(t) for name, t in self._types.items()}

    def handoff(self) -> dict:
        return {"schema": self.schema, "num_rows": self.num_rows, "size": self.size}

    def column_max(self, column: str) -> float | None:
        """A numeric column's largest value, seen while counting (the driver's only pass)."""
        return getattr(self, "_max", {}).get(column)

    def _stream(self):
        loc = self._location
        if not self.remote:
            return loc.path   # pyarrow opens a local path itself, as always
        return loc.fs.open_input_stream(loc.path, compression=None)   # a .gz name is refused, not unpacked

    def _open(self, columns=None):
        convert = pacsv.ConvertOptions(column_types=self._types, include_columns=columns)
        return pacsv.open_csv(self._stream(), read_options=pacsv.ReadOptions(block_size=self.block_size),
                              convert_options=convert)

    def _explain(self, err: BaseException) -> str:
        """pyarrow says 'CSV column #2'; say the column's name instead."""
        message, names = super()._explain(err), self.column_names
        match = re.search(r"CSV column #(\d+)", message)
        if match and int(match.group(1)) < len(names):
            message = message.replace(match.group(0), f"column {names[int(match.group(1))]!r}")
        return message

    def _pieces(self, lo, hi, columns):
        reader = self._open(columns)
        row = 0
        try:
            for batch in reader:
                n = batch.num_rows
                if row + n > lo and row < hi:   # the batch overlaps [lo, hi)
                    start = max(lo - row, 0)
                    yield row + start, table_to_numpy(batch.slice(start, min(hi - row, n) - start), columns)
                row += n
                if row >= hi:
                    break
        finally:
            reader.close()

    def _refuse_binary(self) -> None:
        """A compressed file (or Parquet) named .csv would be parsed as text and fail
        somewhere deep in pyarrow; say what it is instead."""
        loc = self._location
        try:
            if self.remote:
                info = loc.fs.get_file_info(loc.path)   # before reading: a later change shows
                self.size, self.mtime_ns = info.size, info.mtime_ns
                with loc.fs.open_input_stream(loc.path, compression=None) as f:
                    head = f.read(8)
            else:
                st = os.stat(loc.path)
                self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
                with open(loc.path, "rb") as f:
                    head = f.read(8)
        except OSError as err:
            why = explain(err) if self.remote else err.strerror
            raise DataError(f"data.source: cannot read {self.name}: {why}") from None
        for magic, what in COMPRESSED_MAGIC.items():
            if head.startswith(magic):
                raise DataError(f"data.source: {self.name} holds {what} data, not CSV text; "
                                + ("name it .parquet" if what == "Parquet" else "decompress it first"))

    def fingerprint(self) -> list:
        return [[self.name, self.size, self.num_rows]]

    def facts(self) -> dict:
        return {"files": [fp.file_entry(self.name, self.size, self.mtime_ns, self.num_rows)]}

    def expect(self, fingerprint: dict) -> None:
        self.expected = fp.entries(fingerprint).get(self.name)
        self.verify()

    def verify(self) -> None:
        # Size and time only: the rows were counted by the driver, and a worker reads its
        # own range once (counting again would read the file a second time).
        if self.expected is not None:
            loc = self._location
            fp.check_file(self.expected, self.name, fp.stat(loc.fs if self.remote else None, loc.path),
                          self.remote)


def _count_rows(reader) -> tuple[int, dict[str, float]]:
    """(rows, {numeric column: its largest value}) in one pass: the driver reads a CSV
    once, and the largest label (for the number of classes) comes with the count."""
    rows, top = 0, {}
    try:
        for batch in reader:
            rows += batch.num_rows
            for name, column in zip(batch.schema.names, batch.columns):
                if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                    value = pc.max(column).as_py()   # nulls and NaN skipped: the rows' check names them
                    if value is not None:
                        top[name] = value if name not in top else max(top[name], value)
        return rows, top
    finally:
        reader.close()


def _remote_kind(location: Location) -> str:
    """'dir' or 'file' for a URI, checked now so that a missing bucket or key, refused
    credentials or a dead endpoint is one line here, in the driver, before any worker."""
    fs, path = location.fs, location.path
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            bucket = path.split("/", 1)[0]
            buckets = isinstance(fs, (pafs.S3FileSystem, getattr(pafs, "GcsFileSystem", ())))
            if buckets and bucket != path and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise DataError(f"data.source: {location.name}: no such bucket {bucket!r}")
            raise DataError(f"data.source: {location.name}: no such file")
    except ARROW_ERRORS as err:
        raise DataError(f"data.source: {location.name}: {explain(err)}") from None
    return "dir" if info.type == pafs.FileType.Directory else "file"


def open_source(spec: str, known: dict | None = None, expected: dict | None = None) -> Source:
    """A built-in set name (`builtin_sets.BUILTIN_NAMES`), a .parquet file, a directory
    of .parquet files, or a .csv file, as a local path (`~` expanded) or a URI
    (workers/data/locations.py) -> a Source with at least one row.

    known: the source's `handoff()` from the process that opened it first (a shard
    worker gets the driver's), so a CSV is not counted nor a folder listed again.
    expected: the job's fingerprint (workers/data/fingerprint.py): every file this source
    reads is checked against it first (a DataChangedError names a changed one)."""
    from workers.data import builtin_sets   # imported here: these modules build on RangeSource
    from workers.data.parquet import ParquetDirSource, ParquetFileSource

    spec = os.fspath(spec)
    if spec in builtin_sets.BUILTIN_NAMES:
        return builtin_sets.builtin_source(spec)
    location = locate(spec)
    path = location.path
    extension = os.path.splitext(path.rstrip("/"))[1].lower()
    if known is not None:
        kind = "dir" if "files" in known else "file"
    elif location.remote:
        kind = _remote_kind(location)
    else:
        if not os.path.exists(path):
            raise DataError(f"data.source: no such file: {location.name} "
                            f"(built-in sets: {', '.join(builtin_sets.BUILTIN_NAMES)})")
        if not os.path.isdir(path):
            check_regular_file(path)
        kind = "dir" if os.path.isdir(path) else "file"
    if kind == "dir":
        source = ParquetDirSource(location, known)
    elif extension == ".parquet":
        source = ParquetFileSource(path, location.fs if location.remote else None, location.name,
                                   location.remote)
    elif extension == ".csv":
        source = CsvSource(location, known)
    else:
        raise DataError(f"data.source: unknown file type {extension or '(no extension)'!r} for {location.name} "
                        "(expected .parquet, a directory of .parquet files, or .csv)")
    if source.num_rows == 0:
        raise DataError(f"data.source: {location.name} has no rows")
    if expected is not None:
        source.expect(expected)
    return source
