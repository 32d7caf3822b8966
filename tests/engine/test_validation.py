"""Argument validation at submit: strict, complete, and naming every bad field."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import json
import re
from typing import Annotated, Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import errands
from errands import FieldError, InvalidArguments

svc = errands.Service("validation")


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Mode(enum.StrEnum):
    FAST = "fast"
    GOOD = "good"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Size:
    width: int
    height: int


@dataclasses.dataclass
class Job:
    prompt: str
    size: Size
    tags: list[str]
    seed: int | None = None


@svc.task
async def scalars(i: int, f: float, s: str, b: bool) -> None: ...


@svc.task
async def nested(job: Job, colours: list[Colour], weights: dict[str, float]) -> None: ...


@svc.task
async def special(when: dt.datetime, day: dt.date, blob: bytes, anything: Any = None) -> None: ...


@svc.task
async def optional(n: int = 3, name: str | None = None) -> None: ...


@svc.task
async def enums(mode: Mode, level: Level) -> None: ...


def validate(name: str, /, **arguments: Any) -> dict[str, Any]:
    return svc.tasks[name].validate(arguments)


def errors_of(name: str, /, *, from_json: bool = False, **arguments: Any) -> dict[str, str]:
    with pytest.raises(InvalidArguments) as caught:
        svc.tasks[name].validate(arguments, from_json=from_json)
    assert caught.value.task_name == name
    return {e.path: e.message for e in caught.value.errors}


def test_scalars_accept_their_types_and_int_for_float() -> None:
    assert validate("scalars", i=1, f=2, s="x", b=True) == {"i": 1, "f": 2, "s": "x", "b": True}


def test_no_string_number_coercion_and_every_field_named() -> None:
    errors = errors_of("scalars", i="1", f="2.5", s=3, b=1)
    assert errors == {
        "$.i": "expected an integer, got string",
        "$.f": "expected a number, got string",
        "$.s": "expected a string, got number",
        "$.b": "expected a boolean, got number",
    }


def test_bool_is_not_an_int_and_float_is_not_an_int() -> None:
    errors = errors_of("scalars", i=True, f=1.5, s="", b=False)
    assert errors == {"$.i": "expected an integer, got boolean"}
    assert errors_of("scalars", i=1.0, f=1.5, s="", b=False) == {
        "$.i": "expected an integer, got number"
    }


def test_unknown_and_missing_arguments() -> None:
    errors = errors_of("scalars", i=1, f=1.0, extra=5, other="x")
    assert errors == {
        "$.extra": "unknown argument",
        "$.other": "unknown argument",
        "$.s": "missing required argument",
        "$.b": "missing required argument",
    }


def test_nested_paths_name_the_exact_field() -> None:
    job = {"prompt": 5, "size": {"width": "wide", "height": 2, "depth": 1}, "tags": ["a", 2]}
    errors = errors_of(
        "nested", from_json=True, job=job, colours=["red", "green"], weights={"a": "heavy"}
    )
    assert errors["$.job.prompt"] == "expected a string, got number"
    assert errors["$.job.size.width"] == "expected an integer, got string"
    assert "depth" in errors["$.job.size"]  # extra keys are refused, by name
    assert errors["$.job.tags[1]"] == "expected a string, got number"
    assert errors["$.colours[1]"] == 'expected one of "red", "blue"'
    assert errors["$.weights['a']"] == "expected a number, got string"


def test_nested_values_in_process_become_json() -> None:
    job = Job(prompt="p", size=Size(2, 3), tags=["x"])
    out = validate("nested", job=job, colours=[Colour.BLUE], weights={"a": 1})
    assert out == {
        "job": {"prompt": "p", "size": {"width": 2, "height": 3}, "tags": ["x"], "seed": None},
        "colours": ["blue"],
        "weights": {"a": 1},
    }


def test_a_string_is_not_a_list_and_a_list_is_not_an_object() -> None:
    errors = errors_of(
        "nested",
        from_json=True,
        job={"prompt": "p", "size": [1, 2], "tags": "abc"},
        colours="red",
        weights=[["a", 1]],
    )
    assert errors["$.job.size"] == "expected an object, got array"
    assert errors["$.job.tags"] == "expected an array, got string"
    assert errors["$.colours"] == "expected an array, got string"
    assert errors["$.weights"] == "expected an object, got array"


def test_datetimes_dates_bytes_and_any() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    out = validate("special", when=when, day=dt.date(2026, 1, 2), blob=b"\x00\xff", anything=[1])
    assert out == {
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "blob": "AP8=",
        "anything": [1],
    }
    definition = svc.tasks["special"]
    typed = definition.structure(out)
    assert typed == {"when": when, "day": dt.date(2026, 1, 2), "blob": b"\x00\xff", "anything": [1]}
    errors = errors_of(
        "special", from_json=True, when="yesterday", day=20260102, blob="not base64!", anything=None
    )
    assert errors == {
        "$.when": "expected an ISO 8601 date-time",
        "$.day": "expected an ISO 8601 date, got number",
        "$.blob": "expected base64-encoded bytes",
    }


def test_bytes_given_as_bytes_are_encoded_not_decoded_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Their base64 is valid by construction: checking it by decoding it
    back took twice as long as encoding it (14 ms a submit of 1 MB).  Bytes
    given as base64 (JSON) are still checked."""
    import base64

    from tests.tools import spy_b64decodes

    decoded = spy_b64decodes(monkeypatch)
    blob = bytes(range(256)) * 4
    out = validate("special", when="2026-01-01T00:00:00", day="2026-01-01", blob=blob)
    assert out["blob"] == base64.b64encode(blob).decode() and decoded == []
    errors = errors_of("special", from_json=True, when="2026-01-01", day="2026-01-01", blob="x!")
    assert errors == {"$.blob": "expected base64-encoded bytes"} and len(decoded) == 1


