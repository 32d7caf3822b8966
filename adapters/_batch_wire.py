"""The wire format of bulk submit and batches, defined once (see ``_protocol``).

The server (``_batch_routes``), both HTTP clients (``_batch_flows``), the CLI
and ``/openapi.json`` read and write batches through this module only.  No I/O.

* **A submit_many answer** is ``{"batch_id", "items", "accepted",
  "rejected", "next_offset"}``; ``items`` has one entry per item, in order:
  ``{"index", "task_id"}`` or ``{"index", "error"}`` where ``error`` is the
  body single submit answers for that error (``InvalidArguments`` with its
  field errors, ``BadRequest`` for a line that is not JSON...).  An answer
  that ends a submit part way (a storage fault, a full queue) is an error
  answer with these fields too, so the client knows which items made it.
* **A batch summary** (``GET /batches/<id>``, and cancel's answer without
  the ids) is ``{"batch_id", "name", "total", "counts", "progress",
  "task_ids", "indexes", "offset", "next_offset"}``.
* **A result line** of ``GET /batches/<id>/results`` (JSON Lines) is
  ``{"index", "task_id", "status", "result", "error"}``; a result that is
  not JSON or text (bytes, an image) is not inlined: the line has a
  ``result_url`` (its ``/get``) instead.  Blank lines are keep-alives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from errands import BatchResult, ErrandsError, RemoteError, TaskError, TaskStatus

from ._protocol import (
    ERRORS,
    HTTP_TYPES,
    STATUS_NAMES,
    ErrorAnswer,
    http_error,
    rebuild_error,
    status_name,
)

__all__ = [
    "JSONL_TYPES",
    "RESULT_ORDERS",
    "Summary",
    "answer_head",
    "batch_schemas",
    "counts_from_json",
    "counts_to_json",
    "encode_error",
    "error_entry",
    "inlinable",
    "inline_result",
    "item_error",
    "parse_result_line",
    "result_line",
    "summary_from_json",
    "summary_to_json",
    "task_entry",
]

JSON = dict[str, Any]

#: The media types of a JSON Lines body (submit_many) and of the results stream.
JSONL_TYPES = ("application/x-ndjson", "application/jsonl")
#: The orders ``GET /batches/<id>/results`` takes.
RESULT_ORDERS = ("submission", "completed")
#: What the results stream inlines as ``result``: JSON as is, text as a JSON string.
_JSON_MEDIA = "application/json"

# ---------------------------------------------------------------------- submit_many


def task_entry(index: int, task_id: str) -> bytes:
    """The entry of an accepted item (task ids are URL-safe: no escaping)."""
    return b'{"index":%d,"task_id":"%s"}' % (index, task_id.encode("ascii"))


def error_entry(index: int, error: bytes) -> bytes:
    """The entry of a refused item; ``error`` is an encoded error body."""
    return b'{"index":%d,"error":%s}' % (index, error)


def answer_head(batch_id: str, *, accepted: int, rejected: int, next_offset: int) -> JSON:
    """The members of a submit_many answer besides ``items``."""
    return {
        "batch_id": batch_id,
        "accepted": accepted,
        "rejected": rejected,
        "next_offset": next_offset,
    }


def item_error(error: Mapping[str, Any], task_name: str) -> Exception:
    """The exception an item's ``error`` body stands for, as a client raises it
    (``InvalidArguments`` with its fields, ``LimitExceeded``...; an answer no
    errands exception stands for, such as a line that is not JSON, is a
    ``RemoteError`` with the status single submit would have answered)."""
    kind = str(error.get("type", ""))
    codes = {k.type: k.code for k in ERRORS.values()}
    codes.update({name: code for code, name in HTTP_TYPES.items()})
    code = codes.get(kind, 400)
    answer = ErrorAnswer(code=code, body=dict(error), task_name=task_name)
    rebuilt = rebuild_error(answer)
    if rebuilt is not None:
        return rebuilt
    remote = RemoteError(f"HTTP {code}: {answer.message}")
    remote.status_code = code
    return remote


def encode_error(exc: ErrandsError) -> bytes:
    """An engine error refusing an item, as the body single submit answers."""
    answer = http_error(exc)
    if answer is None:  # not an error with an answer: an engine bug, not the item's fault
        raise exc
    return _COMPACT.encode(answer.body).encode()


#: Made once: ``json.dumps`` with options makes an encoder per call, and a
#: results stream encodes a line per task.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


# ---------------------------------------------------------------------- summaries


def counts_to_json(counts: Mapping[str, int], *, bentoml_compat: bool) -> JSON:
    """A batch's counts by status (the server's status names; ``expired`` as is)."""
    out = {}
    for key, value in counts.items():
        if key == "total":
            continue
        known = key in {s.value for s in TaskStatus}
        out[status_name(key, bentoml_compat=bentoml_compat) if known else key] = value
    return out


def counts_from_json(counts: Any, total: Any) -> dict[str, int]:
    """Counts as the in-process ``Batch.counts()`` gives them (``TaskStatus``
    values, ``expired`` when any, and ``total``)."""
    if not isinstance(counts, dict):
        raise RemoteError("the server's batch answer has no counts")
    out: dict[str, int] = {}
    for key, value in counts.items():
        status = STATUS_NAMES.get(key)
        out[status.value if status is not None else str(key)] = int(value)
    out["total"] = int(total) if isinstance(total, int) else sum(out.values())
    return out


def _finished(counts: Mapping[str, int]) -> int:
    final = {s.value for s in TaskStatus if s.is_final} | {"expired"}
    return sum(n for key, n in counts.items() if key in final)


def summary_to_json(
    batch_id: str,
    name: str,
    counts: Mapping[str, int],
    *,
    bentoml_compat: bool,
    page: list[tuple[int, str]] | None = None,
    offset: int = 0,
    limit: int = 0,
) -> JSON:
    """``GET /batches/<id>``'s answer (``page``: its ``(index, task_id)`` members
    from ``offset``; None for cancel's answer, which lists no ids)."""
    total = counts["total"]
    out: JSON = {
        "batch_id": batch_id,
        "name": name,
        "total": total,
        "counts": counts_to_json(counts, bentoml_compat=bentoml_compat),
        "progress": _finished(counts) / total if total else 1.0,
    }
    if page is not None:
        out["task_ids"] = [task_id for _, task_id in page]
        out["indexes"] = [index for index, _ in page]
        out["offset"] = offset
        more = len(page) == limit and offset + limit < total
        out["next_offset"] = offset + limit if more else None
    return out


