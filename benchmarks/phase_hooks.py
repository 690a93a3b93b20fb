"""Timestamps on entry to and exit from named functions of modules not imported yet:
an import hook wraps each listed attribute when its module is first imported, so no
import moves and the code timed is the product's own (a function a checkout lacks is
skipped). job_phases.py and sweep_phases.py time their children's phases with it."""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys


def wrap_on_import(wraps: dict[str, list[str]], mark) -> None:
    """For module -> attribute paths ("f", "Class.method") in `wraps`: mark("<name> >")
    on entry and mark("<name> <") on exit of each, from its module's first import on."""

    def wrap(module, path):
        *outer, attr = path.split(".")
        obj = module
        for part in outer:
            obj = getattr(obj, part, None)
        orig = getattr(obj, attr, None)
        if orig is None:
            return

        @functools.wraps(orig)
        def timed(*a, **k):
            mark(f"{attr} >")
            try:
                return orig(*a, **k)
            finally:
                mark(f"{attr} <")
        setattr(obj, attr, timed)

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname not in wraps:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(fullname)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                for attr in wraps[fullname]:
                    wrap(module, attr)
            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hook())
