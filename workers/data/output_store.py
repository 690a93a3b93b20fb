"""A run's output folder behind a URI (`s3://`, `gs://`, `abfs://`, `hdfs://`, `file://`).

Training writes its files in a local staging folder as it always has; this store
copies each one to the URI once it is complete. The file system, the endpoint and
the credentials come from workers/data/locations.py: the environment only, never logged.

Atomic: a reader never sees part of a file under its final name. An object store
(S3, GCS, Azure) makes an object visible only when its upload completes, so a file
goes up whole under its final name; a file system (file://, HDFS) shows a file while
it is written, so it is written under a temporary name and moved into place.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.fs as pafs

from trainer.errors import InputError, one_line
from workers.data.locations import explain, locate

OBJECT_STORES = {"s3", "gcs", "abfs"}  # pyarrow's type names: whole-object uploads
CHUNK = 1 << 20


class OutputStore:
    """Files below one URI folder, by path relative to it ("checkpoints/ckpt-1.npz")."""

    def __init__(self, uri: str, what: str = "--output"):
        try:
            self.loc = locate(uri)
        except InputError as e:  # the data.source wording, for the flag at hand
            raise InputError(str(e).replace("data.source", what).replace("a data URI", "an output URI")) from None
        self.uri, self.what = uri.rstrip("/"), what
        self.whole_objects = self.loc.fs.type_name in OBJECT_STORES

    def _path(self, relative: str) -> str:
        return self.loc.path.rstrip("/") + "/" + relative

    def _fail(self, err: BaseException, doing: str) -> InputError:
        why = explain(err) if self.loc.remote else one_line(err, 100)
        return InputError(f"{self.what}: {self.uri}: cannot {doing} ({why})")

    def check(self) -> None:
        """InputError now, rather than after training, if the folder cannot be written:
        a probe object is written and deleted."""
        probe = f".rayprop-probe-{uuid.uuid4().hex}"
        fs, made = self.loc.fs, None  # on a file system: the first folder the probe made
        try:
            if not self.whole_objects:
                made = self._first_missing()
                fs.create_dir(self.loc.path, recursive=True)
            with fs.open_output_stream(self._path(probe)) as out:
                out.write(b"")
            fs.delete_file(self._path(probe))
            if made is not None:  # nothing left behind by a check
                fs.delete_dir(made)
        except (OSError, ValueError) as err:
            raise self._fail(err, "write there") from None

    def _first_missing(self) -> str | None:
        """The outermost folder of the path that does not exist yet (None: it exists)."""
        missing = None
        path = self.loc.path.rstrip("/")
        while path and self.loc.fs.get_file_info(path).type == pafs.FileType.NotFound:
            missing, path = path, path.rsplit("/", 1)[0]
        return missing

    def exists(self, relative: str) -> bool:
        return self.loc.fs.get_file_info(self._path(relative)).type == pafs.FileType.File

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's bytes, None when there is none."""
        try:
            with self.loc.fs.open_input_stream(self._path(relative)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a small file whole (an object store: one PUT)."""
        self._put(relative, lambda out: out.write(data))

    def upload(self, local: Path, relative: str) -> None:
        """Copy the local file `local` to `relative`, atomically (see the module's docstring)."""
        def copy(out):
            with open(local, "rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
        self._put(relative, copy)

    def _put(self, relative: str, write) -> None:
        final = self._path(relative)
        if self.whole_objects:  # visible only once complete
            with self.loc.fs.open_output_stream(final) as out:
                write(out)
            return
        parent, name = final.rsplit("/", 1)
        self.loc.fs.create_dir(parent, recursive=True)
        temp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.loc.fs.open_output_stream(temp) as out:
                write(out)
            self.loc.fs.move(temp, final)  # a rename on a file system
        except BaseException:
            try:
                self.loc.fs.delete_file(temp)
            except OSError:
                pass
            raise

    def download(self, relative: str, local: Path) -> bool:
        """Copy `relative` to the local file `local`; False when there is none."""
        data = self.read_bytes(relative)
        if data is None:
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        return True

    def names(self, relative_dir: str) -> list[str]:
        """Names of the files directly in `relative_dir` ([] when there is none)."""
        selector = pafs.FileSelector(self._path(relative_dir), allow_not_found=True)
        return [info.base_name for info in self.loc.fs.get_file_info(selector)
                if info.type == pafs.FileType.File]

    def delete(self, relative: str) -> None:
        try:
            self.loc.fs.delete_file(self._path(relative))
        except FileNotFoundError:
            pass

