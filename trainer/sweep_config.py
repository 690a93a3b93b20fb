"""A config's `sweep:` section checked before a sweep starts: what `rayprop sweep` tries.

The section maps dotted keys to a list of values (a grid axis) or a distribution
(trainer/search_space.py). Each value, or each bound of a range, is checked as an
override of that key in one run's config, so a sweep that would fail halfway through
is refused before its first run, with a ConfigError naming `sweep.KEY`. Keys that
tie a sweep's runs together (NOT_SWEPT) cannot vary.
"""

from __future__ import annotations

import difflib
from typing import Callable

from trainer.errors import ConfigError, short
from trainer.search_space import has_distributions, is_distribution, parse_distribution

# Keys a sweep cannot vary: its runs share one experiment, one store and one Ray connection.
NOT_SWEPT = ("experiment", "tracking.uri", "cluster.address")

Convert = Callable[[str, object], object]  # (dotted key, value) -> the value as one run's setting


def _checked_value(convert: Convert, key: str, value, what: str = "value"):
    """`value` converted as an override of `key`, or ConfigError naming sweep.KEY."""
    try:
        return convert(key, value)
    except ConfigError as e:
        # The override's own message starts with the key it names; keep the reason.
        reason = str(e).removeprefix(f"{key}: ")
        raise ConfigError(f"sweep.{key}: {what} {short(value)}: {reason}") from None


def _check_distribution(settings: dict, convert: Convert, key: str, raw: dict) -> dict[str, list]:
    kind, args = parse_distribution(key, raw)
    if kind == "choice":
        return {kind: [_checked_value(convert, key, v) for v in args]}
    if isinstance(settings[key], int) and not isinstance(settings[key], bool):
        raise ConfigError(f"sweep.{key}: {kind} draws numbers with fractions; give whole numbers "
                          "as a list or {choice: [...]}")
    for bound in args:  # a range is convex: its bounds in range, every draw is
        _checked_value(convert, key, bound, f"{kind} bound")
    return {kind: args}


def check_sweep(raw, settings: dict[str, object], samples: int, convert: Convert) -> dict[str, list | dict]:
    """The sweep `raw` with every value (or bound) checked and converted by `convert(key,
    value)`: as an override of that key in one run's config. `settings`: that config,
    flat (`Config.flat`); `samples`: its sweep_samples."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep: expected a mapping of dotted keys to lists of values, got {short(raw)}")
    if samples > 1 and not has_distributions(raw):
        raise ConfigError(f"sweep_samples: {samples} draws of the sweep's distributions, "
                          "but sweep: has none ({uniform: [a, b]}, {loguniform: ...}, {choice: ...})")
    grid = {}
    for key, values in raw.items():
        if key not in settings:
            same_section = [k for k in settings if k.split(".")[0] == str(key).split(".")[0]]
            close = difflib.get_close_matches(str(key), same_section or list(settings), n=1, cutoff=0.5)
            hint = f" (did you mean sweep.{close[0]}?)" if close else ""
            raise ConfigError(f"sweep.{str(key)[:60]}: unknown key{hint}")
        if key in NOT_SWEPT:
            raise ConfigError(f"sweep.{key}: cannot be swept (a sweep's runs share one "
                              "experiment, tracking store and Ray cluster)")
        if is_distribution(values):
            grid[key] = _check_distribution(settings, convert, key, values)
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values (or a distribution), "
                              f"got {short(values)}")
        grid[key] = [_checked_value(convert, key, value) for value in values]
    return grid
