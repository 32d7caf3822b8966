"""One SQLite connection on its own thread, with group commit.

Every call is a function of the connection, run on the database thread.  The
thread takes whatever calls are waiting, runs them in **one** transaction
(each in its own savepoint, so one failing call undoes only itself), commits
once, and hands every result back to its trio run in one callback.  Under load
many writes share one commit (and one fsync); idle, a call costs one
transaction.  The trio side never blocks: callers park on an event.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import outcome
import trio

from errands import BackendError

__all__ = ["Database"]

T = TypeVar("T")
#: The most calls one transaction takes; more wait for the next.
MAX_BATCH = 512


class _Call(Generic[T]):
    __slots__ = ("done", "fn", "result", "token", "write")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> None:
        self.fn = fn
        self.write = write
        self.result: outcome.Outcome[T] | None = None
        self.done = trio.Event()
        self.token = trio.lowlevel.current_trio_token()


class Database:
    """A SQLite database file served by one thread (see the module docstring).

    Args:
        path: the database file (created if missing).
        setup: run once on the new connection, in a transaction (schema).
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` survives power
            loss in WAL mode, ``NORMAL`` only process crashes.
    """

    def __init__(
        self,
        path: Path,
        *,
        setup: Callable[[sqlite3.Connection], None],
        synchronous: str = "FULL",
    ) -> None:
        self.path = path
        self._setup = setup
        self._synchronous = synchronous
        self._calls: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the thread and prepare the database; raises BackendError if unusable."""
        self._thread = threading.Thread(target=self._main, name="errands-sqlite", daemon=True)
        self._thread.start()
        await trio.to_thread.run_sync(self._started.wait)
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            await trio.to_thread.run_sync(self._thread.join)
            self._thread = None
            raise error

    async def aclose(self) -> None:
        """Finish the calls already queued, then stop the thread."""
        if self._thread is None:
            await trio.lowlevel.checkpoint()
            return
        self._calls.put(None)
        thread, self._thread = self._thread, None
        await trio.to_thread.run_sync(thread.join)

    # ------------------------------------------------------------------ calls

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        """Run ``fn(connection)`` in the next transaction and return its result.

        Blocks (parks) until that transaction committed.  A caller cancelled
        before the call is queued changes nothing; cancelled while it waits,
        the call still happens and its result is dropped.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: do nothing
        if self._thread is None:
            raise BackendError(f"database {self.path} is not open")
        call = _Call(fn, write)
        self._calls.put(call)
        await call.done.wait()
        assert call.result is not None
        return call.result.unwrap()

    # ------------------------------------------------------------------ the thread

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._setup(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise BackendError(f"{self.path} is not a usable errands database: {exc}") from exc
        return conn

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while True:
                first = self._calls.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._calls.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Call[Any]]) -> None:
        write = any(call.write for call in batch)
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            for call in batch:
                if call.write:
                    conn.execute("SAVEPOINT call")
                    try:
                        call.result = outcome.Value(call.fn(conn))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO call")
                        call.result = outcome.Error(exc)
                    conn.execute("RELEASE call")
                else:
                    call.result = outcome.capture(call.fn, conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = BackendError(f"database {self.path} failed: {exc}")
            for call in batch:
                call.result = outcome.Error(error)
        self._deliver(batch)

    @staticmethod
    def _deliver(batch: list[_Call[Any]]) -> None:
        by_run: dict[trio.lowlevel.TrioToken, list[_Call[Any]]] = {}
        for call in batch:
            by_run.setdefault(call.token, []).append(call)
        for token, calls in by_run.items():
            try:
                token.run_sync_soon(_wake_all, calls)
            except trio.RunFinishedError:
                pass  # that trio run is gone; nobody waits for these results


def _wake_all(calls: list[_Call[Any]]) -> None:
    for call in calls:
        call.done.set()
