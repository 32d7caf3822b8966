"""What the batch operations do on the wire, written once for both HTTP clients.

Flows as in ``_flows`` (generators of steps that the sync and async drivers
run): bulk submit in requests of a few thousand items, a batch's pages of
ids, waiting on a batch with long polls, cancel, and the results stream
(:class:`~errands.adapters._flows.Open`/``Line``, each result handed out with
``Emit``).  The wire shapes are ``_batch_wire``'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import attrs
import pybase64

from errands import (
    BatchResult,
    FieldError,
    InvalidArguments,
    RemoteError,
    TaskNotFound,
)
from errands._convert import converter

from ._batch_wire import JSONL_TYPES, Summary, item_error, parse_result_line, summary_from_json
from ._flows import (
    OUTAGE_WINDOW,
    POLL_MAX,
    POLL_START,
    STREAM_SILENCE,
    Call,
    Clock,
    Emit,
    Flow,
    Line,
    Open,
    Sleep,
    _check,
    _json,
    _next_pause,
    _Outage,
    _through_outages,
    _wait_param,
    get,
)
from ._wire import Endpoint, ServerInfo, _file_part

__all__ = [
    "PER_REQUEST",
    "REQUEST_BYTES",
    "Submitted",
    "cancel",
    "load",
    "page",
    "results",
    "submit_many",
    "wait",
]

#: Items per ``submit_many`` request ...
PER_REQUEST = 2000
#: ... and about the most bytes of items in one.
REQUEST_BYTES = 4 * 1024 * 1024


def _path(batch_id: str, action: str = "") -> str:
    tail = f"/{action}" if action else ""
    return f"/batches/{quote(batch_id, safe='')}{tail}"


# ---------------------------------------------------------------------- submit_many


def _file_value(name: str, value: Any) -> Any:
    """A file argument in a JSON item: base64 text (a str is sent as it is)."""
    if isinstance(value, str):
        return value
    return pybase64.b64encode_as_string(_file_part(name, value)[1])


def _item_line(
    endpoint: Endpoint, item: Any, files: frozenset[str]
) -> tuple[bytes, Exception | None]:
    """One item as a JSON line, or ``null`` and why it cannot be sent (the
    server refuses the ``null`` too, so indexes stay in step)."""
    errors: list[FieldError] = []
    value: Any = item
    if isinstance(item, Mapping):
        value = {}
        for name, argument in item.items():
            try:
                if name in files and argument is not None:
                    many = isinstance(argument, list | tuple)
                    encoded = [_file_value(name, a) for a in (argument if many else [argument])]
                    value[name] = encoded if many else encoded[0]
                else:
                    value[name] = converter.unstructure(argument)
                json.dumps(value[name], allow_nan=False)
            except (TypeError, ValueError, OSError) as exc:
                errors.append(FieldError(path=f"$.{name}", message=str(exc)))
    else:
        try:
            value = converter.unstructure(item)
        except (TypeError, ValueError) as exc:
            errors.append(FieldError(path="$", message=str(exc)))
    if not errors:
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode(), None
        except (TypeError, ValueError) as exc:
            errors.append(FieldError(path="$", message=str(exc)))
    return b"null", InvalidArguments(endpoint.name, errors)


@attrs.frozen(kw_only=True)
class Submitted:
    """What a bulk submit gave: the batch id, its accepted tasks and the rest."""

    batch_id: str
    #: ``(index, task_id)`` of each accepted item, in order.
    members: list[tuple[int, str]]
    #: Index -> the error each refused item got.
    rejected: dict[int, Exception]


def submit_many(
    endpoint: Endpoint,
    items: Iterable[Any],
    *,
    priority: int,
    delay: float | None,
    idempotency_key: str | None,
    progress: Callable[[int], None] | None = None,
) -> Flow:
    """Send ``items`` as JSON Lines in requests of up to :data:`PER_REQUEST`
    items; each later request continues the batch (``batch_id``, ``offset``).

    Raises the error of a request that failed part way (a full queue, a
    storage fault), with a note saying what was answered before it.
    """
    files = endpoint.file_fields()
    source = iter(items)
    batch_id: str | None = None
    offset = 0
    members: list[tuple[int, str]] = []
    rejected: dict[int, Exception] = {}
    exhausted = False
    while not exhausted or batch_id is None:
        lines: list[bytes] = []
        local: dict[int, Exception] = {}
        size = 0
        while len(lines) < PER_REQUEST and size < REQUEST_BYTES:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            line, problem = _item_line(endpoint, item, files)
            if problem is not None:
                local[offset + len(lines)] = problem
            lines.append(line)
            size += len(line) + 1
        if not lines and batch_id is not None:
            break
        params: dict[str, str] = {"offset": str(offset)}
        if batch_id is not None:
            params["batch_id"] = batch_id
        if priority:
            params["priority"] = str(priority)
        if delay is not None:
            params["delay"] = repr(float(delay))
        headers = {"content-type": JSONL_TYPES[0]}
        if idempotency_key is not None:
            headers["idempotency-key"] = idempotency_key
        body = b"".join(line + b"\n" for line in lines)
        request = {
            "method": "POST",
            "url": endpoint.path("submit_many"),
            "params": params,
            "headers": headers,
            "content": body,
        }
        response = yield Call(request)
        answer = _answer(response, endpoint)
        batch_id = str(answer["batch_id"])
        for entry in answer["items"]:
            index = entry.get("index")
            if not isinstance(index, int):
                raise RemoteError("the server's submit_many answer has an item without an index")
            if index in local:
                rejected[index] = local[index]
            elif isinstance(entry.get("task_id"), str):
                members.append((index, entry["task_id"]))
            else:
                rejected[index] = item_error(entry.get("error") or {}, endpoint.name)
        offset += len(lines)
        if progress is not None:
            progress(offset)
    return Submitted(batch_id=batch_id, members=members, rejected=rejected)


def _answer(response: Any, endpoint: Endpoint) -> dict[str, Any]:
    if response.status_code == 404 and "type" not in _body_of(response):
        error = RemoteError(
            "this server has no bulk submit (no <route>/submit_many): it is not an errands "
            "server, or an older one"
        )
        error.status_code = 404
        raise error
    if response.status_code >= 400:
        body = _body_of(response)
        try:
            _check(response, action="submit", endpoint=endpoint.name)
        except Exception as exc:
            if isinstance(body.get("items"), list) and "batch_id" in body:
                exc.add_note(
                    f"batch {body['batch_id']}: the items before index {body.get('next_offset')} "
                    f"were answered ({body.get('accepted')} accepted); submit the rest again "
                    "with the same idempotency key to continue"
                )
            raise
    body = _json(response)
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise RemoteError("the server's answer to submit_many has no items")
    if not isinstance(body.get("batch_id"), str):
        raise RemoteError("the server's answer to submit_many has no batch_id")
    return body


def _body_of(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# ---------------------------------------------------------------------- a batch's pages


def _page_call(batch_id: str, *, offset: int, limit: int | None, hold: float) -> Call:
    params = {"offset": str(offset)}
    if limit is not None:
        params["limit"] = str(limit)
    if hold > 0:
        params["wait"] = _wait_param(hold)
    return Call({"method": "GET", "url": _path(batch_id), "params": params}, hold=hold)


def page(batch_id: str, *, offset: int = 0, limit: int | None = None) -> Flow:
    """One page of the batch's summary."""
    response = yield _page_call(batch_id, offset=offset, limit=limit, hold=0.0)
    return summary_from_json(_json(_check(response, action="batch")))


