"""schemathesis hooks for ``test_schemathesis.py`` (``SCHEMATHESIS_HOOKS``).

Two constraints of the document that JSON Schema cannot state, and that the
document states in words instead; here schemathesis is told them, for the
schema-valid (positive) cases only, so that it checks everything else:

* an image argument must be an image file Pillow decodes (any base64 text,
  or any bytes in a form, is schema-valid): a real PNG is put in its place;
* an ``Idempotency-Key`` used again with other arguments is a 422 (the
  IETF idempotency-key draft's answer): each case gets a key of its own.

Negative cases are left as generated.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import schemathesis
from schemathesis import GenerationMode

#: A 1x1 greyscale PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def _image_fields(case: Any) -> set[str]:
    """The body properties of ``case``'s operation that hold an image."""
    names = set()
    for parameter in case.operation.body:
        schema = parameter.definition.get("schema") or {}
        for name, prop in (schema.get("properties") or {}).items():
            if str(prop.get("contentMediaType", "")).startswith("image/"):
                names.add(name)
    return names


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE:
        return case
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    if isinstance(case.body, dict):
        for name in _image_fields(case) & case.body.keys():
            multipart = (case.media_type or "").startswith("multipart/")
            case.body[name] = PNG if multipart else base64.b64encode(PNG).decode()
    return case
