"""Cancel scopes of the loop a request runs in: trio's own under trio,
anyio's under asyncio.

The adapter runs under trio (hypercorn's trio worker, which runs the
engine in the same loop) and under asyncio (uvicorn, or an asyncio host
that mounts the app).  anyio's scopes work under both, but under trio
each wraps a trio scope and costs about twice as much: a request that
reads a body or is held for a long poll enters one (counted with
callgrind, ``docs/performance.md``, twenty-first round).  So under trio a
request takes trio's scope directly.  Both kinds have ``cancel()`` and
``cancelled_caught`` and nest with each other under trio.
"""

from __future__ import annotations

from typing import TypeAlias

import anyio
import sniffio
import trio

__all__ = ["Scope", "move_on_after", "under_trio"]

#: A cancel scope of either kind.
Scope: TypeAlias = anyio.CancelScope | trio.CancelScope


def under_trio() -> bool:
    """Whether this runs in a trio run (trio names itself to sniffio)."""
    return sniffio.current_async_library() == "trio"


def move_on_after(seconds: float) -> Scope:
    """A cancel scope that cancels its block after ``seconds``, of the
    running loop's kind (``cancelled_caught`` tells whether it did)."""
    return trio.move_on_after(seconds) if under_trio() else anyio.move_on_after(seconds)
