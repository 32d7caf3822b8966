"""How ``errands serve`` and ``errands worker`` write their logs: text (the
default) or one JSON object per line (``--log-format json``, for log shippers).

The library itself installs no handler (house style); only the command line
calls :func:`setup_logging`, in its own process and in each server process
it starts (which read the choice from the environment).  Task lines come
from the ``errands.tasks`` logger with ``task_id`` and ``task_name`` (and
``attempt``, ``batch_id``) as record fields; the JSON format writes them as
fields of their own, the text format has them in the message already
(``task NAME ID started ...``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from typing import Any

__all__ = ["FORMATS", "LOG_FORMAT", "JSONFormatter", "TextFormatter", "setup_logging"]

#: The text format's layout.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
#: What ``--log-format`` takes.
FORMATS = ("text", "json")
#: Record fields that a JSON line carries when the record has them.
FIELDS = ("task_id", "task_name", "attempt", "batch_id", "count")

_LEVEL_VARIABLE = "ERRANDS_LOG_LEVEL"
_FORMAT_VARIABLE = "ERRANDS_LOG_FORMAT"


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`, each line as ``logging.Formatter(LOG_FORMAT)``
    writes it, with the date and time of day made once a second instead of
    once a line: a server logs three lines per task (submitted, started,
    ended), and ``time.strftime`` of each line's time was a fifth of what
    a line cost (docs/performance.md).  Lines with a traceback or stack
    are the base class's."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        #: The whole second last formatted, and its text (one tuple, so a
        #: thread never pairs one second's text with another second).
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        second, text = self._second
        if int(record.created) != second:
            # Local time to the second depends on the whole second alone.
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        msec_format = self.default_msec_format
        record.asctime = msec_format % (text, record.msecs) if msec_format else text
        return f"{record.asctime} {record.name} {record.levelname} {record.message}"


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """``logging.StreamHandler``, each line written and flushed under the
    one hold of the handler's lock that ``handle`` takes (the base class's
    ``flush`` takes it a second time, per line)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream
            stream.write(self.format(record) + self.terminator)
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601),
    ``level``, ``logger``, ``message``, the task fields the record has
    (:data:`FIELDS`), and ``exception`` (the traceback text) when there is one.

    The time is made as ``datetime.fromtimestamp(created, UTC).isoformat(
    timespec="milliseconds")`` makes it, its date and time of day once a
    second; the encoder is made once (``json.dumps`` with options makes
    one per call): about 50,000 instructions less per task of three lines
    (docs/performance.md, twenty-first round)."""

    _encoder = json.JSONEncoder(ensure_ascii=False, default=str)

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        whole = int(created)
        # As datetime rounds a timestamp: to the microsecond, half to even.
        micros = round((created - whole) * 1e6)
        if micros >= 1_000_000:
            whole, micros = whole + 1, micros - 1_000_000
        second, text = self._second
        if whole != second:
            text = dt.datetime.fromtimestamp(whole, dt.UTC).isoformat()[:-6]  # no "+00:00"
            self._second = (whole, text)
        return f"{text}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # A final failure's line (errands.tasks) carries the task's traceback,
        # which the engine has as text, after the message's first line: a
        # field of its own here, as a logged exception's is.
        first, newline, rest = line["message"].partition("\n")
        if newline and rest.startswith("Traceback (most recent call last):"):
            line["message"], line["exception"] = first, rest
        for field in FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a field someone set to an object still gives a line.
        return self._encoder.encode(line)


def setup_logging(level: str | None = None, log_format: str | None = None) -> None:
    """Send every log record to stderr at ``level`` in ``log_format``.

    Called by the command line, and by the server processes it starts with
    neither argument (they read the parent's choice from the environment,
    which a call with arguments sets).
    """
    if level is None:
        level = os.environ.get(_LEVEL_VARIABLE, "INFO")
    else:
        os.environ[_LEVEL_VARIABLE] = level.upper()
    if log_format is None:
        log_format = os.environ.get(_FORMAT_VARIABLE, "text")
    else:
        os.environ[_FORMAT_VARIABLE] = log_format
    handler = _StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def log_format() -> str:
    """The format :func:`setup_logging` chose (``text`` or ``json``)."""
    return os.environ.get(_FORMAT_VARIABLE, "text")
