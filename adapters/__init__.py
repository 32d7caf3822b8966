"""Adapters that put errands on the network: the ASGI app, HTTP clients, CLI.

The HTTP clients are re-exported lazily by ``errands`` as
``errands.SyncHTTPClient`` and ``errands.AsyncHTTPClient``.
"""

from __future__ import annotations

from .client import (
    AsyncHTTPBatch,
    AsyncHTTPClient,
    AsyncHTTPEndpoint,
    AsyncHTTPTask,
    HTTPBatch,
    HTTPEndpoint,
    HTTPTask,
    SyncHTTPClient,
)

__all__ = [
    "AsyncHTTPBatch",
    "AsyncHTTPClient",
    "AsyncHTTPEndpoint",
    "AsyncHTTPTask",
    "HTTPBatch",
    "HTTPEndpoint",
    "HTTPTask",
    "SyncHTTPClient",
]
