"""Which writes of the disk backend's database thread wait for an fsync, and
which share the commit of the next submit (``backends/_database.py``,
``Flush``).  Counted by the thread itself (``Database.commits`` and
``Database.synced``); power loss itself cannot be tested here."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import outcome
import pytest
import trio
import trio.testing

from errands import BackendError
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
        await db.run(_insert("awaited"), flush=Flush.AWAITED)
        assert (db.commits, db.synced) == (4, 3)
        await db.run(lambda conn: conn.execute("SELECT 1").fetchone(), write=False)
        assert (db.commits, db.synced) == (4, 3)  # a read commits nothing
    finally:
        await db.aclose()
    assert _rows(tmp_path / "t.db") == ["awaited", "lazy", "now", "soon"]


async def test_normal_never_fsyncs(tmp_path: Path) -> None:
    db = Database(tmp_path / "t.db", setup=_setup, synchronous="NORMAL")
    await db.open()
    try:
        for flush in Flush:
            await db.run(_insert(flush.value), flush=flush)
        assert (db.commits, db.synced) == (len(Flush), 0)
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


async def test_an_awaited_write_is_not_held_and_takes_the_held_along(
    db: Database, tmp_path: Path
) -> None:
    """An end someone waits on: committed at once, fsynced, with what was
    held; and not a submit: what comes after it is still held for the next
    submit, as before it."""
    await db.run(_insert("submit 1"))
    await db.run(_insert("submit 2"))
    gap = db._gap
    before = (db.commits, db.synced)
    with trio.fail_after(10):  # held, it would wait a minute
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: db.run(_insert("claim"), flush=Flush.LAZY))
            await trio.testing.wait_all_tasks_blocked()
            await db.run(_insert("waited end"), flush=Flush.AWAITED)
    assert (db.commits - before[0], db.synced - before[1]) == (1, 1)
    assert db._gap == gap  # the rhythm of the submits is unchanged
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: db.run(_insert("finish"), flush=Flush.SOON))
        with trio.fail_after(10):  # still held for the next submit
            while len(db._held) != 1:
                await trio.sleep(0.001)
        await db.run(_insert("submit 3"))
    assert (db.commits - before[0], db.synced - before[1]) == (2, 2)
    assert _rows(tmp_path / "t.db") == [
        "claim", "finish", "submit 1", "submit 2", "submit 3", "waited end"
    ]  # fmt: skip


async def test_expedite_commits_what_is_held_at_once(db: Database, tmp_path: Path) -> None:
    """For a caller that waits on a held write (an end someone waits on):
    the held writes commit now, fsynced, in one commit, not at the next submit."""
    await db.run(_insert("submit 1"))
    await db.run(_insert("submit 2"))
    before = (db.commits, db.synced)
    with trio.fail_after(10):  # held, they would wait a minute
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: db.run(_insert("claim"), flush=Flush.LAZY))
            nursery.start_soon(lambda: db.run(_insert("finish"), flush=Flush.SOON))
            await trio.testing.wait_all_tasks_blocked()
            db.expedite()
    assert (db.commits - before[0], db.synced - before[1]) == (1, 1)
    assert _rows(tmp_path / "t.db") == ["claim", "finish", "submit 1", "submit 2"]
    await db.aclose()
    db.expedite()  # closed: nothing held, nothing raised


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


async def test_call_soon_answers_on_the_trio_thread_once_durable(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``call_soon``: a write queued without a coroutine waiting; its
    callback runs on the trio thread once the commit is fsynced, with the
    call's outcome (an error as BackendError); held like ``run``'s writes
    of the same flush; a callback that raises is logged, and the others are
    still told."""
    told: list[tuple[object, int, bool, list[str]]] = []
    done = trio.Event()

    def callback(result: outcome.Outcome[object]) -> None:
        value: object = result.unwrap() if isinstance(result, outcome.Value) else result.error
        told.append((value, threading.get_ident(), db.synced >= 1, _rows(tmp_path / "t.db")))
        done.set()

    def insert_and_answer(conn: sqlite3.Connection) -> str:
        _insert("soon")(conn)
        return "stored"

    db.call_soon(insert_and_answer, flush=Flush.NOW, callback=callback)
    with trio.fail_after(10):
        await done.wait()
    assert told == [("stored", threading.get_ident(), True, ["soon"])]

    def broken(conn: sqlite3.Connection) -> None:
        raise ValueError("no")

    done = trio.Event()
    db.call_soon(broken, flush=Flush.NOW, callback=callback)
    with trio.fail_after(10):
        await done.wait()
    error = told[-1][0]
    assert isinstance(error, BackendError) and isinstance(error.__cause__, ValueError)

    # A SOON write is held for the next submit's commit, as with run().
    await db.run(_insert("submit 1"))
    await db.run(_insert("submit 2"))
    before = db.commits
    done = trio.Event()
    db.call_soon(_insert("end"), flush=Flush.SOON, callback=callback)
    with trio.fail_after(10):
        while len(db._held) != 1:
            await trio.sleep(0.001)
    assert not done.is_set()
    await db.run(_insert("submit 3"))
    with trio.fail_after(10):
        await done.wait()
    assert db.commits - before == 1
    assert "end" in told[-1][3]

    def raises(result: object) -> None:
        raise RuntimeError("a bug")

    done = trio.Event()
    db.call_soon(_insert("x"), flush=Flush.NOW, callback=raises)
    db.call_soon(_insert("y"), flush=Flush.NOW, callback=callback)
    with trio.fail_after(10):
        await done.wait()
    assert "a callback of a database call failed" in caplog.text
    assert {"x", "y"} <= set(told[-1][3])


