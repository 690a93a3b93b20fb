"""model.npz / model.json: the trained network as plain arrays and a plain spec.

model.npz holds W1..WL and b1..bL with the shapes of docs/design.md section 1, written by
np.savez and read with allow_pickle=False, so loading a model never runs code.
model.json holds the NetworkSpec and what the columns mean (features, targets,
encoding), so `evaluate` and `predict` need nothing else. Files are written to a
temporary name and renamed, so a crash never leaves a half-written model.

Both files may have been edited by hand or by an adversary: every field of
model.json is checked for its type and range, and the arrays' shapes and dtypes
are read from the .npy headers inside model.npz BEFORE any array is loaded, so a
file that claims a huge array costs nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from trainer import __version__
from trainer.errors import InputError, RunError
from trainer.activations import ACTIVATIONS
from trainer.costs import COSTS, ENCODINGS
from trainer.network import NetworkSpec

FORMAT = "rayprop-mlp"
# A trained run's folder: the network (save_model) and the run's summary, written last.
MODEL_FILES = ("model.npz", "model.json", "summary.json")
MAX_JSON_BYTES = 16 * 2**20  # model.json holds a spec and column names: far below this


def theta_arrays(spec: NetworkSpec, theta: np.ndarray) -> dict[str, np.ndarray]:
    Ws, bs = spec.views(theta)
    out = {}
    for l, (W, b) in enumerate(zip(Ws, bs), start=1):
        out[f"W{l}"], out[f"b{l}"] = W, b
    return out


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temp file beside `path`, then rename it into place.

    A file system that refuses (full, read-only) is a RunError naming the file, and
    the temp file is removed: the previous version of `path` stays whole."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        # mkstemp makes 0600 files; give the result the mode open() would (0666 & ~umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RunError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


PROBE_BYTES = 64 * 1024  # what the write probe puts on disk (and removes) to find a full one


def probe_write(directory: Path) -> None:
    """Write PROBE_BYTES to a temporary file in `directory`, sync, remove it. OSError if
    the file system refuses: full, read-only, or not for files at all (/proc, /sys)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rayprop-probe-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_model(out_dir: Path, spec: NetworkSpec, theta: np.ndarray, columns: dict) -> None:
    """Write out_dir/model.npz and out_dir/model.json. `columns`: features, targets, encoding."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Any: numpy's stub of savez would match a key against its allow_pickle (a bool).
    arrays: dict[str, Any] = theta_arrays(spec, theta)
    atomic_write(out_dir / "model.npz", lambda f: np.savez(f, **arrays))
    write_json(out_dir / "model.json", {
        "format": FORMAT, "rayprop_version": __version__,
        "layers": list(spec.layers), "hidden_activation": spec.hidden_activation,
        "output_activation": spec.output_activation, "cost": spec.cost, "dtype": spec.dtype,
        **columns})


NPZ_ERRORS = (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError)


def array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of the arrays in an .npz, from their .npy headers only.

    ValueError if a member is not a .npy array (np.load would hand back its bytes)."""
    headers = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename[:40]!r} is not an array")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
            headers[info.filename[:-4]] = (shape, dtype)
    return headers


def read_arrays(path: Path, expected: Mapping[str, tuple[int, ...]] | None = None,
                what: str = "a model file") -> dict[str, np.ndarray]:
    """The arrays of an .npz file, refusing pickles; InputError if it is not one.

    With `expected` ({name: shape}), the names, shapes and a floating dtype are
    checked from the headers before anything is loaded."""
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        headers = array_headers(path)
    except NPZ_ERRORS as e:
        raise InputError(f"{path} is not {what} of plain arrays ({e.__class__.__name__})") from None
    if expected is not None:
        L = len(expected) // 2
        layers = [expected["W1"][1], *(expected[f"W{l}"][0] for l in range(1, L + 1))]
        if set(headers) != set(expected):
            raise InputError(f"{path} holds arrays {_names(headers)}, a network of layers {layers} "
                             f"needs {_names(expected)}")
        for name, shape in expected.items():
            got, dtype = headers[name]
            if tuple(got) != tuple(shape):
                raise InputError(f"{path}: {name} has shape {tuple(got)}, layers {layers} need {tuple(shape)}")
            if dtype.kind != "f":
                raise InputError(f"{path}: {name} holds {dtype.name[:20]} values, not floating-point numbers")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except NPZ_ERRORS as e:
        raise InputError(f"{path} is not {what} of plain arrays ({e.__class__.__name__})") from None


