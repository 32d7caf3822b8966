"""Reading requests as the OpenAPI document describes them: forms and query values."""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from typing import Any

import pytest

import errands
from errands.adapters._answers import number, one, wait_seconds
from errands.adapters._multipart import (
    MultipartError,
    parse_multipart,
    takes_bytes,
    takes_list,
    takes_text,
)
from errands.adapters._protocol import HTTPError
from tests.tools import spy_b64decodes

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, bytes, bool]) -> bytes:
    """A multipart body of (name, content, is_file) parts."""
    out = b""
    for name, content, is_file in parts:
        filename = f'; filename="{name}.bin"' if is_file else ""
        head = f'Content-Disposition: form-data; name="{name}"{filename}'
        out += f"--{BOUNDARY}\r\n{head}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def read(
    body: bytes,
    *,
    lists: Collection[str] = (),
    texts: Collection[str] = (),
    raw: Collection[str] = (),
) -> dict[str, Any]:
    return parse_multipart(
        CONTENT_TYPE,
        body,
        lists=lambda n: n in lists,
        texts=lambda n: n in texts,
        raw=lambda n: n in raw,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_list_argument_takes_one_part_per_item_or_one_json_part() -> None:
    items = form(("tags", b'"a"', False), ("tags", b'"b"', False))
    assert read(items, lists={"tags"}) == {"tags": ["a", "b"]}
    assert read(form(("tags", b'"a"', False)), lists={"tags"}) == {"tags": ["a"]}
    whole = form(("tags", json.dumps(["a", "b"]).encode(), False))  # BentoML's clients
    assert read(whole, lists={"tags"}) == {"tags": ["a", "b"]}
    files = form(("chunks", b"\x00", True), ("chunks", b"\x01", True))
    assert read(files, lists={"chunks"}) == {"chunks": [b64(b"\x00"), b64(b"\x01")]}
    assert read(form(("chunks", b"\x00", True)), lists={"chunks"}) == {"chunks": [b64(b"\x00")]}


def test_other_arguments_take_one_part() -> None:
    assert read(form(("n", b"5", False))) == {"n": 5}
    assert read(form(("label", b"42", False)), texts={"label"}) == {"label": "42"}
    twice = form(("message", b"[]", False), ("message", b"x", False))
    with pytest.raises(MultipartError, match="given 2 times"):
        read(twice, texts={"message"})
    both = form(("data", b"x", True), ("data", b'"eA=="', False))
    with pytest.raises(MultipartError, match="as a file and as a field"):
        read(both)


def test_a_file_for_bytes_is_its_bytes_and_is_encoded_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file part of an argument of type ``bytes`` is its bytes as they
    are: the check of the arguments encodes them to base64 once, and never
    decodes that back (it did, for every file: 18 ms a submit of 5 MB on
    the server's loop).  Other arguments still get base64 text."""
    blob = bytes(range(256)) * 64
    assert read(form(("data", blob, True)), raw={"data"}) == {"data": blob}
    assert read(form(("data", blob, True))) == {"data": b64(blob)}
    two = form(("data", b"\x00", True), ("data", b"\x01", True))
    assert read(two, raw={"data"}, lists={"data"}) == {"data": [b64(b"\x00"), b64(b"\x01")]}

    svc = errands.Service("forms")

    @svc.task
    def size(data: bytes) -> int:
        return len(data)

    decoded = spy_b64decodes(monkeypatch)
    arguments = read(form(("data", blob, True)), raw={"data"})
    assert svc.tasks["size"].validate(arguments, from_json=True) == {"data": b64(blob)}
    assert decoded == []


def test_json_parts_are_strict() -> None:
    """NaN is no JSON (as in JSON bodies): the part is kept as text, and the
    task's converter refuses it where a number is due."""
    assert read(form(("x", b"NaN", False))) == {"x": "NaN"}


def test_which_arguments_take_lists_and_text() -> None:
    assert takes_list(list[bytes]) and takes_list(list[str] | None) and takes_list(tuple[int, ...])
    assert not takes_list(bytes) and not takes_list(dict[str, int]) and not takes_list(str | None)
    assert takes_text(str) and not takes_text(str | None) and not takes_text(bytes)
    assert takes_bytes(bytes) and not takes_bytes(bytes | None) and not takes_bytes(list[bytes])


@pytest.mark.parametrize("text", ["", "x", "1_000", "٣", "nan", "inf", "1e", "0x10", " 1"])
def test_a_query_number_is_ascii_digits(text: str) -> None:
    with pytest.raises(HTTPError) as caught:
        number({"limit": [text]}, "limit", int, default=100)
    assert caught.value.status == 400
    assert number({}, "limit", int, default=100) == 100
    assert number({"limit": ["-7"]}, "limit", int, default=100) == -7
    assert number({"d": ["1.5e3"]}, "d", float, default=None) == 1500.0
    assert number({"d": [".5"]}, "d", float, default=None) == 0.5


def test_a_blank_required_value_is_missing() -> None:
    with pytest.raises(HTTPError, match="required"):
        one({"task_id": [""]}, "task_id", required=True)
    assert one({"name": [""]}, "name") == ""


def test_wait_above_max_wait_is_refused() -> None:
    assert wait_seconds({}, maximum=2, default=None) is None
    assert wait_seconds({"wait": ["2"]}, maximum=2, default=None) == 2
    with pytest.raises(HTTPError) as caught:
        wait_seconds({"wait": ["2.001"]}, maximum=2, default=None)
    error = caught.value
    assert error.status == 400
    assert error.body | {"error": ""} == {
        "error": "",
        "type": "LimitExceeded",
        "limit": "max_wait",
        "maximum": 2,
    }
    for bad in ("-1", "1e999"):
        with pytest.raises(HTTPError):
            wait_seconds({"wait": [bad]}, maximum=2, default=None)
