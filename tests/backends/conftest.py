"""The backends every conformance test runs against.  A new backend adds a
factory here and must pass the whole suite unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from errands import Backend
from errands.backends import DiskCacheBackend, MemoryBackend

FACTORIES: dict[str, Callable[[Path], Backend]] = {
    "memory": lambda tmp_path: MemoryBackend(),
    "diskcache": lambda tmp_path: DiskCacheBackend(tmp_path / "errands-data"),
}


@pytest.fixture(params=sorted(FACTORIES))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = FACTORIES[request.param](tmp_path)
    await made.open()
    try:
        yield made
    finally:
        await made.aclose()
