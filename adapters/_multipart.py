"""``multipart/form-data`` submit bodies, for arguments that are files.

Parsed with python-multipart.  A file part becomes the argument's bytes (as
base64 text, the form in which bytes are stored as JSON); several file parts
with one name make a list.  Other parts hold JSON text (as BentoML's clients
send them); a part that is not valid JSON is taken as a plain string.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from typing import Any

from python_multipart import parse_form
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import Field, File

__all__ = ["MultipartError", "parse_multipart"]


class MultipartError(ValueError):
    """The body is not a well-formed multipart form."""


def parse_multipart(
    content_type: str,
    body: bytes,
    *,
    lists: Callable[[str], bool] = lambda name: False,
    texts: Callable[[str], bool] = lambda name: False,
) -> dict[str, Any]:
    """The named arguments in a ``multipart/form-data`` body.

    ``lists(name)`` tells whether an argument takes a list of files, so that
    one part still makes a list of one.  ``texts(name)`` tells whether it
    takes a string: its field is then the text as sent (``-F label=42`` is
    ``"42"``), unless the text is a JSON string literal, as BentoML's clients
    send strings.
    """
    fields: dict[str, Any] = {}
    files: dict[str, list[str]] = {}

    def on_field(field: Field) -> None:
        name = field.field_name.decode("utf-8") if field.field_name else ""
        raw = (field.value or b"").decode("utf-8")
        if texts(name) and not raw.startswith('"'):
            fields[name] = raw
            return
        try:
            fields[name] = json.loads(raw)
        except ValueError:
            fields[name] = raw
        except RecursionError:
            raise MultipartError(f"the field {name!r} is nested too deeply") from None

    def on_file(part: File) -> None:
        name = part.field_name.decode("utf-8") if part.field_name else ""
        handle = part.file_object
        handle.seek(0)
        files.setdefault(name, []).append(base64.b64encode(handle.read()).decode("ascii"))
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
    for name, parts in files.items():
        fields[name] = parts if len(parts) > 1 or lists(name) else parts[0]
    return fields
