"""How the ASGI app reaches its engine, whatever loop the server runs.

* Under a trio server (hypercorn's trio worker), the engine runs in the
  server's own loop: calls are plain awaits (:class:`LocalEngine`).
* Under an asyncio server (uvicorn, hypercorn's asyncio worker, a Starlette or
  FastAPI host), the engine runs in its own trio thread (``errands.start``) and
  each call crosses over without blocking a thread: it is started in the
  engine thread, and its outcome comes back through the host loop's
  thread-safe callback, one wake-up of that loop per burst of outcomes
  (:class:`ThreadedEngine`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import outcome
import sniffio
import trio

from errands import Engine, SyncClient

__all__ = ["BridgedEngine", "EngineAccess", "LocalEngine", "ThreadedEngine"]

T = TypeVar("T")


class EngineAccess(Protocol):
    """The app's view of its engine."""

    engine: Engine

    async def call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` (a method of :attr:`engine`) where the engine lives."""
        ...


class LocalEngine:
    """The engine runs in the caller's trio loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await afn(*args)


class _Returns:
    """Outcomes on their way back to one asyncio loop: the engine thread
    wakes that loop once per burst of them, not once each (every
    ``call_soon_threadsafe`` writes to the loop's wake-up socket, and each
    wake-up is a switch of threads and of the GIL)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._waiting: list[tuple[Callable[[Any], None], Any]] = []

    def put(self, settle: Callable[[Any], None], result: Any) -> None:
        """From the engine thread: ``settle(result)`` soon, in the loop."""
        with self._lock:
            self._waiting.append((settle, result))
            if len(self._waiting) > 1:
                return  # a wake-up is on its way and will take this one too
        try:
            self._loop.call_soon_threadsafe(self._settle_all)
        except RuntimeError:
            pass  # the host loop is closed; nobody is waiting

    def _settle_all(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for settle, result in waiting:
            settle(result)


class ThreadedEngine:
    """The engine runs in its own trio thread; calls come from any loop."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self.engine = client.engine
        self._returns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Returns] = (
            weakref.WeakKeyDictionary()
        )

    async def call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if sniffio.current_async_library() == "trio":
            return await self._from_trio(afn, *args)
        return await self._from_asyncio(afn, *args)

    async def _from_asyncio(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        returns = self._returns.get(loop)
        if returns is None:
            returns = self._returns.setdefault(loop, _Returns(loop))
        future: asyncio.Future[outcome.Outcome[T]] = loop.create_future()

        def settle(result: outcome.Outcome[T]) -> None:
            if not future.done():
                future.set_result(result)

        def deliver(result: outcome.Outcome[T]) -> None:
            returns.put(settle, result)

        cancel = self.client.call_soon(afn, *args, deliver=deliver)
        try:
            result = await future
        except asyncio.CancelledError:
            cancel()
            raise
        return result.unwrap()

    async def _from_trio(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def deliver(result: outcome.Outcome[T]) -> None:
            box.append(result)
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        cancel = self.client.call_soon(afn, *args, deliver=deliver)
        try:
            await done.wait()
        except trio.Cancelled:
            cancel()
            raise
        return box[0].unwrap()


class BridgedEngine:
    """An engine seen from the host's loop: its async methods run where the
    engine lives (through :meth:`EngineAccess.call`), everything else is the
    engine's own.  An :class:`errands.AsyncClient` over it gives the host's
    code the handles ``open_engine`` gives, under asyncio or trio."""

    def __init__(self, access: EngineAccess) -> None:
        self._access = access
        self._engine = access.engine

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._engine, name)
        if not inspect.iscoroutinefunction(value):
            return value
        access = self._access

        async def crossing(*args: Any, **kwargs: Any) -> Any:
            return await access.call(functools.partial(value, *args, **kwargs))

        return crossing
