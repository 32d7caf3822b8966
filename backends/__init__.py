"""Storage backends for errands: each bundles a :class:`errands.Queue` and a
:class:`errands.Store`.

``MemoryBackend`` is the default.  Backends are also chosen by URL
(``memory://``); see :func:`errands.open_engine`.
"""

from __future__ import annotations

from .memory import MemoryBackend

__all__ = ["MemoryBackend"]
