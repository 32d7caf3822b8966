"""What each client call does on the wire, written once for both clients.

Every operation is a generator that yields steps (:class:`Call` an HTTP
request, :class:`Sleep`, :class:`Clock`) and gets back their results; the
sync client drives it with httpx.Client and ``time``, the async one with
httpx.AsyncClient and anyio (so it runs under trio and asyncio alike).
Streamed answers (a batch's results) use :class:`Open` and :class:`Line`,
and a flow that produces values as it goes hands each out with
:class:`Emit` (the clients' ``_iterate`` drivers yield them).
Nothing here does I/O, which keeps the two clients identical by construction.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Collection, Generator, Mapping
from typing import Any

import attrs
import httpx

from errands import (
    CannotCancel,
    RemoteError,
    TaskCancelled,
    TaskFailed,
    TaskInfo,
    TaskNotFound,
    TaskNotReady,
    TaskStatus,
)

from ._protocol import info_from_json, parse_status, status_name
from ._wire import (
    Endpoint,
    ServerInfo,
    decode_result,
    error_for,
    needs_status,
    parse_schema,
    submit_request,
)

__all__ = [
    "Call",
    "Clock",
    "Emit",
    "Flow",
    "Line",
    "Open",
    "Sleep",
    "cancel",
    "get",
    "info",
    "list_tasks",
    "retry",
    "schema",
    "submit",
    "wait",
    "wait_any",
    "wait_fetching",
    "wait_stream",
]

#: Polling a server without long polls (BentoML) starts at this interval and
#: doubles up to POLL_MAX.
POLL_START = 0.05
POLL_MAX = 1.0
#: How long a wait goes on trying a server that cannot be reached or has no
#: engine running (503), as while it restarts, before it raises.
OUTAGE_WINDOW = 60.0
#: Seconds a streamed answer may stay silent (the server sends a blank line
#: after 15 s); added to the client's read timeout.
STREAM_SILENCE = 20.0


@attrs.frozen
class Call:
    """Send a request (``httpx.Client.request`` keyword arguments).

    ``hold`` is how long the server may keep it (a long poll), added to the
    read timeout.
    """

    request: Mapping[str, Any]
    hold: float = 0.0


@attrs.frozen
class Sleep:
    seconds: float


@attrs.frozen
class Clock:
    """Ask for the current (monotonic) time."""


@attrs.frozen
class Open:
    """Send a request whose answer is streamed: the reply is the response with
    its body not read yet (read whole when its status is 400 or more).  The
    driver closes it when the flow ends.  ``hold``: the longest silence
    between parts of the body, added to the read timeout."""

    request: Mapping[str, Any]
    hold: float = 0.0


@attrs.frozen(eq=False)
class Line:
    """The next line of an :class:`Open` response (text, without its line
    ending); None at the end of the body."""

    response: httpx.Response


@attrs.frozen(eq=False)
class Emit:
    """Hand ``value`` to whoever iterates the flow (the reply is None)."""

    value: Any


Step = Call | Sleep | Clock | Open | Line | Emit
Flow = Generator[Step, Any, Any]


def _check(
    response: httpx.Response, *, action: str, task_id: str | None = None, endpoint: str = ""
) -> httpx.Response:
    error = error_for(response, action=action, task_id=task_id, endpoint=endpoint)
    if error is not None:
        raise error
    return response


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise RemoteError(
            f"the server's answer to {response.request.url.path} is not JSON"
        ) from None


@attrs.define
class _Outage:
    """Since when a wait has found the server away, and its next pause."""

    since: float | None = None
    pause: float = POLL_START


def _through_outages(call: Call, outage: _Outage, deadline: float) -> Flow:
    """Send ``call``; while the server cannot be reached or answers 503 (it is
    restarting), try again with backoff, for at most ``OUTAGE_WINDOW`` seconds
    and never past ``deadline``.  For waits only: they change nothing."""
    while True:
        try:
            response = yield call
        except RemoteError as exc:
            if exc.status_code is not None:
                raise
            error: Exception = exc
        else:
            if response.status_code != 503:
                outage.since, outage.pause = None, POLL_START
                return response
            error = error_for(response, action="wait") or RemoteError("HTTP 503")
        now = yield Clock()
        if outage.since is None:
            outage.since = now
        if now - outage.since >= OUTAGE_WINDOW or now >= deadline:
            raise error
        yield Sleep(min(outage.pause, deadline - now))
        outage.pause = min(outage.pause * 2, POLL_MAX)


def schema() -> Flow:
    response = yield Call({"method": "GET", "url": "/schema.json"})
    if response.status_code == 404:
        # The usual cause: the app is mounted under a prefix the URL lacks.
        error = RemoteError(
            f"HTTP 404 from {response.request.url}: no errands (or BentoML) server answers "
            "there. If the app is mounted under a path in another app (e.g. /jobs), put that "
            "path in the client's URL: SyncHTTPClient('http://host:port/jobs')"
        )
        error.status_code = 404
        raise error
    return parse_schema(_json(_check(response, action="schema")))


def submit(
    endpoint: Endpoint,
    arguments: Mapping[str, Any],
    *,
    priority: int,
    delay: float | None,
    idempotency_key: str | None,
) -> Flow:
    request = submit_request(
        endpoint, arguments, priority=priority, delay=delay, idempotency_key=idempotency_key
    )
    response = yield Call(request)
    body = _json(_check(response, action="submit", endpoint=endpoint.name))
    if not isinstance(body, dict) or not isinstance(body.get("task_id"), str):
        raise RemoteError("the server's answer to submit has no task_id")
    return body["task_id"]


def _wait_param(hold: float) -> str:
    """``?wait=`` for ``hold`` seconds, rounded down: a server refuses more than its max_wait."""
    return f"{math.floor(hold * 1000) / 1000:.3f}"


def _status_call(route: Endpoint, task_id: str, hold: float = 0.0) -> Call:
    params = {"task_id": task_id}
    if hold > 0:
        params["wait"] = _wait_param(hold)
    return Call({"method": "GET", "url": route.path("status"), "params": params}, hold=hold)


def info(route: Endpoint, task_id: str, name: str = "") -> Flow:
    response = yield _status_call(route, task_id)
    return info_from_json(_json(_check(response, action="status", task_id=task_id)), name)


def get(route: Endpoint, task_id: str, endpoint: Endpoint | None) -> Flow:
    request = {"method": "GET", "url": route.path("get"), "params": {"task_id": task_id}}
    response = yield Call(request)
    if response.status_code < 300:
        return decode_result(response, endpoint)
    if needs_status(response, action="get"):
        # A BentoML server: its answer does not say why; the status does.
        current = yield from info(route, task_id)
        if not current.status.is_final:
            raise TaskNotReady(task_id, current.status.value)
        if current.status is TaskStatus.FAILURE:
            detail = str(current.error) if current.error else _message(response)
            raise TaskFailed(task_id, detail or "the task failed")
        if current.status is TaskStatus.CANCELLED:
            raise TaskCancelled(task_id)
    _check(response, action="get", task_id=task_id)
    raise RemoteError(f"unexpected answer {response.status_code} to get")  # a 3xx


def cancel(route: Endpoint, task_id: str) -> Flow:
    # PUT as BentoML's server routes it; errands' server takes PUT and POST.
    request = {"method": "PUT", "url": route.path("cancel"), "params": {"task_id": task_id}}
    response = yield Call(request)
    if response.status_code < 300:
        body = _json(response)
        if isinstance(body, dict) and "status" in body:
            return parse_status(body["status"])
        return (yield from info(route, task_id)).status
    if needs_status(response, action="cancel"):
        # BentoML's server answers 400 to every cancel, having cancelled a
        # running task all the same; the status tells what happened.
        current = yield from info(route, task_id)
        if current.status is TaskStatus.CANCELLED:
            return current.status
        raise CannotCancel(task_id, current.status.value, _message(response))
    _check(response, action="cancel", task_id=task_id)
    raise RemoteError(f"unexpected answer {response.status_code} to cancel")  # a 3xx


def retry(route: Endpoint, task_id: str) -> Flow:
    # POST as BentoML's server routes it; errands' server takes POST and PUT.
    request = {"method": "POST", "url": route.path("retry"), "params": {"task_id": task_id}}
    response = yield Call(request)
    if needs_status(response, action="retry"):
        current = yield from info(route, task_id)
        raise TaskNotReady(task_id, current.status.value)
    body = _json(_check(response, action="retry", task_id=task_id))
    if not isinstance(body, dict) or not isinstance(body.get("task_id"), str):
        raise RemoteError("the server's answer to retry has no task_id")
    return body["task_id"]


def wait(server: ServerInfo, route: Endpoint, task_id: str, timeout: float | None) -> Flow:
    """Until the task is final: long polls where the server has them, else
    polling with backoff.  Raises TimeoutError after ``timeout`` seconds."""
    start = yield Clock()
    deadline = math.inf if timeout is None else start + timeout
    pause = POLL_START
    outage = _Outage()
    while True:
        asked = yield Clock()
        hold = 0.0
        if server.max_wait:
            hold = max(0.0, min(deadline - asked, server.max_wait))
        response = yield from _through_outages(_status_call(route, task_id, hold), outage, deadline)
        current = info_from_json(_json(_check(response, action="status", task_id=task_id)))
        if current.status.is_final:
            return current.status
        now = yield Clock()
        if now >= deadline:
            raise TimeoutError(f"task {task_id} is still {current.status.value} after {timeout} s")
        pause = yield from _next_pause(asked, now, hold, deadline, pause)


def _next_pause(asked: float, now: float, hold: float, deadline: float, pause: float) -> Flow:
    """After a round of a wait that found nothing final: the pause before the
    next one.  A round the server held (a long poll) is followed at once; one
    it answered early (no long poll, or it is draining) is followed by a
    sleep of ``pause``, doubling up to ``POLL_MAX``."""
    if now - asked < hold / 2 or hold == 0:
        yield Sleep(min(pause, deadline - now))
        return min(pause * 2, POLL_MAX)
    return POLL_START


def wait_fetching(server: ServerInfo, route: Endpoint, task_id: str, timeout: float | None) -> Flow:
    """Until the task is final, on a server whose ``get`` long polls
    (errands'): the final status and, for a success, the answer to ``get``
    (so the ``get()`` that usually follows needs no request of its own).
    ``wait()`` then ``get()`` costs one request instead of two.  Raises
    TimeoutError after ``timeout`` seconds, TaskNotFound for an unknown id."""
    start = yield Clock()
    deadline = math.inf if timeout is None else start + timeout
    pause = POLL_START
    outage = _Outage()
    while True:
        asked = yield Clock()
        hold = max(0.0, min(deadline - asked, server.max_wait or 0.0))
        params = {"task_id": task_id}
        if hold > 0:
            params["wait"] = _wait_param(hold)
        call = Call({"method": "GET", "url": route.path("get"), "params": params}, hold=hold)
        response = yield from _through_outages(call, outage, deadline)
        if response.status_code < 300:
            return TaskStatus.SUCCESS, response
        error = error_for(response, action="get", task_id=task_id)
        if isinstance(error, TaskFailed):
            return TaskStatus.FAILURE, None
        if isinstance(error, TaskCancelled):
            return TaskStatus.CANCELLED, None
        if isinstance(error, TaskNotFound):
            # An unknown id, or (rarely) a success whose result is gone: the
            # status tells which (and raises TaskNotFound for the first).
            current = yield from info(route, task_id)
            if current.status.is_final:
                return current.status, None
        elif not isinstance(error, TaskNotReady):
            _check(response, action="get", task_id=task_id)
            raise RemoteError(f"unexpected answer {response.status_code} to get")  # a 3xx
        now = yield Clock()
        if now >= deadline:
            status = error.status if isinstance(error, TaskNotReady) else "not final"
            raise TimeoutError(f"task {task_id} is still {status} after {timeout} s")
        pause = yield from _next_pause(asked, now, hold, deadline, pause)


def wait_any(
    server: ServerInfo,
    route: Endpoint,
    task_ids: Collection[str],
    timeout: float | None,
    *,
    results: bool = False,
) -> Flow:
    """The tasks among ``task_ids`` that are final (id -> TaskInfo) or unknown
    (id -> None), as soon as there is one (``{}`` after ``timeout``), and the
    results the server inlined (id -> the answer ``get`` would have given):
    with ``results``, a server that can inlines small results of successes."""
    start = yield Clock()
    deadline = math.inf if timeout is None else start + timeout
    pause = POLL_START
    outage = _Outage()
    ids = list(task_ids)
    if server.wait_many:
        # The first ids the server takes in one request: the others are
        # asked for once these have ended (as_completed asks again).
        ids = ids[: server.max_wait_ids]
    while True:
        asked = yield Clock()
        inlined: dict[str, httpx.Response] = {}
        if server.wait_many:
            hold = max(0.0, min(deadline - asked, server.max_wait or 0.0))
            ask: dict[str, Any] = {"task_ids": ids}
            if results and server.wait_results:
                ask["results"] = True
            request = {
                "method": "POST",
                "url": "/tasks/wait",
                "params": {"wait": _wait_param(hold)},
                "content": json.dumps(ask),
                "headers": {"content-type": "application/json"},
            }
            response = yield from _through_outages(Call(request, hold=hold), outage, deadline)
            found, inlined = _endings(_json(_check(response, action="wait")), "results" in ask)
        else:
            hold = 0.0
            found = {}
            for task_id in ids:
                response = yield from _through_outages(
                    _status_call(route, task_id), outage, deadline
                )
                if response.status_code == 404:
                    found[task_id] = None
                    continue
                current = info_from_json(_json(_check(response, action="status", task_id=task_id)))
                if current.status.is_final:
                    found[task_id] = current
        if found:
            return found, inlined
        now = yield Clock()
        if now >= deadline:
            return {}, {}
        pause = yield from _next_pause(asked, now, hold, deadline, pause)


def _endings(
    body: Any, results: bool
) -> tuple[dict[str, TaskInfo | None], dict[str, httpx.Response]]:
    """The tasks a ``POST /tasks/wait`` answer (or a line of its stream)
    names as ended (id -> TaskInfo) or unknown (id -> None), and the results
    it inlined (id -> the answer ``get`` would have given)."""
    if not isinstance(body, dict):
        raise RemoteError("the server's answer to /tasks/wait is not a JSON object")
    done = body.get("done") or ()
    found: dict[str, TaskInfo | None] = {i.id: i for i in (info_from_json(d) for d in done)}
    found.update(dict.fromkeys(body.get("missing") or ()))
    if not results:
        return found, {}
    return found, {d["task_id"]: r for d in done if (r := _inlined(d)) is not None}


def wait_stream(
    server: ServerInfo,
    task_ids: Collection[str],
    timeout: float | None,
    *,
    results: bool = False,
) -> Flow:
    """Every task among ``task_ids`` as it ends, from one streamed ``POST
    /tasks/wait`` (a server with ``wait_stream``): hands out, with ``Emit``,
    each round of endings the server sends, as ``wait_any`` returns them
    (found, inlined).  Returns once every id was handed out, or at
    ``timeout`` with some not.

    More ids than the server takes in one request (``max_wait_ids``) are
    waited on a part at a time, in the order given: each part's tasks as
    they end, the next part once every task of this one was handed out.  A
    stream that ends with ids not sent (the server drained, or restarted)
    is asked for again, for those, while the server comes back within
    ``OUTAGE_WINDOW``.
    """
    start = yield Clock()
    deadline = math.inf if timeout is None else start + timeout
    left = dict.fromkeys(task_ids)
    since: float | None = None  # when the stream was first found cut short
    pause = POLL_START
    while left:
        part = list(itertools.islice(left, server.max_wait_ids))
        ask: dict[str, Any] = {"task_ids": part, "stream": True}
        if results and server.wait_results:
            ask["results"] = True
        opened = yield Clock()
        # Held until the part's tasks end; with a timeout, for at most the
        # time left, and the server's max_wait (then asked again at once).
        hold = (
            None
            if deadline == math.inf
            else _wait_param(min(deadline - opened, server.max_wait or math.inf))
        )
        request = {
            "method": "POST",
            "url": "/tasks/wait",
            "params": {} if hold is None else {"wait": hold},
            "content": json.dumps(ask),
            "headers": {"content-type": "application/json"},
        }
        problem: Exception | None = None
        try:
            response = yield Open(request, hold=STREAM_SILENCE)
        except RemoteError as exc:
            if exc.status_code is not None:
                raise
            problem = exc  # unreachable: ride it out
        else:
            if response.status_code == 503:
                problem = error_for(response, action="wait")
            else:
                _check(response, action="wait")
            try:
                while problem is None and (text := (yield Line(response))) is not None:
                    if not text.strip():
                        continue  # a keep-alive
                    try:
                        line = json.loads(text)
                    except ValueError:
                        raise RemoteError(
                            f"the server sent a line that is not JSON: {text[:200]!r}"
                        ) from None
                    found, inlined = _endings(line, "results" in ask)
                    found = {i: f for i, f in found.items() if i in left}
                    if not found:
                        continue
                    for task_id in found:
                        del left[task_id]
                    since, pause = None, POLL_START
                    if not any(task_id in left for task_id in part):
                        # The part's last round: the server ends the stream
                        # right after it; read that end first, so the answer
                        # is not left half read when the caller stops here.
                        while (yield Line(response)) is not None:
                            pass
                    yield Emit((found, inlined))
            except RemoteError as exc:
                if exc.status_code is not None:
                    raise
                problem = exc  # cut off: ask again for the rest
        now = yield Clock()
        if not left or now >= deadline:
            return None
        held_out = hold is not None and problem is None and now >= opened + float(hold)
        if any(task_id in left for task_id in part) and not held_out:
            # Cut short (drain, restart): ask again for the rest, with backoff.
            since = now if since is None else since
            if now - since >= OUTAGE_WINDOW:
                raise problem or RemoteError(
                    f"the server's stream of many-task waits kept ending with "
                    f"{len(left)} tasks not final"
                )
            yield Sleep(min(pause, deadline - now))
            pause = min(pause * 2, POLL_MAX)
    return None


def _inlined(entry: Any) -> httpx.Response | None:
    """The answer ``get`` gives, rebuilt from a result that ``POST /tasks/wait``
    inlined in a ``done`` entry (JSON as is, text as a string); None when the
    entry has none."""
    media = entry.get("result_type")
    if not isinstance(media, str) or "result" not in entry:
        return None
    value = entry["result"]
    if media.split(";", 1)[0].strip().lower().startswith("text/"):
        if not isinstance(value, str):
            return None
        content = value.encode("utf-8")
    else:
        content = json.dumps(value, separators=(",", ":")).encode()
    return httpx.Response(200, headers={"content-type": media}, content=content)


def list_tasks(*, name: str | None, status: TaskStatus | None, limit: int, offset: int) -> Flow:
    params: dict[str, Any] = {"limit": str(limit), "offset": str(offset)}
    if name is not None:
        params["name"] = name
    if status is not None:
        params["status"] = status_name(status)
    response = yield Call({"method": "GET", "url": "/tasks", "params": params})
    if response.status_code == 404:
        raise RemoteError("this server does not list tasks (no /tasks route)")
    body = _json(_check(response, action="list"))
    return [info_from_json(t) for t in body.get("tasks") or ()]


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:500]
