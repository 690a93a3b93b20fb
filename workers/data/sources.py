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

This module opens a source by its spec (`open_source`); what every source offers, the
`Source` protocol, and the checks all share are in source.py, the kinds in
csv_source.py, parquet.py and builtin_sets.py.
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from trainer.errors import DataError
from workers.data import builtin_sets
from workers.data.csv_source import CsvSource
from workers.data.locations import Location, explain, locate
from workers.data.parquet import ParquetDirSource, ParquetFileSource
from workers.data.source import ARROW_ERRORS, Source, check_regular_file


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
