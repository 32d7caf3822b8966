"""errands' HTTP wire format, defined once: status names, the TaskInfo object, errors.

The server (``asgi``), both HTTP clients (``_wire``, ``_flows``), the CLI and
``/openapi.json`` read and write the wire through this module only, so they
cannot drift apart.  No I/O here.

* **Status names**: ours (the :class:`~errands.TaskStatus` values) or, with
  ``bentoml_compat``, BentoML's (``completed``, ``failed``, ``canceled``);
  readers accept both.
* **The TaskInfo object** (status answers, ``/tasks``, events, waits):
  :data:`INFO_FIELDS` lists its fields once; :func:`info_to_json`,
  :func:`info_from_json` and :func:`info_schema` all follow that list.
* **Errors**: every error answer is JSON ``{"error": message, "type": kind,
  **fields}``.  ``kind`` names the errands exception behind the answer, and
  :data:`ERRORS` gives its HTTP status and its fields (``task_id``,
  ``status``, ``reason``, ...), enough to rebuild the exception; answers no
  exception stands behind (a bad query, no such route) are named after their
  HTTP status (:data:`HTTP_TYPES`).  The server makes an answer with
  :func:`http_error`, a client rebuilds the exception with
  :func:`rebuild_error` from the fields, never from the message.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import attrs

from errands import (
    Attempt,
    AttemptOutcome,
    BackendError,
    BatchNotFound,
    CannotCancel,
    EngineClosed,
    EngineUnavailable,
    ErrandsError,
    FieldError,
    InvalidArguments,
    LimitExceeded,
    RemoteError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskInfo,
    TaskNotFound,
    TaskNotReady,
    TaskStatus,
)

__all__ = [
    "ATTEMPT_SCHEMA",
    "BENTOML_STATUS",
    "ERRORS",
    "HTTP_TYPES",
    "INFO_FIELDS",
    "STATUS_NAMES",
    "ErrorAnswer",
    "ErrorKind",
    "HTTPError",
    "InfoField",
    "engine_closed",
    "error_schemas",
    "errors_as_answers",
    "http_error",
    "info_from_json",
    "info_schema",
    "info_to_json",
    "parse_status",
    "rebuild_error",
    "status_name",
    "status_names",
    "storage_unavailable",
]

log = logging.getLogger("errands.http")

JSON = dict[str, Any]

# ---------------------------------------------------------------------- status names

#: Status names the stock BentoML clients understand (``bentoml_compat=True``).
BENTOML_STATUS: dict[TaskStatus, str] = {
    TaskStatus.PENDING: "pending",
    TaskStatus.IN_PROGRESS: "in_progress",
    TaskStatus.SUCCESS: "completed",
    TaskStatus.FAILURE: "failed",
    TaskStatus.CANCELLED: "canceled",
}
#: Every status name a reader accepts, ours and BentoML's.
STATUS_NAMES: dict[str, TaskStatus] = {s.value: s for s in TaskStatus} | {
    name: status for status, name in BENTOML_STATUS.items()
}


def status_name(status: TaskStatus | str, *, bentoml_compat: bool = False) -> str:
    """The wire name of ``status`` (a TaskStatus or its value)."""
    status = TaskStatus(status)
    return BENTOML_STATUS[status] if bentoml_compat else status.value


def status_names(*, bentoml_compat: bool = False) -> list[str]:
    """Every status name a server sends, in the order of :class:`TaskStatus`."""
    return [status_name(s, bentoml_compat=bentoml_compat) for s in TaskStatus]


def parse_status(text: Any) -> TaskStatus:
    """A status name (ours or BentoML's) a server sent.

    Raises:
        RemoteError: not a status name.
    """
    try:
        return STATUS_NAMES[text]
    except (KeyError, TypeError):
        raise RemoteError(f"the server sent an unknown task status {text!r}") from None


# ---------------------------------------------------------------------- TaskInfo


@attrs.frozen
class InfoField:
    """One field of the TaskInfo object: its JSON name, the TaskInfo
    attribute it carries, and its kind (``string``, ``integer``, ``number``,
    ``status``, ``time``: ISO 8601, ``error``: ``"Type: message"``,
    ``attempts``: a list of attempt objects, see :data:`ATTEMPT_SCHEMA`)."""

    wire: str
    attr: str
    kind: str
    nullable: bool = True
    #: Always sent by errands, so required by the schema (BentoML's servers
    #: send only ``task_id`` and ``status``; readers fill in the rest).
    required: bool = False


INFO_FIELDS: tuple[InfoField, ...] = (
    InfoField("task_id", "id", "string", nullable=False, required=True),
    InfoField("name", "name", "string", nullable=False),
    InfoField("status", "status", "status", nullable=False, required=True),
    InfoField("created_at", "created_at", "time", nullable=False, required=True),
    InfoField("executed_at", "started_at", "time"),
    InfoField("completed_at", "finished_at", "time"),
    InfoField("attempt", "attempt", "integer", nullable=False, required=True),
    InfoField("max_attempts", "max_attempts", "integer", nullable=False),
    InfoField("progress", "progress", "number"),
    InfoField("message", "message", "string"),
    InfoField("error", "error", "error"),
    InfoField("retry_of", "retry_of", "string"),
    InfoField("position", "position", "integer"),
    InfoField("expires_at", "expires_at", "time"),
    InfoField("attempts", "attempts", "attempts", nullable=False),
)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    moment = dt.datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _task_error(value: Any) -> TaskError | None:
    if not value:
        return None
    kind, _, message = str(value).partition(": ")
    return TaskError(type=kind, message=message)


def _error_text(error: TaskError | None) -> str | None:
    return None if error is None else str(error)


def _as_is(value: Any) -> Any:
    return value


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) else None


#: One entry of ``attempts``: an attempt of the task, oldest first (the
#: names are errands' own in both modes: they are no BentoML field).
ATTEMPT_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "attempt": {"type": "integer", "minimum": 1},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": "null while it runs; for a lost attempt, when the loss was noticed.",
        },
        "outcome": {"type": "string", "enum": [o.value for o in AttemptOutcome]},
        "error": {"type": ["string", "null"], "description": '"Type: message"'},
    },
    "required": ["attempt", "started_at", "finished_at", "outcome", "error"],
}


def _attempts_to_json(attempts: tuple[Attempt, ...]) -> list[JSON]:
    return [
        {
            "attempt": a.attempt,
            "started_at": _iso(a.started_at),
            "finished_at": _iso(a.finished_at),
            "outcome": a.outcome.value,
            "error": _error_text(a.error),
        }
        for a in attempts
    ]


def _attempts(value: Any) -> tuple[Attempt, ...]:
    if not isinstance(value, list):
        return ()
    attempts = []
    for item in value:
        if not isinstance(item, dict):
            raise RemoteError(f"the server sent an attempt that is not an object: {item!r}")
        name = item.get("outcome", "")
        try:
            outcome = AttemptOutcome(name)
        except ValueError:
            raise RemoteError(f"the server sent an unknown attempt outcome {name!r}") from None
        attempts.append(
            Attempt(
                attempt=_integer(item.get("attempt")) or 0,
                started_at=_time(item.get("started_at")),
                finished_at=_time(item.get("finished_at")),
                outcome=outcome,
                error=_task_error(item.get("error")),
            )
        )
    return tuple(attempts)


class _Kind(NamedTuple):
    schema: JSON
    #: TaskInfo value -> JSON value.
    encode: Callable[[Any], Any]
    #: JSON value (None when absent) -> TaskInfo value.
    decode: Callable[[Any], Any]


_KINDS: dict[str, _Kind] = {
    "string": _Kind({"type": "string"}, _as_is, _as_is),
    "integer": _Kind({"type": "integer"}, _as_is, _integer),
    "number": _Kind({"type": "number"}, _as_is, _as_is),
    "time": _Kind({"type": "string", "format": "date-time"}, _iso, _time),
    "error": _Kind({"type": "string"}, _error_text, _task_error),
    "status": _Kind({"type": "string"}, _as_is, parse_status),  # named by info_to_json
    "attempts": _Kind(
        {
            "type": "array",
            "items": ATTEMPT_SCHEMA,
            "description": "Every attempt of the task, oldest first; the last one runs while"
            " the task is in progress.",
        },
        _attempts_to_json,
        _attempts,
    ),
}


def info_to_json(
    info: TaskInfo,
    *,
    bentoml_compat: bool = False,
    hide_errors: bool = False,
    tracebacks: bool = False,
) -> JSON:
    """The TaskInfo object a server sends for ``info`` (with ``hide_errors``,
    a failed task's error is its type only, as is each attempt's; with
    ``tracebacks``, a failed task's traceback is sent as ``traceback``)."""
    if hide_errors:
        info = hidden(info)
    out = {f.wire: _KINDS[f.kind].encode(getattr(info, f.attr)) for f in INFO_FIELDS}
    if tracebacks and info.traceback:
        out["traceback"] = info.traceback
    out["status"] = status_name(info.status, bentoml_compat=bentoml_compat)
    return out


def hidden(info: TaskInfo) -> TaskInfo:
    """``info`` with error messages left out (their types stay)."""
    error = info.error
    return attrs.evolve(
        info,
        error=None if error is None else TaskError(type=error.type, message=""),
        traceback=None,
        attempts=tuple(
            a if a.error is None else attrs.evolve(a, error=attrs.evolve(a.error, message=""))
            for a in info.attempts
        ),
    )


def info_from_json(body: Any, name: str = "") -> TaskInfo:
    """A TaskInfo object a server sent (errands' fields or BentoML's fewer ones).

    ``name`` is the task name to assume when the object has none.

    Raises:
        RemoteError: no ``task_id``, or an unknown status.
    """
    if not isinstance(body, dict) or "task_id" not in body:
        raise RemoteError("the server's status answer has no task_id")
    values = {f.attr: _KINDS[f.kind].decode(body.get(f.wire)) for f in INFO_FIELDS}
    # What BentoML's servers leave out.
    values["name"] = values["name"] or name
    values["created_at"] = values["created_at"] or dt.datetime.now(dt.UTC)
    values["attempt"] = values["attempt"] or 0
    values["max_attempts"] = values["max_attempts"] or 1
    return TaskInfo(**values)


def info_schema(*, bentoml_compat: bool = False) -> JSON:
    """The JSON schema of the TaskInfo object."""
    properties: JSON = {}
    for f in INFO_FIELDS:
        schema = dict(_KINDS[f.kind].schema)
        if f.kind == "status":
            schema["enum"] = status_names(bentoml_compat=bentoml_compat)
        if f.nullable:
            schema["type"] = [schema["type"], "null"]
        properties[f.wire] = schema
    return {
        "type": "object",
        "properties": {
            **properties,
            "traceback": {
                "type": "string",
                "description": "A failed task's traceback; sent only by servers that "
                "expose tracebacks (errands serve --expose-tracebacks).",
            },
        },
        "required": [f.wire for f in INFO_FIELDS if f.required],
    }


# ---------------------------------------------------------------------- errors

#: The ``type`` of an error answer that no errands exception stands behind.
HTTP_TYPES: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "ContentTooLarge",
    415: "UnsupportedMediaType",
    421: "MisdirectedRequest",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


class HTTPError(Exception):
    """An error answer: its HTTP status and its JSON body ``{"error", "type", **fields}``.

    ``type`` defaults to the name of the HTTP status (:data:`HTTP_TYPES`); a
    ``retry_after`` field is sent as the ``Retry-After`` header too.
    """

    def __init__(self, code: int, message: str, /, *, type: str | None = None, **fields: Any):
        super().__init__(message)
        self.status = code
        self.body = {"error": message, "type": type or HTTP_TYPES.get(code, "HTTPError"), **fields}
        self.headers: list[tuple[bytes, bytes]] = []
        if "retry_after" in fields:
            self.headers.append((b"retry-after", str(fields["retry_after"]).encode()))


@attrs.frozen(kw_only=True)
class ErrorAnswer:
    """An error answer as a client got it, with what its request named."""

    code: int
    body: Mapping[str, Any]
    #: The task id the request named (None: it named none).
    task_id: str | None = None
    #: The task name the request was for (a submit's endpoint).
    task_name: str = ""
    #: The ``Retry-After`` header, in seconds.
    retry_after_header: float | None = None

    @property
    def message(self) -> str:
        return str(self.body.get("error") or f"HTTP {self.code}")

    def text(self, field: str) -> str:
        value = self.body.get(field)
        return value if isinstance(value, str) else ""

    @property
    def task(self) -> str:
        """The answer's task id, else the request's."""
        return self.text("task_id") or self.task_id or ""

    @property
    def status(self) -> TaskStatus | None:
        status = self.body.get("status")
        return STATUS_NAMES.get(status) if isinstance(status, str) else None

    @property
    def status_value(self) -> str:
        """The answer's task status as ``TaskStatus`` values say it (``unknown``: none)."""
        return self.status.value if self.status is not None else "unknown"

    @property
    def field_errors(self) -> list[FieldError]:
        """``errors`` (each bad argument), else the message as one error on ``$``."""
        return [
            FieldError(path=str(e.get("path", "$")), message=str(e.get("message", "")))
            for e in self.body.get("errors") or ()
            if isinstance(e, dict)
        ] or [FieldError(path="$", message=self.message)]

    @property
    def retry_after(self) -> float | None:
        value = self.body.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return self.retry_after_header


_StatusName = Callable[[TaskStatus | str], str]


@attrs.frozen
class ErrorKind:
    """One row of the error <-> HTTP table: how an errands exception crosses the wire."""

    #: The answer's ``type``: the name of the exception a client rebuilds.
    type: str
    code: int
    #: The answer's fields (beyond ``error`` and ``type``), given the
    #: exception and the server's status names.
    fields: Callable[[Any, _StatusName], JSON]
    #: The exception again, from an answer of this type.
    rebuild: Callable[[ErrorAnswer], Exception]
    #: The answer's message when the exception's own text must not be sent
    #: (storage faults: it may name files; the server logs it).
    message: str | None = None


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _storage_fields(retry_after: float) -> JSON:
    return {"state": "storage_unavailable", "retry_after": max(1, math.ceil(retry_after))}


def _storage_rebuild(answer: ErrorAnswer) -> Exception:
    return EngineUnavailable(
        f"the server's storage is failing: {answer.message}",
        retry_after=answer.retry_after or 1.0,
    )


#: The error <-> HTTP table, by exception class (a subclass not listed
#: answers as its nearest listed base).
ERRORS: dict[type[ErrandsError], ErrorKind] = {
    TaskNotFound: ErrorKind(
        "TaskNotFound",
        404,
        fields=lambda e, name: {"task_id": e.task_id},
        rebuild=lambda a: TaskNotFound(a.task),
    ),
    BatchNotFound: ErrorKind(
        "BatchNotFound",
        404,
        fields=lambda e, name: {"batch_id": e.batch_id},
        rebuild=lambda a: BatchNotFound(a.text("batch_id")),
    ),
    TaskNotReady: ErrorKind(
        "TaskNotReady",
        409,
        fields=lambda e, name: {"task_id": e.task_id, "status": name(e.status)},
        rebuild=lambda a: TaskNotReady(a.task, a.status_value),
    ),
    CannotCancel: ErrorKind(
        "CannotCancel",
        409,
        fields=lambda e, name: {"task_id": e.task_id, "status": name(e.status), "reason": e.reason},
        rebuild=lambda a: CannotCancel(a.task, a.status_value, a.text("reason")),
    ),
    TaskCancelled: ErrorKind(
        "TaskCancelled",
        410,
        fields=lambda e, name: {"task_id": e.task_id, "status": name(TaskStatus.CANCELLED)},
        rebuild=lambda a: TaskCancelled(a.task),
    ),
    TaskFailed: ErrorKind(
        "TaskFailed",
        500,
        fields=lambda e, name: {
            "task_id": e.task_id,
            "status": name(TaskStatus.FAILURE),
            "task_error": e.error,
        },
        rebuild=lambda a: TaskFailed(a.task, a.text("task_error") or a.message),
    ),
    InvalidArguments: ErrorKind(
        "InvalidArguments",
        422,
        fields=lambda e, name: {
            "task_name": e.task_name,
            "errors": [{"path": f.path, "message": f.message} for f in e.errors],
        },
        rebuild=lambda a: InvalidArguments(a.text("task_name") or a.task_name, a.field_errors),
    ),
    EngineUnavailable: ErrorKind(
        "EngineUnavailable",
        503,
        fields=lambda e, name: _storage_fields(e.retry_after),
        rebuild=_storage_rebuild,
        message="storage unavailable: nothing was stored; try again",
    ),
    # Any other storage fault answers as EngineUnavailable: a client can only retry.
    BackendError: ErrorKind(
        "EngineUnavailable",
        503,
        fields=lambda e, name: _storage_fields(1.0),
        rebuild=_storage_rebuild,
        message="storage unavailable; try again",
    ),
    LimitExceeded: ErrorKind(
        "LimitExceeded",
        400,
        fields=lambda e, name: {"limit": e.limit, "maximum": e.maximum},
        rebuild=lambda a: LimitExceeded(
            a.message, limit=a.text("limit"), maximum=_number(a.body.get("maximum"))
        ),
    ),
    EngineClosed: ErrorKind(
        "EngineClosed",
        503,
        fields=lambda e, name: {"state": "stopped"},
        rebuild=lambda a: EngineClosed(f"the server is not running tasks: {a.message}"),
    ),
}
#: The rows a client rebuilds from, by ``type``.
_BY_TYPE = {kind.type: kind for exc, kind in ERRORS.items() if kind.type == exc.__name__}


def http_error(exc: ErrandsError, *, bentoml_compat: bool = False) -> HTTPError | None:
    """The error answer standing for ``exc`` (None: none does, a server error).

    A storage fault's own text stays in the server's log (WARNING for
    EngineUnavailable, ERROR with its traceback for any other BackendError).
    """
    kind = next((ERRORS[c] for c in type(exc).__mro__ if c in ERRORS), None)
    if kind is None:
        return None
    if isinstance(exc, EngineUnavailable):
        log.warning("refused a call while storage fails: %s", exc)
    elif isinstance(exc, BackendError):
        log.error("storage error", exc_info=exc)

    def name(status: TaskStatus | str) -> str:
        return status_name(status, bentoml_compat=bentoml_compat)

    message = kind.message if kind.message is not None else str(exc)
    return HTTPError(kind.code, message, type=kind.type, **kind.fields(exc, name))


@contextmanager
def errors_as_answers(*, bentoml_compat: bool = False) -> Iterator[None]:
    """Within the block, an errands exception that has an answer (see
    :func:`http_error`) is raised as that :class:`HTTPError`."""
    try:
        yield
    except ErrandsError as exc:
        answer = http_error(exc, bentoml_compat=bentoml_compat)
        if answer is None:
            raise
        raise answer from None


def engine_closed(message: str, *, state: str) -> HTTPError:
    """503 ``EngineClosed``: the app's engine is not running (``state``:
    ``stopped``, ``dead``, or the engine's state while it is not ready)."""
    kind = ERRORS[EngineClosed]
    return HTTPError(kind.code, message, type=kind.type, state=state)


def storage_unavailable(message: str) -> HTTPError:
    """503 ``EngineUnavailable`` with ``Retry-After``, outside any engine call (``/readyz``)."""
    kind = ERRORS[EngineUnavailable]
    return HTTPError(kind.code, message, type=kind.type, **_storage_fields(1.0))


def rebuild_error(answer: ErrorAnswer) -> Exception | None:
    """The errands exception an answer's ``type`` names (None: it names none,
    or the server sent no ``type``, as BentoML's servers do)."""
    kind = _BY_TYPE.get(answer.text("type"))
    return None if kind is None else kind.rebuild(answer)


def error_schemas(*, bentoml_compat: bool = False) -> dict[str, JSON]:
    """JSON schemas of the error answers: ``Error``, and ``InvalidArguments`` (422)."""
    text = {"type": "string"}
    error: JSON = {
        "type": "object",
        "properties": {
            "error": {"type": "string", "description": "What went wrong, for people."},
            "type": {
                "type": "string",
                "description": (
                    "The errands exception the answer stands for (TaskNotFound,"
                    " BatchNotFound, TaskNotReady, CannotCancel, TaskCancelled, TaskFailed,"
                    " InvalidArguments, EngineUnavailable, EngineClosed), else the"
                    " HTTP status's name (BadRequest, NotFound, ...)."
                ),
            },
            "task_id": text,
            "batch_id": text,
            "status": {"type": "string", "enum": status_names(bentoml_compat=bentoml_compat)},
            "reason": text,
            "task_error": text,
            "state": text,
            "retry_after": {"type": "integer", "minimum": 1},
            "limit": {"type": "string", "description": "LimitExceeded: the option exceeded."},
            "maximum": {"type": "number", "description": "LimitExceeded: its value."},
        },
        "required": ["error", "type"],
    }
    field_error = {
        "type": "object",
        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
        "required": ["path", "message"],
    }
    invalid: JSON = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "type": {"type": "string", "const": "InvalidArguments"},
            "task_name": {"type": "string"},
            "errors": {"type": "array", "items": field_error},
        },
        "required": ["error", "type", "errors"],
    }
    return {"Error": error, "InvalidArguments": invalid}
