"""One ``send`` per fixed-length answer under hypercorn's HTTP/1.1 protocol.

hypercorn writes an answer's head as soon as the app sends
``http.response.start``, then its body with ``http.response.body``: two
``send`` calls per answer, and two wake-ups of the client.  On loopback each
``send`` costs the kernel's TCP work for both ends; profiled under
``errands serve`` (issue 14), the sends were about a third of the server's
CPU per request, and writing head and body together cut a bare app's server
CPU per request by 10-25%.

:func:`install` makes hypercorn's ``H11Protocol`` keep the head of an answer
that has a ``content-length`` (every answer of errands' routes but the
streams) and write it with the next bytes, which follow in the same turn of
the app.  Streamed answers (no ``content-length``: event streams, JSON Lines)
still send their head at once, so a client sees the status before the first
event.  It changes only ``errands serve``'s own server processes (the CLI
calls it), never a host that imports errands, and it leaves hypercorn alone
when its protocol class lacks the method it replaces (written against
hypercorn 0.17 and 0.18; the tests check it on the installed version).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["install"]

log = logging.getLogger("errands.http")

_HEAD = "_errands_head"


def install() -> bool:
    """Patch hypercorn's ``H11Protocol._send_h11_event`` (idempotent); whether it is patched."""
    try:
        import h11
        from hypercorn.events import RawData
        from hypercorn.protocol.h11 import H11Protocol
    except ImportError:
        return False
    original = getattr(H11Protocol, "_send_h11_event", None)
    if original is None:
        log.debug("hypercorn's H11Protocol has no _send_h11_event: answers keep two sends")
        return False
    if getattr(original, "errands_coalesced", False):
        return True

    async def _send_h11_event(self: Any, event: Any) -> None:
        head: bytes | None = self.__dict__.pop(_HEAD, None)
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = None
        if type(event) is h11.Response and data is not None and _has_length(event):
            self.__dict__[_HEAD] = data  # sent with the body, which comes next
            return
        if head is not None:
            data = head + (data or b"")
        if data is not None:
            await self.send(RawData(data=data))

    _send_h11_event.errands_coalesced = True  # type: ignore[attr-defined]
    H11Protocol._send_h11_event = _send_h11_event  # type: ignore[method-assign]
    return True


def _has_length(response: Any) -> bool:
    return any(name == b"content-length" for name, _ in response.headers)
