"""A job knows its data: a fingerprint of the source, taken from metadata at the start.

Rows are read more than once in a job's life: a replaced worker, a grown or
re-sharded pool and a `--resume` read their rows again from the source. If the
source changed in between, the job would train on two data sets and say nothing.
So the driver takes a fingerprint when it opens the source, and every later read
compares the files it opens with it.

For each file: its name (a folder's file by its path inside the folder), size in
bytes, modification time (ns; what the file system or object store reports through
pyarrow.fs), row count, and for Parquet the footer's row count per row group. A
built-in set is its name and its generator's parameters. Nothing but metadata is
read: a stat per file, and the Parquet footers the driver reads anyway.

What it cannot see: a file rewritten in place with the same size and the same
modification time (set back by hand, or within the file system's timestamp
resolution). ETags and object generations are not exposed by pyarrow.fs, so for
object stores the modification time stands in for them; it is compared to the
second there, since a listing and a HEAD request report it at different precisions.

A change is a `DataChangedError` (bad input: exit 2) naming the file and what changed.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from trainer.errors import DataChangedError

VERSION = 1
SHORT = 16  # hex digits of the fingerprint's hash shown in tags and messages


def file_entry(file: str, size: int | None, mtime_ns: int | None, rows: int | None,
               row_groups: list[int] | None = None) -> dict:
    """One file's facts, as a fingerprint lists them."""
    entry = {"file": file, "size": size, "mtime_ns": mtime_ns, "rows": rows}
    if row_groups is not None:
        entry["row_groups"] = [int(n) for n in row_groups]
    return entry


def take(source) -> dict:
    """The fingerprint of an opened source (the driver's): JSON-able, with its hash."""
    body = {"version": VERSION, "source": source.name, "kind": source.kind,
            "remote": source.remote, **source.facts()}
    return {**body, "hash": digest(body)}


def digest(body: dict) -> str:
    facts = {k: v for k, v in body.items() if k != "hash"}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:SHORT]


def entries(fingerprint: dict | None) -> dict[str, dict]:
    """{file: entry} of a fingerprint's files."""
    return {e["file"]: e for e in (fingerprint or {}).get("files", [])}


def when(a: int | None, b: int | None) -> str:
    """'DATE HH:MM:SS.mmm -> HH:MM:SS.mmm UTC' (the date once when both share it)."""
    def text(ns):
        return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if a is None or b is None:
        return f"{a} -> {b}"
    x, y = text(a), text(b)
    return f"{x} -> {y[11:] if x[:10] == y[:10] else y} UTC"


def stat(fs, path: str) -> dict:
    """{size, mtime_ns} of a file now (fs: a pyarrow FileSystem; None: local); both None
    when it is gone."""
    import os

    if fs is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return {"size": None, "mtime_ns": None, "gone": True}
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return {"size": None, "mtime_ns": None, "gone": True}
    return {"size": info.size, "mtime_ns": info.mtime_ns}


def difference(was: dict, now: dict, remote: bool) -> str | None:
    """What changed between two entries of one file, in a few words; None: the same."""
    if was.get("size") is not None and now.get("size") is not None and was["size"] != now["size"]:
        return f"size {was['size']} -> {now['size']} bytes"
    a, b = was.get("mtime_ns"), now.get("mtime_ns")
    if a is not None and b is not None and (a // 10**9 != b // 10**9 if remote else a != b):
        return f"modified {when(a, b)}"
    if was.get("rows") is not None and now.get("rows") is not None and was["rows"] != now["rows"]:
        return f"rows {was['rows']} -> {now['rows']}"
    if "row_groups" in was and "row_groups" in now and was["row_groups"] != now["row_groups"]:
        return f"row groups of {_groups(was['row_groups'])} -> {_groups(now['row_groups'])} rows"
    return None


def _groups(counts: list[int], shown: int = 4) -> str:
    text = ", ".join(map(str, counts[:shown]))
    return f"[{text}{', ...' if len(counts) > shown else ''}] ({len(counts)})"


def check_file(expected: dict, name: str, now: dict, remote: bool) -> None:
    """DataChangedError if the file `name` (shown) no longer matches its entry."""
    what = "it is gone" if now.get("gone") else difference(expected, now, remote)
    if what is not None:
        raise DataChangedError(f"data.source: {name} changed since the job started ({what})")


def compare(run_id: str, was: dict | None, now: dict) -> None:
    """At --resume: DataChangedError naming the first file that differs from the run's
    fingerprint (`was`, from its checkpoint; None for a run from before fingerprints)."""
    if not was or was.get("hash") == now.get("hash"):
        return
    prefix = f"--resume {run_id}: data.source"
    if was.get("kind") == "builtin" or now.get("kind") == "builtin":
        if was.get("builtin") != now.get("builtin"):
            raise DataChangedError(f"{prefix}: the built-in set is {now.get('builtin')} here but "
                                   f"{was.get('builtin')} in the run")
        return
    remote = bool(was.get("remote") or now.get("remote"))
    old, new = entries(was), entries(now)
    where = now.get("source", "")
    for file, entry in old.items():
        shown = file if file == where else f"{where.rstrip('/')}/{file}"
        if file not in new:
            raise DataChangedError(f"{prefix}: {shown} is gone since the run started")
        what = difference(entry, new[file], remote)
        if what is not None:
            raise DataChangedError(f"{prefix}: {shown} changed since the run started ({what})")
    for file in new:
        if file not in old:
            raise DataChangedError(f"{prefix}: {where.rstrip('/')}/{file} is new since the run started")


def raise_if_changed(info: dict) -> None:
    """In the driver: a worker's `ready()` that reports a changed file stops the job."""
    if info.get("data_changed"):
        raise DataChangedError(info["error"])