@attrs.frozen(kw_only=True)
class Summary:
    """A batch summary as a client reads it."""

    batch_id: str
    name: str
    counts: dict[str, int]
    task_ids: list[str]
    indexes: list[int]
    next_offset: int | None

    @property
    def done(self) -> bool:
        """Whether every task of the batch is final (or gone)."""
        return _finished(self.counts) >= self.counts["total"]


def summary_from_json(body: Any) -> Summary:
    if not isinstance(body, dict) or not isinstance(body.get("batch_id"), str):
        raise RemoteError("the server's batch answer has no batch_id")
    ids = body.get("task_ids") or []
    indexes = body.get("indexes") or list(range(len(ids)))
    following = body.get("next_offset")
    return Summary(
        batch_id=body["batch_id"],
        name=str(body.get("name") or ""),
        counts=counts_from_json(body.get("counts"), body.get("total")),
        task_ids=[str(i) for i in ids],
        indexes=[int(i) for i in indexes],
        next_offset=following if isinstance(following, int) else None,
    )


# ---------------------------------------------------------------------- result lines


def result_line(
    index: int,
    task_id: str,
    status: TaskStatus | None,
    error: TaskError | None,
    *,
    media_type: str | None = None,
    data: bytes | None = None,
    result_url: str | None = None,
    bentoml_compat: bool = False,
    hide_errors: bool = False,
) -> bytes:
    """One line of the results stream, newline included.

    ``status`` None: the task is no longer kept (``expired``).  A successful
    task's stored result (``media_type``, ``data``) is inlined when it is JSON
    (as ``/get`` answers it) or UTF-8 text (as a string); otherwise the line
    names ``result_url``.
    """
    name = "expired" if status is None else status_name(status, bentoml_compat=bentoml_compat)
    head = {"index": index, "task_id": task_id, "status": name}
    text = None if error is None else (error.type if hide_errors else str(error))
    inline = None if data is None or media_type is None else inline_result(media_type, data)
    if inline is None:
        tail: JSON = {"result": None, "error": text}
        if data is not None and result_url is not None:
            tail["result_url"] = result_url
        return _COMPACT.encode({**head, **tail}).encode() + b"\n"
    start = _COMPACT.encode(head).encode()[:-1]
    end = json.dumps(text).encode()
    return b"".join((start, b',"result":', inline, b',"error":', end, b"}\n"))


#: Characters that end a line for some readers (httpx's ``iter_lines`` among
#: them), as UTF-8: a result that holds one raw is not inlined in a line.
_LINE_BREAKS = (b"\n", b"\r", "\u0085".encode(), "\u2028".encode(), "\u2029".encode())


def inlinable(media_type: str | None) -> bool:
    """Whether a result of ``media_type`` may be inlined (JSON or text)."""
    if media_type is None:
        return False
    media = media_type.split(";", 1)[0].strip().lower()
    return media == _JSON_MEDIA or media.endswith("+json") or media.startswith("text/")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Made once (``json.loads`` with options makes a decoder per call).
