"""CSV sources: one file with a header row, streamed in blocks from the top (CSV has no
index: a range read stops after its last row)."""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from trainer.errors import DataError
from workers.data import fingerprint as fp
from workers.data.locations import Location, explain
from workers.data.source import ARROW_ERRORS, RangeSource, named_types, table_to_numpy

# Leading bytes of formats that pyarrow's CSV reader would take for (garbled) text.
COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip-compressed", b"BZh": "bzip2-compressed",
                    b"\xfd7zXZ\x00": "xz-compressed", b"\x28\xb5\x2f\xfd": "zstd-compressed",
                    b"\x04\x22\x4d\x18": "lz4-compressed", b"PK\x03\x04": "a zip archive",
                    b"PAR1": "Parquet"}

class CsvSource(RangeSource):
    """A CSV file with a header row, streamed in blocks; types fixed once at open,
    rows counted once (by the driver; workers get the count and the types)."""

    kind = "csv"
    block_size = 1 << 20   # bytes per streamed batch (tests make it small to cross batches)

    def __init__(self, location: Location, known: dict | None = None):
        self.name = self.spec = location.name
        self.remote, self._location = location.remote, location
        self._types, self.size, self.mtime_ns, self.expected = None, None, None, None
        self._max: dict[str, float] = {}  # a numeric column's largest value, from the count (the driver's)
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
        return self._max.get(column)

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


