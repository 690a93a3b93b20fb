"""Reading plain values (a parsed YAML file) into frozen dataclasses, by their annotations.

A field's annotation is its type (`int`, `float`, `str`, `bool`, `None`, `Literal` words,
lists and unions of them, or a nested dataclass: a section); `ranged` declares beside
the field the Range its numbers must lie in, as scikit-learn declares
`_parameter_constraints`. A wrong key or value is a ConfigError naming the dotted key
(`train.learning_rate: must be > 0, got -1`), never printed back whole. trainer/config.py
declares the config with these; nothing here knows its keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Literal, Union

from trainer.errors import ConfigError, short


@dataclass(frozen=True)
class Range:
    """Where a number (or each number of a list) must lie; None is no bound."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself excluded
    hi_open: bool = False

    def __contains__(self, x) -> bool:
        return ((self.lo is None or (x > self.lo if self.lo_open else x >= self.lo))
                and (self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)))

    def __str__(self) -> str:
        lo, hi = (str(x) if isinstance(x, int) else f"{x:g}" for x in (self.lo, self.hi or 0))
        if self.hi is None:
            return f"> {lo}" if self.lo_open else f"at least {lo}"
        return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def ranged(default, **bounds):
    """A field's default and the Range its values must lie in (checked by `check_ranges`)."""
    return field(default=default, metadata={"range": Range(**bounds)})


def describe_type(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is list:
        return f"a list of {describe_type(args[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, str(tp))


def convert(tp, value):
    """Return `value` converted to `tp`, or raise TypeError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise TypeError
    if origin in (Union, types.UnionType):
        for a in args:
            try:
                return convert(a, value)
            except TypeError:
                continue
        raise TypeError
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [convert(args[0], v) for v in value]
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads 1e-3 (no dot) as a string; accept what float() accepts.
            try:
                value = float(value)
            except ValueError:
                raise TypeError from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise AssertionError(f"config type {tp} is not handled")


def read_section(cls, raw, prefix: str = ""):
    """An instance of the frozen dataclass `cls` from the mapping `raw`: every key known,
    every value of its annotated type (nested dataclasses are sections), or ConfigError
    naming the dotted key (`prefix` + key)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {short(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{prefix}{str(key)[:60]}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = read_section(tp, value, f"{prefix}{key}.")
            continue
        try:
            values[key] = convert(tp, value)
        except TypeError:
            raise ConfigError(f"{prefix}{key}: expected {describe_type(tp)}, got {short(value)}") from None
    return cls(**values)


def check_ranges(section, prefix: str = "") -> None:
    """Every field declared with `ranged` holds a number (or numbers) in its Range."""
    for f in dataclasses.fields(section):
        rng, value = f.metadata.get("range"), getattr(section, f.name)
        if rng is None or value is None or isinstance(value, str):  # None, "full": no number to check
            continue
        if any(v not in rng for v in (value if isinstance(value, list) else [value])):
            each = "every value " if isinstance(value, list) else ""
            raise ConfigError(f"{prefix}{f.name}: {each}must be {rng}, got {short(value)}")
