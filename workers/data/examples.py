"""Turning source columns into the network's arrays, and the validation split.

Here rows are examples: `load_examples` returns X (k, n_0) and Y (k, n_L) for k source
rows; the network transposes them to the columns of docs/design.md section 1. Values are
checked on the way in (numeric, finite, labels that fit the output layer), with row
numbers counted from 0 over the whole source (a CSV header is not a row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.costs import COSTS
from trainer.errors import ConfigError, DataError
from workers.data.source import Source, format_columns, show_name


@dataclass(frozen=True)
class Schema:
    """Which columns feed the network and how the targets are encoded.

    features: n_in columns -> X (k, n_in); targets: the label column ("one_hot": integer
    classes 0..n_out-1) or n_out columns ("binary": 0/1, "numeric": real) -> Y (k, n_out).
    """

    features: tuple[str, ...]
    targets: tuple[str, ...]
    encoding: str
    n_in: int
    n_out: int


def _columns_phrase(names) -> str:
    return f"{len(names)} column{'s' if len(names) != 1 else ''} ({format_columns(names)})"


def resolve_schema(source: Source, features: list[str] | None, target: str | list[str],
                   layers: list[int], cost: str) -> Schema:
    """Check the configured columns against the source and the model; default features
    are every column but the target(s)."""
    targets = (target,) if isinstance(target, str) else tuple(target)
    if not targets:
        raise DataError("data.target: no target column given")
    for field, names in (("data.target", targets), ("data.features", features or ())):
        for name in names:
            if name not in source.column_names:
                raise DataError(f"{field}: column {name!r} not in {source.name} "
                                f"(columns: {format_columns(source.column_names)})")
        repeated = [n for i, n in enumerate(names) if n in names[:i]]
        if repeated:
            raise DataError(f"{field}: column {repeated[0]!r} is listed twice")
    if features is None:
        features = tuple(c for c in source.column_names if c not in targets)
    features = tuple(features)
    for name in features:
        if name in targets:
            raise DataError(f"data.features: column {name!r} is also the target (data.target)")
    if not features:
        raise DataError(f"data.features: {source.name} has no columns besides the target "
                        f"({format_columns(targets)})")
    if len(features) != layers[0]:
        raise DataError(f"model.layers[0] is {layers[0]} but data.features has {_columns_phrase(features)}")
    if cost not in COSTS:
        raise ConfigError(f"model.cost: unknown cost {cost!r} (expected one of {', '.join(COSTS)})")
    encoding, n_out = COSTS[cost].encoding, layers[-1]
    if encoding == "one_hot" and len(targets) != 1:
        raise DataError(f"data.target: cost cross_entropy needs one column of class labels, "
                        f"got {_columns_phrase(targets)}")
    if encoding != "one_hot" and len(targets) != n_out:
        raise DataError(f"model.layers[-1] is {n_out} but data.target has {_columns_phrase(targets)} "
                        f"(cost {cost} needs one target column per output)")
    return Schema(features, targets, encoding, len(features), n_out)


def _show(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:g}" if isinstance(value, float) else str(value)


def _numeric(source: Source, name: str, values: np.ndarray) -> np.ndarray:
    if values.dtype.kind not in "biuf":   # bool, int, uint, float
        kind = show_name(source.column_types.get(name, str(values.dtype)))  # a struct's type is long
        raise DataError(f"column {show_name(name)!r} in {source.name} is not numeric (type {kind})")
    return values


def _finite(source: Source, name: str, values: np.ndarray, lo: int, dtype: np.dtype) -> np.ndarray:
    """The column cast to dtype, refusing NaN, inf and values that overflow dtype."""
    values = _numeric(source, name, values)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = values.astype(dtype, copy=False)
    ok = np.isfinite(cast)
    if not ok.all():
        i = int(np.argmin(ok))
        v, where = values[i], f"column {name!r} in {source.name}"
        if np.isnan(v):
            raise DataError(f"{where} has a NaN at row {lo + i}")
        if np.isinf(v):
            raise DataError(f"{where} has an infinite value ({_show(v)}) at row {lo + i}")
        raise DataError(f"{where} has value {_show(v)} at row {lo + i}, too large for {np.dtype(dtype)}")
    return cast


def _labels(source: Source, name: str, values: np.ndarray, lo: int, n_out: int) -> np.ndarray:
    """Integer class labels in [0, n_out) as int64 (floats like 2.0 are accepted)."""
    values = _finite(source, name, _numeric(source, name, values), lo, np.float64)
    where = f"column {name!r} in {source.name}"
    whole = values == np.floor(values)
    if not whole.all():
        i = int(np.argmin(whole))
        raise DataError(f"{where}: label {_show(values[i])} at row {lo + i} is not a whole class number")
    fits = (values >= 0) & (values < n_out)
    if not fits.all():
        i = int(np.argmin(fits))
        raise DataError(f"{where}: label {_show(int(values[i]))} at row {lo + i} does not fit an output "
                        f"layer of {n_out} classes (labels must be 0..{n_out - 1})")
    return values.astype(np.int64)


def _targets(source: Source, schema: Schema, name: str, values: np.ndarray, lo: int, dtype: np.dtype):
    """A target column's piece, checked: class labels (int64) for one-hot, else dtype values."""
    if schema.encoding == "one_hot":
        return _labels(source, name, values, lo, schema.n_out)
    cast = _finite(source, name, values, lo, dtype)
    if schema.encoding == "binary":
        binary = (cast == 0) | (cast == 1)
        if not binary.all():
            i = int(np.argmin(binary))
            raise DataError(f"column {name!r} in {source.name}: target {_show(values[i])} at row "
                            f"{lo + i} is not 0 or 1 (binary_cross_entropy needs 0/1 targets)")
    return cast


