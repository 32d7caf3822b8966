"""The formats ``errands serve`` writes its logs in: each line as the
standard library's formatter would write it, made cheaper per line (a
server logs three lines per task)."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import sys
import time

import pytest

from errands.adapters._logs import LOG_FORMAT, JSONFormatter, TextFormatter, _StreamHandler

#: Times whose fractions sit where rounding and truncation part ways.
EDGES = [
    1796208514.0,
    1796208514.0004999,
    1796208514.0005,
    1796208514.9994999,
    1796208514.9995,
    1796208514.9999994,
    1796208514.9999995,
    1796208514.99999951,
    1796208514.9999999,
    1796208515.123456,
    1700000000.5,
]


def _record(
    created: float, message: str = "task %s %s started", *args: object
) -> logging.LogRecord:
    record = logging.LogRecord(
        "errands.tasks", logging.INFO, __file__, 1, message, args or ("work", "an-id"), None
    )
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord sets it
    return record


def _times() -> list[float]:
    import random

    rng = random.Random(7)
    return EDGES + [rng.uniform(1.6e9, 1.9e9) for _ in range(2000)]


def test_text_lines_are_the_standard_formatters() -> None:
    ours, stock = TextFormatter(), logging.Formatter(LOG_FORMAT)
    for created in _times():
        assert ours.format(_record(created)) == stock.format(_record(created))


def test_text_lines_with_a_traceback_or_a_stack_are_the_standard_formatters() -> None:
    ours, stock = TextFormatter(), logging.Formatter(LOG_FORMAT)
    try:
        int("broken")
    except ValueError:
        exc_info = sys.exc_info()
    lines = []
    for formatter in (ours, stock):
        record = _record(EDGES[3])
        record.exc_info = exc_info
        record.stack_info = "Stack (most recent call last):\n  here"
        lines.append(formatter.format(record))
    assert lines[0] == lines[1]
    assert "ValueError: invalid literal" in lines[0] and lines[0].endswith("  here")


def test_text_lines_follow_the_standard_formatters_time_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # UTC logs by the usual idiom, and another millisecond layout.
    monkeypatch.setattr(logging.Formatter, "converter", time.gmtime)
    monkeypatch.setattr(logging.Formatter, "default_msec_format", "%s.%03d")
    ours, stock = TextFormatter(), logging.Formatter(LOG_FORMAT)
    for created in EDGES:
        assert ours.format(_record(created)) == stock.format(_record(created))
    monkeypatch.setattr(logging.Formatter, "default_msec_format", None)
    assert ours.format(_record(EDGES[5])) == stock.format(_record(EDGES[5]))


def test_text_lines_make_the_time_of_day_once_a_second() -> None:
    formatter = TextFormatter()
    seconds: list[float] = []

    def converter(created: float | None) -> time.struct_time:
        seconds.append(created or 0.0)
        return time.localtime(created)

    formatter.converter = converter  # type: ignore[method-assign,assignment]
    lines = [formatter.format(_record(1796208514 + i / 1000)) for i in range(1000)]
    lines.append(formatter.format(_record(1796208515.25)))
    assert len(seconds) == 2  # one per whole second, not one per line
    stock = logging.Formatter(LOG_FORMAT)
    assert lines[-1] == stock.format(_record(1796208515.25))
    assert lines[999] == stock.format(_record(1796208514.999))


def test_json_times_are_datetimes_iso_format() -> None:
    formatter = JSONFormatter()
    for created in _times():
        expected = dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(_record(created)))["time"] == expected, created


def test_json_lines_are_what_json_dumps_gives() -> None:
    record = _record(EDGES[5], "tâche %s %s réussie", "travail", "ïd")
    record.task_id = "ïd"
    record.task_name = object()  # a field someone set to an object: str() of it
    line = JSONFormatter().format(record)
    expected = {
        "time": dt.datetime.fromtimestamp(EDGES[5], dt.UTC).isoformat(timespec="milliseconds"),
        "level": "INFO",
        "logger": "errands.tasks",
        "message": "tâche travail ïd réussie",
        "task_id": "ïd",
        "task_name": str(record.task_name),
    }
    assert line == json.dumps(expected, ensure_ascii=False, default=str)


class _Flushes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_the_handler_writes_and_flushes_each_line() -> None:
    stream = _Flushes()
    handler = _StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.handle(_record(EDGES[0]))
    handler.handle(_record(EDGES[1]))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" errands.tasks INFO task work an-id started")
    assert stream.flushes == 2


def test_a_line_the_stream_refuses_is_reported_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    stream.close()
    handler = _StreamHandler(stream)
    handler.handle(_record(EDGES[0]))  # no exception: logging's own report
    assert "Logging error" in capsys.readouterr().err
