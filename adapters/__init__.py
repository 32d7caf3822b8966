"""Adapters that put errands on the network: the ASGI app, HTTP clients, CLI.

The HTTP clients (``SyncHTTPClient``, ``AsyncHTTPClient``) will live here and
be re-exported lazily by ``errands``.
"""

from __future__ import annotations

__all__: list[str] = []
