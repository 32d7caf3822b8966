"""A thread's write and what follows its answer on the database thread.

``Database.call_from_thread(fn, answer, then=...)``: ``answer`` is called on
the database thread once the write is durable; ``then`` after it, once,
when it keeps the caller's next write waiting least: before the next
commit (whose fsync leaves the interpreter free), or once the thread has
nothing else to do.  What the engine does there is tell its loop about the
new task, which would otherwise take the interpreter from the submitter's
next write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import outcome
import pytest
import trio

from errands.backends._database import Database, Flush

pytestmark = pytest.mark.realtime


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (x TEXT)")


class _Log:
    """What happened, in order, from whichever thread (list.append is atomic)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.events: list[tuple[str, int, threading.Thread]] = []

    def note(self, what: str) -> None:
        self.events.append((what, self.db.commits, threading.current_thread()))

    def write(self, name: str, gate: threading.Event | None = None) -> Callable[..., str]:
        def fn(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t VALUES (?)", (name,))
            self.note(f"fn {name}")
            if gate is not None:
                assert gate.wait(10)
            return name

        return fn

    def answer(self, name: str) -> Callable[[outcome.Outcome[str]], None]:
        return lambda result: self.note(f"answer {name}")

    def then(self, name: str, done: threading.Event | None = None) -> Callable[[], None]:
        def then() -> None:
            self.note(f"then {name}")
            if done is not None:
                done.set()

        return then

    @property
    def order(self) -> list[str]:
        return [what for what, _, _ in self.events]

    def commits_at(self, what: str) -> int:
        return next(commits for seen, commits, _ in self.events if seen == what)


async def _opened(path: Path) -> Database:
    db = Database(path, setup=_setup)
    await db.open()
    return db


async def test_then_follows_the_answer_before_the_next_commit(tmp_path: Path) -> None:
    """A write that comes while the first runs: the first's ``then`` runs
    after its answer and after the second write's statements, before the
    second's commit; the second's ``then`` runs once nothing else comes."""
    db = await _opened(tmp_path / "t.db")
    log = _Log(db)
    gate, done = threading.Event(), threading.Event()
    try:
        db.call_from_thread(log.write("a", gate), log.answer("a"), then=log.then("a"))
        with trio.fail_after(10):
            while "fn a" not in log.order:
                await trio.sleep(0.001)
        # Queued while a's statements run: it goes in the next transaction.
        db.call_from_thread(log.write("b"), log.answer("b"), then=log.then("b", done))
        gate.set()
        assert await trio.to_thread.run_sync(done.wait, 10)
    finally:
        gate.set()
        with trio.fail_after(10):
            await db.aclose()
    assert log.order == ["fn a", "answer a", "fn b", "then a", "answer b", "then b"]
    # a's then ran with b's transaction open, not committed yet.
    assert log.commits_at("then a") == log.commits_at("answer a") == 1
    assert log.commits_at("answer b") == 2
    # All of it on the database thread.
    [thread] = {thread for _, _, thread in log.events}
    assert thread is not threading.current_thread()


async def test_then_runs_when_the_database_closes(tmp_path: Path) -> None:
    """A ``then`` still waiting for a next write when the database closes is
    run by the thread before it ends: nothing that follows an answer is
    dropped."""
    db = await _opened(tmp_path / "t.db")
    log = _Log(db)
    gate = threading.Event()
    db.call_from_thread(log.write("a", gate), log.answer("a"), then=log.then("a"))
    with trio.fail_after(10):
        while "fn a" not in log.order:
            await trio.sleep(0.001)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.aclose)
            await trio.sleep(0.01)  # the close is queued behind a
            gate.set()
    assert log.order == ["fn a", "answer a", "then a"]


async def test_a_failed_write_is_answered_and_followed_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails gets its error as the answer, and its ``then``
    still runs; a ``then`` that raises is logged, and the thread goes on."""
    db = await _opened(tmp_path / "t.db")
    log = _Log(db)
    done = threading.Event()

    def broken(conn: sqlite3.Connection) -> None:
        raise ValueError("no")

    def raises() -> None:
        raise RuntimeError("a bug")

    try:
        db.call_from_thread(broken, log.answer("broken"), then=raises)
        db.call_from_thread(log.write("c"), log.answer("c"), then=log.then("c", done))
        assert await trio.to_thread.run_sync(done.wait, 10)
    finally:
        with trio.fail_after(10):
            await db.aclose()
    assert log.order[-1] == "then c"
    assert {"answer broken", "answer c"} <= set(log.order)
    assert "what follows an answer of" in caplog.text


async def test_a_stored_end_nobody_waits_on_is_told_as_what_follows(tmp_path: Path) -> None:
    """``call_soon`` with ``Flush.SOON`` (a run's end nobody waits on): its
    callback reaches the trio run only after the next write's statements,
    right before that write's commit, not in between; with ``AWAITED``
    (someone waits) at once."""
    db = await _opened(tmp_path / "t.db")
    log = _Log(db)
    end_gate, c_gate = threading.Event(), threading.Event()
    told = trio.Event()

    def callback(result: outcome.Outcome[object]) -> None:
        log.note("end told")
        told.set()

    async def seen(what: str) -> None:
        with trio.fail_after(10):
            while what not in log.order:
                await trio.sleep(0.001)

    try:
        db.call_soon(log.write("end", end_gate), flush=Flush.SOON, callback=callback)
        await seen("fn end")
        db.call_from_thread(log.write("c", c_gate), log.answer("c"))
        end_gate.set()
        await seen("fn c")
        await trio.sleep(0.05)  # were it told at its commit, it would be by now
        assert not told.is_set()
        c_gate.set()
        with trio.fail_after(10):
            await told.wait()
        await seen("answer c")
        assert log.order == ["fn end", "fn c", "end told", "answer c"] or log.order == [
            "fn end",
            "fn c",
            "answer c",
            "end told",
        ]

        # Waited on: told once committed, whatever comes next.
        told = trio.Event()
        end_gate.clear()
        db.call_soon(log.write("waited", end_gate), flush=Flush.AWAITED, callback=callback)
        await seen("fn waited")
        c_gate.clear()
        db.call_from_thread(log.write("d", c_gate), log.answer("d"))
        end_gate.set()
        await seen("fn d")
        with trio.fail_after(10):
            await told.wait()
        assert "answer d" not in log.order
        c_gate.set()
        await seen("answer d")
    finally:
        end_gate.set()
        c_gate.set()
        with trio.fail_after(10):
            await db.aclose()
