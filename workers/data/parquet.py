"""Parquet sources: one file, or a folder of files (hive-style partition folders too).

A range read touches only the row groups that overlap it, and reads them a few
columns at a time (a piece, see workers/data/sources.py): pyarrow's record-batch reader
(`iter_batches`) holds a whole row group in memory even for its first 5 rows (about
630 MB for W-mnist's 60,000 rows in one group, which is what pyarrow writes below a
million rows), while one column of it is 240 kB. So a reader holds its output and
one piece, never a row group. Opening reads the footers only.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.errors import DataError, one_line
from workers.data import fingerprint as fp
from workers.data.locations import Location, explain
from workers.data.source import (ARROW_ERRORS, RangeSource, check_regular_file, column_to_numpy, format_columns,
                                 named_types, show_name, table_to_numpy)

PIECE_BYTES = 8 << 20   # a piece read from Parquet holds about this much as float64


def _open_failed(name: str, remote: bool, err: BaseException) -> DataError:
    return DataError(f"data.source: cannot read {name}: {explain(err) if remote else one_line(err)}")


class ParquetFileSource(RangeSource):
    """One Parquet file; a range read touches only the row groups that overlap it, a
    few columns at a time (a row group may hold the whole file, see the module doc)."""

    kind = "parquet"

    def __init__(self, path: str, fs: pafs.FileSystem | None = None, name: str | None = None,
                 remote: bool = False, size: int | None = None):
        self.name = self.spec = name or path
        self.remote, self.size = remote, size
        self._path, self._fs, self.mtime_ns, self.expected = path, fs, None, None
        if fs is None and size is None:
            st = os.stat(path)   # before the footer: a change after this shows in the fingerprint
            self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        try:
            handle = fs.open_input_file(path) if fs is not None else path
            self._file = pq.ParquetFile(handle)
            if fs is not None and size is None:
                self.size = handle.size()
        except ARROW_ERRORS as err:
            raise _open_failed(self.name, remote, err) from err
        meta = self._file.metadata
        counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        # starts[g] is the first row of group g; starts[-1] == num_rows.
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.num_rows = int(meta.num_rows)
        self.schema = self._file.schema_arrow
        self.column_types = named_types(self.name, self.schema)
        self.last_row_groups_read: list[int] = []   # which groups the last read opened (tests, workers)

    def _read_nothing(self) -> None:
        self.last_row_groups_read = []

    def _pieces(self, lo, hi, columns):
        # 'right' so that empty row groups sharing a start are skipped.
        first = int(np.searchsorted(self._starts, lo, side="right")) - 1
        last = int(np.searchsorted(self._starts, hi - 1, side="right")) - 1
        groups = list(range(first, last + 1))
        self.last_row_groups_read = groups
        for g in groups:
            start, rows = int(self._starts[g]), int(self._starts[g + 1] - self._starts[g])
            a, b = max(lo - start, 0), min(hi - start, rows)
            if a >= b:
                continue
            # Columns per read: a piece of about PIECE_BYTES, at least one column.
            step = max(1, PIECE_BYTES // (8 * rows))
            for i in range(0, len(columns), step):
                subset = columns[i:i + step]
                table = self._file.read_row_group(g, columns=subset)
                yield start + a, table_to_numpy(table.slice(a, b - a), subset)

    def column_max(self, column: str) -> float | None:
        """An integer column's largest value from the footer's row-group statistics (no
        data pages), or None when a group lacks them or holds nulls (the caller reads)."""
        if column not in self.column_types or not pa.types.is_integer(self.schema.field(column).type):
            return None
        meta, index = self._file.metadata, self.schema.get_field_index(column)
        top = None
        for g in range(meta.num_row_groups):
            if meta.row_group(g).num_rows == 0:
                continue
            stats = meta.row_group(g).column(index).statistics
            if stats is None or not stats.has_min_max or stats.null_count:
                return None
            top = stats.max if top is None else max(top, stats.max)
        return None if top is None else float(top)

    def fingerprint(self) -> list:
        return [[self.name, self.size, self.num_rows]]

    @property
    def row_groups(self) -> list[int]:
        """Rows per row group, from the footer."""
        return np.diff(self._starts).tolist()

    def _now(self) -> dict:
        """The file's facts as they are now: size and time from a stat, rows from the footer read."""
        now = fp.stat(self._fs if self.remote else None, self._path)
        return {**now, "rows": self.num_rows, "row_groups": self.row_groups}

    def entry(self, file: str | None = None) -> dict:
        """This file's fingerprint entry, under the name `file` (default: its own)."""
        if self.mtime_ns is None:
            now = self._now()
            self.mtime_ns = now["mtime_ns"]
            self.size = self.size if self.size is not None else now["size"]
        return fp.file_entry(file or self.name, self.size, self.mtime_ns, self.num_rows, self.row_groups)

    def facts(self) -> dict:
        return {"files": [self.entry()]}

    def expect(self, fingerprint: dict) -> None:
        self.expect_entry(fp.entries(fingerprint).get(self.name))

    def expect_entry(self, entry: dict | None) -> None:
        """Check against `entry` now (the footer just read) and before every read."""
        self.expected = entry
        self.verify()

    def verify(self) -> None:
        if self.expected is not None:
            fp.check_file(self.expected, self.name, self._now(), self.remote)


