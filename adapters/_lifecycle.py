"""The ASGI app's engine: its life, and what the app says about it.

* :meth:`EngineLife.running` runs the engine for a block (the ASGI lifespan,
  or a host's own lifespan): in the current loop under trio, in its own trio
  thread under asyncio.
* Mounted where nobody runs the lifespan, the first request starts the
  engine in its own thread (:meth:`EngineLife.access`) and :meth:`close`
  (or interpreter exit) stops it.
* :meth:`drain` answers every held request at once (a shutdown begins).
* An engine bug ends the engine: every route answers 503 from then on,
  ``/livez`` too, and :attr:`on_death` is told.
* ``/readyz`` and ``/livez`` say all of this (:meth:`readiness`, :meth:`liveness`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import sniffio

import errands
from errands import Backend, EngineOptions, Service

from ._answers import Answer, json_answer
from ._bridge import EngineAccess, LocalEngine, ThreadedEngine
from ._protocol import engine_closed, storage_unavailable
from ._waiting import Holds

__all__ = ["EngineLife"]

log = logging.getLogger("errands.http")


class EngineLife:
    """The engine of one app, and the requests held open while it runs."""

    def __init__(
        self, service: Service, *, backend: Backend | str | None, options: EngineOptions
    ) -> None:
        self.service = service
        self._backend = backend
        #: The engine's options.
        self.options = options
        #: The running engine (None: not started, or stopped).
        self.current: EngineAccess | None = None
        #: The requests held open (long polls, event streams, waits).
        self.holds = Holds()
        #: Called with the reason when an engine bug ends the engine.
        self.on_death: Callable[[str], None] | None = None
        self._ended = False  # a running() block ended: no engine will come back
        self._died_of: str | None = None  # an engine bug ended the engine
        self._autostart_lock = threading.Lock()
        self._autostarted: errands.SyncClient | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the engine for the duration of the block.

        Under trio the engine runs in the current loop; under asyncio in its
        own trio thread.  Leaving the block first drains the held requests
        (:meth:`drain`), then the engine (see ``grace``); while the engine
        drains, reads are still answered and ``/readyz`` says 503.
        """
        self._ended = False
        self.holds.reopen()
        if sniffio.current_async_library() == "trio":
            engine: errands.Engine | None = None
            try:
                async with errands.open_engine(
                    self.service, backend=self._backend, options=self.options
                ) as client:
                    engine = client.engine
                    self.current = LocalEngine(engine)
                    try:
                        yield
                    finally:
                        self._stopping()
            except BaseException:
                if engine is not None and not engine.health.alive:
                    self._died(engine.health.died_of or "unknown")
                raise
            finally:
                self.current = None
            return
        import anyio.to_thread

        sync_client = await anyio.to_thread.run_sync(self._start_thread_engine)
        self.current = ThreadedEngine(sync_client)
        try:
            yield
        finally:
            self._stopping()
            try:
                await anyio.to_thread.run_sync(sync_client.close)
            finally:
                self.current = None

    def _stopping(self) -> None:
        self.drain()
        self._ended = True

    def _start_thread_engine(self) -> errands.SyncClient:
        client = errands.start(self.service, backend=self._backend, options=self.options)
        client.on_death = self._died
        return client

    def _died(self, reason: str) -> None:
        """An engine bug ended the engine: every route answers 503, /livez too."""
        self._died_of = reason
        self._ended = True
        log.critical("the errands engine died (%s); answering 503", reason)
        if self.on_death is not None:
            self.on_death(reason)

    @property
    def alive(self) -> bool:
        """False once an engine bug ended the engine."""
        return self._died_of is None

    def access(self) -> EngineAccess:
        """The running engine (see :meth:`start_if_needed` to start it).

        Raises:
            HTTPError: 503 when it is not running.
        """
        if self.current is not None:
            return self.current
        if self._ended:
            raise engine_closed("the engine has stopped", state="stopped")
        raise engine_closed("the engine is not started", state="starting")

    async def start_if_needed(self) -> EngineAccess:
        """:meth:`access`, starting the engine first (in a worker thread, so the
        server's loop never blocks) when nobody ran the lifespan."""
        if self.current is not None or self._ended:
            return self.access()
        import anyio.to_thread

        await anyio.to_thread.run_sync(self._autostart)
        return self.access()

    def _autostart(self) -> None:
        with self._autostart_lock:
            if self.current is None and not self._ended:
                log.info("no lifespan reached errands; starting its engine on first request")
                self._autostarted = self._start_thread_engine()
                self.current = ThreadedEngine(self._autostarted)

    def drain(self) -> None:
        """Answer every held request now, and hold no new one (see ``ErrandsApp.drain``)."""
        self.holds.drain()

    def close(self) -> None:
        """Stop an engine that was started by a first request (idempotent)."""
        self.drain()
        self._ended = True
        client, self._autostarted = self._autostarted, None
        if client is not None:
            self.current = None
            client.close()

    def liveness(self) -> Answer:
        """``/livez``: 200 unless an engine bug ended the engine."""
        if self._died_of is not None:
            raise engine_closed("the engine died", state="dead")
        return json_answer(200, {"status": "ok"})

    async def readiness(self) -> Answer:
        """``/readyz``: 200 while the engine takes work; 503 with a ``state``
        otherwise.  Mounted where nobody ran the lifespan, it starts the
        engine (and the service's ``__init__``) and answers once it is up."""
        if self._died_of is not None:
            raise engine_closed("the engine died", state="dead")
        if self._ended:
            raise engine_closed("the engine has stopped", state="stopped")
        if self.current is None:
            await self.start_if_needed()
        access = self.current
        if access is not None:
            stats = access.engine.statistics()
            if not stats.ready:
                if stats.storage_error is not None:
                    # The detail (it may name files) is in the server's log only.
                    raise storage_unavailable("storage is failing; the engine retries")
                raise engine_closed(f"the engine is {stats.state}", state=stats.state)
        return json_answer(200, {"status": "ok"})
