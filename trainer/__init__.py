"""rayprop trainer: the numpy-only math, config, batch plan and coordinator loop."""

__version__ = "0.1.0"
