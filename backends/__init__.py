"""Storage backends for errands: each bundles a :class:`errands.Queue` and a
:class:`errands.Store`.

``MemoryBackend`` is the default; ``DiskCacheBackend`` is durable and shared
by the processes of one machine.  Backends are also chosen by URL
(``memory://``, ``diskcache:///path``); see :func:`errands.open_engine`.
"""

from __future__ import annotations

from .disk import DiskCacheBackend
from .memory import MemoryBackend

__all__ = ["DiskCacheBackend", "MemoryBackend"]
