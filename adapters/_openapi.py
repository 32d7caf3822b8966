"""The OpenAPI 3.1 document of an errands service, generated from its tasks."""

from __future__ import annotations

import json
from typing import Any

import errands
from errands import Service

from ._jsonschema import JSON, input_schema, output_schema
from ._protocol import error_schemas, info_schema, status_names
from ._waiting import MAX_WAIT_IDS

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _response(
    description: str, schema: JSON | None = None, media: str = "application/json"
) -> JSON:
    out: JSON = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def _error(description: str) -> JSON:
    return _response(description, _ERROR)


_TASK_ID = {
    "name": "task_id",
    "in": "query",
    "required": True,
    "description": "The task id given by submit.",
    "schema": {"type": "string"},
}
_EVENTS_DOC = (
    "A `text/event-stream`.  Each event is `event: status` with `data:` the JSON"
    " object `GET status` answers (a TaskInfo): one at once with the current"
    " state, then one on every change of status, progress, message or attempt."
    "  The stream ends after the event of a final status (or when the server"
    " drains).  A `: keepalive` comment comes after 15 s of silence."
)
_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Hold the request until the task is final or this many seconds pass.",
    "schema": {"type": "number", "minimum": 0},
}


def openapi_document(service: Service, *, bentoml_compat: bool = False) -> JSON:
    """OpenAPI 3.1 for every route the ASGI app answers."""
    defs: dict[str, JSON] = {}
    statuses = status_names(bentoml_compat=bentoml_compat)
    paths: JSON = {}
    for d in service.tasks.values():
        name = d.name
        doc = (d.func.__doc__ or "").strip() or None
        submit: JSON = {
            "operationId": f"{name}_submit",
            "summary": f"Submit a {name} task",
            "tags": [name],
            "parameters": [
                {
                    "name": "priority",
                    "in": "query",
                    "required": False,
                    "description": "Higher runs first (default 0).",
                    "schema": {"type": "integer"},
                },
                {
                    "name": "delay",
                    "in": "query",
                    "required": False,
                    "description": "Seconds before the task may start.",
                    "schema": {"type": "number", "minimum": 0},
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": input_schema(d, defs)}},
            },
            "responses": {
                "200": _response("Accepted", {"$ref": "#/components/schemas/Submitted"}),
                "400": _error("The body is not a JSON object"),
                "413": _error("The body is too large"),
                "429": _error("The queue is full; see Retry-After"),
                "422": _response(
                    "Invalid arguments", {"$ref": "#/components/schemas/InvalidArguments"}
                ),
                "503": _error("The engine is not running"),
            },
        }
        if doc:
            submit["description"] = doc
        output = output_schema(d)
        media = _result_media(d.return_type)
        paths[f"{d.route}/submit"] = {"post": submit}
        paths[f"{d.route}/status"] = {
            "get": {
                "operationId": f"{name}_status",
                "summary": "The status of a task",
                "tags": [name],
                "parameters": [_TASK_ID, _WAIT],
                "responses": {
                    "200": _response("The task", {"$ref": "#/components/schemas/TaskInfo"}),
                    "400": _error("No task_id"),
                    "404": _error("Unknown or expired task"),
                },
            }
        }
        paths[f"{d.route}/get"] = {
            "get": {
                "operationId": f"{name}_get",
                "summary": "The result of a finished task",
                "tags": [name],
                "parameters": [_TASK_ID, _WAIT],
                "responses": {
                    "200": _response("The result", output, media),
                    "400": _error("No task_id"),
                    "404": _error("Unknown or expired task"),
                    "409": _error("Not finished yet"),
                    "410": _error("The task was cancelled"),
                    "500": _error("The task failed"),
                },
            }
        }
        paths[f"{d.route}/events"] = {
            "get": {
                "operationId": f"{name}_events",
                "summary": "Follow a task: server-sent events until it is final",
                "description": _EVENTS_DOC,
                "tags": [name],
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _response(
                        "A stream of status events", {"type": "string"}, "text/event-stream"
                    ),
                    "400": _error("No task_id"),
                    "404": _error("Unknown or expired task"),
                    "503": _error("The engine is not running"),
                },
            }
        }
        for action, methods, summary, ok in (
            ("cancel", ("post", "put"), "Cancel a task", "Submitted"),
            ("retry", ("put", "post"), "Run a finished task again", "Submitted"),
        ):
            operation = {
                "summary": summary,
                "tags": [name],
                "parameters": [_TASK_ID],
                "responses": {
                    "200": _response("Done", {"$ref": f"#/components/schemas/{ok}"}),
                    "400": _error("No task_id"),
                    "404": _error("Unknown or expired task"),
                    "409": _error("Too late, or not finished yet"),
                },
            }
            paths[f"{d.route}/{action}"] = {
                m: {**operation, "operationId": f"{name}_{action}_{m}"} for m in methods
            }
    paths["/readyz"] = {"get": _plain("readyz", "Ready to serve")}
    paths["/livez"] = {"get": _plain("livez", "Alive")}
    paths["/tasks"] = {
        "get": {
            "operationId": "list_tasks",
            "summary": "Tasks, newest first",
            "parameters": [
                {"name": "name", "in": "query", "required": False, "schema": {"type": "string"}},
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": statuses},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
                {
                    "name": "offset",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            "responses": {
                "200": _response("A page of tasks", {"$ref": "#/components/schemas/TaskList"}),
                "400": _error("Bad filter"),
            },
        }
    }
    paths["/tasks/wait"] = {
        "post": {
            "operationId": "wait_tasks",
            "summary": "Wait until one of many tasks is final",
            "description": (
                "Answers as soon as one of the tasks is final, unknown or expired (all"
                " such tasks are reported), or after `wait` seconds (at most the"
                " server's maximum; default 0: at once), or at once when the server"
                " drains.  Repeated ids count once; each list keeps the request's order."
            ),
            "parameters": [
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "The longest to hold the request, in seconds (default 0).",
                    "schema": {"type": "number", "minimum": 0},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/WaitRequest"}}
                },
            },
            "responses": {
                "200": _response(
                    "Final tasks, missing ids and the rest",
                    {"$ref": "#/components/schemas/WaitAnswer"},
                ),
                "400": _error("The body or wait is not valid"),
                "413": _error("The body is too large"),
                "503": _error("The engine is not running"),
            },
        }
    }
    schemas: JSON = {
        **error_schemas(bentoml_compat=bentoml_compat),
        "Submitted": {
            "type": "object",
            "properties": {
                "task_id": {"type": "string"},
                "status": {"type": "string", "enum": statuses},
            },
            "required": ["task_id", "status"],
        },
        "TaskInfo": info_schema(bentoml_compat=bentoml_compat),
        "TaskList": {
            "type": "object",
            "properties": {
                "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/TaskInfo"}},
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
                    "maxItems": MAX_WAIT_IDS,
                }
            },
            "required": ["task_ids"],
            "additionalProperties": False,
        },
        "WaitAnswer": {
            "type": "object",
            "properties": {
                "done": {"type": "array", "items": {"$ref": "#/components/schemas/TaskInfo"}},
                "missing": {"type": "array", "items": {"type": "string"}},
                "pending": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["done", "missing", "pending"],
        },
        **defs,
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": service.name, "version": errands.__version__},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    # type_schema refers to named classes as #/$defs/...; here they live in components.
    text = json.dumps(document).replace('"#/$defs/', '"#/components/schemas/')
    result: JSON = json.loads(text)
    return result


def _plain(name: str, description: str) -> JSON:
    return {
        "operationId": name,
        "summary": description,
        "responses": {"200": _response(description, {"type": "object"})},
    }


def _result_media(tp: Any) -> str:
    if tp is bytes:
        return "application/octet-stream"
    if tp is str:
        return "text/plain"
    if isinstance(tp, type) and tp.__module__.startswith("PIL."):
        return "image/png"
    return "application/json"
