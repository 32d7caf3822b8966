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
from typing import Any

__all__ = ["FORMATS", "LOG_FORMAT", "JSONFormatter", "setup_logging"]

#: The text format's layout.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
#: What ``--log-format`` takes.
FORMATS = ("text", "json")
#: Record fields that a JSON line carries when the record has them.
FIELDS = ("task_id", "task_name", "attempt", "batch_id", "count")

_LEVEL_VARIABLE = "ERRANDS_LOG_LEVEL"
_FORMAT_VARIABLE = "ERRANDS_LOG_FORMAT"


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601),
    ``level``, ``logger``, ``message``, the task fields the record has
    (:data:`FIELDS`), and ``exception`` (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
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
        return json.dumps(line, ensure_ascii=False, default=str)


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
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def log_format() -> str:
    """The format :func:`setup_logging` chose (``text`` or ``json``)."""
    return os.environ.get(_FORMAT_VARIABLE, "text")