def _names(names) -> str:
    names = sorted(str(n)[:20] for n in names)
    return "[" + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") + "]"


def expected_shapes(spec: NetworkSpec) -> dict[str, tuple[int, int]]:
    """{'W1': (n_1, n_0), 'b1': (n_1, 1), ...}: what model.npz holds for `spec`."""
    out = {}
    for l, (wshape, bshape) in enumerate(spec.shapes, start=1):
        out[f"W{l}"], out[f"b{l}"] = wshape, bshape
    return out


def theta_from_arrays(spec: NetworkSpec, arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """Pack W1..WL, b1..bL into a flat theta for `spec`, checking names and shapes."""
    expected = set(expected_shapes(spec))
    if set(arrays) != expected:
        raise InputError(f"{path} holds {_names(arrays)}, a network of layers "
                         f"{list(spec.layers)} needs {_names(expected)}")
    theta = np.empty(spec.size, dtype=spec.dtype)
    Ws, bs = spec.views(theta)
    for l in range(1, spec.L + 1):
        for name, view in ((f"W{l}", Ws[l - 1]), (f"b{l}", bs[l - 1])):
            a = arrays[name]
            if a.shape != view.shape:
                raise InputError(f"{path}: {name} has shape {a.shape}, layers "
                                 f"{list(spec.layers)} need {view.shape}")
            if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
                raise InputError(f"{path}: {name} is not finite floating-point numbers")
            view[...] = a
    return theta


def load_model(path: str | Path) -> tuple[NetworkSpec, np.ndarray, dict]:
    """A saved model from its directory or its model.npz (model.json beside it).

    Returns (spec, theta, model.json contents).
    """
    p = Path(path).expanduser()
    npz = p / "model.npz" if p.is_dir() else p
    meta_path = npz.with_name("model.json")
    if not npz.is_file():
        raise InputError(f"model file not found: {npz}")
    if not meta_path.is_file():
        raise InputError(f"{npz}: no model.json beside it ({meta_path} not found); "
                         "a rayprop model is a model.npz with its model.json")
    if meta_path.stat().st_size > MAX_JSON_BYTES:
        raise InputError(f"{meta_path} is {meta_path.stat().st_size / 2**20:.0f} MiB, "
                         "too large for a model description")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError, RecursionError):   # RecursionError: "[[[[..." nested deep
        raise InputError(f"{meta_path} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{meta_path} is not a rayprop model description")
    spec = spec_from_meta(meta, meta_path)
    arrays = read_arrays(npz, expected_shapes(spec))
    return spec, theta_from_arrays(spec, arrays, npz), meta


def output_names(meta: dict, n_out: int) -> list[str]:
    """Column names of A[L] in the pyfunc model's output (model.json's meta), the same
    as `rayprop predict` uses."""
    targets = meta.get("targets") or []
    if meta.get("encoding") == "one_hot":
        return [f"p{k}" for k in range(n_out)]
    return list(targets) if len(targets) == n_out else [f"y{k}" for k in range(n_out)]


def _is_names(value) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def spec_from_meta(meta: dict, meta_path: Path) -> NetworkSpec:
    """The NetworkSpec of a model.json, every field checked; InputError naming the field."""
    def bad(field: str, want: str) -> InputError:
        return InputError(f"{meta_path}: {field!r} must be {want}")

    layers = meta.get("layers")
    if (not isinstance(layers, list) or len(layers) < 2
            or not all(type(n) is int and n >= 1 for n in layers)):
        raise bad("layers", "a list of at least 2 whole numbers >= 1")
    for field, names in (("hidden_activation", ACTIVATIONS), ("output_activation", ACTIVATIONS),
                         ("cost", COSTS), ("dtype", ("float32", "float64"))):
        if not isinstance(meta.get(field), str) or meta[field] not in names:
            raise bad(field, "one of " + ", ".join(names))
    features, targets, encoding = meta.get("features"), meta.get("targets"), meta.get("encoding")
    if not _is_names(features) or len(features) != layers[0]:
        raise bad("features", f"a list of {layers[0]} column names (layers[0])")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise bad("encoding", "one of " + ", ".join(ENCODINGS))
    n_targets = 1 if encoding == "one_hot" else layers[-1]
    if not _is_names(targets) or len(targets) != n_targets:
        raise bad("targets", f"a list of {n_targets} column name{'s' if n_targets > 1 else ''}")
    return NetworkSpec(tuple(layers), meta["hidden_activation"], meta["output_activation"],
                       meta["cost"], meta["dtype"])
