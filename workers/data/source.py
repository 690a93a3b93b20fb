"""What every example source offers (`Source`), and the checks and conversions all share.

A source is a table of named columns, one example per row, read by row range: see
workers/data/sources.py (`open_source`) for the kinds and how one is chosen. This module
is the protocol and the base class; csv_source.py, parquet.py and builtin_sets.py are
the kinds.
"""

from __future__ import annotations

import os
import stat
from typing import Iterator, Protocol

import numpy as np
import pyarrow as pa

from trainer.errors import DataError, one_line
from workers.data import fingerprint as fp
from workers.data.locations import explain

# What pyarrow raises for bad files: ArrowInvalid & co. derive from ArrowException,
# ArrowIOError is an OSError.
ARROW_ERRORS = (pa.ArrowException, OSError)


class Source(Protocol):
    """What every source offers (CSV in `csv_source`, Parquet in `parquet`, built-in sets
    in `builtin_sets`); a job, its workers and its fingerprint use nothing else."""

    kind: str                     # "csv", "parquet", "parquet-dir", "builtin"
    spec: str                     # what `open_source` needs to reopen it (in a worker)
    name: str                     # shown in messages: absolute path, URI or built-in name
    remote: bool                  # behind a URI (read through pyarrow.fs)
    num_rows: int
    column_types: dict[str, str]  # column -> arrow type as a string, in column order
    classes: int | None           # labels y can hold, when known without reading (built-in sets)

    @property
    def column_names(self) -> list[str]: ...

    def read(self, lo: int, hi: int, columns: list[str]) -> dict[str, np.ndarray]: ...

    def pieces(self, lo: int, hi: int, columns: list[str]) -> Iterator[tuple[int, dict[str, np.ndarray]]]: ...

    def handoff(self) -> dict | None: ...

    def column_max(self, column: str) -> float | None: ...

    def describe(self) -> dict: ...

    def fingerprint(self) -> list: ...

    def facts(self) -> dict: ...

    def expect(self, fingerprint: dict) -> None: ...

    def verify(self) -> None: ...


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
    classes: int | None = None
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
            self._read_nothing()
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

    def _read_nothing(self) -> None:
        """An empty range was asked for (a source that counts what it reads says so)."""

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


