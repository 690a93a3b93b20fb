"""`rayprop train --resume RUN_ID` with no CONFIG: the run's own config, from its params.

A run's params are its config as trained, flattened (`model.layers: "[2, 16, 3]"`, every
value logged with `str`, experiments/tracking/run.py run_params) from the moment it starts,
so a run killed by `kill -9` has them too. Each value is read back by the type its key
has in trainer/config.py, so lists, floats, null and words come back as they were
(`str(float)` is the shortest text that gives the same float). What the params cannot
give back is refused, naming the key: a value logged with its credentials cut out
(`***@`), a secret-looking key never logged. A local data file given by a relative path
is the file the run read: its absolute path is the run's `rayprop.data.source` tag.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from typing import Literal, Union

from experiments.jobs.configfile import parse_override
from experiments.tracking import stores
from experiments.tracking.tags import SOURCE_TAG, SWEEP_TAG
from trainer.config import Config, from_dict, set_dotted
from trainer.errors import ConfigError, InputError

REDACTED = "***@"  # what cluster/auth.py redact() leaves in place of user:password@


def _keys() -> dict[str, object]:
    """{'model.layers': its type, ...} for every setting a run logs (Config.flat)."""
    out = {}
    for f in dataclasses.fields(Config):
        tp = typing.get_type_hints(Config)[f.name]
        if dataclasses.is_dataclass(tp):
            for name, sub in typing.get_type_hints(tp).items():
                out[f"{f.name}.{name}"] = sub
        elif f.name == "experiment":
            out[f.name] = tp
    return out


def _candidates(tp) -> list:
    """The types a value of annotation `tp` may have, str last (any text is a str)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, getattr(__import__("types"), "UnionType")):
        found = [c for a in args for c in _candidates(a)]
        return sorted(found, key=lambda c: c is str)
    return [tp]


def parse_param(tp, text: str):
    """The value whose `str` is `text`, of a type annotation `tp` allows, or ValueError."""
    for kind in _candidates(tp):
        origin = typing.get_origin(kind)
        if origin is Literal:
            for word in typing.get_args(kind):
                if str(word) == text:
                    return word
            continue
        if kind is type(None):
            if text == "None":
                return None
            continue
        if kind is str:
            return text
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if origin is list and isinstance(value, list):
            return value
        if kind in (int, float, bool) and type(value) is kind:
            return value
        if kind is float and type(value) is int:  # a float param is logged as 0.5, never 1; still
            return float(value)
    raise ValueError(text)


def from_params(run_id: str, params: dict[str, str], tags: dict[str, str], uri: str,
                overrides: list[str]) -> Config:
    """The run's config: its params read back, tracking.uri the store it is in, then
    `--set` overrides. InputError naming the key when a value is not there whole."""
    from experiments.tracking.params import SECRET_KEY

    if tags.get(SWEEP_TAG) == "parent":
        raise InputError(f"--resume {run_id}: is a sweep's parent run; continue the sweep with "
                         f"rayprop sweep CONFIG --resume {run_id}")
    keys = _keys()
    if not params.keys() & keys.keys():
        raise InputError(f"--resume {run_id}: the run has no logged config (not a rayprop training run?); "
                         f"give its CONFIG")
    given = {parse_override(text)[0] for text in overrides}
    raw: dict = {}
    for key, tp in keys.items():
        if key not in params:
            if SECRET_KEY.search(key.rsplit(".", 1)[-1]) and key not in given:
                raise InputError(f"--resume {run_id}: {key} is never logged (a secret); give it with "
                                 f"--set {key}=... or give the run's CONFIG")
            continue  # a key this run's rayprop did not have: its default
        text = params[key]
        if REDACTED in text and key != "tracking.uri" and key not in given:
            raise InputError(f"--resume {run_id}: {key} was logged without its credentials ({text[:60]}); "
                             f"give it with --set {key}=... or give the run's CONFIG")
        try:
            set_dotted(raw, key, parse_param(tp, text))
        except ValueError:
            raise InputError(f"--resume {run_id}: its param {key}={text[:60]!r} is not a value of this "
                             f"rayprop; give the run's CONFIG") from None
    source = raw.get("data", {}).get("source")
    if isinstance(source, str) and tags.get(SOURCE_TAG, "").startswith("/") \
            and "://" not in source and not source.startswith(("/", "~")):
        raw["data"]["source"] = tags[SOURCE_TAG]  # relative to where the run was started
    raw.setdefault("tracking", {})["uri"] = uri  # the store the run is in, whole
    cluster = raw.get("cluster", {})
    if isinstance(cluster.get("workers"), int) and isinstance(cluster.get("min_workers"), int):
        # cluster.workers is logged as the pool's size: one for `workers: auto` in local
        # mode, below a min_workers meant for Ray. Where it runs does not change the result.
        cluster["min_workers"] = min(cluster["min_workers"], cluster["workers"])
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    return from_dict(raw)


def config_of_run(run_id: str, flag_uri: str | None, overrides: list[str]) -> Config:
    """The config of run `run_id` in the store of `--tracking-uri` (else
    MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here), with `--set` overrides."""
    uri = stores.resolve_uri(flag_uri, None)
    stores.check(uri)
    db = stores.sqlite_path(uri)
    if db is not None and not db.exists():  # MLflow would create it just to look
        raise InputError(f"--resume {run_id}: no such run (no tracking store at {db}; "
                         f"give --tracking-uri)")
    stores.quiet_mlflow()
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise InputError(f"--resume {run_id}: no such run in the tracking store {stores.redact(uri)}") from None
    try:
        return from_params(run_id, run.data.params, run.data.tags, uri, overrides)
    except ConfigError as e:
        raise ConfigError(f"--resume {run_id}: {e}") from None
