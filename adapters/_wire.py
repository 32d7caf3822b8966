"""The HTTP clients' knowledge of the wire, without I/O.

Both clients (sync and async) build their requests and read the answers here,
so they cannot drift apart: the service schema (``/schema.json``), request
bodies (JSON, or multipart when an argument is a file), result bodies to
Python values, and error answers to the ``errands`` exception tree.  The same
code reads an errands server and a BentoML one.  The wire format itself
(status names, the TaskInfo object, the error fields) is ``_protocol``'s.
"""

from __future__ import annotations

import io
import json
import mimetypes
import pathlib
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from errands import (
    CannotCancel,
    EngineClosed,
    EngineUnavailable,
    FieldError,
    InvalidArguments,
    RemoteError,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskNotReady,
    TaskStatus,
)
from errands._convert import converter, image_to_png

from ._protocol import ErrorAnswer, rebuild_error

__all__ = [
    "Endpoint",
    "ServerInfo",
    "decode_result",
    "error_for",
    "needs_status",
    "parse_schema",
    "submit_request",
]


@attrs.frozen(kw_only=True)
class Endpoint:
    """One task endpoint as the server's schema describes it."""

    name: str
    route: str
    input: Mapping[str, Any]
    output: Mapping[str, Any]
    doc: str | None = None

    def path(self, action: str) -> str:
        return f"{self.route.rstrip('/')}/{action}"

    def text_fields(self) -> frozenset[str]:
        """Arguments whose schema is a plain string (the shell sends their text as is)."""
        properties = self.input.get("properties") or {}
        return frozenset(
            name
            for name, schema in properties.items()
            if isinstance(schema, dict)
            and schema.get("type") == "string"
            and "format" not in schema
        )

    def file_fields(self) -> frozenset[str]:
        """Arguments sent as multipart file parts (``{"type": "file"}``)."""
        out = set()
        for name, schema in (self.input.get("properties") or {}).items():
            items = schema.get("items") or {}
            if schema.get("type") == "file" or (
                schema.get("type") == "array" and items.get("type") == "file"
            ):
                out.add(name)
        return frozenset(out)


@attrs.frozen(kw_only=True)
class ServerInfo:
    """What ``/schema.json`` says about a server."""

    name: str
    endpoints: Mapping[str, Endpoint]
    #: Longest ``?wait=`` hold the server grants; None for servers without
    #: long polls (BentoML), which the clients then poll with backoff.
    max_wait: float | None
    #: Whether ``POST /tasks/wait`` (waiting on many tasks) is served.
    wait_many: bool
    #: Whether it inlines the results of successes (``"results": true``).
    wait_results: bool = False
    #: Whether it streams the endings as they come (``"stream": true``).
    wait_stream: bool = False
    #: The most task ids one ``POST /tasks/wait`` names (errands' default
    #: when the server does not say).
    max_wait_ids: int = 10_000
    #: Whether ``<route>/submit_many`` and ``/batches/<id>`` are served.
    batches: bool = False
    #: The most task ids one ``GET /batches/<id>`` page holds (``?limit=``).
    max_batch_page: int | None = None


def parse_schema(body: Any) -> ServerInfo:
    """Read a ``/schema.json`` document (errands' or BentoML's)."""
    if not isinstance(body, dict) or not isinstance(body.get("routes"), list):
        raise RemoteError("the server's /schema.json has no list of routes")
    endpoints = {}
    for route in body["routes"]:
        if not route.get("is_task", False):
            continue  # plain (non-task) BentoML APIs: not ours to call
        endpoints[route["name"]] = Endpoint(
            name=route["name"],
            route=route["route"],
            input=route.get("input") or {},
            output=route.get("output") or {},
            doc=route.get("doc"),
        )
    extra = body.get("errands") or {}
    max_wait = extra.get("max_wait")
    return ServerInfo(
        name=str(body.get("name", "")),
        endpoints=endpoints,
        max_wait=float(max_wait) if isinstance(max_wait, int | float) else None,
        wait_many=bool(extra.get("wait_many", False)),
        wait_results=bool(extra.get("wait_results", False)),
        wait_stream=bool(extra.get("wait_stream", False)),
        max_wait_ids=most
        if isinstance(most := extra.get("max_wait_ids"), int) and most > 0
        else 10_000,
        batches=bool(extra.get("batches", False)),
        max_batch_page=page if isinstance(page := extra.get("max_batch_page"), int) else None,
    )


# ---------------------------------------------------------------------- requests


def _encode(value: Any) -> Any:
    return converter.unstructure(value)


