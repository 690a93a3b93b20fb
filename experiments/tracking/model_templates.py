"""The saved pyfunc model that a process's logged models are copies of, one per kind
of model: a sweep's trials share it instead of each saving its own.

MLflow's save_model costs the first model of every run a second or more of CPU (it
validates the input example by loading and running the model), in the trainer's
process, beside the other trials' coordinators. What a saved template holds besides
the network's files (which each copy replaces, experiments/tracking/logged_models.py)
is the same for every run whose models have the same signature and input example and
network files of the same sizes: the pyfunc code, the `trainer` package, the
requirements, the example files, the MLmodel's flavor, signature and model size. So
runs with those equal get byte-for-byte what a save of their own would have made,
but for what differs between any two saves (a temp path, a creation time), and the
copy sets the model's own identity as before.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_lock = threading.Lock()
_templates: dict[tuple, Path] = {}
_folder: tempfile.TemporaryDirectory | None = None  # removed at the interpreter's exit


def key(signature, example, network: Path) -> tuple:
    """What makes two templates equal: the signature, the input example, the sizes of
    the network's files (the MLmodel's model_size_bytes counts them)."""
    return (json.dumps(signature.to_dict(), sort_keys=True) if signature is not None else None,
            example.to_json(orient="split") if example is not None else None,
            tuple((p.name, p.stat().st_size) for p in sorted(network.iterdir())))


def shared(template_key: tuple, save: Callable[[Path], None]) -> Path:
    """The template of `template_key`, saved by save(path) the first time in this process."""
    global _folder
    with _lock:
        path = _templates.get(template_key)
        if path is None:
            if _folder is None:
                _folder = tempfile.TemporaryDirectory(prefix="rayprop-pyfunc-")
            path = Path(_folder.name) / f"template-{len(_templates)}"
            save(path)
            _templates[template_key] = path
        return path
