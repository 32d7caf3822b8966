"""The client commands' text: ``KEY=VALUE`` words in; statuses, tables, results out.

No network here: :func:`parse_arguments` reads the files named by ``@PATH``
and :func:`write_result` writes a result to stdout or a file.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from errands import Attempt, TaskInfo

__all__ = ["parse_arguments", "status_text", "table", "write_result"]


def _when(moment: dt.datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _progress(info: TaskInfo) -> str:
    parts = []
    if info.progress is not None:
        parts.append(f"{info.progress:.0%}")
    if info.message:
        parts.append(info.message)
    return " ".join(parts)


def _attempt(attempt: Attempt) -> str:
    """An earlier attempt in one line: how it ended, how long it ran, its error."""
    text = attempt.outcome.value
    if attempt.started_at is not None and attempt.finished_at is not None:
        text += f" after {(attempt.finished_at - attempt.started_at).total_seconds():.3f} s"
    return text if attempt.error is None else f"{text}: {attempt.error}"


def status_text(info: TaskInfo) -> str:
    """A status for people: one ``field: value`` line each, empty fields left out."""
    rows = [("task", info.id), ("name", info.name), ("status", info.status.value)]
    if info.position is not None:
        rows.append(("position", f"{info.position} in the queue"))
    if progress := _progress(info):
        rows.append(("progress", progress))
    if info.error is not None:
        rows.append(("error", str(info.error)))
    rows.append(("attempt", f"{info.attempt} of {info.max_attempts}"))
    if len(info.attempts) > 1:
        rows += [(f"attempt {a.attempt}", _attempt(a)) for a in info.attempts[:-1]]
    rows.append(("created", _when(info.created_at)))
    if info.started_at is not None:
        rows.append(("started", _when(info.started_at)))
    if info.finished_at is not None:
        rows.append(("finished", _when(info.finished_at)))
        if info.started_at is not None:
            took = (info.finished_at - info.started_at).total_seconds()
            rows.append(("took", f"{took:.3f} s"))
    if info.expires_at is not None:
        rows.append(("expires", _when(info.expires_at)))
    if info.retry_of is not None:
        rows.append(("retry of", info.retry_of))
    width = max(len(key) for key, _ in rows) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in rows)


def table(infos: Sequence[TaskInfo]) -> str:
    """Tasks as an aligned table with a header line (shown when there are none too)."""
    rows = [("ID", "NAME", "STATUS", "CREATED", "PROGRESS")]
    rows += [
        (i.id, i.name, i.status.value, _when(i.created_at), _progress(i) or "-") for i in infos
    ]
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def write_result(value: Any, output: str | None) -> str | None:
    """Write a result: JSON values pretty-printed, text as is, bytes raw.

    ``output`` is a file name, ``-`` for stdout as is, or None for stdout
    where text gets a final newline and bytes are refused on a terminal.

    Returns:
        None once written, else why it was not (a message for stderr).
    """
    binary = isinstance(value, bytes | bytearray | memoryview)
    if binary:
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
    else:
        data = (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    if output is None:
        if binary and sys.stdout.isatty():
            return (
                f"the result is {len(data)} bytes of binary data; write it with "
                "-o FILE (or -o - to send it to stdout anyway)"
            )
        if not binary and not data.endswith(b"\n"):
            data += b"\n"
    if output is None or output == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return None
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        return f"cannot write {output}: {exc.strerror or exc}"
    return None


# ------------------------------------------------------------------ arguments


def _text_value(text: str) -> str:
    """A string argument's text as is; a JSON string literal (``'"42"'``, as
    earlier versions asked for) still reads as its string."""
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, str):
            return value
    return text


def _value(text: str) -> Any:
    """JSON where the text parses as JSON (not NaN or Infinity), else the text."""

    def refuse(constant: str) -> NoReturn:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError:
        return text


def parse_arguments(
    pairs: Sequence[str],
    file_fields: frozenset[str],
    text_fields: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``KEY=VALUE`` words as keyword arguments (see ``errands submit --help``).

    A file argument takes ``@PATH`` (sent as that file) or text (sent as its
    UTF-8 bytes), and may be repeated for a list of files.  A string argument
    (``text_fields``, from the server's schema) takes the text as it is
    (``text=123`` is ``"123"``); the others are parsed as JSON where they parse.

    Raises:
        ValueError: a word is not ``KEY=VALUE``, a file cannot be read, or a
            key repeats (the message says which).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        value: Any
        if key in file_fields:
            if text.startswith("@"):
                path = Path(text[1:])
                if not path.is_file():
                    raise ValueError(f"{key}: no such file: {path}")
                value = path
            else:
                value = text.encode("utf-8")
            if key in out:
                earlier = out[key]
                out[key] = [*(earlier if isinstance(earlier, list) else [earlier]), value]
                continue
        elif key in text_fields:
            if text.startswith("@"):
                path = Path(text[1:])
                try:
                    value = path.read_text("utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                    raise ValueError(f"{key}: cannot read {path}: {reason}") from None
            else:
                value = _text_value(text)
        elif text.startswith("@"):
            path = Path(text[1:])
            try:
                value = _value(path.read_text("utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ValueError(f"{key}: cannot read {path}: {reason}") from None
        else:
            value = _value(text)
        if key in out:
            raise ValueError(f"argument {key!r} given twice")
        out[key] = value
    return out