def _partitions(relative: str) -> dict[str, str]:
    """{key: value} of the hive-style folders (key=value) on a file's relative path."""
    found = {}
    for part in relative.split("/")[:-1]:
        if "=" in part:
            key, value = part.split("=", 1)
            found[unquote(key)] = unquote(value)
    return found


def _partition_type(values: list[str]) -> pa.DataType:
    """int64 when every value is an integer, double when a number, else string (as
    pyarrow's hive partitioning infers, with 64-bit integers)."""
    for kind, parse in ((pa.int64(), int), (pa.float64(), float)):
        try:
            for v in values:
                parse(v)
            return kind
        except ValueError:
            continue
    return pa.string()


class ParquetDirSource(RangeSource):
    """A directory of Parquet files, concatenated in sorted path order, subfolders
    included; hive-style folders (`year=2024/part-0.parquet`) add their keys as columns.
    Files are opened only when a read reaches them (the driver opens every footer once,
    to count and check; a worker opens only the files of its own range)."""

    kind = "parquet_dir"

    def __init__(self, location: Location, known: dict | None = None):
        self.name = self.spec = location.name
        self.remote, self._location = location.remote, location
        self._mtimes: dict[str, int] = {}   # the driver's listing's modification times
        self._expected: dict[str, dict] | None = None   # a worker's: the job's fingerprint, per file
        if known is None:
            known = self._scan(location)
        self._relative = [f[0] for f in known["files"]]
        self._sizes = [f[1] for f in known["files"]]
        self._rows = [f[2] for f in known["files"]]
        self._values = [f[3] for f in known["files"]]
        self._ptypes: dict[str, pa.DataType] = known["partition_types"]
        self.schema = known["schema"]
        self.column_types = {f.name: str(f.type) for f in self.schema}
        self._files: dict[int, ParquetFileSource] = getattr(self, "_scanned", {})  # opened so far
        self._starts = np.concatenate([[0], np.cumsum(self._rows, dtype=np.int64)])
        self.num_rows = int(self._starts[-1])
        self.last_row_groups_read: list[tuple[str, int]] = []   # (relative path, row group)

    def _open_file(self, i: int) -> ParquetFileSource:
        if i not in self._files:
            path, name = self._location.join(self._relative[i])
            f = ParquetFileSource(path, self._location.fs, name, self.remote, self._sizes[i])
            if self._expected is not None:
                f.expect_entry(self._expected.get(self._relative[i]))
            self._files[i] = f
        return self._files[i]

    def _scan(self, location: Location) -> dict:
        """List the files, read every footer, check they agree; returns what `handoff` gives."""
        try:
            infos = location.fs.get_file_info(pafs.FileSelector(location.path, recursive=True))
        except ARROW_ERRORS as err:
            raise _open_failed(self.name, self.remote, err) from err
        base = location.path.rstrip("/") + "/"
        found = []
        for info in infos:
            relative = info.path[len(base):] if info.path.startswith(base) else info.base_name
            hidden = any(p.startswith((".", "_")) for p in relative.split("/"))
            if hidden or not relative.endswith(".parquet") or info.type == pafs.FileType.Directory:
                continue
            if not self.remote:
                check_regular_file(os.path.join(location.path, *relative.split("/")))
            found.append((relative, info.size))
            self._mtimes[relative] = info.mtime_ns
        if not found:
            raise DataError(f"data.source: no .parquet files in directory {self.name}")
        found.sort()
        self._location = location
        files, first, self._scanned = [], None, {}
        values = [_partitions(r) for r, _ in found]
        keys = list(values[0])
        for (relative, size), vals in zip(found, values):
            if list(vals) != keys:
                raise DataError(f"data.source: {relative} in {self.name} has partition folders "
                                f"({', '.join(vals) or 'none'}) but {found[0][0]} has ({', '.join(keys) or 'none'})")
            path, name = location.join(relative)
            f = ParquetFileSource(path, location.fs, name, self.remote, size)
            if first is None:
                first = f
            elif f.column_names != first.column_names:
                raise DataError(f"data.source: {f.name} has columns ({format_columns(f.column_names)}) "
                                f"but {first.name} has ({format_columns(first.column_names)})")
            else:
                for column, kind in f.column_types.items():
                    # Read as one table, a column must have one type; pyarrow would fail
                    # mid-training on the first range that spans both files.
                    if kind != first.column_types[column]:
                        raise DataError(f"data.source: {f.name} has column {show_name(column)!r} of type "
                                        f"{show_name(kind)}, but {os.path.basename(first.name)} has "
                                        f"{show_name(first.column_types[column])}")
            files.append([relative, f.size, f.num_rows, vals])
            self._scanned[len(files) - 1] = f
        ptypes = {k: _partition_type([v[k] for v in values]) for k in keys}
        for key in keys:
            if key in first.column_types:
                raise DataError(f"data.source: {self.name}: column {show_name(key)!r} is both a "
                                "partition folder and a column of the files")
        schema = first.schema
        for key, kind in ptypes.items():
            schema = schema.append(pa.field(key, kind))
        return {"files": files, "partition_types": ptypes, "schema": schema}

    def handoff(self) -> dict:
        return {"files": [[r, s, n, v] for r, s, n, v in zip(self._relative, self._sizes, self._rows, self._values)],
                "partition_types": self._ptypes, "schema": self.schema}

    def _read_nothing(self) -> None:
        self.last_row_groups_read = []

    def _pieces(self, lo, hi, columns):
        self.last_row_groups_read = []
        own = [c for c in columns if c not in self._ptypes]
        keys = [c for c in columns if c in self._ptypes]
        for i, start in enumerate(self._starts[:-1].tolist()):
            a, b = max(lo, start), min(hi, start + self._rows[i])
            if a >= b:
                continue
            if own:
                f = self._open_file(i)
                for row, piece in f.pieces(a - start, b - start, own):
                    yield start + row, piece
                self.last_row_groups_read += [(self._relative[i], g) for g in f.last_row_groups_read]
            if keys:   # a partition folder's value, on every row of its files
                yield a, {key: column_to_numpy(pa.repeat(pa.scalar(self._values[i][key]).cast(self._ptypes[key]),
                                                         b - a)) for key in keys}

    def column_max(self, column: str) -> float | None:
        """As ParquetFileSource.column_max, over every file (the driver has their footers)."""
        if column in self._ptypes:
            return None
        tops = [self._open_file(i).column_max(column) for i in range(len(self._rows)) if self._rows[i]]
        return None if not tops or None in tops else max(tops)

    def fingerprint(self) -> list:
        return [[r, s, n] for r, s, n in zip(self._relative, self._sizes, self._rows)]

    def facts(self) -> dict:
        """Each file's entry under its path in the folder; sizes and times from the
        listing, row groups from the footers (the driver read them all)."""
        files = []
        for i, relative in enumerate(self._relative):
            groups = self._open_file(i).row_groups
            files.append(fp.file_entry(relative, self._sizes[i], self._mtimes.get(relative),
                                       self._rows[i], groups))
        return {"files": files}

    def expect(self, fingerprint: dict) -> None:
        # Each file is checked when a read first reaches it, and before every read.
        self._expected = fp.entries(fingerprint)
        for i, f in self._files.items():
            f.expect_entry(self._expected.get(self._relative[i]))