# ---------------------------------------------------------------------- how a batch runs


def _traced(statements: list[str]):  # type: ignore[no-untyped-def]
    """A setup that also records every statement the connection runs."""

    def setup(conn: sqlite3.Connection) -> None:
        _setup(conn)
        conn.set_trace_callback(statements.append)

    return setup


async def _one_batch(db: Database, calls: list[tuple[object, dict[str, object]]]) -> list[object]:
    """Run ``calls`` ((fn, keywords of run)) in one transaction of ``db``:
    queued while a first call holds the database thread, so that the thread
    takes them all at once when it lets go.  Each call's result, or the
    exception it raised."""
    holding = threading.Event()
    release = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        holding.set()
        release.wait(10)

    results: list[object] = [None] * len(calls)

    async def run(index: int, fn: object, keywords: dict[str, object]) -> None:
        try:
            results[index] = await db.run(fn, **keywords)  # type: ignore[arg-type]
        except Exception as exc:
            results[index] = exc

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run, hold)
            await trio.to_thread.run_sync(holding.wait)
            for index, (fn, keywords) in enumerate(calls):
                nursery.start_soon(run, index, fn, keywords)
                await trio.testing.wait_all_tasks_blocked()  # queued in this order
            release.set()
    return results


async def test_the_calls_of_a_batch_run_without_savepoints(tmp_path: Path) -> None:
    """A savepoint per call made SQLite copy every page a call changed into
    its statement journal: a batch whose calls all succeed takes none."""
    statements: list[str] = []
    db = Database(tmp_path / "t.db", setup=_traced(statements))
    await db.open()
    try:
        statements.clear()
        results = await _one_batch(db, [(_insert(x), {}) for x in ("a", "b", "c")])
        assert results == [None, None, None]
        assert db.commits == 2  # the holding call's, then the three's
    finally:
        await db.aclose()
    assert not [s for s in statements if "SAVEPOINT" in s or "ROLLBACK" in s]
    assert _rows(tmp_path / "t.db") == ["a", "b", "c"]


async def test_a_failed_write_is_undone_alone_and_the_others_commit_once(
    tmp_path: Path,
) -> None:
    """A write that fails undoes only itself: the batch is rolled back and
    run again, each call in its own savepoint; what the others wrote is
    committed once, and each caller hears back once."""
    statements: list[str] = []
    db = Database(tmp_path / "t.db", setup=_traced(statements))
    await db.open()
    runs: list[str] = []

    def counted(value: str):  # type: ignore[no-untyped-def]
        def insert(conn: sqlite3.Connection) -> str:
            runs.append(value)
            _insert(value)(conn)
            return value

        return insert

    def fails(conn: sqlite3.Connection) -> None:
        runs.append("fails")
        _insert("never")(conn)
        raise ValueError("a bad call")

    def reads(conn: sqlite3.Connection) -> int:
        return _count(conn)

    try:
        statements.clear()
        results = await _one_batch(
            db,
            [
                (counted("a"), {}),
                (fails, {}),
                (reads, {"write": False}),
                (counted("b"), {"flush": Flush.SOON}),
            ],
        )
        assert results[0] == "a"
        assert isinstance(results[1], BackendError) and "a bad call" in str(results[1])
        assert results[2] == 1  # "a" before it; never what the failed call wrote
        assert results[3] == "b"
        # Ran together until the failure, then again apart.
        assert runs == ["a", "fails", "a", "fails", "b"]
        assert sum("SAVEPOINT" in s for s in statements) == 3  # one per write, the second time
        with trio.fail_after(10):
            assert await db.run(_count, write=False) == 2
    finally:
        await db.aclose()
    assert _rows(tmp_path / "t.db") == ["a", "b"]