def load(server: ServerInfo, batch_id: str) -> Flow:
    """The batch's summary with every task id (a page at a time)."""
    limit = server.max_batch_page
    first: Summary = yield from page(batch_id, limit=limit)
    ids, indexes = list(first.task_ids), list(first.indexes)
    following = first.next_offset
    while following is not None:
        more: Summary = yield from page(batch_id, offset=following, limit=limit)
        ids += more.task_ids
        indexes += more.indexes
        following = more.next_offset
    return attrs.evolve(first, task_ids=ids, indexes=indexes, next_offset=None)


def wait(
    server: ServerInfo,
    batch_id: str,
    timeout: float | None,
    *,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> Flow:
    """Until every task of the batch is final; its counts then.  Long polls
    (``?wait=``); with ``progress``, held at most a second each, and
    ``progress(counts)`` after each.  Raises TimeoutError after ``timeout``."""
    start = yield Clock()
    deadline = math.inf if timeout is None else start + timeout
    pause = POLL_START
    outage = _Outage()
    while True:
        asked = yield Clock()
        hold = max(0.0, min(deadline - asked, server.max_wait or 0.0))
        if progress is not None:
            hold = min(hold, 1.0)
        call = _page_call(batch_id, offset=0, limit=0, hold=hold)
        response = yield from _through_outages(call, outage, deadline)
        summary = summary_from_json(_json(_check(response, action="batch")))
        if progress is not None:
            progress(summary.counts)
        if summary.done:
            return summary.counts
        now = yield Clock()
        if now >= deadline:
            left = summary.counts["total"] - sum(
                n for k, n in summary.counts.items() if k in ("success", "failure", "cancelled")
            )
            raise TimeoutError(f"batch {batch_id}: {left} tasks not final after {timeout} s")
        pause = yield from _next_pause(asked, now, hold, deadline, pause)


def cancel(batch_id: str) -> Flow:
    response = yield Call({"method": "POST", "url": _path(batch_id, "cancel")})
    return summary_from_json(_json(_check(response, action="batch"))).counts


# ---------------------------------------------------------------------- results


def results(
    route: Endpoint,
    endpoint: Endpoint | None,
    batch_id: str,
    *,
    order: str,
    wait: bool,
    total: int,
    raw: bool = False,
) -> Flow:
    """The batch's results, each handed out with ``Emit`` as the stream
    brings it: :class:`errands.BatchResult` (a result the line does not
    inline is fetched from ``get``), or with ``raw`` the line's text as is.

    With ``wait``, a stream that ends before ``total`` tasks were seen (the
    server drained, or went away) is asked for again, skipping what was
    seen, while the server comes back within ``OUTAGE_WINDOW``.
    """
    if order not in ("submission", "completed"):
        raise ValueError(f"order must be 'submission' or 'completed', not {order!r}")
    seen: set[str] = set()
    params = {"order": order, "wait": "true" if wait else "false"}
    request = {"method": "GET", "url": _path(batch_id, "results"), "params": params}
    since: float | None = None  # when the server was first found away
    pause = POLL_START
    while True:
        problem: Exception | None = None
        try:
            response = yield Open(request, hold=STREAM_SILENCE)
        except RemoteError as exc:
            if exc.status_code is not None or not wait:
                raise
            problem = exc
        else:
            if response.status_code == 503 and wait:
                problem = _check_error(response)
            elif response.status_code >= 400:
                _check(response, action="batch")
            else:
                before = len(seen)
                try:
                    yield from _lines(response, route, endpoint, seen, raw)
                except RemoteError as exc:
                    if not wait or exc.status_code is not None:
                        raise
                    problem = exc
                if len(seen) > before:
                    since, pause = None, POLL_START
        if not wait or len(seen) >= total:
            return None
        now = yield Clock()
        since = now if since is None else since
        if now - since >= OUTAGE_WINDOW:
            raise problem or RemoteError(
                f"the results stream of batch {batch_id} kept ending with "
                f"{total - len(seen)} tasks not sent"
            )
        yield Sleep(pause)
        pause = min(pause * 2, POLL_MAX)


def _check_error(response: Any) -> Exception:
    try:
        _check(response, action="batch")
    except Exception as exc:
        return exc
    return RemoteError(f"HTTP {response.status_code}")


def _lines(
    response: Any, route: Endpoint, endpoint: Endpoint | None, seen: set[str], raw: bool
) -> Flow:
    while (text := (yield Line(response))) is not None:
        if not text.strip():
            continue  # a keep-alive
        try:
            entry = json.loads(text)
        except ValueError:
            message = f"the server sent a result line that is not JSON: {text[:200]!r}"
            raise RemoteError(message) from None
        result, fetch = parse_result_line(entry)
        if result.task_id in seen:
            continue
        seen.add(result.task_id)
        if raw:
            yield Emit(text)
            continue
        if fetch and result.status == "success":
            result = yield from _fetched(route, endpoint, result)
        yield Emit(result)


def _fetched(route: Endpoint, endpoint: Endpoint | None, result: BatchResult) -> Flow:
    """``result`` with the value its line did not inline (bytes, an image)."""
    try:
        value = yield from get(route, result.task_id, endpoint)
    except TaskNotFound:
        return attrs.evolve(result, status="expired")
    return attrs.evolve(result, result=value)
