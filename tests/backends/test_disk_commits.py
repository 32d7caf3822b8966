"""Which writes of the disk backend's database thread wait for an fsync, and
which share the commit of the next submit (``backends/_database.py``,
``Flush``).  Counted by the thread itself (``Database.commits`` and
``Database.synced``); power loss itself cannot be tested here."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from errands.backends._database import Database, Flush

pytestmark = pytest.mark.realtime


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (x TEXT)")


def _insert(value: str):  # type: ignore[no-untyped-def]
    def insert(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (?)", (value,))

    return insert


def _rows(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in conn.execute("SELECT x FROM t"))
    finally:
        conn.close()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    # A hold far longer than any test takes: what is held waits for a submit.
    made = Database(tmp_path / "t.db", setup=_setup, max_hold=60.0)
    await made.open()
    try:
        yield made
    finally:
        with trio.fail_after(10):
            await made.aclose()


async def test_only_writes_that_must_be_durable_wait_for_an_fsync(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db", setup=_setup)
    await db.open()
    try:
        await db.run(_insert("lazy"), flush=Flush.LAZY)
        assert (db.commits, db.synced) == (1, 0)
        await db.run(_insert("now"))  # the default
        assert (db.commits, db.synced) == (2, 1)
        await db.run(_insert("soon"), flush=Flush.SOON)  # no submits coming: at once
        assert (db.commits, db.synced) == (3, 2)
        await db.run(lambda conn: conn.execute("SELECT 1").fetchone(), write=False)
        assert (db.commits, db.synced) == (3, 2)  # a read commits nothing
    finally:
        await db.aclose()
    assert _rows(tmp_path / "t.db") == ["lazy", "now", "soon"]


async def test_normal_never_fsyncs(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db", setup=_setup, synchronous="NORMAL")
    await db.open()
    try:
        for flush in Flush:
            await db.run(_insert(flush.value), flush=flush)
        assert (db.commits, db.synced) == (3, 0)
    finally:
        await db.aclose()


async def test_while_submits_come_the_other_writes_share_their_commit(
    db: Database, tmp_path: Path
) -> None:
    await db.run(_insert("submit 1"))
    await db.run(_insert("submit 2"))  # submits come one after another
    before = (db.commits, db.synced)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: db.run(_insert("claim"), flush=Flush.LAZY))
        nursery.start_soon(lambda: db.run(_insert("finish"), flush=Flush.SOON))
        await trio.testing.wait_all_tasks_blocked()
        # A read is not held back with them.
        assert await db.run(lambda conn: _count(conn), write=False) == 2
        await db.run(_insert("submit 3"))
    assert (db.commits - before[0], db.synced - before[1]) == (1, 1)
    assert _rows(tmp_path / "t.db") == ["claim", "finish", "submit 1", "submit 2", "submit 3"]


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])


async def test_held_writes_are_committed_when_the_database_closes(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db", setup=_setup, max_hold=60.0)
    await db.open()
    await db.run(_insert("submit 1"))
    await db.run(_insert("submit 2"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: db.run(_insert("finish"), flush=Flush.SOON))
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):
            await db.aclose()  # the held write is not left waiting: it commits first
    assert db.synced == 3
    assert _rows(tmp_path / "t.db") == ["finish", "submit 1", "submit 2"]


async def test_a_held_write_goes_on_its_own_when_no_submit_comes(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db", setup=_setup)  # the default hold: milliseconds
    await db.open()
    try:
        for n in range(5):
            await db.run(_insert(f"submit {n}"))
        with trio.fail_after(10):
            await db.run(_insert("finish"), flush=Flush.SOON)
            await db.run(_insert("claim"), flush=Flush.LAZY)
        assert db.synced == 6
    finally:
        await db.aclose()


async def test_committed_is_told_on_the_database_thread_once_durable(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``run(..., committed=)``: called with the call's result on the
    database thread, after the fsynced commit and before the caller hears
    back (a submit from another thread is answered from there); not for a
    call that failed; a callback that raises is logged, and the call's
    result comes back all the same."""
    told: list[tuple[object, bool, list[str]]] = []

    def committed(result: object) -> None:
        told.append((result, db.synced == 1, _rows(tmp_path / "t.db")))

    def insert_and_answer(conn: sqlite3.Connection) -> str:
        _insert("a")(conn)
        return "created"

    assert await db.run(insert_and_answer, committed=committed) == "created"
    assert told == [("created", True, ["a"])]

    def broken(conn: sqlite3.Connection) -> None:
        raise ValueError("no")

    with pytest.raises(Exception, match="no"):
        await db.run(broken, committed=committed)
    assert len(told) == 1

    def raises(result: object) -> None:
        raise RuntimeError("a bug")

    await db.run(_insert("b"), committed=raises)
    assert _rows(tmp_path / "t.db") == ["a", "b"]
    assert "a commit callback" in caplog.text
