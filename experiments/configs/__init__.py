"""Example experiment configs shipped with rayprop; `rayprop train NAME` finds them by name."""

from pathlib import Path

HERE = Path(__file__).parent


def resolve(config: str) -> Path:
    """A config path as given, or the shipped example of that name (`spirals`)."""
    path = Path(config).expanduser()
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in config:
        return path
    example = HERE / f"{config}.yaml"
    return example if example.is_file() else path