_STRICT = json.JSONDecoder(parse_constant=_no_constant)


def inline_result(media_type: str, data: bytes) -> bytes | None:
    """A stored result as JSON to inline in an answer, or None when it is
    not inlined: JSON as it is stored (as ``/get`` answers it), UTF-8 text
    as a JSON string; bytes and images are not, nor bytes that only claim
    to be JSON (a task may return ``Annotated[bytes, MediaType(...)]``):
    inlined, they would break the whole answer, not just their own entry.
    So JSON is inlined only when it is strict UTF-8 JSON (no ``NaN``), with
    no raw line break of any kind (a results stream is read by lines)."""
    if not inlinable(media_type):
        return None
    media = media_type.split(";", 1)[0].strip().lower()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if media.startswith("text/"):
        return json.dumps(text).encode()  # (escapes every line break)
    if any(mark in data for mark in _LINE_BREAKS):
        return None
    try:
        _STRICT.decode(text)
    except ValueError:
        return None
    return data


def parse_result_line(entry: Any) -> tuple[BatchResult, bool]:
    """A result line (parsed JSON) as a :class:`errands.BatchResult`, and
    whether its result must be fetched from its ``result_url``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("task_id"), str):
        raise RemoteError(f"the server sent a result line without a task_id: {entry!r:.200}")
    status_text = entry.get("status")
    status = STATUS_NAMES.get(status_text) if isinstance(status_text, str) else None
    error = entry.get("error")
    task_error = None
    if isinstance(error, str) and error:
        kind, _, message = error.partition(": ")
        task_error = TaskError(type=kind, message=message)
    index = entry.get("index")
    result = BatchResult(
        index=index if isinstance(index, int) else -1,
        task_id=entry["task_id"],
        status=status.value if status is not None else str(status_text),
        result=entry.get("result"),
        error=task_error,
    )
    return result, isinstance(entry.get("result_url"), str)


# ---------------------------------------------------------------------- schemas


def batch_schemas(*, bentoml_compat: bool, max_batch_page: int) -> dict[str, JSON]:
    """JSON schemas of the batch answers, for ``/openapi.json``."""
    statuses = [status_name(s, bentoml_compat=bentoml_compat) for s in TaskStatus]
    error = {"$ref": "#/components/schemas/Error"}
    count = {"type": "integer", "minimum": 0}
    progress_fields: JSON = {
        "batch_id": {"type": "string"},
        "accepted": count,
        "rejected": count,
        "next_offset": {
            "type": "integer",
            "description": "The index the next item of the batch gets (to resume from).",
        },
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/BatchItem"}},
    }
    return {
        "BatchItem": {
            "type": "object",
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "task_id": {"type": "string"},
                "error": {
                    **error,
                    "description": "The error body submit answers for this item.",
                },
            },
            "required": ["index"],
            "oneOf": [{"required": ["task_id"]}, {"required": ["error"]}],
        },
        "BatchSubmitted": {
            "type": "object",
            "properties": progress_fields,
            "required": ["batch_id", "accepted", "rejected", "next_offset", "items"],
        },
        "BatchStopped": {
            "description": (
                "An error answer; when the submit stopped part way, with the entries of"
                " the items answered before it."
            ),
            "allOf": [error, {"type": "object", "properties": progress_fields}],
        },
        "BatchInfo": {
            "type": "object",
            "properties": {
                "batch_id": {"type": "string"},
                "name": {"type": "string", "description": "The task endpoint."},
                "total": count,
                "counts": {
                    "type": "object",
                    "description": "Tasks by status (`expired`: no longer kept).",
                    "propertyNames": {"enum": [*statuses, "expired"]},
                    "additionalProperties": count,
                },
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "task_ids": {
                    "type": "array",
                    "items": {"type": "string"},
                    "maxItems": max_batch_page,
                },
                "indexes": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "description": "Each task's item's index in the submission.",
                },
                "offset": count,
                "next_offset": {"type": ["integer", "null"]},
            },
            "required": ["batch_id", "name", "total", "counts", "progress"],
        },
        "BatchResultLine": {
            "type": "object",
            "properties": {
                "index": {"type": "integer"},
                "task_id": {"type": "string"},
                "status": {"type": "string", "enum": [*statuses, "expired"]},
                "result": {"description": "The result, when it is JSON or text."},
                "result_url": {
                    "type": "string",
                    "description": "Where the result is (a result that is not JSON or text).",
                },
                "error": {"type": ["string", "null"], "description": '"Type: message"'},
            },
            "required": ["index", "task_id", "status", "result", "error"],
        },
    }
