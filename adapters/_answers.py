"""What every route of the ASGI app shares: strict JSON, query parsing.

Answers are ``(status, headers, body)`` triples; errors are raised as
:class:`~errands.adapters._protocol.HTTPError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ._protocol import HTTPError

__all__ = [
    "Answer",
    "json_answer",
    "json_bytes",
    "loads",
    "number",
    "one",
    "request_json",
    "wait_seconds",
]

#: A complete answer: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def one(query: dict[str, list[str]], name: str, *, required: bool = False) -> str | None:
    """The last value of query parameter ``name`` (400 when required and absent
    or blank: ``?task_id=`` names no task)."""
    values = query.get(name)
    if not values or (required and not values[-1]):
        if required:
            raise HTTPError(400, f"the {name} query parameter is required")
        return None
    return values[-1]


#: What the OpenAPI document's "integer" and "number" take in a query (ASCII
#: digits; not Python's extras: ``1_000``, other scripts' digits, ``nan``).
_NUMERALS = {
    int: re.compile(r"[+-]?[0-9]+"),
    float: re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"),
}


def number(query: dict[str, list[str]], name: str, kind: type, *, default: Any) -> Any:
    """Query parameter ``name`` as ``kind`` (int or float); 400 when it is not
    one (a blank value too: ``?limit=`` is no number)."""
    text = one(query, name)
    if text is None:
        return default
    try:
        if _NUMERALS[kind].fullmatch(text):
            return kind(text)
    except ValueError:  # an int of more than 4300 digits
        pass
    raise HTTPError(400, f"{name} must be a number, got {text[:40]!r}")


def wait_seconds(query: dict[str, list[str]], *, maximum: float, default: float | None) -> Any:
    """``?wait=``: seconds, from 0 to ``maximum`` (the server's ``max_wait``);
    400 otherwise (``LimitExceeded`` above ``maximum``), so that no request
    is held longer than the server says it holds one."""
    wait = number(query, "wait", float, default=default)
    if wait is None:
        return None
    if not (math.isfinite(wait) and wait >= 0):
        raise HTTPError(400, "wait must be a non-negative number of seconds")
    if wait > maximum:
        raise HTTPError(
            400,
            f"wait must be at most {maximum:g} seconds (max_wait), got {wait:g}",
            type="LimitExceeded",
            limit="max_wait",
            maximum=maximum,
        )
    return wait


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:20]} is too large for a float")
    return value


def loads(body: bytes | str) -> Any:
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


#: Made once: ``json.dumps`` with options makes an encoder per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def json_bytes(value: Any) -> bytes:
    """Compact JSON, refusing NaN and infinities."""
    return _COMPACT.encode(value).encode()


def json_answer(status: int, value: Any) -> Answer:
    """An ``application/json`` answer."""
    return status, [(b"content-type", b"application/json")], json_bytes(value)
