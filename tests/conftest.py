from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from tests.tools import redis_server

#: A fixed epoch plus trio's clock: stored timestamps follow MockClock in tests.
EPOCH = 1_800_000_000.0


def trio_wall() -> float:
    """A wall clock driven by ``trio.current_time()`` (so autojump moves it too)."""
    return EPOCH + trio.current_time()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the session's Redis tests (each test uses its own prefix)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
