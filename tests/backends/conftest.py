"""The backends every conformance test runs against.  A new backend adds a
factory here and must pass the whole suite unchanged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from errands import Backend
from errands.backends import DiskCacheBackend, MemoryBackend


def _redis(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    from errands.backends.redis import RedisBackend

    url = request.getfixturevalue("redis_url")  # skipped, loudly, without redis-server
    return RedisBackend(url, prefix=f"t{uuid.uuid4().hex[:12]}")


FACTORIES: dict[str, Callable[[Path, pytest.FixtureRequest], Backend]] = {
    "memory": lambda tmp_path, request: MemoryBackend(),
    "diskcache": lambda tmp_path, request: DiskCacheBackend(tmp_path / "errands-data"),
    "redis": _redis,
}


@pytest.fixture(params=sorted(FACTORIES))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = FACTORIES[request.param](tmp_path, request)
    await made.open()
    try:
        yield made
    finally:
        await made.aclose()


#: The backends that start a task in its submit's write
#: (``Backend.starts_on_enqueue``); Redis keeps the dispatcher's path
#: (docs/decisions.md), and the tests of the default cover it.
STARTING = ["diskcache", "memory"]


@pytest.fixture(params=STARTING)
async def starting_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    made = FACTORIES[request.param](tmp_path, request)
    assert made.starts_on_enqueue, f"{request.param} no longer starts on enqueue"
    await made.open()
    try:
        yield made
    finally:
        await made.aclose()
