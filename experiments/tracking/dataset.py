"""The data set of a run, as MLflow records it: where it is and its columns, never its rows."""

from __future__ import annotations

import os
import warnings

from experiments.tracking.stores import redact
from workers.data.source import Source

# Arrow type names (a source's column_types) -> MLflow column types.
MLFLOW_TYPES = {"double": "double", "float": "float", "halffloat": "float", "int64": "long",
                "uint32": "long", "int32": "integer", "int16": "integer", "int8": "integer",
                "uint16": "integer", "uint8": "integer", "bool": "boolean", "string": "string",
                "large_string": "string", "binary": "binary"}


def dataset_of(source: Source, columns: list[str]):
    """An MLflow dataset that describes the source (where, which columns) without its rows.

    The coordinator never holds the whole data set (docs/design.md section 3), so this is a
    MetaDataset: source and schema only. Its digest hashes metadata only (`digest_of`):
    a URI's source is the URI (S3, GCS, ... as MLflow names them).
    """
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    info = source.describe()
    if info["kind"] == "builtin":
        where = CodeDatasetSource(tags={"rayprop.builtin": source.name})
    else:
        try:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all say local
                warnings.simplefilter("ignore")
                where = resolve_dataset_source(source.name)
        except Exception:  # a location MLflow has no source type for: still say where it was
            where = CodeDatasetSource(tags={"rayprop.source": redact(source.name)})
    types = info["columns"]
    schema = Schema([ColSpec(MLFLOW_TYPES.get(types[c], "string"), c) for c in columns])
    name = os.path.basename(source.name.rstrip("/")) or source.name
    return MetaDataset(where, name=name, digest=digest_of(source, columns), schema=schema)


def digest_of(source: Source, columns: list[str]) -> str:
    """8 hex digits over the source's metadata: where it is, its files' names, sizes and
    row counts, and the columns used with their types; no data is read to compute it.
    (A file rewritten with the same size and row count keeps its digest.)"""
    import hashlib
    import json

    facts = {"source": redact(source.name), "files": source.fingerprint(),
             "columns": [[c, source.column_types.get(c)] for c in columns]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:8]
