"""Backends by URL scheme, resolved on demand so the engine imports none.

Third-party packages add schemes through the ``errands.backends`` entry-point
group (``scheme = "module:Class"``); the class must offer ``from_url(url)``.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from ._backend import Backend
from ._errors import BackendError

__all__ = ["BUILTIN_SCHEMES", "resolve_backend"]

BUILTIN_SCHEMES: dict[str, str] = {
    "memory": "errands.backends.memory:MemoryBackend",
    "diskcache": "errands.backends.disk:DiskCacheBackend",
    "redis": "errands.backends.redis:RedisBackend",
    "rediss": "errands.backends.redis:RedisBackend",
    "unix": "errands.backends.redis:RedisBackend",  # a Redis on a Unix socket
}


def _schemes() -> dict[str, str]:
    schemes = dict(BUILTIN_SCHEMES)
    for entry in importlib.metadata.entry_points(group="errands.backends"):
        schemes.setdefault(entry.name, entry.value)
    return schemes


def _load(target: str) -> type[Backend]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {target!r} cannot be imported: {exc}") from exc
    cls: type[Backend] = getattr(module, attr)
    return cls


def resolve_backend(spec: object) -> Backend:
    """A backend object from ``None`` (memory), a URL string, or a backend object."""
    if spec is None:
        spec = "memory://"
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"backend must be a Backend, a URL string or None, not {type(spec).__name__}"
        )
    scheme, sep, _ = spec.partition("://")
    if not sep:
        raise BackendError(
            f"backend URL {spec!r} has no scheme (e.g. memory://, diskcache:///path)"
        )
    target = _schemes().get(scheme.lower())
    if target is None:
        known = ", ".join(sorted(_schemes()))
        raise BackendError(f"unknown backend scheme {scheme!r} in {spec!r}; known: {known}")
    return _load(target).from_url(spec)