def _fill(source: Source, schema: Schema, lo: int, hi: int, dtype,
          is_val: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stream source rows [lo, hi) into (X, Y) for the rows where is_val is False and
    (X_val, Y_val) for the others, allocated once in the training dtype and filled a
    piece (some rows, some columns) at a time: a reader holds its shard and one piece,
    never the source's own columns for its whole range."""
    dtype = np.dtype(dtype)
    n_val = 0 if is_val is None else int(is_val.sum())
    n = hi - lo - n_val
    X, X_val = np.empty((n, schema.n_in), dtype), np.empty((n_val, schema.n_in), dtype)
    Y, Y_val = np.zeros((n, schema.n_out), dtype), np.zeros((n_val, schema.n_out), dtype)
    # val_before[r]: held-out rows among the range's first r rows, to place a piece's rows.
    val_before = np.concatenate([[0], np.cumsum(is_val)]) if n_val else None
    feature = {name: j for j, name in enumerate(schema.features)}
    target = {name: j for j, name in enumerate(schema.targets)}
    for start, piece in source.pieces(lo, hi, [*schema.features, *schema.targets]):
        r = start - lo
        k = len(next(iter(piece.values())))
        held = is_val[r:r + k] if n_val else None
        t, v = (r - int(val_before[r]), int(val_before[r])) if n_val else (r, 0)
        for name, values in piece.items():
            if name in feature:
                values = _finite(source, name, values, start, dtype)
            else:
                values = _targets(source, schema, name, values, start, dtype)
            parts = [(X, Y, t, values)] if held is None or not held.any() else \
                [(X, Y, t, values[~held]), (X_val, Y_val, v, values[held])]
            for X_, Y_, at, vals in parts:
                rows = slice(at, at + len(vals))
                if name in feature:
                    X_[rows, feature[name]] = vals
                elif schema.encoding == "one_hot":
                    Y_[np.arange(at, at + len(vals)), vals] = 1
                else:
                    Y_[rows, target[name]] = vals
    return X, Y, X_val, Y_val


def load_examples(source: Source, schema: Schema, lo: int, hi: int,
                  dtype) -> tuple[np.ndarray, np.ndarray]:
    """Source rows [lo, hi) -> X (hi-lo, n_in), Y (hi-lo, n_out), C-contiguous, of dtype."""
    X, Y, _, _ = _fill(source, schema, lo, hi, dtype, None)
    return X, Y


def split_rows(num_rows: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of rows 0..num_rows-1 -> (train_rows, val_rows), sorted int64.

    n_val = round(fraction * num_rows) (Python's round: half to even), at least 1 when
    fraction > 0 and num_rows > 1; the validation rows are the first n_val of
    default_rng(seed).permutation(num_rows).
    """
    assert 0 <= validation_fraction < 1, f"validation_fraction {validation_fraction} (the config checks it)"
    n_val = int(round(validation_fraction * num_rows))
    if validation_fraction > 0 and num_rows > 1:
        n_val = max(n_val, 1)
    if n_val >= num_rows:
        raise DataError(f"data.validation_fraction {validation_fraction} of {num_rows} rows "
                        "leaves no rows for training")
    is_val = np.zeros(num_rows, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(num_rows)[:n_val]] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def train_index_range(train_rows: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """The training indices [tlo, thi) whose source rows lie in [lo, hi).

    Works for any sorted row array (also val_rows): the rows in [lo, hi) are contiguous.
    """
    return int(np.searchsorted(train_rows, lo)), int(np.searchsorted(train_rows, hi))


def load_split_examples(source: Source, schema: Schema, lo: int, hi: int, train_rows: np.ndarray,
                        val_rows: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read source rows [lo, hi) once -> (X_train, Y_train, X_val, Y_val), rows ascending.

    X_train holds the training indices train_index_range(train_rows, lo, hi), in order.
    """
    vlo, vhi = train_index_range(val_rows, lo, hi)
    is_val = np.zeros(hi - lo, dtype=bool)
    is_val[val_rows[vlo:vhi] - lo] = True
    return _fill(source, schema, lo, hi, dtype, is_val)
