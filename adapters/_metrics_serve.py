"""``errands worker --metrics-port``: a worker's metrics over HTTP.

A worker has no HTTP API; with ``--metrics-port`` it also serves
``GET /metrics`` (the families of ``_metrics``, from its own engine),
``/livez`` and ``/readyz`` on that port through hypercorn, in the worker's
own trio loop.  Nothing else is answered there: no task data, no auth.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

import errands

from ._answers import Answer, json_answer, json_bytes
from ._bridge import LocalEngine
from ._metrics import Metrics

__all__ = ["MetricsApp", "serve_metrics"]

log = logging.getLogger("errands.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class MetricsApp:
    """An ASGI app answering ``/metrics``, ``/livez`` and ``/readyz`` for one engine."""

    def __init__(self, engine: errands.Engine) -> None:
        self.engine = engine
        self.metrics = Metrics(engine.service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status, headers, body = await self._answer(scope["method"], scope["path"])
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, method: str, path: str) -> Answer:
        if path not in ("/metrics", "/livez", "/readyz"):
            return _error(404, "this port serves /metrics, /livez and /readyz only")
        if method not in ("GET", "HEAD"):
            return _error(405, f"method {method} not allowed here; use GET")
        if path == "/metrics":
            return await self.metrics.answer(LocalEngine(self.engine), held=None)
        stats = self.engine.statistics()
        if stats.alive if path == "/livez" else stats.ready:
            return json_answer(200, {"status": "ok"})
        return _error(503, f"the engine is {stats.state}", state=stats.state)


def _error(status: int, message: str, **more: Any) -> Answer:
    return status, [(b"content-type", b"application/json")], json_bytes({"error": message, **more})


async def serve_metrics(
    engine: errands.Engine,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``engine``'s metrics on ``host:port`` until cancelled (hypercorn,
    trio worker); ``task_status.started()`` once the port listens."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    log.info("metrics on http://%s/metrics", bind)
    await serve(MetricsApp(engine), config, task_status=task_status)  # type: ignore[arg-type]
