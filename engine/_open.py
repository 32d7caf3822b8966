"""``open_engine``: run an engine for the duration of an ``async with`` block."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import sniffio
import trio

from ._backend import Backend
from ._client import AsyncClient
from ._define import as_service
from ._engine import Engine
from ._errors import ErrandsError
from ._options import DEFAULTS, EngineOptions
from ._registry import resolve_backend

__all__ = ["build_options", "open_engine"]


def build_options(options: EngineOptions | None, **separate: Any) -> EngineOptions:
    """The options of a call that takes either ``options=`` or separate keywords."""
    if options is None:
        return EngineOptions(**separate)
    given = sorted(k for k, v in separate.items() if v != getattr(DEFAULTS, k))
    if given:
        raise TypeError(f"pass either options= or separate options, not both ({', '.join(given)})")
    return options


def _require_trio() -> None:
    """open_engine runs under trio: from another loop, name what to use instead."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library != "trio":
        raise ErrandsError(
            f"errands.open_engine() runs under trio, and this is {library or 'not async code'}: "
            "from asyncio, Jupyter, threads or plain scripts use `errands.start(service)` "
            "(an engine in its own thread, with a sync client), or errands.AsyncHTTPClient "
            "against an errands server"
        )


@asynccontextmanager
async def open_engine(
    service: object,
    *,
    backend: Backend | str | None = None,
    ttl: float = DEFAULTS.ttl,
    lease: float = DEFAULTS.lease,
    workers: int = DEFAULTS.workers,
    grace: float = DEFAULTS.grace,
    max_attempts: int = DEFAULTS.max_attempts,
    sweep_interval: float = DEFAULTS.sweep_interval,
    clock: Callable[[], float] = DEFAULTS.clock,
    options: EngineOptions | None = None,
) -> AsyncIterator[AsyncClient]:
    """Run an engine for ``service`` and yield its async client.

    Args:
        service: an ``errands.Service`` or an ``@errands.service`` class.
        backend: a backend object, a URL (``memory://``, ``diskcache:///path``),
            or None for a new memory backend.
        ttl, lease, workers, grace, max_attempts, sweep_interval, clock: see
            :class:`~errands.EngineOptions`.
        options: all of those as one :class:`~errands.EngineOptions` instead.

    Raises:
        ValueError: an option is out of range (the message names it).
        TypeError: both ``options`` and a separate option were given.
    """
    _require_trio()
    options = build_options(
        options,
        ttl=ttl,
        lease=lease,
        workers=workers,
        grace=grace,
        max_attempts=max_attempts,
        sweep_interval=sweep_interval,
        clock=clock,
    )
    engine = Engine(as_service(service), backend=resolve_backend(backend), options=options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(engine.serve)
            try:
                yield AsyncClient(engine)
            finally:
                engine.stop()  # not aclose(): it must happen even when we are cancelled
    except BaseExceptionGroup as group:
        # One error (from the caller's block, or from starting the engine)
        # comes out as itself, so ``except KeyError:`` around the block works.
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            error = group.exceptions[0]
            raise error from error.__cause__
        raise
