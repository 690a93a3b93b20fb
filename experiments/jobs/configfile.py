"""Reading a config: the YAML file, `--set key=value` and `--grid key=v1,v2` text.

The file is parsed with PyYAML's safe loader (no Python objects), after two checks
that keep a hostile file from costing memory or time before it is validated: its
size, and the size its aliases expand to (a few lines of `&a [*a, *a, ...]` stand
for billions of items). The values then go to trainer/config.py, which checks
every key and value.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from trainer.config import Config, from_dict, set_dotted
from trainer.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config is a few lines; this is far more than any needs
MAX_YAML_NODES = 100_000  # values in the file once its aliases are expanded


def _expanded_size(node, sizes: dict, path: set) -> int:
    """How many values `node` stands for with every alias expanded, without expanding."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:
        raise RecursionError  # an alias inside its own anchor: endless
    path.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, path) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes, path) + _expanded_size(v, sizes, path)
                       for k, v in node.value)
    else:
        size = 1
    path.discard(key)
    sizes[key] = size = min(size, MAX_YAML_NODES + 1)  # past the limit, the exact count does not matter
    return size


def parse_yaml(text: str, where: str):
    """The value of a YAML document, refused (ConfigError) if it expands past MAX_YAML_NODES."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: expands to more than {MAX_YAML_NODES:,} values "
                              "(through YAML aliases?); a config is far smaller")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply, or refers to itself through an alias "
                          "(&name ... *name), to be a config") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[str, object]:
    """'train.learning_rate=0.05' -> ('train.learning_rate', 0.05); values are YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text[:60]!r}: expected key.path=value")
    try:
        parsed = parse_yaml(value, f"--set {key.strip()}") if value.strip() else None
    except yaml.YAMLError:
        parsed = value  # not YAML (e.g. an unbalanced bracket): keep the string, the type check names it
    return key.strip(), parsed


def parse_grid(text: str) -> tuple[str, list]:
    """'train.learning_rate=0.01,0.1' -> ('train.learning_rate', [0.01, 0.1]); YAML scalars."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise ConfigError(f"--grid {text[:60]!r}: expected key.path=value1,value2,...")
    parsed = []
    for item in values.split(","):
        try:
            parsed.append(parse_yaml(item, f"--grid {key.strip()}") if item.strip() else None)
        except yaml.YAMLError:
            parsed.append(item)  # the type check names it
    return key.strip(), parsed


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `--set` overrides, validate."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {p} is {p.stat().st_size:,} bytes; a config is a few "
                              f"lines (limit {MAX_CONFIG_BYTES:,})")
        raw = parse_yaml(p.read_text(), str(p))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p} cannot be read ({e.__class__.__name__})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of sections (model:, data:, train:, ...)")
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    return from_dict(raw)
