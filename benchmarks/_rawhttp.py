"""A minimal HTTP/1.1 keep-alive client under trio: the benchmarks' load generator.

Measured on the 2-core machine: httpx's ``AsyncClient`` with a pool of 32
connections spends ~1.3 ms of client CPU per request (its pool's bookkeeping;
~0.5 ms with 32 clients of one connection each) and tops out near 750 req/s,
below the server it measures, so a benchmark would measure the client.  This
spends ~50 us.  It only understands what errands' servers send: a status line
and a ``content-length`` body (no chunked bodies, no streams).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self

import trio

__all__ = ["RawConnection", "request_head"]


def request_head(
    method: str, target: str, *, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """The bytes of one request to 127.0.0.1: request line, headers and ``body``.

    ``target`` is the path with its query, already percent-encoded.
    """
    lines = [f"{method} {target} HTTP/1.1", "host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawConnection:
    """One HTTP/1.1 keep-alive connection; one request at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        #: The last answer said ``connection: close`` (hypercorn does after
        #: 1,000 requests on a connection): open another for the next request.
        self.closing = False

    @classmethod
    async def open(cls, url: str) -> Self:
        """Connect to ``url`` (``http://HOST:PORT``)."""
        host, _, port = url.removeprefix("http://").partition(":")
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def exchange(self, head: bytes) -> tuple[int, bytes]:
        """Send one request (see :func:`request_head`), read its answer;
        returns the status code and the body, whatever the status.

        Raises RuntimeError if the server closes the connection or sends no
        ``content-length``.
        """
        await self._stream.send_all(head)
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                lines = bytes(self._buffer[:end]).split(b"\r\n")
                length, closing = None, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection":
                        closing = value.strip().lower() == b"close"
                if length is None:
                    raise RuntimeError(f"no content-length in {lines[0]!r}")
                if len(self._buffer) >= end + 4 + length:
                    body = bytes(self._buffer[end + 4 : end + 4 + length])
                    del self._buffer[: end + 4 + length]
                    self.closing = closing
                    return int(lines[0].split(b" ", 2)[1]), body
            data = await self._stream.receive_some(65536)
            if not data:
                raise RuntimeError("the server closed the connection")
            self._buffer += data

    async def request(self, head: bytes) -> bytes:
        """Like :meth:`exchange`, but returns the body of a 200 and raises
        RuntimeError for any other status."""
        status, body = await self.exchange(head)
        if status != 200:
            raise RuntimeError(f"{head.split(b' ', 2)[1]!r} answered {status}")
        return body

    async def aclose(self) -> None:
        await self._stream.aclose()
