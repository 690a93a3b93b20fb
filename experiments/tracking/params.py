"""A run's config as MLflow params and as its config.yaml, without secrets.

The params are the config flattened (`model.layers: "[2, 16, 3]"`, every value with
`str`), logged when the run starts; jobs/run_config.py reads them back. A key that
looks secret is never logged, and a URL's password is cut out (cluster/auth.py
redact): credentials go by environment. No MLflow import: resume checks compare
params before MLflow is needed.
"""

from __future__ import annotations

import re

from experiments.tracking.stores import redact
from trainer.config import Config

# Config keys whose values must never reach a store: credentials go by environment.
SECRET_KEY = re.compile(r"token|passw|secret|credential|private|apikey|api_key|access_key|(^|_)key$",
                        re.IGNORECASE)


def _public_items(cfg: Config):
    """(dotted key, value) of every setting, without secret-looking keys or URL passwords."""
    for key, value in cfg.flat().items():
        if SECRET_KEY.search(key.rsplit(".", 1)[-1]):
            continue
        yield key, redact(value) if isinstance(value, str) else value


def run_params(cfg: Config) -> dict[str, str]:
    """The flattened config as run params: {'model.layers': '[2, 32, 3]', ...}."""
    return {key: str(value) for key, value in _public_items(cfg)}


def public_config(cfg: Config) -> dict:
    """The config as nested sections, for the run's config.yaml (same filtering as params)."""
    tree: dict = {}
    for key, value in _public_items(cfg):
        *sections, last = key.split(".")
        node = tree
        for name in sections:
            node = node.setdefault(name, {})
        node[last] = value
    return tree
