"""Storage faults in the diskcache backend arrive as ``BackendError`` (the raw
error kept as ``__cause__``), never kill its database thread, and never leave
a caller waiting forever."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from errands import BackendError
from errands.backends._database import Database

pytestmark = pytest.mark.realtime


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    made = Database(tmp_path / "t.db", setup=_setup)
    await made.open()
    try:
        yield made
    finally:
        with trio.fail_after(10):
            await made.aclose()


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])


def _insert(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO t VALUES (1)")


@pytest.mark.parametrize("write", [True, False])
@pytest.mark.parametrize(
    "raw",
    [
        OSError(28, "No space left on device"),
        sqlite3.OperationalError("database or disk is full"),
        ValueError("a bug, reported and not swallowed"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_errors_of_a_call_arrive_as_backend_error(
    db: Database, raw: Exception, write: bool
) -> None:
    def fails(conn: sqlite3.Connection) -> None:
        if write:
            _insert(conn)
        raise raw

    with trio.fail_after(10), pytest.raises(BackendError) as caught:
        await db.run(fails, write=write)
    assert caught.value.__cause__ is raw
    assert type(raw).__name__ in str(caught.value) and str(raw) in str(caught.value)
    with trio.fail_after(10):
        assert await db.run(_count) == 0  # undone, and the thread serves on
        await db.run(_insert)
        assert await db.run(_count, write=False) == 1


async def test_a_call_whose_error_lost_the_transaction_names_that_error(db: Database) -> None:
    """SQLite rolls back the whole transaction on some errors (a full disk):
    the batch fails, with the call's own error as the cause."""
    raw = OSError(27, "File too large")

    def loses(conn: sqlite3.Connection) -> None:
        _insert(conn)
        conn.execute("ROLLBACK")  # as SQLite does itself after SQLITE_FULL
        raise raw

    with trio.fail_after(10), pytest.raises(BackendError, match="File too large") as caught:
        await db.run(loses)
    assert caught.value.__cause__ is raw
    with trio.fail_after(10):
        assert await db.run(_count) == 0
        await db.run(_insert)
        assert await db.run(_count, write=False) == 1


async def test_a_backend_error_of_a_call_arrives_as_is(db: Database) -> None:
    error = BackendError("already ours")

    def fails(conn: sqlite3.Connection) -> None:
        raise error

    with trio.fail_after(10), pytest.raises(BackendError) as caught:
        await db.run(fails)
    assert caught.value is error


class _RollbackFails(sqlite3.Connection):
    """A connection whose next ``failures`` ROLLBACK statements fail."""

    failures = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("ROLLBACK") and _RollbackFails.failures > 0:
            _RollbackFails.failures -= 1
            raise sqlite3.OperationalError("injected: the rollback failed")
        return super().execute(sql, *args)


async def test_a_failing_rollback_does_not_kill_the_database_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        sqlite3, "connect", functools.partial(sqlite3.connect, factory=_RollbackFails)
    )
    db = Database(tmp_path / "t.db", setup=_setup)
    await db.open()
    try:

        def fails(conn: sqlite3.Connection) -> None:
            _insert(conn)
            raise OSError(5, "Input/output error")

        _RollbackFails.failures = 2  # ROLLBACK TO the call, then ROLLBACK of the batch
        with trio.fail_after(10), pytest.raises(BackendError):
            await db.run(fails)
        assert _RollbackFails.failures == 0
        with trio.fail_after(10):
            assert await db.run(_count) == 0  # the failed call's insert is gone
            await db.run(_insert)
            assert await db.run(_count, write=False) == 1
    finally:
        with trio.fail_after(10):
            await db.aclose()


async def test_a_dead_database_thread_fails_calls_instead_of_hanging(db: Database) -> None:
    def dies(conn: sqlite3.Connection) -> None:
        raise SystemExit("the thread ends")

    results: list[BaseException | None] = []

    async def call(fn: Any) -> None:
        try:
            await db.run(fn)
        except BaseException as exc:
            results.append(exc)
        else:
            results.append(None)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, dies)
            for _ in range(20):
                nursery.start_soon(call, _insert)
    assert len(results) == 21
    assert any(isinstance(r, BackendError) for r in results)
    assert all(r is None or isinstance(r, BackendError) for r in results)
    with trio.fail_after(10), pytest.raises(BackendError, match="stopped"):
        await db.run(_count)
