"""The OpenAPI 3.1 document of an errands service, generated from its tasks.

It describes the server as it answers, checked by schemathesis against a real
``errands serve`` (``tests/adapters/test_schemathesis.py``).  What a JSON
Schema cannot say is said in descriptions:

* Task ids are global: any task route answers for any task's id, so a
  ``get`` answers with the result of the task the id names, in that task's
  media type.  Each ``get`` documents every result type of the service, its
  own task's first.
* ``get`` of a failed task answers 500 ``TaskFailed`` (BentoML's clients
  expect a 5xx there); the 500 is documented with that body only.
* An image argument must be an image file that Pillow decodes (422
  otherwise); an idempotency key used again with other arguments is a 422.

The limits in it (``wait``, ``delay``, ids per wait, the idempotency key's
length) are the server's options.
"""

from __future__ import annotations

import json
from typing import Any

import errands
from errands import EngineOptions, Payload, Service, TaskDefinition, TaskStatus
from errands._convert import media_type_of
from errands._options import DEFAULTS

from ._batch_wire import JSONL_TYPES, RESULT_ORDERS, batch_schemas
from ._jsonschema import JSON, form_schema, input_schema, output_schema
from ._options import HTTP_DEFAULTS, HTTPOptions
from ._protocol import STATUS_NAMES, error_schemas, info_schema, status_name, status_names

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_INFO = {"$ref": "#/components/schemas/TaskInfo"}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_EVENTS_DOC = (
    "A `text/event-stream`.  Each event is `event: status` with `data:` the JSON"
    " object `GET status` answers (a TaskInfo): one at once with the current"
    " state, then one on every change of status, progress, message or attempt."
    "  The stream ends after the event of a final status (or when the server"
    " drains).  A `: keepalive` comment comes after 15 s of silence."
)
_HOLD = "Hold the request until the task is final or this many seconds pass."
_GET_DOC = (
    "The result of the task `task_id` names, in that task's media type.  Task ids"
    " are global, so this route answers for any task of the service: the 200"
    " lists every result type of the service, this route's task's first.  A"
    " failed task answers 500 `TaskFailed` (BentoML's clients expect a 5xx there)."
)


def _response(
    description: str,
    schema: JSON | None = None,
    media: str = "application/json",
    headers: JSON | None = None,
) -> JSON:
    out: JSON = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    if headers is not None:
        out["headers"] = headers
    return out


def _error(description: str, *, retry_after: bool = False) -> JSON:
    return _response(description, _ERROR, headers=_RETRY_AFTER if retry_after else None)


def openapi_document(
    service: Service,
    *,
    http: HTTPOptions = HTTP_DEFAULTS,
    engine: EngineOptions = DEFAULTS,
    auth: bool = False,
) -> JSON:
    """OpenAPI 3.1 for every route the ASGI app answers.

    Args:
        service: the service whose tasks make the task routes.
        http: the app's options (status names, limits, the Host check).
        engine: the engine's options (the largest ``delay``, the longest
            idempotency key).
        auth: whether every route but ``/livez`` and ``/readyz`` takes a
            bearer token.
    """
    return _Builder(service, http, engine, auth).document()


