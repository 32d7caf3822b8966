"""Loading ``MODULE:ATTR`` targets: a dotted module or a ``.py`` file path."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from errands import Service
from errands._define import as_service

__all__ = ["TargetError", "load_service"]


class TargetError(Exception):
    """The target cannot be loaded; the message says why."""


def load_service(target: str) -> Service:
    """The service named by ``MODULE:ATTR`` (ATTR a ``Service`` or a service class).

    MODULE is a dotted module importable from the current directory, or a
    path to a ``.py`` file (its folder is put on ``sys.path`` first).
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise TargetError(
            f"expected MODULE:ATTR (e.g. app.py:svc or pkg.mod:Service), got {target!r}"
        )
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise TargetError(f"no such file: {module_name}")
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            module = sys.modules[name]
        else:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise TargetError(f"cannot import {module_name}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise TargetError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    try:
        return as_service(obj)
    except TypeError as exc:
        raise TargetError(f"{target}: {exc}") from None
