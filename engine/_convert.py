"""The project's one cattrs converter: strict JSON in, typed values out.

Arguments arrive as JSON (over HTTP) or as Python values (in-process); either
way they are unstructured to JSON-able data, checked strictly against the
task's annotations, and stored as JSON.  Results are stored as a
:class:`Payload`: JSON, UTF-8 text, or raw bytes with a media type.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import enum
import io
import json
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
import pybase64

from ._errors import FieldError

__all__ = [
    "BYTES_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "TEXT_MEDIA_TYPE",
    "MediaType",
    "Payload",
    "StrictTypeError",
    "check_result",
    "converter",
    "decode_result",
    "encode_result",
    "field_errors",
    "mentions_image",
    "pixel_limit",
    "result_checker",
]

JSON_MEDIA_TYPE = "application/json"
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"
BYTES_MEDIA_TYPE = "application/octet-stream"
PNG_MEDIA_TYPE = "image/png"


@attrs.frozen(kw_only=True)
class Payload:
    """A stored result: its media type and its bytes."""

    media_type: str
    data: bytes


@attrs.frozen
class MediaType:
    """Marks ``bytes`` with the media type of what they hold, for results:
    ``-> Annotated[bytes, errands.MediaType("image/png")]`` is served raw as
    ``image/png`` (and described so in the service's schemas)."""

    value: str


def media_type_of(annotation: Any) -> str | None:
    """The media type an ``Annotated[bytes, MediaType(...)]`` carries, or None."""
    if typing.get_origin(annotation) is typing.Annotated:
        for extra in typing.get_args(annotation)[1:]:
            if isinstance(extra, MediaType):
                return extra.value
    return None


def _plain(annotation: Any) -> Any:
    """``Annotated[T, ...]`` as ``T``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


class StrictTypeError(TypeError):
    """A value of the wrong JSON type; its message is shown to the caller as is."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _structure_int(value: object, tp: type) -> int:
    if tp is not int and issubclass(tp, enum.Enum):  # an IntEnum reaches the int hook
        return _structure_enum(value, tp)  # type: ignore[return-value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise StrictTypeError(f"expected an integer, got {_kind(value)}")


def _structure_float(value: object, _: type) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise StrictTypeError(f"expected a number, got {_kind(value)}")


def _structure_str(value: object, tp: type) -> str:
    if tp is not str and issubclass(tp, enum.Enum):  # a StrEnum reaches the str hook
        return _structure_enum(value, tp)  # type: ignore[return-value]
    if isinstance(value, str):
        return value
    raise StrictTypeError(f"expected a string, got {_kind(value)}")


def _structure_bool(value: object, _: type) -> bool:
    if isinstance(value, bool):
        return value
    raise StrictTypeError(f"expected a boolean, got {_kind(value)}")


#: Bytes per piece when large bytes are encoded to base64 (a multiple of 3),
#: and characters per piece when decoded (the same piece, as base64): one
#: call holds the GIL throughout, about 1.5 ms a piece here.
_PIECE = 3 * 4 * 1024 * 1024
_PIECE_TEXT = _PIECE // 3 * 4


def _structure_bytes(value: object, _: type) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        # pybase64 (SIMD): about 50 times the standard library's speed here,
        # as strict as the published schema's pattern (docs/decisions.md).
        try:
            if len(value) <= _PIECE_TEXT:
                return pybase64.b64decode(value, validate=True)
            return b"".join(
                pybase64.b64decode(value[i : i + _PIECE_TEXT], validate=True)
                for i in range(0, len(value), _PIECE_TEXT)
            )
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise StrictTypeError("expected base64-encoded bytes") from None
    raise StrictTypeError(f"expected base64-encoded bytes, got {_kind(value)}")


def _unstructure_bytes(value: bytes) -> str:
    if len(value) <= _PIECE:
        return pybase64.b64encode_as_string(value)
    view = memoryview(value)  # in pieces, as _structure_bytes decodes
    return "".join(
        pybase64.b64encode_as_string(view[i : i + _PIECE]) for i in range(0, len(value), _PIECE)
    )


def _structure_datetime(value: object, _: type) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            raise StrictTypeError("expected an ISO 8601 date-time") from None
    raise StrictTypeError(f"expected an ISO 8601 date-time, got {_kind(value)}")


def _structure_date(value: object, _: type) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise StrictTypeError("expected an ISO 8601 date") from None
    raise StrictTypeError(f"expected an ISO 8601 date, got {_kind(value)}")


def _structure_enum(value: object, tp: type[enum.Enum]) -> enum.Enum:
    if isinstance(value, tp):
        return value
    try:
        return tp(value)
    except ValueError:
        allowed = ", ".join(json.dumps(m.value) for m in tp)
        raise StrictTypeError(f"expected one of {allowed}") from None


def _is_pil_image(tp: Any) -> bool:
    return isinstance(tp, type) and tp.__module__.startswith("PIL.") and tp.__name__ == "Image"


#: The most pixels an image argument may have (see :func:`pixel_limit`).
_max_pixels: contextvars.ContextVar[int] = contextvars.ContextVar(
    "errands_max_image_pixels", default=25_000_000
)


@contextlib.contextmanager
def pixel_limit(pixels: int) -> Iterator[None]:
    """Image arguments decoded inside this block may have at most ``pixels``."""
    token = _max_pixels.set(pixels)
    try:
        yield
    finally:
        _max_pixels.reset(token)


def mentions_image(annotation: Any) -> bool:
    """Whether a type is, or contains, a PIL image (decoding it is slow)."""
    if _is_pil_image(annotation):
        return True
    return any(mentions_image(arg) for arg in typing.get_args(annotation))


def _structure_image(value: object, _: type) -> Any:
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value
    data = _structure_bytes(value, bytes)
    limit = _max_pixels.get()
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > limit:
            raise StrictTypeError(
                f"the image is {width}x{height} pixels; the limit is {limit} pixels "
                "(max_image_pixels)"
            )
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard, far above ours (a warning where warnings are errors).
        raise StrictTypeError(
            f"the image has more pixels than the limit of {limit} (max_image_pixels)"
        ) from None
    except (UnidentifiedImageError, OSError):
        raise StrictTypeError("expected an image file (PNG, JPEG, ...)") from None
    return image


def image_to_png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _strict_collection(
    check: Callable[[object], bool], expected: str, factory: Callable[[Any, Any], Any]
) -> Callable[[Any, cattrs.Converter], Callable[[object, Any], Any]]:
    def make(tp: Any, conv: cattrs.Converter) -> Callable[[object, Any], Any]:
        inner = factory(tp, conv)

        def hook(value: object, t: Any) -> Any:
            if not check(value):
                raise StrictTypeError(f"expected {expected}, got {_kind(value)}")
            return inner(value, t)

        return hook

    return make


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(bytes, _structure_bytes)
    conv.register_unstructure_hook(bytes, _unstructure_bytes)
    conv.register_structure_hook(dt.datetime, _structure_datetime)
    conv.register_unstructure_hook(dt.datetime, dt.datetime.isoformat)
    conv.register_structure_hook(dt.date, _structure_date)
    conv.register_unstructure_hook(dt.date, dt.date.isoformat)
    conv.register_structure_hook_func(
        lambda tp: isinstance(tp, type) and issubclass(tp, enum.Enum), _structure_enum
    )
    conv.register_structure_hook_func(_is_pil_image, _structure_image)
    # ``object`` means any JSON value, as ``Any`` does (the data is JSON already).
    conv.register_structure_hook_func(lambda tp: tp is object, lambda value, _: value)
    conv.register_unstructure_hook_func(
        lambda tp: isinstance(tp, type) and tp.__module__.startswith("PIL."),
        lambda image: _unstructure_bytes(image_to_png(image)),
    )

    def is_array(value: object) -> bool:
        return isinstance(value, list | tuple)

    def is_object(value: object) -> bool:
        return isinstance(value, Mapping)

    def is_set_source(value: object) -> bool:
        return isinstance(value, list | tuple | set | frozenset)

    conv.register_structure_hook_factory(
        lambda tp: cattrs.cols.is_any_set(tp),
        _strict_collection(is_set_source, "an array", _set_factory),
    )
    conv.register_structure_hook_factory(
        lambda tp: cattrs.cols.is_sequence(tp) and not cattrs.cols.is_any_set(tp),
        _strict_collection(is_array, "an array", _sequence_factory),
    )
    conv.register_structure_hook_factory(
        lambda tp: attrs.has(tp) or dataclasses.is_dataclass(tp),
        _strict_collection(is_object, "an object", _class_factory),
    )
    conv.register_structure_hook_factory(
        cattrs.cols.is_mapping,
        _strict_collection(is_object, "an object", cattrs.cols.mapping_structure_factory),
    )
    return conv


def _sequence_factory(tp: Any, conv: cattrs.Converter) -> Any:
    if getattr(tp, "__origin__", tp) is tuple:
        return cattrs.cols.homogenous_tuple_structure_factory(tp, conv)
    return cattrs.cols.list_structure_factory(tp, conv)


def _class_factory(tp: Any, conv: cattrs.Converter) -> Any:
    return cattrs.gen.make_dict_structure_fn(tp, conv, _cattrs_forbid_extra_keys=True)


def _set_factory(tp: Any, conv: cattrs.Converter) -> Any:
    args = getattr(tp, "__args__", None) or (Any,)
    as_list = cattrs.cols.list_structure_factory(list[args[0]], conv)  # type: ignore[valid-type]
    make = frozenset if cattrs.cols.is_frozenset(tp) else set

    def hook(value: object, _: Any) -> Any:
        return make(as_list(list(value), list))  # type: ignore[call-overload]

    return hook


#: The one converter of the project; never use cattrs' global one.
converter = _make_converter()


def _format_exception(exc: BaseException, tp: type | None) -> str:
    if isinstance(exc, StrictTypeError):
        return str(exc)
    return cattrs.v.format_exception(exc, tp)


def field_errors(exc: BaseException, path: str) -> list[FieldError]:
    """Turn a cattrs structuring error into one :class:`FieldError` per bad field."""
    messages = cattrs.transform_error(exc, path=path, format_exception=_format_exception)
    out = []
    for message in messages:
        text, _, where = message.rpartition(" @ ")
        out.append(FieldError(path=where or path, message=text or message))
    return out


_NULL = Payload(media_type=JSON_MEDIA_TYPE, data=b"null")
_TRUE = Payload(media_type=JSON_MEDIA_TYPE, data=b"true")
_FALSE = Payload(media_type=JSON_MEDIA_TYPE, data=b"false")
_NONE_TYPE = type(None)


def type_name(annotation: Any) -> str:
    """A type as a reader writes it: ``int``, ``dict[str, list[int]]``."""
    if typing.get_origin(annotation) is None and isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_SIMPLE_RESULTS: dict[Any, Callable[[Any], bool]] = {
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    bool: lambda v: type(v) is bool,
}


def result_checker(annotation: Any) -> Callable[[Any], list[FieldError]]:
    """:func:`check_result` for one annotation, with what depends on the
    annotation alone worked out once: a task definition keeps one."""
    plain = _plain(annotation)
    if plain is Any or plain is None:
        return lambda value: check_result(value, annotation) if isinstance(value, Payload) else []
    simple = _SIMPLE_RESULTS.get(plain)
    if simple is None:
        return lambda value: check_result(value, annotation)

    def check(value: Any) -> list[FieldError]:
        if simple(value):
            return []
        return check_result(value, annotation)  # the message, as it words it

    return check


def check_result(value: Any, annotation: Any) -> list[FieldError]:
    """Whether a task's return value matches its return annotation: the bad
    fields, by path (``$`` is the result itself), or ``[]``.

    The value is checked as a caller will read it back: unstructured to JSON
    data and structured again as the annotation, with the same strict rules
    as arguments.  ``Any`` (or no annotation) accepts every JSON value.
    """
    annotation = _plain(annotation)
    if isinstance(value, Payload):
        parts: tuple[object, object] = (value.media_type, value.data)
        if not isinstance(parts[0], str) or not isinstance(parts[1], bytes):
            return [FieldError(path="$", message="a Payload needs a str media_type and bytes")]
        if annotation in (Any, None, bytes, Payload):
            return []
        expected = type_name(annotation)
        return [FieldError(path="$", message=f"expected {expected}, got a Payload")]
    if annotation is Payload:
        return [FieldError(path="$", message=f"expected a Payload, got {_kind(value)}")]
    if annotation is Any or annotation is None:
        return []
    simple = _SIMPLE_RESULTS.get(annotation)
    if simple is not None:  # the common cases, without a structuring pass
        if simple(value):
            return []
        return [FieldError(path="$", message=f"expected {annotation.__name__}, got {_kind(value)}")]
    if annotation is _NONE_TYPE:
        if value is None:
            return []
        return [FieldError(path="$", message=f"expected None, got {_kind(value)}")]
    if annotation is bytes:
        if isinstance(value, bytes | bytearray | memoryview):
            return []
        return [FieldError(path="$", message=f"expected bytes, got {_kind(value)}")]
    if _is_pil_image(annotation):
        if type(value).__module__.startswith("PIL.") and hasattr(value, "save"):
            return []
        return [FieldError(path="$", message=f"expected a PIL image, got {_kind(value)}")]
    if isinstance(value, bytes | bytearray | memoryview) or (
        type(value).__module__.startswith("PIL.") and hasattr(value, "save")
    ):
        expected = type_name(annotation)
        return [FieldError(path="$", message=f"expected {expected}, got {_kind(value)}")]
    try:
        converter.structure(converter.unstructure(value), annotation)
    except Exception as exc:
        return field_errors(exc, "$")
    return []


def encode_result(value: Any, annotation: Any) -> Payload:
    """Store a task's return value as JSON, text, raw bytes or PNG."""
    kind = type(value)
    # The common scalars as JSON writes them (``float.__repr__`` is what the
    # json module writes for a finite float), without the general pass.
    if kind is int:
        return Payload(media_type=JSON_MEDIA_TYPE, data=int.__repr__(value).encode())
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is float and math.isfinite(value):
        return Payload(media_type=JSON_MEDIA_TYPE, data=float.__repr__(value).encode())
    if value is None:
        return _NULL
    if isinstance(value, Payload):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        media = media_type_of(annotation) or BYTES_MEDIA_TYPE
        return Payload(media_type=media, data=bytes(value))
    if isinstance(value, str) and annotation is str:
        return Payload(media_type=TEXT_MEDIA_TYPE, data=value.encode("utf-8"))
    if type(value).__module__.startswith("PIL.") and hasattr(value, "save"):
        return Payload(media_type=PNG_MEDIA_TYPE, data=image_to_png(value))
    return Payload(media_type=JSON_MEDIA_TYPE, data=dumps(converter.unstructure(value)).encode())


def decode_result(payload: Payload, annotation: Any) -> Any:
    """Give back a stored result as the task's annotated return type."""
    if annotation is Payload:
        return payload
    annotation = _plain(annotation)
    media = payload.media_type.split(";", 1)[0].strip()
    if media == "application/json":
        value = json.loads(payload.data)
        if annotation is None or annotation is Any or annotation is type(None):
            return value  # untyped, or a task declared `-> None`
        return converter.structure(value, annotation)
    if media.startswith("text/"):
        return payload.data.decode("utf-8")
    if media.startswith("image/") and _is_pil_image(annotation):
        return _structure_image(payload.data, annotation)
    return payload.data


#: One encoder for every document: ``json.dumps`` with options builds a new
#: one per call (a third of the time of encoding a task record).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON, refusing NaN so every stored document is valid JSON."""
    return _ENCODER.encode(value)


#: Strings at least this long in :func:`dumps_arguments` are checked for
#: being base64 text, which JSON writes as it is.
_VERBATIM = 64 * 1024


def dumps_arguments(arguments: Mapping[Any, Any]) -> str:
    """:func:`dumps` of a task's arguments (the same text), faster when they
    hold large ``bytes``: their base64 text needs no escaping, so it is
    written as it is instead of being scanned character by character by the
    ``json`` module (25-36 ms for 5 MB here).  That a long string is plain
    base64 is checked by decoding it (``pybase64``: about half a
    millisecond for 5 MB); any other string is encoded as usual."""
    if not any(isinstance(v, str) and len(v) >= _VERBATIM for v in arguments.values()):
        return _ENCODER.encode(arguments)
    encode = _ENCODER.encode
    pieces = ["{"]
    for key, value in arguments.items():
        if not isinstance(key, str):  # the json module's own rules for other keys
            return _ENCODER.encode(arguments)
        if len(pieces) > 1:
            pieces.append(",")
        pieces.append(encode(key))
        if isinstance(value, str) and len(value) >= _VERBATIM and _is_base64(value):
            pieces += (':"', value, '"')  # copied once, by the join
        else:
            pieces += (":", encode(value))
    pieces.append("}")
    return "".join(pieces)


def _is_base64(text: str) -> bool:
    """Whether ``text`` is strict base64 (its alphabet and padding only)."""
    try:
        pybase64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def _check_json(value: Any, path: str, errors: list[FieldError]) -> None:
    """Name the first non-JSON value under ``path``, for values typed ``Any``."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            errors.append(FieldError(path=path, message="NaN and infinity are not valid JSON"))
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", errors)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                errors.append(FieldError(path=path, message="object keys must be strings"))
                return
            _check_json(item, f"{path}.{key}", errors)
        return
    errors.append(FieldError(path=path, message=f"{type(value).__name__} is not JSON-serializable"))


def check_json(value: Any, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    _check_json(value, path, errors)
    return errors