class _Builder:
    def __init__(self, service: Service, http: HTTPOptions, engine: EngineOptions, auth: bool):
        self.service = service
        self.http = http
        self.engine = engine
        self.auth = auth
        self.compat = http.bentoml_compat
        self.defs: dict[str, JSON] = {}

    # ------------------------------------------------------------------ parameters

    def _wait(self, description: str) -> JSON:
        return {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": (
                f"{description}  At most the server's `max_wait` ({self.http.max_wait:g} s);"
                " a larger value is a 400."
            ),
            "schema": {"type": "number", "minimum": 0, "maximum": self.http.max_wait},
        }

    _TASK_ID = {
        "name": "task_id",
        "in": "query",
        "required": True,
        "description": "The task id given by submit (any task's: ids are global).",
        "schema": {"type": "string", "minLength": 1},
    }

    # ------------------------------------------------------------------ responses

    def _common(self, responses: JSON, *, open_route: bool = False) -> JSON:
        """``responses`` plus the answers every route may give (auth, Host)."""
        out = dict(responses)
        if self.auth and not open_route:
            out["401"] = _response(
                "No valid bearer token",
                _ERROR,
                headers={
                    "WWW-Authenticate": {
                        "description": "`Bearer`",
                        "schema": {"type": "string"},
                        "required": True,
                    }
                },
            )
        hosts = self.http.allowed_hosts
        if hosts is not None and "*" not in hosts:
            out["421"] = _error("The Host header names a host this server does not answer to")
        return dict(sorted(out.items()))

    def _queue_full(self) -> JSON:
        """The 429 of submit and retry, when the server has a ``max_pending``."""
        if self.http.max_pending is None:
            return {}
        message = f"The queue is full ({self.http.max_pending} tasks wait); see Retry-After"
        return {"429": _error(message, retry_after=True)}

    def _result_content(self, own: TaskDefinition) -> JSON:
        """Every result type of the service by media type, ``own``'s first."""
        by_media: dict[str, list[JSON]] = {}
        for d in [own, *(d for d in self.service.tasks.values() if d is not own)]:
            schemas = by_media.setdefault(_result_media(d.return_type), [])
            schema = output_schema(d)
            if schema not in schemas:
                schemas.append(schema)
        return {
            media: {"schema": schemas[0] if len(schemas) == 1 else {"anyOf": schemas}}
            for media, schemas in by_media.items()
        }

    # ------------------------------------------------------------------ operations

    def _submit(self, d: TaskDefinition) -> JSON:
        submit: JSON = {
            "operationId": f"{d.name}_submit",
            "summary": f"Submit a {d.name} task",
            "tags": [d.name],
            "parameters": [
                {
                    "name": "priority",
                    "in": "query",
                    "required": False,
                    "description": "Higher runs first (default 0).",
                    "schema": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
                },
                {
                    "name": "delay",
                    "in": "query",
                    "required": False,
                    "description": (
                        "Seconds before the task may start; at most the server's"
                        f" `max_delay` ({self.engine.max_delay:g} s, 400 `LimitExceeded` beyond)."
                    ),
                    "schema": {"type": "number", "minimum": 0, "maximum": self.engine.max_delay},
                },
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        "A submit repeated with the same key (on this endpoint, while the"
                        " first task is kept) answers the first task instead of making"
                        " another; the same key with other arguments is a 422."
                    ),
                    "schema": {"type": "string", "maxLength": self.engine.max_key_length},
                },
            ],
            "requestBody": {
                "required": True,
                "description": (
                    "The task's arguments by name: a JSON object (files as base64 text), or a"
                    " `multipart/form-data` form (files as file parts, other arguments as"
                    f" JSON text; at most {self.http.max_parts} parts).  An image argument"
                    " must be an image file Pillow decodes (422 otherwise)."
                ),
                "content": {
                    "application/json": {"schema": input_schema(d, self.defs)},
                    "multipart/form-data": form_schema(d, self.defs),
                },
            },
            "responses": self._common(
                {
                    "200": _response("Accepted", {"$ref": "#/components/schemas/Submitted"}),
                    "400": _error(
                        "The body is not a JSON object or a readable form, or a query"
                        " parameter or the idempotency key is out of range"
                    ),
                    "408": _error(f"The body did not arrive within {self.http.read_timeout:g} s"),
                    "413": _error(f"The body is larger than {self.http.max_body_size} bytes"),
                    "415": _error("The body is neither application/json nor multipart/form-data"),
                    "422": _response(
                        "Invalid arguments", {"$ref": "#/components/schemas/InvalidArguments"}
                    ),
                    "503": _error("The engine is not running, or its storage fails"),
                    **self._queue_full(),
                }
            ),
        }
        doc = (d.func.__doc__ or "").strip()
        if doc:
            submit["description"] = doc
        return submit

    def _submit_many(self, d: TaskDefinition) -> JSON:
        http = self.http
        options = [p for p in self._submit(d)["parameters"]]  # priority, delay, Idempotency-Key
        jsonl = {"type": "string", "description": "One JSON object of arguments per line."}
        stopped = _response(
            "Stopped part way: the error, with the entries of the items answered before it",
            {"$ref": "#/components/schemas/BatchStopped"},
            headers=_RETRY_AFTER,
        )
        return {
            "operationId": f"{d.name}_submit_many",
            "summary": f"Submit many {d.name} tasks in one batch",
            "description": (
                "One task per item, validated item by item: the answer lists one entry per"
                " item, in order, with its `task_id` or its `error` (the body `submit`"
                " answers for it), and valid items are accepted even when others are not."
                f"  A JSON array is read whole (at most {http.max_body_size} bytes); JSON"
                f" Lines ({', '.join(JSONL_TYPES)}) are read as they arrive, each line at most"
                f" {http.max_body_size} bytes, blank lines skipped, a line that is not JSON"
                " that item's error.  `batch_id` and `offset` continue a batch in another"
                " request.  Stopped part way (a full queue, a storage fault), the error answer"
                " carries the entries so far and `next_offset`, the index to resume from."
            ),
            "tags": [d.name],
            "parameters": [
                *options,
                {
                    "name": "batch_id",
                    "in": "query",
                    "required": False,
                    "description": "Add the items to this batch (from an earlier answer).",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "required": False,
                    "description": "The index of the first item in the batch (default 0).",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**62 - 1},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "array",
                            "description": (
                                "Objects of the task's arguments, as `submit` takes them;"
                                " any other item is refused in its entry."
                            ),
                            "items": {"anyOf": [input_schema(d, self.defs), {}]},
                        }
                    },
                    **{media: {"schema": jsonl} for media in JSONL_TYPES},
                },
            },
            "responses": self._common(
                {
                    "200": _response(
                        "One entry per item", {"$ref": "#/components/schemas/BatchSubmitted"}
                    ),
                    "400": _error(
                        "The body is not a JSON array, or a query parameter or the"
                        " idempotency key is out of range"
                    ),
                    "408": _error(
                        f"A part of the body did not come within {http.read_timeout:g} s"
                    ),
                    "413": _error(f"The JSON array is larger than {http.max_body_size} bytes"),
                    "409": _error("`batch_id` names a batch of another task endpoint"),
                    "415": _error("The body is neither a JSON array nor JSON Lines"),
                    **({"429": stopped} if http.max_pending is not None else {}),
                    "503": stopped,
                }
            ),
        }

    def _batch_routes(self) -> JSON:
        http = self.http
        batch_id = {
            "name": "batch_id",
            "in": "path",
            "required": True,
            "description": "The batch id given by submit_many.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
        }
        info = {"$ref": "#/components/schemas/BatchInfo"}
        unknown = _error("Unknown batch, or all its tasks expired")
        down = _error("The engine is not running, or its storage fails")
        busy = _error(
            f"The engine is not running, or {http.max_held} requests are held already",
            retry_after=True,
        )
        cancel = {
            "summary": "Cancel every task of a batch that is not final",
            "tags": ["batches"],
            "parameters": [batch_id],
            "responses": self._common(
                {"200": _response("The counts then", info), "404": unknown, "503": down}
            ),
        }
        lines_doc = (
            "JSON Lines (`application/x-ndjson`), one `BatchResultLine` object per final"
            " task: in submission order, or as they finish (`order=completed`).  A result"
            " that is not JSON or text is not inlined: the line names its `result_url`"
            " (`get`).  `wait=false` (default): the tasks final now, then the stream ends;"
            " `wait=true`: every task, each as soon as it is final (a blank line after 15 s"
            " of silence).  A stream cut short by a server that drains is asked for again."
        )
        return {
            "/batches/{batch_id}": {
                "get": {
                    "operationId": "batch_info",
                    "summary": "A batch's counts by status, progress, and a page of its task ids",
                    "tags": ["batches"],
                    "parameters": [
                        batch_id,
                        {
                            "name": "offset",
                            "in": "query",
                            "required": False,
                            "description": "Task ids to skip (default 0).",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**62 - 1},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "description": f"Task ids in the page (default {http.batch_page}).",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": http.max_batch_page,
                            },
                        },
                        self._wait(
                            "Hold the request until every task is final or this many seconds pass."
                        ),
                    ],
                    "responses": self._common(
                        {
                            "200": _response("The batch", info),
                            "400": _error("A bad offset, limit or wait"),
                            "404": unknown,
                            "503": busy,
                        }
                    ),
                }
            },
            "/batches/{batch_id}/results": {
                "get": {
                    "operationId": "batch_results",
                    "summary": "A batch's results, as JSON Lines",
                    "description": lines_doc,
                    "tags": ["batches"],
                    "parameters": [
                        batch_id,
                        {
                            "name": "order",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": list(RESULT_ORDERS)},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "description": "Stream until every task is final (default false).",
                            "schema": {"type": "boolean"},
                        },
                    ],
                    "responses": self._common(
                        {
                            "200": _response(
                                "One line per final task",
                                {
                                    "type": "string",
                                    "description": "BatchResultLine objects, one a line.",
                                },
                                JSONL_TYPES[0],
                            ),
                            "400": _error("A bad order or wait"),
                            "404": unknown,
                            "503": busy,
                        }
                    ),
                }
            },
            "/batches/{batch_id}/cancel": {
                "post": {**cancel, "operationId": "batch_cancel_post"},
                "put": {**cancel, "operationId": "batch_cancel_put"},
            },
        }

    def _task_routes(self, d: TaskDefinition) -> JSON:
        name = d.name
        busy = f"The engine is not running, or {self.http.max_held} requests are held already"
        paths: JSON = {f"{d.route}/submit": {"post": self._submit(d)}}
        paths[f"{d.route}/submit_many"] = {"post": self._submit_many(d)}
        paths[f"{d.route}/status"] = {
            "get": {
                "operationId": f"{name}_status",
                "summary": "The status of a task",
                "tags": [name],
                "parameters": [
                    self._TASK_ID,
                    self._wait(
                        "Hold the request until the task is final or this many seconds pass."
                    ),
                ],
                "responses": self._common(
                    {
                        "200": _response("The task", _INFO),
                        "400": _error("No task_id, or a bad wait"),
                        "404": _error("Unknown or expired task"),
                        "503": _error(busy, retry_after=True),
                    }
                ),
            }
        }
        failed = {"$ref": "#/components/schemas/TaskFailed"}
        paths[f"{d.route}/get"] = {
            "get": {
                "operationId": f"{name}_get",
                "summary": "The result of a finished task",
                "description": _GET_DOC,
                "tags": [name],
                "parameters": [
                    self._TASK_ID,
                    self._wait(
                        "Hold the request until the task is final or this many seconds pass."
                    ),
                ],
                "responses": self._common(
                    {
                        "200": {"description": "The result", "content": self._result_content(d)},
                        "400": _error("No task_id, or a bad wait"),
                        "404": _error("Unknown or expired task"),
                        "409": _error("Not finished yet"),
                        "410": _error("The task was cancelled"),
                        "500": _response("The task failed", failed),
                        "503": _error(busy, retry_after=True),
                    }
                ),
            }
        }
        event = {
            "type": "object",
            "properties": {
                "event": {"const": "status"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": _INFO,
                },
            },
            "required": ["event", "data"],
        }
        paths[f"{d.route}/events"] = {
            "get": {
                "operationId": f"{name}_events",
                "summary": "Follow a task: server-sent events until it is final",
                "description": _EVENTS_DOC,
                "tags": [name],
                "parameters": [self._TASK_ID],
                "responses": self._common(
                    {
                        "200": _response("A stream of status events", event, "text/event-stream"),
                        "400": _error("No task_id"),
                        "404": _error("Unknown or expired task"),
                        "503": _error(busy, retry_after=True),
                    }
                ),
            }
        }
        for action, methods, summary, extra in (
            ("cancel", ("post", "put"), "Cancel a task", {}),
            (
                "retry",
                ("put", "post"),
                "Run a finished task again (a new task, with the same arguments)",
                self._queue_full(),
            ),
        ):
            operation = {
                "summary": summary,
                "tags": [name],
                "parameters": [self._TASK_ID],
                "responses": self._common(
                    {
                        "200": _response("Done", {"$ref": "#/components/schemas/Submitted"}),
                        "400": _error("No task_id"),
                        "404": _error("Unknown or expired task"),
                        "409": _error("Too late, or not finished yet"),
                        "503": _error("The engine is not running, or its storage fails"),
                        **extra,
                    }
                ),
            }
            paths[f"{d.route}/{action}"] = {
                m: {**operation, "operationId": f"{name}_{action}_{m}"} for m in methods
            }
        return paths

    def _server_routes(self) -> JSON:
        http = self.http
        paths: JSON = {}
        health = {
            "type": "object",
            "properties": {"status": {"const": "ok"}},
            "required": ["status"],
        }
        paths["/readyz"] = {
            "get": {
                "operationId": "readyz",
                "summary": "Ready to serve",
                "security": [],
                "responses": self._common(
                    {
                        "200": _response("Ready", health),
                        "503": _error("Not ready: starting, draining, stopped or storage failing"),
                    },
                    open_route=True,
                ),
            }
        }
        paths["/livez"] = {
            "get": {
                "operationId": "livez",
                "summary": "Alive",
                "security": [],
                "responses": self._common(
                    {
                        "200": _response("Alive", health),
                        "503": _error("The engine died of a bug; restart the process"),
                    },
                    open_route=True,
                ),
            }
        }
        status_filter = list(
            dict.fromkeys([*status_names(bentoml_compat=self.compat), *STATUS_NAMES])
        )
        paths["/tasks"] = {
            "get": {
                "operationId": "list_tasks",
                "summary": "Tasks, newest first",
                "parameters": [
                    {
                        "name": "name",
                        "in": "query",
                        "required": False,
                        "description": "Only tasks of this endpoint.",
                        "schema": {"type": "string", "enum": list(self.service.tasks)},
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "description": "Only tasks in this status (errands' or BentoML's name).",
                        "schema": {"type": "string", "enum": status_filter},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Tasks per page (default 100).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "description": "Tasks to skip (default 0).",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**62 - 1},
                    },
                ],
                "responses": self._common(
                    {
                        "200": _response(
                            "A page of tasks", {"$ref": "#/components/schemas/TaskList"}
                        ),
                        "400": _error("Bad filter"),
                        "503": _error("The engine is not running, or its storage fails"),
                    }
                ),
            }
        }
        paths["/tasks/wait"] = {
            "post": {
                "operationId": "wait_tasks",
                "summary": "Wait until one of many tasks is final",
                "description": (
                    "Answers as soon as one of the tasks is final, unknown or expired (all"
                    " such tasks are reported), or after `wait` seconds (default 0: at"
                    " once), or at once when the server drains.  Repeated ids count once;"
                    ' each list keeps the request\'s order.  With `"stream": true`, the'
                    " answer is JSON Lines (`application/x-ndjson`): one line"
                    ' `{"done": [...], "missing": [...]}` per round of endings (done in'
                    " the order the tasks ended), a blank line after 15 s of silence,"
                    " until every id was sent, or for at most `wait` seconds when given,"
                    " or until the server drains (ask again for the rest)."
                ),
                "parameters": [self._wait("The longest to hold the request (default 0).")],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/WaitRequest"}}
                    },
                },
                "responses": self._common(
                    {
                        "200": {
                            "description": "Final tasks, missing ids and the rest; with"
                            " stream, one line per round of endings",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/WaitAnswer"}
                                },
                                JSONL_TYPES[0]: {
                                    "schema": {
                                        "type": "string",
                                        "description": "Objects with done and missing, one a line.",
                                    }
                                },
                            },
                        },
                        "400": _error("The body or wait is not valid"),
                        "408": _error(f"The body did not arrive within {http.read_timeout:g} s"),
                        "413": _error(f"The body is larger than {http.max_body_size} bytes"),
                        "503": _error(
                            f"The engine is not running, or {http.max_held} requests are"
                            " held already",
                            retry_after=True,
                        ),
                    }
                ),
            }
        }
        return paths

    # ------------------------------------------------------------------ the document

    def _schemas(self) -> JSON:
        statuses = status_names(bentoml_compat=self.compat)
        errors = error_schemas(bentoml_compat=self.compat)
        failed = dict(errors["Error"])
        failed["properties"] = {
            **failed["properties"],
            "type": {"const": "TaskFailed"},
            "status": {"const": status_name(TaskStatus.FAILURE, bentoml_compat=self.compat)},
        }
        failed["required"] = ["error", "type", "task_id", "status", "task_error"]
        return {
            **errors,
            "TaskFailed": failed,
            "Submitted": {
                "type": "object",
                "properties": {
                    "task_id": {"type": "string"},
                    "status": {"type": "string", "enum": statuses},
                    "retry_of": {"type": "string", "description": "The task retried (retry only)."},
                },
                "required": ["task_id", "status"],
            },
            "TaskInfo": info_schema(bentoml_compat=self.compat),
            "TaskList": {
                "type": "object",
                "properties": {
                    "tasks": {"type": "array", "items": _INFO},
                    "limit": {"type": "integer"},
                    "offset": {"type": "integer"},
                    "next_offset": {"type": ["integer", "null"]},
                },
                "required": ["tasks", "limit", "offset"],
            },
            "WaitRequest": {
                "type": "object",
                "properties": {
                    "task_ids": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "maxItems": self.http.max_wait_ids,
                    },
                    "results": {
                        "type": "boolean",
                        "description": "Inline each success's result in its entry of `done`"
                        " (JSON or text of at most 64 KiB, at most 1 MiB per answer or line).",
                    },
                    "stream": {
                        "type": "boolean",
                        "description": "Stream each round of endings as a line of JSON"
                        " Lines, until every id was sent (see the operation).",
                    },
                },
                "required": ["task_ids"],
                "additionalProperties": False,
            },
            "WaitAnswer": {
                "type": "object",
                "properties": {
                    "done": {
                        "type": "array",
                        "items": {
                            "allOf": [_INFO],
                            "properties": {
                                "result": {
                                    "description": "The result (with `results`): JSON as"
                                    " `get` answers it, text as a string"
                                },
                                "result_type": {
                                    "type": "string",
                                    "description": "The result's media type, as `get` sends it",
                                },
                            },
                        },
                    },
                    "missing": {"type": "array", "items": {"type": "string"}},
                    "pending": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["done", "missing", "pending"],
            },
            **batch_schemas(bentoml_compat=self.compat, max_batch_page=self.http.max_batch_page),
            **self.defs,
        }

    def document(self) -> JSON:
        paths: JSON = {}
        for d in self.service.tasks.values():
            paths.update(self._task_routes(d))
        paths.update(self._server_routes())
        paths.update(self._batch_routes())
        components: JSON = {"schemas": self._schemas()}
        document: JSON = {
            "openapi": "3.1.0",
            "info": {"title": self.service.name, "version": errands.__version__},
            "paths": paths,
            "components": components,
        }
        if self.auth:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            document["security"] = [{"bearer": []}]
        # type_schema refers to named classes as #/$defs/...; here they live in components.
        text = json.dumps(document).replace('"#/$defs/', '"#/components/schemas/')
        result: JSON = json.loads(text)
        return result


def _result_media(tp: Any) -> str:
    """The media type ``get`` answers with for a result of type ``tp``."""
    media = media_type_of(tp)
    if media is not None:
        return media.split(";", 1)[0].strip()
    if tp is Payload:
        return "*/*"  # whatever media type the task's Payload names
    if tp is bytes:
        return "application/octet-stream"
    if tp is str:
        return "text/plain"
    if isinstance(tp, type) and tp.__module__.startswith("PIL."):
        return "image/png"
    return "application/json"