@pytest.mark.parametrize(
    "text",
    ["QUJD=", "QQ", "QQ=", "QUJ D", "QUJD\n", "-_-_", "é", "QQ==QQ=="],
)
def test_base64_is_as_strict_as_the_published_pattern(text: str) -> None:
    """What the schema's base64 pattern refuses, the check refuses too
    (the standard library's decoder took "QUJD=", padding after a whole
    group: docs/decisions.md, pybase64)."""
    from errands.adapters._jsonschema import BASE64

    assert re.fullmatch(BASE64, text) is None
    errors = errors_of("special", from_json=True, when="2026-01-01", day="2026-01-01", blob=text)
    assert errors == {"$.blob": "expected base64-encoded bytes"}


@pytest.mark.parametrize("size", [0, 1, 12 * 1024 * 1024 - 1, 12 * 1024 * 1024 + 5])
def test_bytes_round_trip_whole_and_in_pieces(size: int) -> None:
    """Encoded and decoded in pieces of 12 MiB: the same bytes come back
    across a piece's end, and the text is the standard base64 of them."""
    import base64

    blob = (bytes(range(251)) * (size // 251 + 1))[:size]
    out = validate("special", when="2026-01-01T00:00:00", day="2026-01-01", blob=blob)
    assert out["blob"] == base64.b64encode(blob).decode()
    assert svc.tasks["special"].structure(out)["blob"] == blob
    # Given as base64 text (JSON): checked, then decoded the same.
    assert svc.tasks["special"].validate(out, from_json=True) == out


def test_any_must_still_be_json() -> None:
    errors = errors_of(
        "special", when="2026-01-01T00:00:00", day="2026-01-01", blob="", anything={"x": object()}
    )
    assert errors == {"$.anything.x": "object is not JSON-serializable"}
    errors = errors_of(
        "special", when="2026-01-01T00:00:00", day="2026-01-01", blob="", anything=float("nan")
    )
    assert errors == {"$.anything": "NaN and infinity are not valid JSON"}


def test_str_and_int_enums_come_back_as_enums() -> None:
    out = validate("enums", mode=Mode.GOOD, level=Level.HIGH)
    assert out == {"mode": "good", "level": 2}
    typed = svc.tasks["enums"].structure(out)
    assert type(typed["mode"]) is Mode and type(typed["level"]) is Level
    errors = errors_of("enums", from_json=True, mode="slow", level=3)
    assert errors == {"$.mode": 'expected one of "fast", "good"', "$.level": "expected one of 1, 2"}


def test_defaults_and_optionals() -> None:
    assert validate("optional") == {}
    assert validate("optional", name=None) == {"name": None}
    assert errors_of("optional", n=None) == {"$.n": "expected an integer, got null"}


async def test_invalid_arguments_at_submit_enqueue_nothing() -> None:
    async with errands.open_engine(svc) as client:
        with pytest.raises(InvalidArguments) as caught:
            await client.scalars.submit(i="x", f=1.0, s="s", b=True)
        assert "$.i" in str(caught.value)
        assert isinstance(caught.value, errands.ErrandsError)
        assert await client.list() == []
        assert client.statistics().submitted == 0


def test_definition_errors_are_caught_early() -> None:
    local = errands.Service("defs")
    with pytest.raises(TypeError, match="nameable"):

        @local.task
        def star(*args: int) -> None: ...

    with pytest.raises(ValueError, match="cancellable=True is for sync"):

        @local.task(cancellable=True)
        async def already() -> None: ...

    with pytest.raises(ValueError, match="concurrency must be positive"):
        local.task(concurrency=0)

    with pytest.raises(ValueError, match="taken by the client"):

        @local.task
        def list() -> None: ...

    with pytest.raises(ValueError, match="identifier"):
        local.task(name="has space")(lambda: None)

    @local.task
    def dup() -> None: ...

    with pytest.raises(ValueError, match="already has a task named 'dup'"):
        local.task(name="dup")(lambda: None)

    with pytest.raises(TypeError, match="no @errands.task methods"):

        @errands.service
        class Empty:
            pass

    with pytest.raises(TypeError, match="expected an errands.Service"):
        errands._define.as_service(object())


def test_field_error_text() -> None:
    assert str(FieldError(path="$.a", message="bad")) == "$.a: bad"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    job=st.builds(
        Job,
        prompt=st.text(),
        size=st.builds(Size, st.integers(), st.integers()),
        tags=st.lists(st.text(), max_size=3),
        seed=st.none() | st.integers(),
    ),
    colours=st.lists(st.sampled_from(Colour), max_size=3),
    weights=st.dictionaries(
        st.text(), st.floats(allow_nan=False, allow_infinity=False), max_size=3
    ),
)
def test_arguments_round_trip_through_json(
    job: Job, colours: list[Colour], weights: dict[str, float]
) -> None:
    import json

    definition = svc.tasks["nested"]
    stored = json.loads(
        json.dumps(definition.validate({"job": job, "colours": colours, "weights": weights}))
    )
    back = definition.structure(stored)
    assert back == {"job": job, "colours": colours, "weights": weights}


@given(value=json_values)
def test_any_accepts_every_json_value(value: Any) -> None:
    out = validate("special", when="2026-01-01T00:00:00", day="2026-01-01", blob="", anything=value)
    assert out["anything"] == value


def test_non_finite_floats_are_refused() -> None:
    for bad in (float("nan"), float("inf"), -float("inf")):
        errors = errors_of("scalars", i=1, f=bad, s="", b=True)
        assert errors == {"$.f": "NaN and infinity are not valid JSON"}


@given(
    st.one_of(
        st.integers(),
        st.integers(min_value=-(10**60), max_value=10**60),
        st.floats(),
        st.booleans(),
        st.none(),
        st.text(),
    )
)
def test_a_scalar_result_is_stored_as_the_json_module_writes_it(value: object) -> None:
    """Scalars take a short path to JSON; its bytes are the json module's
    own, and what the json module refuses (NaN, infinities) is refused."""
    from errands._convert import encode_result

    try:
        expected = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        with pytest.raises(ValueError):
            encode_result(value, Any)
        return
    payload = encode_result(value, Any)
    assert (payload.media_type, payload.data) == ("application/json", expected)
    if not isinstance(value, str) and value is not None:
        assert encode_result(value, type(value)).data == expected


_RESULT_TYPES: list[Any] = [
    int,
    float,
    str,
    bool,
    Any,
    None,
    type(None),
    bytes,
    list[int],
    dict[str, float],
    Annotated[int, "note"],
    Annotated[bytes, errands.MediaType("image/webp")],
    errands.Payload,
]


@given(
    st.sampled_from(_RESULT_TYPES),
    st.one_of(
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.text(),
        st.binary(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.floats()),
        st.builds(errands.Payload, media_type=st.just("text/plain"), data=st.binary()),
    ),
)
def test_a_definitions_result_check_answers_as_check_result(annotation: Any, value: Any) -> None:
    """A task definition checks results with the lookups for its return type
    done once; its answers, messages included, are check_result's own."""
    from errands._convert import check_result, result_checker

    assert result_checker(annotation)(value) == check_result(value, annotation)


_LONG = 64 * 1024  # what dumps_arguments checks as possible base64


def _long_text(seed: bytes, extra: int, odd: str, at: int) -> str:
    """The base64 of at least ``_LONG`` bytes, with ``odd`` put in at ``at``."""
    text = base64.b64encode((seed * (_LONG // len(seed) + 1))[: _LONG + extra]).decode()
    return text[:at] + odd + text[at:]


@given(
    st.dictionaries(
        st.text(max_size=5),
        st.one_of(
            st.integers(),
            st.text(max_size=20),
            st.lists(st.integers(), max_size=3),
            # long strings: base64 text, or text that is not quite (an
            # escape, a line break, bad padding, a non-ASCII character)
            st.builds(
                _long_text,
                st.binary(min_size=1, max_size=9),
                st.integers(min_value=0, max_value=7),
                st.sampled_from(["", '"', "\\", "\n", "=", "é", "\x00"]),
                st.integers(min_value=0, max_value=3),
            ),
        ),
        max_size=4,
    )
)
def test_arguments_are_stored_as_the_same_json_text(arguments: dict[str, Any]) -> None:
    """Long base64 text is written as it is; the document is the one the
    json module writes, character for character, whatever the strings."""
    from errands._convert import dumps, dumps_arguments

    text = dumps_arguments(arguments)
    assert text == dumps(arguments)
    assert json.loads(text) == arguments
    # Keys that are not strings (a record built by other code): as json writes them.
    odd = {1: _long_text(b"x", 0, "", 0), **arguments}
    assert dumps_arguments(odd) == dumps(odd)
