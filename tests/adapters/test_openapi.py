"""``/openapi.json`` is valid OpenAPI 3.1 and true to the server; fuzzing finds no 5xx.

The fuzz builds requests from the spec itself (every path and method, plus
wrong ones), with arbitrary JSON, near-valid and schema-valid bodies and odd
query strings.  Schema-valid bodies come from a small generator of the JSON
Schema subset that ``errands.adapters._jsonschema`` emits (no extra
dependency).
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from PIL import Image

import errands
from errands.adapters.asgi import ErrandsApp, create_app
from tests.adapters._http import call_asgi, in_process, wait_final
from tests.adapters.catalogue_service import Color, Owner, Size


@attrs.frozen
class Dims:
    width: int
    height: int
    unit: str = "px"


async def render(
    dims: Dims,
    owner: Owner,
    color: Color,
    size: Size,
    tags: list[str],
    weights: dict[str, float],
    note: str | None = None,
    payload: bytes = b"",
    due: dt.datetime | None = None,
    day: dt.date | None = None,
    pair: tuple[int, str] | None = None,
    history: list[Dims] | None = None,
    ratio: float = 1.0,
    flag: bool = False,
) -> dict[str, int]:
    """Render a thing (the docstring becomes the operation's description)."""
    return {"area": dims.width * dims.height, "tags": len(tags), "bytes": len(payload)}


async def add(a: int, b: int) -> int:
    return a + b


def shout(text: str) -> str:
    return text.upper()


def reverse(data: bytes) -> bytes:
    return data[::-1]


def thumbnail(image: Image.Image, side: int = 4) -> Image.Image:
    side = 1 + abs(side) % 8
    return image.resize((side, side))


async def fail(message: str) -> int:
    raise ValueError(message)


async def nothing() -> None:
    pass


#: The argument and result types DESIGN.md names (no PIL image result).
core = errands.Service("core")
#: The same plus a task taking and returning a PIL image, on a nested route.
svc = errands.Service("catalogue")
for function in (render, add, shout, reverse, fail, nothing):
    core.task(function)
    svc.task(function)
svc.task(route="/v1/images/thumbnail")(thumbnail)


async def fetch_openapi(app: ErrandsApp) -> dict[str, Any]:
    """The document as served (no engine needed for it)."""
    status, _, body = await call_asgi(app, {"path": "/openapi.json"})
    assert status == 200
    document: dict[str, Any] = json.loads(body)
    return document


#: max_wait: a fuzzed ``POST /tasks/wait?wait=1e3`` on a pending task holds 0.2 s, not 60.
APP = create_app(svc, grace=0.5, max_wait=0.2)
SPEC = trio.run(fetch_openapi, APP)
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]
REGISTRY: referencing.Registry[Any] = referencing.Registry().with_resource(
    "urn:spec", referencing.jsonschema.DRAFT202012.create_resource(SPEC)
)
PATHS = sorted(SPEC["paths"])
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def schema_validator(schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for a schema inside the spec (its refs resolve against the spec)."""
    text = json.dumps(schema).replace('"#/components/', '"urn:spec#/components/')
    return jsonschema.Draft202012Validator(json.loads(text), registry=REGISTRY)


def body_schema(path: str) -> dict[str, Any]:
    schema: dict[str, Any] = SPEC["paths"][path]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    return schema


# --------------------------------------------------------------------------- the document


async def test_openapi_validates_as_3_1() -> None:
    document = await fetch_openapi(create_app(core))
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert document["info"]["title"] == "core"


def test_openapi_with_image_result_validates() -> None:
    """A PIL image result is binary PNG here (BentoML's "file" type only in /schema.json)."""
    validate(SPEC)
    content = SPEC["paths"]["/v1/images/thumbnail/get"]["get"]["responses"]["200"]["content"]
    assert content["image/png"]["schema"] == {
        "type": "string",
        "format": "binary",
        "contentMediaType": "image/png",
    }


async def test_openapi_route_serves_the_same_document() -> None:
    async with in_process(APP) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == SPEC


def test_openapi_has_every_route_and_method() -> None:
    expected = {
        "/readyz": {"get"},
        "/livez": {"get"},
        "/tasks": {"get"},
        "/tasks/wait": {"post"},
        "/batches/{batch_id}": {"get"},
        "/batches/{batch_id}/results": {"get"},
        "/batches/{batch_id}/cancel": {"post", "put"},
    }
    for definition in svc.tasks.values():
        route = definition.route
        expected |= {
            f"{route}/submit": {"post"},
            f"{route}/status": {"get"},
            f"{route}/get": {"get"},
            f"{route}/cancel": {"post", "put"},
            f"{route}/retry": {"put", "post"},
            f"{route}/events": {"get"},
            f"{route}/submit_many": {"post"},
        }
    assert {path: set(item) for path, item in SPEC["paths"].items()} == expected
    operation_ids = [op["operationId"] for item in SPEC["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert SPEC["paths"]["/render/submit"]["post"]["description"].startswith("Render a thing")


def test_openapi_argument_schemas() -> None:
    schema = body_schema("/render/submit")
    assert schema["required"] == ["dims", "owner", "color", "size", "tags", "weights"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["dims"]["$ref"] == "#/components/schemas/Dims"
    assert SCHEMAS["Dims"]["required"] == ["width", "height"]
    assert SCHEMAS["Owner"]["properties"]["email"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}]
    }
    assert SCHEMAS["Color"]["enum"] == ["red", "green"]
    assert SCHEMAS["Size"]["enum"] == [1, 2]
    assert props["tags"]["items"] == {"type": "string"}
    assert props["weights"]["additionalProperties"] == {"type": "number"}
    assert props["payload"]["contentEncoding"] == "base64"
    assert {"type": "string", "format": "date-time"} in props["due"]["anyOf"]
    assert props["pair"]["anyOf"][0]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert props["ratio"]["default"] == 1.0
    results = {
        "/add/get": ("application/json", {"type": "integer"}),
        "/shout/get": ("text/plain", {"type": "string"}),
        "/reverse/get": (
            "application/octet-stream",
            {"type": "string", "format": "binary"},
        ),
        "/v1/images/thumbnail/get": ("image/png", None),
    }
    every = {"application/json", "text/plain", "application/octet-stream", "image/png"}
    for path, (media, output) in results.items():
        content = SPEC["paths"][path]["get"]["responses"]["200"]["content"]
        # Task ids are global: any get answers with any task's result, its own first.
        assert next(iter(content)) == media and set(content) == every
        if output is not None:
            schema = content[media]["schema"]
            assert schema.get("anyOf", [schema])[0] == output


# --------------------------------------------------------------------------- JSON strategies

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _png_bytes(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side)).save(out, format="PNG")
    return out.getvalue()


def _png(side: int) -> str:
    return base64.b64encode(_png_bytes(side)).decode()


def from_schema(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for ``schema`` (the subset errands emits; refs into the spec)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return st.deferred(lambda: from_schema(SCHEMAS[name]))
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind is None:
        return ANY_JSON
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(-(2**53), 2**53)
    if kind == "number":
        return st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    if kind == "string":
        if schema.get("contentMediaType", "").startswith("image/"):
            return st.integers(1, 4).map(_png)
        if schema.get("contentEncoding") == "base64":
            return st.binary(max_size=32).map(lambda b: base64.b64encode(b).decode())
        if schema.get("format") == "date-time":
            offsets = st.timedeltas(dt.timedelta(hours=-23), dt.timedelta(hours=23))
            zones = st.none() | st.builds(dt.timezone, offsets)
            return st.datetimes(timezones=zones).map(dt.datetime.isoformat)
        if schema.get("format") == "date":
            return st.dates().map(dt.date.isoformat)
        return st.text(max_size=20)
    if kind == "array":
        if "prefixItems" in schema:
            return st.tuples(*(from_schema(s) for s in schema["prefixItems"])).map(list)
        return st.lists(from_schema(schema.get("items", {})), max_size=4)
    assert kind == "object", schema
    properties = schema.get("properties")
    if properties is None:
        values = from_schema(schema.get("additionalProperties", {}))
        return st.dictionaries(st.text(max_size=8), values, max_size=4)
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries(
        {k: from_schema(v) for k, v in properties.items() if k in required},
        optional={k: from_schema(v) for k, v in properties.items() if k not in required},
    )


SUBMIT_PATHS = [p for p in PATHS if p.endswith("/submit")]


@st.composite
def valid_submit(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    path = draw(st.sampled_from(SUBMIT_PATHS))
    return path, draw(from_schema(body_schema(path)))


@st.composite
def near_valid_body(draw: st.DrawFn, path: str) -> Any:
    """A valid body with a few fields replaced, dropped or added."""
    body = dict(draw(from_schema(body_schema(path))))
    names = [*sorted(body_schema(path)["properties"]), "extra"]
    for name in draw(st.lists(st.sampled_from(names), max_size=3)):
        action = draw(st.sampled_from(["replace", "drop"]))
        if action == "drop":
            body.pop(name, None)
        else:
            body[name] = draw(ANY_JSON)
    return body


# --------------------------------------------------------------------------- requests

#: Ids the fuzz may use, filled in per example with tasks in these states.
PLACEHOLDERS = ["<success>", "<failure>", "<pending>", "<cancelled>"]

ODD_VALUES = (
    st.sampled_from(["", "0", "-1", "1e3", "nan", "inf", "success", "completed", "add", "x"])
    | st.integers().map(str)
    | st.floats().map(str)
    | st.text(max_size=30)
)
#: Query parameters each kind of route reads.
PARAMETERS = {
    "submit": ["priority", "delay"],
    "tasks": ["name", "status", "limit", "offset"],
    "task": ["task_id"],
    "wait": ["wait"],
}


@st.composite
def queries(draw: st.DrawFn, path: str) -> dict[str, str]:
    """Mostly the parameters the route reads, with sensible or odd values; some strangers."""
    action = path.rsplit("/", 1)[-1]
    kind = {"/tasks": "tasks", "/tasks/wait": "wait"}.get(path)
    kind = kind or ("submit" if action == "submit" else "task")
    query: dict[str, str] = {}
    for name in PARAMETERS[kind]:
        if draw(st.integers(0, 3)) == 0:
            continue  # leave it out
        if name == "task_id" and draw(st.integers(0, 3)):
            query[name] = draw(st.sampled_from(PLACEHOLDERS))
        elif name == "status" and draw(st.booleans()):
            query[name] = draw(st.sampled_from(["pending", "success", "failed", "canceled"]))
        elif name == "name" and draw(st.booleans()):
            query[name] = draw(st.sampled_from(sorted(svc.tasks)))
        elif name in ("priority", "limit", "offset") and draw(st.booleans()):
            query[name] = str(draw(st.integers(-5, 2000) | st.integers()))
        elif name in ("delay", "wait") and draw(st.booleans()):
            query[name] = str(draw(st.floats(0, 1e9) | st.floats()))
        else:
            query[name] = draw(ODD_VALUES)
    extra = st.dictionaries(st.text(max_size=8), ODD_VALUES | st.sampled_from(PLACEHOLDERS))
    query.update(draw(extra.filter(lambda q: not q.keys() & query.keys()), label="extra") or {})
    return query


PRINTABLE = st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"])
#: Routes the app answers that the OpenAPI document leaves out.
UNDOCUMENTED_OK = {
    ("GET", "/schema.json"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("HEAD", "/readyz"),
    ("HEAD", "/livez"),
}


@attrs.frozen
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes | None
    content_type: str | None = None


BOUNDARY = "errands-fuzz-boundary"
SAFE_NAMES = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)


@st.composite
def multipart_body(draw: st.DrawFn, path: str) -> bytes:
    """A form: the task's argument names (and strangers) as fields or file parts."""
    names = [*body_schema(path)["properties"]] if path in SUBMIT_PATHS else []
    name = st.sampled_from(names) | SAFE_NAMES if names else SAFE_NAMES
    parts = []
    for field, is_file in draw(st.lists(st.tuples(name, st.booleans()), max_size=4)):
        if is_file:
            head = f'Content-Disposition: form-data; name="{field}"; filename="f.bin"'
            value = draw(st.binary(max_size=40) | st.sampled_from([_png_bytes(2)]))
        else:
            head = f'Content-Disposition: form-data; name="{field}"'
            value = draw(ODD_VALUES | ANY_JSON.map(json.dumps)).encode()
        parts.append(f"--{BOUNDARY}\r\n{head}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """Mostly documented operations; some wrong methods and unknown paths."""
    choice = draw(st.integers(0, 9))
    if choice < 8:
        path = draw(st.sampled_from(PATHS))
    elif choice == 8:
        path = draw(
            st.sampled_from(["/", "/nope", "/add", "/add/other", "/schema.json", "/metrics"])
        )
    else:
        path = "/" + draw(st.text(PRINTABLE, max_size=20)).lstrip("/")  # "//x" is a host
    documented = [m.upper() for m in SPEC["paths"].get(path, {})]
    if documented and draw(st.integers(0, 4)):
        method = draw(st.sampled_from(documented))
    else:
        method = draw(st.sampled_from(METHODS))
    kind = draw(st.sampled_from(["none", "json", "near", "near", "bytes", "form"]))
    body: bytes | None = None
    content_type = None
    if kind == "form":
        body = draw(multipart_body(path))
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
    elif kind == "json":
        body = json.dumps(draw(ANY_JSON)).encode()
    elif kind == "near" and path in SUBMIT_PATHS:
        body = json.dumps(draw(near_valid_body(path))).encode()
    elif kind == "near" and path == "/tasks/wait":
        ids = st.sampled_from(PLACEHOLDERS) | st.text(max_size=24)
        body = json.dumps({"task_ids": draw(st.lists(ids, max_size=5))}).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    query = draw(queries(path))
    return Request(method=method, path=path, query=query, body=body, content_type=content_type)


async def make_tasks(client: httpx.AsyncClient) -> dict[str, str]:
    """One task in each state, for the placeholders."""

    async def submit(path: str, body: dict[str, Any], **query: Any) -> str:
        response = await client.post(path, json=body, params=query)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["task_id"]
        return task_id

    ids = {
        "<success>": await submit("/add/submit", {"a": 1, "b": 2}),
        "<failure>": await submit("/fail/submit", {"message": "planned"}),
        "<pending>": await submit("/add/submit", {"a": 1, "b": 2}, delay=3600),
        "<cancelled>": await submit("/add/submit", {"a": 1, "b": 2}, delay=3600),
    }
    await client.post("/add/cancel", params={"task_id": ids["<cancelled>"]})
    await wait_final(client, ids["<success>"])
    await wait_final(client, ids["<failure>"])
    return ids


def documented_codes(path: str, method: str) -> set[int] | None:
    operation = SPEC["paths"].get(path, {}).get(method.lower())
    if operation is None:
        return None
    return {int(code) for code in operation["responses"]}


def check_conformance(
    request: Request,
    response: httpx.Response,
    failed_ids: set[str],
    owned: frozenset[str] = frozenset(),
) -> None:
    """The answer is one the spec documents, with a body of the documented shape.

    ``owned``: the ``/get`` paths whose task is the one the id belongs to.
    """
    status = response.status_code
    if status == 500:
        # Only the documented 500: ``get`` of a failed task.
        assert request.path.endswith("/get"), response.text
        assert request.query.get("task_id") in failed_ids, response.text
        assert response.json()["status"] == "failure"
    else:
        assert status < 500, (request, response.status_code, response.text)
    codes = documented_codes(request.path, request.method)
    if codes is None:
        ok = (request.method, request.path) in UNDOCUMENTED_OK
        assert status in ({200} if ok else {404, 405}), (request, status, response.text)
        return
    assert status in codes, (request, status, response.text)
    if request.method == "HEAD" or (status == 200 and request.path not in owned):
        return  # any task route answers for any id, with that task's result type
    operation = SPEC["paths"][request.path][request.method.lower()]
    content = operation["responses"][str(status)].get("content")
    if content is None:
        return
    media, spec = next(iter(content.items()))
    assert response.headers["content-type"].split(";")[0] == media, (request, response.headers)
    if media == "application/json":
        errors = list(schema_validator(spec["schema"]).iter_errors(response.json()))
        assert not errors, (request, response.text, errors)
    json_body = request.body is not None and request.content_type is None
    if request.path in SUBMIT_PATHS and status == 200 and json_body:
        # The server took it, so the spec's input schema must take it too.
        assert request.body is not None
        arguments = json.loads(request.body) if request.body.strip() else {}
        schema = body_schema(request.path)
        errors = list(schema_validator(schema).iter_errors(arguments))
        assert not errors, (request, errors)


async def send(client: httpx.AsyncClient, request: Request, ids: dict[str, str]) -> httpx.Response:
    if request.path.endswith("/events"):
        # A pending task's stream lasts until the task ends (in-process, httpx
        # reads the whole body): follow only tasks that are final already.
        ids = {**ids, "<pending>": ids["<success>"]}
    query = {k: ids.get(v, v) for k, v in request.query.items()}
    body = request.body
    if request.path == "/tasks/wait" and body is not None:
        for placeholder, task_id in ids.items():
            body = body.replace(placeholder.encode(), task_id.encode())
    concrete = attrs.evolve(request, query=query, body=body)
    headers = {} if request.content_type is None else {"content-type": request.content_type}
    response = await client.request(
        request.method, request.path, params=query, content=body, headers=headers
    )
    owned = frozenset(p for p in PATHS if not p.endswith("/get")) | {"/add/get"}
    check_conformance(concrete, response, {ids["<failure>"]}, owned)
    where = request.path.rsplit("/", 1)[-1] if request.path in SPEC["paths"] else "?"
    event(f"{request.method} {where} -> {response.status_code}")
    return response


@pytest.fixture(scope="module", params=["memory", "disk"])
def fuzz_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ErrandsApp:
    """The app on each backend (the disk one keeps its tasks across examples)."""
    if request.param == "memory":
        return APP
    directory = tmp_path_factory.mktemp("fuzz-disk")
    return create_app(svc, grace=0.5, max_wait=0.2, backend=f"diskcache://{directory}")


#: Seconds any one fuzzed request may take.
REQUEST_LIMIT = 30


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(requests(), min_size=1, max_size=8))
async def test_fuzz_no_server_errors(fuzz_app: ErrandsApp, batch: list[Request]) -> None:
    async with in_process(fuzz_app) as client:
        ids = await make_tasks(client)
        for request in batch:
            # Every answer is due well within this (held ones after max_wait):
            # a request that hangs fails here, named, instead of holding the suite.
            with trio.fail_after(REQUEST_LIMIT):
                await send(client, request, ids)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(submits=st.lists(valid_submit(), min_size=1, max_size=4))
async def test_schema_valid_bodies_are_accepted_and_run(
    submits: list[tuple[str, dict[str, Any]]],
) -> None:
    async with in_process(APP) as client:
        for path, body in submits:
            response = await client.post(path, json=body)
            assert response.status_code == 200, (path, body, response.text)
            route = path.removesuffix("/submit")
            final = await wait_final(client, response.json()["task_id"], route=route)
            expected = "failure" if route == "/fail" else "success"
            assert final["status"] == expected, (path, body, final)
            result = await client.get(f"{route}/get", params={"task_id": final["task_id"]})
            check_conformance(
                Request(
                    method="GET",
                    path=f"{route}/get",
                    query={"task_id": final["task_id"]},
                    body=None,
                ),
                result,
                {final["task_id"]},
                frozenset({f"{route}/get"}),
            )


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(METHODS) | st.text(max_size=8),
    path=st.sampled_from(PATHS) | st.text(max_size=30),
    query=st.binary(max_size=60),
    content_length=st.none() | st.text(max_size=8) | st.integers().map(str),
    chunks=st.lists(st.binary(max_size=40), min_size=1, max_size=4),
)
async def test_fuzz_raw_scopes(
    method: str, path: str, query: bytes, content_length: str | None, chunks: list[bytes]
) -> None:
    """Whatever a server might pass on (odd bytes in the query, a bad content-length)."""
    headers = []
    if content_length is not None:
        headers.append((b"content-length", content_length.encode("utf-8")))
    async with APP.running():
        status, _, body = await call_asgi(
            APP,
            {"method": method, "path": path, "query_string": query, "headers": headers},
            chunks,
        )
    assert status < 500, (status, body)


@pytest.mark.parametrize("compat", [False, True])
async def test_openapi_of_other_shapes_validates(compat: bool) -> None:
    """A class service, a nested route, a task without arguments or result."""

    @errands.service(name="Classy")
    class Classy:
        @errands.task(route="deep/er/route")
        def deep(self, items: list[Owner], mapping: dict[str, list[int]] | None = None) -> Owner:
            return items[0]

        @errands.task
        async def plain(self) -> None:
            pass

    document = await fetch_openapi(create_app(Classy, bentoml_compat=compat))
    validate(document)
    assert "/deep/er/route/submit" in document["paths"]
    assert document["info"]["title"] == "Classy"
