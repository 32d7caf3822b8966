"""The backends every conformance test runs against.  A new backend adds a
factory here and must pass the whole suite unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from errands import Backend
from errands.backends import MemoryBackend

FACTORIES: dict[str, Callable[[object], Backend]] = {
    "memory": lambda tmp_path: MemoryBackend(),
}


@pytest.fixture(params=sorted(FACTORIES))
async def backend(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[Backend]:
    made = FACTORIES[request.param](tmp_path)
    await made.open()
    try:
        yield made
    finally:
        await made.aclose()
