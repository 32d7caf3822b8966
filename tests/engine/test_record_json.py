"""A task record's stored JSON, read and written without cattrs.

Durable backends decode a record at every claim and encode one at every
move; ``record_plain`` and ``record_from_plain`` do what cattrs did, in one
pass, and hand anything unusual to cattrs.  Each test holds them to cattrs:
the same data, the same types, the same errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errands import StoredTask, TaskStatus, _model
from errands._convert import converter, dumps
from errands._model import (
    TaskError,
    TaskRecord,
    loads,
    record_from_plain,
    record_json,
    record_plain,
)
from errands._records import finished, started
from tests.tools import sample_records


def records() -> list[TaskRecord]:
    return sample_records()


def stored(record: TaskRecord) -> dict[str, Any]:
    """The record as cattrs wrote it to storage, read back as JSON data."""
    return json.loads(dumps(converter.unstructure(record)))


def typed(record: TaskRecord) -> dict[str, Any]:
    """The record's fields with their exact types (1 == 1.0 in Python)."""
    return {name: (type(value), value) for name, value in vars(record).items()}


def outcome(read: Any, plain: Any) -> tuple[str, Any]:
    try:
        return "read", typed(read(plain))
    except Exception as exc:
        return "raised", (type(exc), str(exc))


@pytest.mark.parametrize("record", records(), ids=lambda r: r.status.value)
def test_a_record_is_written_as_cattrs_writes_it(record: TaskRecord) -> None:
    plain = converter.unstructure(record)
    assert list(record_plain(record).items()) == list(plain.items())
    without = dict(plain)
    del without["args"]
    assert list(record_plain(record, args=False).items()) == list(without.items())
    assert loads(record_json(without)) == without


@pytest.mark.parametrize("record", records(), ids=lambda r: r.status.value)
def test_a_record_reads_back_as_cattrs_reads_it(record: TaskRecord) -> None:
    plain = stored(record)
    assert _model._read_plain(dict(plain)) is not None  # not by cattrs
    back = record_from_plain(plain)
    assert back == record == converter.structure(plain, TaskRecord)
    assert typed(back) == typed(converter.structure(plain, TaskRecord))


def test_a_well_formed_record_is_read_without_cattrs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from storage (as a claim reads it), a record of the current
    format never reaches cattrs; one written before attempts had times
    (``history``) does, and reads as it did."""
    calls = 0

    class Counting:
        def structure(self, value: Any, tp: Any) -> Any:
            nonlocal calls
            calls += 1
            return converter.structure(value, tp)

    monkeypatch.setattr(_model, "converter", Counting())
    for record in records():
        written = StoredTask.from_record(record)
        state, args = written.state_data, written.args_data
        again = StoredTask.from_parts(
            id=record.id,
            name=record.name,
            status=record.status,
            token=record.token,
            created_at=record.created_at,
            expires_at=record.expires_at,
            state=state,
            args=args,
        )
        assert again.record == record
    assert calls == 0
    legacy = stored(records()[0])
    del legacy["attempts"]
    legacy["history"] = [{"attempt": 1, "type": "WorkerLost", "message": "gone"}]
    assert record_from_plain(legacy).attempts[0].outcome.value == "lost"
    assert calls == 1


def test_what_orjson_refuses_is_written_and_read_by_json() -> None:
    """A lone surrogate (an exception's message may hold one) is not
    UTF-8: orjson refuses it, the ``json`` module escapes it."""
    record = finished(
        started(records()[0], token=1, now=1_800_000_001.0),
        status=TaskStatus.FAILURE,
        now=1_800_000_002.0,
        error=TaskError(type="UnicodeError", message="bad \udce9 byte"),
    )
    data = record_json(record_plain(record))
    assert b"\\udce9" in data
    assert record_from_plain(loads(data)) == record


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)
FIELDS = sorted({*TaskRecord.__annotations__, "history", "unknown"})


@settings(max_examples=400, deadline=None)
@given(
    which=st.sampled_from(range(len(records()))),
    field=st.sampled_from(FIELDS),
    value=JSON | st.just(KeyError),
    inner=st.sampled_from(["attempt", "started_at", "outcome", "error", "extra"]),
)
def test_any_change_to_a_stored_record_reads_as_cattrs_reads_it(
    which: int, field: str, value: Any, inner: str
) -> None:
    """A record with one field changed to any JSON value (or removed), or
    one key of its last attempt changed: read, or refused with the same
    error, as cattrs reads it."""
    plain = stored(records()[which])
    if field == "attempts" and plain["attempts"] and value is not KeyError:
        attempt = plain["attempts"][-1]
        attempt[inner] = value
    elif value is KeyError:
        plain.pop(field, None)
    else:
        plain[field] = value
    assert outcome(record_from_plain, plain) == outcome(
        lambda p: converter.structure(p, TaskRecord), plain
    )


def test_a_new_kind_of_field_is_caught_at_once() -> None:
    """The reader checks the fields it knows; a field of a type it does not
    know fails at import (here: on purpose), not silently at a read."""
    field = next(a for a in _model.attrs.fields(TaskRecord) if a.name == "status")
    with pytest.raises(TypeError, match="a new kind of field"):
        _model._scalar_field(field)
