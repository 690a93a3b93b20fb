"""model.npz / model.json: the trained network as plain arrays and a plain spec.

model.npz holds W1..WL and b1..bL with the shapes of docs/design.md section 1, written by
np.savez and read with allow_pickle=False, so loading a model never runs code.
model.json holds the NetworkSpec and what the columns mean (features, targets,
encoding), so `evaluate` and `predict` need nothing else. Files are written to a
temporary name and renamed, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from trainer import __version__
from trainer.errors import InputError
from trainer.activations import ACTIVATIONS
from trainer.costs import COSTS
from trainer.network import NetworkSpec

FORMAT = "rayprop-mlp"


def theta_arrays(spec: NetworkSpec, theta: np.ndarray) -> dict[str, np.ndarray]:
    Ws, bs = spec.views(theta)
    out = {}
    for l, (W, b) in enumerate(zip(Ws, bs), start=1):
        out[f"W{l}"], out[f"b{l}"] = W, b
    return out


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temp file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_model(out_dir: Path, spec: NetworkSpec, theta: np.ndarray, columns: dict) -> None:
    """Write out_dir/model.npz and out_dir/model.json. `columns`: features, targets, encoding."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "model.npz", lambda f: np.savez(f, **theta_arrays(spec, theta)))
    write_json(out_dir / "model.json", {
        "format": FORMAT, "rayprop_version": __version__,
        "layers": list(spec.layers), "hidden_activation": spec.hidden_activation,
        "output_activation": spec.output_activation, "cost": spec.cost, "dtype": spec.dtype,
        **columns})


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, refusing pickles; InputError if it is not one."""
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{path} is not a model file of plain arrays ({e.__class__.__name__})") from None


def theta_from_arrays(spec: NetworkSpec, arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """Pack W1..WL, b1..bL into a flat theta for `spec`, checking names and shapes."""
    expected = {f"{p}{l}" for l in range(1, spec.L + 1) for p in "Wb"}
    if set(arrays) != expected:
        raise InputError(f"{path} holds {sorted(arrays)}, a network of layers "
                         f"{list(spec.layers)} needs {sorted(expected)}")
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
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError, UnicodeDecodeError):
        raise InputError(f"{meta_path} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{meta_path} is not a rayprop model description")
    try:
        spec = NetworkSpec(tuple(int(n) for n in meta["layers"]), meta["hidden_activation"],
                           meta["output_activation"], meta["cost"], meta["dtype"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{meta_path} lacks a valid network spec") from None
    if (spec.hidden_activation not in ACTIVATIONS or spec.output_activation not in ACTIVATIONS
            or spec.cost not in COSTS or spec.dtype not in ("float32", "float64")
            or spec.L < 1 or min(spec.layers) < 1):
        raise InputError(f"{meta_path} describes a network rayprop cannot build")
    return spec, theta_from_arrays(spec, read_arrays(npz), npz), meta
