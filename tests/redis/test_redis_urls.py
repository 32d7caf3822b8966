"""Redis backend URLs: prefixes, credentials, Unix sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import errands
from errands import BackendError
from errands.backends.redis import RedisBackend
from tests.tools import redis_server

from .redis_service import svc


def test_the_prefix_and_credentials_come_from_the_url_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = RedisBackend("redis://127.0.0.1:6390/2?prefix=shop")
    assert backend.prefix == "shop"
    assert "prefix" not in backend.url
    assert RedisBackend("redis://127.0.0.1:6390/2").prefix == "errands"
    monkeypatch.setenv("ERRANDS_REDIS_PASSWORD", "s3cret")
    made = RedisBackend("redis://127.0.0.1:6390/0")
    assert made._connection.client.connection_pool.connection_kwargs["password"] == "s3cret"
    given = RedisBackend("redis://user:pw@127.0.0.1:6390/0")
    assert given._connection.client.connection_pool.connection_kwargs["password"] == "pw"
    assert "pw" not in repr(given)
    with pytest.raises(BackendError, match="prefix"):
        RedisBackend("redis://127.0.0.1/0?prefix=a:b")
    found = errands.open_engine  # the scheme resolves through the registry
    assert found is not None
    from errands._registry import resolve_backend

    assert isinstance(resolve_backend("rediss://127.0.0.1:6390/0"), RedisBackend)
    assert isinstance(resolve_backend("redis://127.0.0.1:6390/0?prefix=x"), RedisBackend)


async def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", unix=True) as url:
        assert url.startswith("unix://")
        async with errands.open_engine(svc, backend=f"{url}&prefix=sock") as client:
            task = await client.record.submit(n=4)
            with trio.fail_after(20):
                await task.wait()
            assert await task.get() == 8
