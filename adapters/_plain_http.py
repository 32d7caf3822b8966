"""The sync client's plain calls over the standard library's ``http.client``.

A plain call (:class:`~._flows.Call`: a request whose answer is read whole)
of ``SyncHTTPClient`` went through httpx's connection pool, httpcore and h11:
about 1,400 Python calls and 650 µs of the client's CPU per request here.
``http.client`` sends the same request and parses the same answer in about
a third of that (``docs/performance.md``).  What the calls read of the
answer (status, headers, body, ``json()``) is still an ``httpx.Response``,
built from what ``http.client`` read; streamed answers, the async client,
proxies and transports given by the caller keep httpx.

Connections are kept alive and reused, one request at a time each, by any
thread.  An idle connection that the server closed (or wrote to unasked)
is dropped before it is reused, as httpcore does, so a request is never
sent on a connection that cannot answer it; nothing is sent twice.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["PLAIN_FIELDS", "PlainConnections"]

#: The request fields of the calls sent this way (``httpx.Client.request``'s
#: keywords); a call with others (a multipart upload's ``data`` and
#: ``files``) goes through httpx.
PLAIN_FIELDS = frozenset({"method", "url", "params", "content", "headers"})

#: Idle connections kept per client (more threads than this open more,
#: and close what does not fit back).
KEEP_IDLE = 32


class PlainConnections:
    """Keep-alive ``http.client`` connections to one server (its base URL)."""

    def __init__(
        self,
        base: str,
        headers: httpx.Headers,
        timeout: float,
        tls: ssl.SSLContext,
    ) -> None:
        split = urllib.parse.urlsplit(base)
        self._https = split.scheme == "https"
        self._host = split.hostname or "localhost"
        self._port = split.port or (443 if self._https else 80)
        self._prefix = split.path.rstrip("/")
        self._origin = f"{split.scheme}://{split.netloc}"
        self._tls = tls
        self._timeout = timeout
        # Every request's own headers: the client's defaults (httpx's
        # user-agent and accept headers, the token), as httpx sends them.
        self._headers = dict(headers.items())
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    @staticmethod
    def serves(base: str, pool: object, client: httpx.Client) -> bool:
        """Whether the plain calls to ``base`` may go this way: an ``http`` or
        ``https`` URL without credentials, sent by the client's own
        transport (no proxy from the environment, no transport given)."""
        split = urllib.parse.urlsplit(base)
        if split.scheme not in ("http", "https") or split.username or split.password:
            return False
        own = getattr(client, "_transport", None)  # httpx's, not public
        return pool is not None and pool is own and type(pool) is httpx.HTTPTransport

    def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None,
        content: bytes | str | None,
        headers: Mapping[str, str] | None,
        hold: float,
    ) -> httpx.Response:
        """One request; its answer read whole.  Raises httpx's transport
        errors (``ConnectError``, ``ReadTimeout``, ...), as httpx would."""
        target = self._prefix + url
        if params:
            target += "?" + urllib.parse.urlencode(params)
        sent = self._headers if headers is None else {**self._headers, **headers}
        body = content.encode("utf-8") if isinstance(content, str) else content
        connection = self._take()
        connected = connection.sock is not None
        try:
            if not connected:
                connection.timeout = self._timeout
                connection.connect()
                connected = True
            assert connection.sock is not None
            connection.sock.settimeout(self._timeout + hold)
            connection.request(method, target, body=body, headers=sent)
            answer = connection.getresponse()
            data = answer.read()
        except BaseException as exc:
            connection.close()
            error = _transport_error(exc, connecting=not connected)
            if error is None:
                raise
            error.request = httpx.Request(method, self._origin + target)  # as httpx sets it
            raise error from exc
        if answer.will_close:
            connection.close()
        else:
            self._give_back(connection)
        response = _Answer(answer.status, headers=answer.getheaders(), content=data)
        response.sent = (method, self._origin + target)
        return response

    def _take(self) -> http.client.HTTPConnection:
        """An idle connection that can still answer, or a new one."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                break
            if _usable(connection):
                return connection
            connection.close()
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._tls
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < KEEP_IDLE:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _transport_error(exc: BaseException, *, connecting: bool) -> httpx.TransportError | None:
    """The httpx error that httpx raises where ``http.client`` raised ``exc``
    (None: not a transport's error)."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return httpx.ConnectTimeout(text) if connecting else httpx.ReadTimeout(text)
    if isinstance(exc, http.client.HTTPException):
        return httpx.RemoteProtocolError(text)
    if isinstance(exc, OSError):
        return httpx.ConnectError(text) if connecting else httpx.ReadError(text)
    return None


class _Answer(httpx.Response):
    """An ``httpx.Response`` whose ``request`` (read only by error messages)
    is built when first read: building an ``httpx.Request`` parses its URL,
    a good part of what httpx cost per request."""

    sent: tuple[str, str] = ("GET", "")

    @property
    def request(self) -> httpx.Request:
        if self._request is None:
            self._request = httpx.Request(*self.sent)
        return self._request

    @request.setter
    def request(self, value: httpx.Request) -> None:
        self._request = value


def _usable(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection can take a request: its socket
    is open and has nothing to read (readable means the server closed it,
    or sent what nobody asked for)."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
