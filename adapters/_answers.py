"""What every route of the ASGI app shares: its error, strict JSON, query parsing.

Answers are ``(status, headers, body)`` triples; errors are raised as
:class:`HTTPError` and become JSON ``{"error": ..., **extra}``.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["Answer", "HTTPError", "json_answer", "json_bytes", "loads", "number", "one"]

#: A complete answer: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class HTTPError(Exception):
    """An answer other than 2xx, with a JSON body ``{"error": ..., **extra}``."""

    def __init__(self, code: int, message: str, /, **extra: Any) -> None:
        super().__init__(message)
        self.status = code
        self.body = {"error": message, **extra}
        self.headers: list[tuple[bytes, bytes]] = []


def one(query: dict[str, list[str]], name: str, *, required: bool = False) -> str | None:
    """The last value of query parameter ``name`` (400 when required and absent)."""
    values = query.get(name)
    if not values:
        if required:
            raise HTTPError(400, f"the {name} query parameter is required")
        return None
    return values[-1]


def number(query: dict[str, list[str]], name: str, kind: type, *, default: Any) -> Any:
    """Query parameter ``name`` as ``kind`` (int or float); 400 when it is not one."""
    text = one(query, name)
    if text is None:
        return default
    try:
        return kind(text)
    except ValueError:
        raise HTTPError(400, f"{name} must be a number, got {text!r}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:20]} is too large for a float")
    return value


def loads(body: bytes) -> Any:
    """Strict JSON: no NaN or Infinity, no float that overflows to infinity."""
    return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)


def json_bytes(value: Any) -> bytes:
    """Compact JSON, refusing NaN and infinities."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def json_answer(status: int, value: Any) -> Answer:
    """An ``application/json`` answer."""
    return status, [(b"content-type", b"application/json")], json_bytes(value)
