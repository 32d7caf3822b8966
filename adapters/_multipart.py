"""``multipart/form-data`` submit bodies, for arguments that are files.

Parsed with python-multipart.  A file part becomes the argument's bytes:
as they are for an argument of type ``bytes`` (encoded to base64 once, when
the arguments are checked: not encoded here, then decoded back to be
checked), as base64 text (the form in which bytes are stored as JSON) for
any other.  Other parts hold
JSON text (as BentoML's clients send them); a part that is not valid JSON is
taken as a plain string.

An argument that takes a list may come as one part holding the whole list
(BentoML's clients send a list of files as several parts, and other lists as
one part of JSON text), or as one part per item (OpenAPI's form encoding of
arrays; a part holding a JSON array is then the whole list, not an item).
Any other argument takes one part: a name given twice is an error, never a
silent choice of one value.  :func:`takes_list` and :func:`takes_text` say
how each argument is read; the OpenAPI document describes the same.
"""

from __future__ import annotations

import io
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import pybase64
from python_multipart import parse_form
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import Field, File

from ._answers import loads

__all__ = [
    "MultipartError",
    "parse_multipart",
    "takes_bytes",
    "takes_list",
    "takes_text",
    "without_none",
]


class MultipartError(ValueError):
    """The body is not a well-formed multipart form."""


def without_none(annotation: Any) -> Any:
    """``T | None`` as ``T`` (a form leaves an optional argument out rather than send null)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def takes_list(annotation: Any) -> bool:
    """Whether an argument of this type may come as one part per item."""
    origin = typing.get_origin(without_none(annotation))
    return origin in (list, tuple, set, frozenset, Sequence)


def takes_text(annotation: Any) -> bool:
    """Whether an argument of this type is read from its part as plain text."""
    return annotation is str


def takes_bytes(annotation: Any) -> bool:
    """Whether an argument of this type takes a file part's bytes as they are."""
    return annotation is bytes


def parse_multipart(
    content_type: str,
    body: bytes,
    *,
    lists: Callable[[str], bool] = lambda name: False,
    texts: Callable[[str], bool] = lambda name: False,
    raw: Callable[[str], bool] = lambda name: False,
    max_parts: int = 100,
) -> dict[str, Any]:
    """The named arguments in a ``multipart/form-data`` body.

    ``lists(name)`` tells whether an argument takes a list (see
    :func:`takes_list`), so that one part still makes a list of one.
    ``texts(name)`` tells whether it
    takes a string: its field is then the text as sent (``-F label=42`` is
    ``"42"``), unless the text is a JSON string literal, as BentoML's clients
    send strings.  ``raw(name)`` tells whether it takes bytes as they are
    (see :func:`takes_bytes`): one file part is then its bytes, not base64.
    More than ``max_parts`` parts is a :class:`MultipartError`.
    """
    fields: dict[str, list[Any]] = {}
    files: dict[str, list[bytes]] = {}
    count = 0

    def counted() -> None:
        nonlocal count
        count += 1
        if count > max_parts:
            raise MultipartError(f"the form has more than {max_parts} parts (max_parts)")

    def on_field(field: Field) -> None:
        counted()
        name = field.field_name.decode("utf-8") if field.field_name else ""
        raw = (field.value or b"").decode("utf-8")
        values = fields.setdefault(name, [])
        if texts(name) and not raw.startswith('"'):
            values.append(raw)
            return
        try:
            values.append(loads(raw))
        except ValueError:
            values.append(raw)
        except RecursionError:
            raise MultipartError(f"the field {name!r} is nested too deeply") from None

    def on_file(part: File) -> None:
        counted()
        name = part.field_name.decode("utf-8") if part.field_name else ""
        handle = part.file_object
        handle.seek(0)
        files.setdefault(name, []).append(handle.read())
        part.close()

    headers = {
        "Content-Type": content_type.encode("latin-1"),
        "Content-Length": str(len(body)).encode(),
    }
    try:
        parse_form(headers, io.BytesIO(body), on_field, on_file)
    except MultipartError:
        raise
    except (FormParserError, ValueError) as exc:
        raise MultipartError(f"the multipart body cannot be read: {exc}") from None
    arguments: dict[str, Any] = {}
    for name, values in fields.items():
        if name in files:
            raise MultipartError(f"the argument {name!r} is given as a file and as a field")
        if lists(name):
            whole = len(values) == 1 and isinstance(values[0], list)
            arguments[name] = values[0] if whole else values
        elif len(values) > 1:
            raise MultipartError(f"the field {name!r} is given {len(values)} times; it takes one")
        else:
            arguments[name] = values[0]
    for name, parts in files.items():
        if len(parts) == 1 and raw(name) and not lists(name):
            arguments[name] = parts[0]
            continue
        texts_of = [pybase64.b64encode_as_string(part) for part in parts]
        arguments[name] = texts_of if len(parts) > 1 or lists(name) else texts_of[0]
    return arguments
