"""JSON Schemas of task arguments and results, from their annotations.

They describe exactly what the engine's converter accepts (strict types, an
int for a float, base64 text for bytes in JSON) and are used for
``/schema.json`` (BentoML's shape) and ``/openapi.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from errands import Payload, TaskDefinition
from errands._convert import media_type_of

from ._multipart import takes_list, takes_text, without_none

__all__ = ["form_schema", "input_schema", "output_schema", "type_schema"]

JSON = dict[str, Any]

#: Base64 as the converter reads it (the standard alphabet, padded): a JSON
#: Schema validator takes ``contentEncoding`` as a note, not a check.
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _is_pil_image(tp: Any) -> bool:
    return isinstance(tp, type) and tp.__module__.startswith("PIL.") and tp.__name__ == "Image"


def type_schema(tp: Any, defs: dict[str, JSON] | None = None) -> JSON:
    """The JSON Schema of values of type ``tp`` as the converter takes them.

    Classes (attrs, dataclasses, enums) go to ``defs`` when it is given and
    are referenced as ``#/$defs/<Name>``; otherwise they are inlined.
    """
    if tp is Any or tp is object:
        return {}
    if tp is type(None) or tp is None:
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is bytes:
        return {"type": "string", "contentEncoding": "base64", "pattern": BASE64}
    if tp is dt.datetime:
        return {"type": "string", "format": "date-time"}
    if tp is dt.date:
        return {"type": "string", "format": "date"}
    if _is_pil_image(tp):
        return {
            "type": "string",
            "contentEncoding": "base64",
            "contentMediaType": "image/*",
            "pattern": BASE64,
        }
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return {"anyOf": [type_schema(a, defs) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Annotated:
        return type_schema(args[0], defs)
    if origin in (list, set, frozenset, Sequence, typing.Sequence) or (
        origin is tuple and len(args) == 2 and args[1] is Ellipsis
    ):
        item = args[0] if args else Any
        out: JSON = {"type": "array", "items": type_schema(item, defs)}
        if origin in (set, frozenset):
            out["uniqueItems"] = True
        return out
    if origin is tuple:
        return {
            "type": "array",
            "prefixItems": [type_schema(a, defs) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin in (dict, Mapping, typing.Mapping):
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": type_schema(value, defs)}
    if tp in (list, set, frozenset, tuple):
        return {"type": "array"}
    if tp is dict:
        return {"type": "object"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _named(tp, {"enum": [m.value for m in tp], "title": tp.__name__}, defs)
    if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
        return _named(tp, _class_schema(tp, defs), defs)
    return {}


def _named(tp: type, schema: JSON, defs: dict[str, JSON] | None) -> JSON:
    if defs is None:
        return schema
    defs.setdefault(tp.__name__, schema)
    return {"$ref": f"#/$defs/{tp.__name__}"}


def _class_schema(tp: type, defs: dict[str, JSON] | None) -> JSON:
    hints = typing.get_type_hints(tp)
    properties: JSON = {}
    required: list[str] = []
    if attrs.has(tp):
        for field in attrs.fields(tp):
            properties[field.name] = type_schema(hints.get(field.name, Any), defs)
            if field.default is attrs.NOTHING:
                required.append(field.name)
    else:
        for f in dataclasses.fields(tp):
            properties[f.name] = type_schema(hints.get(f.name, Any), defs)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
    out: JSON = {
        "title": tp.__name__,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def input_schema(
    definition: TaskDefinition, defs: dict[str, JSON] | None = None, *, bentoml: bool = False
) -> JSON:
    """The request body of ``POST <route>/submit``: an object of named arguments.

    With ``bentoml=True``, file arguments (``bytes``, a PIL image) are
    ``{"type": "file"}``, which makes BentoML's clients send them as
    multipart parts; in JSON bodies they travel as base64 text.
    """
    properties: JSON = {}
    required = []
    for param in definition.params:
        if bentoml and param.annotation is bytes:
            schema: JSON = {"type": "file"}
        elif bentoml and _is_pil_image(param.annotation):
            schema = {"type": "file", "format": "image"}
        else:
            schema = type_schema(param.annotation, defs)
        schema = {"title": param.name.replace("_", " ").title(), **schema}
        if not param.required and _json_default(param.default):
            schema["default"] = param.default
        properties[param.name] = schema
        if param.required:
            required.append(param.name)
    out: JSON = {
        "title": f"{definition.name}_input",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


def _file_schema(tp: Any) -> JSON | None:
    """The schema of a form part holding ``tp``'s file (None: ``tp`` is no file)."""
    if tp is bytes:
        return {"type": "string", "format": "binary"}
    if _is_pil_image(tp):
        return {"type": "string", "format": "binary", "contentMediaType": "image/*"}
    return None


def form_schema(definition: TaskDefinition, defs: dict[str, JSON] | None = None) -> JSON:
    """The ``multipart/form-data`` body of ``POST <route>/submit``, with its ``encoding``.

    Returns ``{"schema": ..., "encoding": ...}``, an OpenAPI media type
    object, as ``_multipart`` reads a form: a file argument (``bytes``, a
    PIL image, optional or not) is a file part; a list argument may come as
    one part per item (files or JSON text), so a required one has at least
    one; a ``str`` argument is a text part as is; any other is a part
    holding its JSON text.
    """
    schema = input_schema(definition, defs)
    properties: JSON = {}
    encoding: JSON = {}
    for param in definition.params:
        tp = without_none(param.annotation)
        json_schema = schema["properties"][param.name]
        args = typing.get_args(tp)
        file = _file_schema(tp)
        files = _file_schema(args[0]) if takes_list(tp) and args else None
        if file is not None:
            prop = {"title": json_schema["title"], **file}
        elif files is not None:
            prop = {"title": json_schema["title"], "type": "array", "items": files}
        else:
            prop = json_schema
            text = takes_text(param.annotation)
            encoding[param.name] = {"contentType": "text/plain" if text else "application/json"}
        if param.required and takes_list(tp):
            prop = {**prop, "minItems": 1}  # one part per item: no part is no list
        properties[param.name] = prop
    out: JSON = {"schema": {**schema, "properties": properties}}
    if encoding:
        out["encoding"] = encoding
    return out


def output_schema(definition: TaskDefinition, *, bentoml: bool = False) -> JSON:
    """The body of ``GET <route>/get``.

    With ``bentoml=True``, in the shape BentoML's clients read to pick their
    decoder: bytes as ``{"type": "string", "format": "binary"}`` and a PIL
    image as ``{"type": "file", "format": "image", "pil": true}``.
    """
    tp = definition.return_type
    if tp is Payload:  # errands.Payload: raw bytes with the media type the task gives
        return {"type": "string", "format": "binary"}
    media = media_type_of(tp)
    if media is not None:  # Annotated[bytes, errands.MediaType(...)]: served raw
        return {"type": "string", "format": "binary", "contentMediaType": media}
    if tp is bytes:
        return {"type": "string", "format": "binary"}
    if _is_pil_image(tp):
        if bentoml:
            return {"type": "file", "format": "image", "pil": True}
        return {"type": "string", "format": "binary", "contentMediaType": "image/png"}
    if tp is type(None) or tp is None:
        return {"type": "null"}
    return type_schema(tp, None)


def _json_default(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
