"""What every route of the ASGI app shares: strict JSON, query parsing.

Answers are ``(status, headers, body)`` triples; errors are raised as
:class:`~errands.adapters._protocol.HTTPError`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ._protocol import HTTPError

__all__ = ["Answer", "json_answer", "json_bytes", "loads", "number", "one", "request_json"]

#: A complete answer: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


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


def request_json(body: bytes, *, empty: Any) -> Any:
    """A request body as strict JSON (``empty`` when it is blank); 400 when it is not JSON."""
    if not body.strip():
        return empty
    try:
        return loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "the body is nested too deeply") from None


def json_bytes(value: Any) -> bytes:
    """Compact JSON, refusing NaN and infinities."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def json_answer(status: int, value: Any) -> Answer:
    """An ``application/json`` answer."""
    return status, [(b"content-type", b"application/json")], json_bytes(value)
