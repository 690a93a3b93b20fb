"""What a sweep tries: grid axes and distributions, turned into a list of trials.

A `sweep:` value that is a list is a grid axis: every value is tried. A value that
is a one-key mapping is a distribution for random search, drawn `sweep_samples`
times for every point of the grid (as Ray Tune's `num_samples` does):

    {uniform: [a, b]}      a float drawn uniformly from [a, b)
    {loguniform: [a, b]}   exp of a uniform draw from [log a, log b): 0 < a < b
    {choice: [v1, v2]}     one of the values, each as likely

The draws come from one numpy generator seeded by the sweep's seed, in a fixed
order (sample, then grid point, then key as written), so the same config gives the
same trials every time. Numpy only: the config's checks use this module.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from trainer.errors import ConfigError, short

DISTRIBUTIONS = ("uniform", "loguniform", "choice")


def is_distribution(value) -> bool:
    return isinstance(value, dict)


def parse_distribution(key: str, raw: dict) -> tuple[str, list]:
    """('uniform', [a, b]) from {'uniform': [a, b]}, the bounds checked; ConfigError
    naming sweep.KEY otherwise. Choice values are checked by the caller (as overrides)."""
    where = f"sweep.{key}"
    if len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected a list of values or one of {{uniform: [a, b]}}, "
                          f"{{loguniform: [a, b]}}, {{choice: [...]}}, got {short(raw)}")
    (kind, args), = raw.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice: expected a non-empty list of values, got {short(args)}")
        return kind, list(args)
    ok = (isinstance(args, list) and len(args) == 2
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in args))
    if not ok:
        raise ConfigError(f"{where}: {kind}: expected [low, high], two numbers, got {short(args)}")
    lo, hi = float(args[0]), float(args[1])
    if not lo < hi:
        raise ConfigError(f"{where}: {kind}: low must be below high, got [{lo:g}, {hi:g}]")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}: loguniform: low must be > 0, got {lo:g}")
    return kind, [lo, hi]


def _only_item(distribution: dict) -> tuple[str, list]:
    (kind, args), = distribution.items()
    return kind, args


def draw(kind: str, args: list, rng: np.random.Generator):
    if kind == "uniform":
        return float(rng.uniform(args[0], args[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    return args[int(rng.integers(len(args)))]


def has_distributions(sweep: dict) -> bool:
    return any(is_distribution(v) for v in sweep.values())


def trials(sweep: dict, samples: int = 1, seed: int = 0) -> list[dict[str, object]]:
    """[{key: value, ...}] for every trial: `samples` times every point of the grid
    (its first axis varying slowest), distributions drawn; keys in the order written."""
    grid_keys = [k for k, v in sweep.items() if not is_distribution(v)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        for point in itertools.product(*(sweep[k] for k in grid_keys)):
            values = dict(zip(grid_keys, point))
            out.append({k: values[k] if k in values else draw(*_only_item(v), rng)
                        for k, v in sweep.items()})
    return out
