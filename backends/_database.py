"""One SQLite connection on its own thread, with group commit.

Every call is a function of the connection, run on the database thread.  The
thread takes whatever calls are waiting, runs them in **one** transaction
(each in its own savepoint, so one failing call undoes only itself), commits
once, and hands every result back to its trio run in one callback.  Under load
many writes share one commit (and one fsync); idle, a call costs one
transaction.  The trio side never blocks: callers park on an event.

Whatever goes wrong reaches the caller as :class:`errands.BackendError` (the
original error as its ``__cause__``): an error raised by a call undoes that
call only; a failed statement of the transaction itself (``COMMIT`` on a full
disk) fails every call of the batch.  If even the rollback fails, the
connection is closed (which discards the transaction) and a new one is opened
for the next batch.  Should the thread end for any other reason, the calls
waiting and every later one fail at once: nobody waits forever.

The database file and its ``-wal`` and ``-shm`` files are private (0600):
SQLite gives the latter two the mode of the database file, which is created,
or tightened, before SQLite opens it.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import outcome
import trio

from errands import BackendError

__all__ = ["Database", "private_directory", "private_file"]

log = logging.getLogger("errands.backends")

T = TypeVar("T")
#: The most calls one transaction takes; more wait for the next.
MAX_BATCH = 512


def private_directory(path: Path) -> None:
    """Create the directory ``path`` (and its missing parents) and make it 0700.

    An existing directory that others may enter is tightened, with a warning.
    Raises OSError.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode != 0o700:
        if mode & 0o077:
            log.warning("made %s private (its mode was %s, now 0o700)", path, oct(mode))
        os.chmod(path, 0o700)


def private_file(path: Path, *, create: bool = True) -> None:
    """Create the regular file ``path`` if missing (and ``create``), and make it 0600.

    A symbolic link is refused (never followed), so a link planted in place of a
    data file cannot make us change the mode of another file.  Raises OSError.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        if create:
            raise
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _failure(what: str, exc: BaseException) -> BackendError:
    """``exc`` as a BackendError (itself, if it is one already)."""
    if isinstance(exc, BackendError):
        return exc
    error = BackendError(f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class _TransactionLost(Exception):
    """A call failed and SQLite rolled back the whole transaction with it."""


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
        path: the database file (created if missing, private: 0600).
        setup: run once on each new connection, in a transaction (schema).
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
        #: Guards ``_ended``: once the thread has ended, no call is queued.
        self._lock = threading.Lock()
        self._ended: BackendError | None = None
        #: Set by ``_run_batch`` when the connection must be replaced.
        self._broken = False
        #: The batch being run, for the thread's last words.
        self._batch: list[_Call[Any]] = []

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the thread and prepare the database; raises BackendError if unusable."""
        self._calls = queue.SimpleQueue()
        self._ended = None
        self._started.clear()
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

        Raises:
            BackendError: for anything that went wrong, ``fn``'s own errors
                included (the original error is the ``__cause__``); also when
                the database is not open or its thread has ended.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: do nothing
        call = _Call(fn, write)
        with self._lock:
            if self._thread is None:
                raise BackendError(f"database {self.path} is not open")
            ended = self._ended
            if ended is None:
                self._calls.put(call)
        if ended is not None:
            # A new error each time: one shared instance would grow a traceback per raise.
            raise BackendError(str(ended)) from ended.__cause__
        await call.done.wait()
        assert call.result is not None
        return call.result.unwrap()

    # ------------------------------------------------------------------ the thread

    def _connect(self) -> sqlite3.Connection:
        try:
            # Created (or tightened) private before SQLite opens it; SQLite
            # gives its -wal and -shm files the same mode when it creates them.
            private_file(self.path)
            for suffix in ("-wal", "-shm"):
                private_file(self.path.with_name(self.path.name + suffix), create=False)
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
        except Exception as exc:
            raise _failure(f"cannot open the database {self.path}", exc) from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            self._setup(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            conn.close()  # discards the transaction, if one is open
            if isinstance(exc, sqlite3.DatabaseError):
                raise BackendError(f"{self.path} is not a usable errands database: {exc}") from exc
            if isinstance(exc, Exception):
                raise _failure(f"{self.path} is not a usable errands database", exc) from exc
            raise
        return conn

    def _main(self) -> None:
        try:
            conn: sqlite3.Connection | None = self._connect()
        except BaseException as exc:
            self._start_error = _failure(f"cannot open the database {self.path}", exc)
            self._started.set()
            with self._lock:
                self._ended = BackendError(f"database {self.path} is not open")
            return
        self._started.set()
        try:
            self._serve(conn)
        except BaseException as exc:  # a bug: report it to every caller, and log it
            log.error("the database thread of %s stopped", self.path, exc_info=True)
            ended = _failure(f"the database thread of {self.path} stopped", exc)
        else:
            ended = BackendError(f"database {self.path} is closed")
        # No call is queued after this; every call still waiting fails now.
        with self._lock:
            self._ended = ended
        waiting = self._batch  # interrupted: nothing of it was committed nor delivered
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                waiting.append(call)
        for call in waiting:
            call.result = outcome.Error(ended)
        self._deliver(waiting)

    def _serve(self, conn: sqlite3.Connection | None) -> None:
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
                self._batch = batch
                if conn is None:
                    try:
                        conn = self._connect()
                    except BackendError as exc:
                        for call in batch:
                            call.result = outcome.Error(exc)
                        self._deliver(batch)
                if conn is not None:
                    self._run_batch(conn, batch)
                    if self._broken:
                        self._broken = False
                        conn.close()  # discards what the failed rollback left open
                        conn = None
                self._batch = []
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()  # an open transaction is discarded

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
                        if not conn.in_transaction:  # SQLite rolled it all back (a full disk)
                            raise _TransactionLost from exc
                        call.result = outcome.Error(_failure(f"database {self.path}", exc))
                        conn.execute("ROLLBACK TO call")
                    conn.execute("RELEASE call")
                else:
                    try:
                        call.result = outcome.Value(call.fn(conn))
                    except Exception as exc:
                        call.result = outcome.Error(_failure(f"database {self.path}", exc))
            conn.execute("COMMIT")
        except (sqlite3.Error, _TransactionLost) as exc:
            cause = exc.__cause__ if isinstance(exc, _TransactionLost) else exc
            error = BackendError(f"database {self.path} failed: {type(cause).__name__}: {cause}")
            error.__cause__ = cause
            for call in batch:
                call.result = outcome.Error(error)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except Exception:
                log.warning("rolling back in %s failed; reconnecting", self.path, exc_info=True)
                self._broken = True
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