def _file_part(name: str, value: Any) -> tuple[str, bytes, str]:
    """A multipart file part: (filename, content, media type)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return (name, bytes(value), "application/octet-stream")
    if isinstance(value, str | pathlib.PurePath):
        path = pathlib.Path(value)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return (path.name, path.read_bytes(), media)
    if type(value).__module__.startswith("PIL.") and hasattr(value, "save"):
        return (f"{name}.png", image_to_png(value), "image/png")
    if isinstance(value, io.IOBase) or hasattr(value, "read"):
        data = value.read()
        if isinstance(data, str):
            data = data.encode("utf-8")
        filename = pathlib.Path(str(getattr(value, "name", name))).name
        media = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return (filename, data, media)
    raise TypeError(f"expected bytes, a path, a file or an image, got {type(value).__name__}")


def submit_request(
    endpoint: Endpoint,
    arguments: Mapping[str, Any],
    *,
    priority: int = 0,
    delay: float | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``httpx.Client.request`` for a submit.

    Raises:
        InvalidArguments: an argument cannot be sent at all (not JSON, not a
            file); nothing is sent.
    """
    errors: list[FieldError] = []
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    fields: dict[str, Any] = {}
    file_fields = endpoint.file_fields()
    for name, value in arguments.items():
        try:
            if name in file_fields and value is not None:
                values = value if isinstance(value, list | tuple) else [value]
                files.extend((name, _file_part(name, v)) for v in values)
            else:
                fields[name] = _encode(value)
                json.dumps(fields[name], allow_nan=False)
        except (TypeError, ValueError, OSError) as exc:
            errors.append(FieldError(path=f"$.{name}", message=str(exc)))
    if errors:
        raise InvalidArguments(endpoint.name, errors)
    params: dict[str, Any] = {}
    if priority:
        params["priority"] = str(priority)
    if delay is not None:
        params["delay"] = repr(float(delay))
    headers = {"idempotency-key": idempotency_key} if idempotency_key is not None else {}
    request: dict[str, Any] = {"method": "POST", "url": endpoint.path("submit"), "headers": headers}
    if params:  # an empty mapping still costs httpx a re-parse of the URL
        request["params"] = params
    if files:
        request["data"] = {k: json.dumps(v) for k, v in fields.items()}
        request["files"] = files
    else:
        request["content"] = json.dumps(fields, separators=(",", ":"), allow_nan=False)
        headers["content-type"] = "application/json"
    return request


# ---------------------------------------------------------------------- answers


def decode_result(response: httpx.Response, endpoint: Endpoint | None) -> Any:
    """A ``GET .../get`` body as a value: by the output schema, else the media type.

    JSON becomes JSON values (dicts, lists, ...); text a ``str``; an image a
    PIL image when the schema says so and pillow is installed; other bytes
    stay ``bytes``.
    """
    output = endpoint.output if endpoint is not None else {}
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if output.get("pil") or (media.startswith("image/") and output.get("format") == "image"):
        try:
            from PIL import Image
        except ImportError:
            return response.content
        image = Image.open(io.BytesIO(response.content))
        image.load()
        return image
    if output.get("type") == "string" and output.get("format") == "binary":
        return response.content
    if media == "application/json" or media.endswith("+json"):
        return json.loads(response.content) if response.content else None
    if media.startswith("text/") or output.get("type") == "string":
        return response.content.decode(response.encoding or "utf-8")
    return response.content


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"error": response.text[:500]}
    return body if isinstance(body, dict) else {"error": str(body)[:500]}


def error_for(
    response: httpx.Response, *, action: str, task_id: str | None = None, endpoint: str = ""
) -> Exception | None:
    """The ``errands`` exception an answer of 400 or more stands for (None below).

    An errands server names it (the answer's ``type``, see ``_protocol``);
    for a server that does not (BentoML's), the HTTP status and the request
    tell.  A few such answers only tell their meaning with the task's status
    (a BentoML server's 400 on get or cancel); callers check
    :func:`needs_status` first.
    """
    code = response.status_code
    if code < 400:
        return None
    answer = ErrorAnswer(
        code=code,
        body=_body(response),
        task_id=task_id,
        task_name=endpoint,
        retry_after_header=_retry_after(response),
    )
    named = rebuild_error(answer)
    if named is not None:
        return named
    if code == 404 and task_id is not None:
        return TaskNotFound(task_id)
    if code == 422:
        return InvalidArguments(endpoint, answer.field_errors)
    if task_id is not None:
        if code == 409 and action == "cancel":
            return CannotCancel(task_id, answer.status_value, answer.message)
        if code == 409:
            return TaskNotReady(task_id, answer.status_value)
        if code == 410 and action == "get":
            return TaskCancelled(task_id)
        if code == 500 and action == "get" and answer.status is TaskStatus.FAILURE:
            return TaskFailed(task_id, answer.message)
    if code == 503 and answer.body.get("state") == "storage_unavailable":
        return EngineUnavailable(
            f"the server's storage is failing: {answer.message}",
            retry_after=answer.retry_after or 1.0,
        )
    if code == 503:
        return EngineClosed(f"the server is not running tasks: {answer.message}")
    error = RemoteError(f"HTTP {code} from {response.request.url.path}: {answer.message}")
    error.status_code = code
    error.retry_after = answer.retry_after
    return error


def needs_status(response: httpx.Response, *, action: str) -> bool:
    """Whether the answer's meaning depends on the task's status.

    BentoML's server answers 400 (not finished) or the task's own error to
    ``get``, 400 to a ``retry`` of an unfinished task, and 400 or 500 to
    every ``cancel`` (its local server cannot cancel); errands' server is
    explicit, with the error's ``type`` (and the status) in its error body.
    """
    code = response.status_code
    if code < 400 or code in (404, 422, 503):
        return False
    body = _body(response)
    if "type" in body or "status" in body:
        return False
    if action in ("get", "cancel"):
        return True
    return action == "retry" and code == 400


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
