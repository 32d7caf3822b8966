"""One SQLite connection on its own thread, with group commit.

Every call is a function of the connection, run on the database thread.  The
thread takes whatever calls are waiting, runs them in **one** transaction,
commits once, and hands every result back to its trio run in one callback.
Under load many writes share one commit (and one fsync); idle, a call costs
one transaction.  The trio side never blocks: callers park on an event.

A call that fails undoes only itself.  The calls of a batch run one after
another with nothing between them; should a write fail, the transaction is
rolled back and the batch runs again, each write in its own savepoint this
time (a savepoint per call, always, made SQLite copy every page a call
changed into its statement journal).  So a call may run twice: it must give
the same result from the same database, and whatever it does outside the
database must bear a repeat.

Whatever goes wrong reaches the caller as :class:`errands.BackendError` (the
original error as its ``__cause__``): an error raised by a call undoes that
call only; a failed statement of the transaction itself (``COMMIT`` on a full
disk) fails every call of the batch.  If even the rollback fails, the
connection is closed (which discards the transaction) and a new one is opened
for the next batch.  Should the thread end for any other reason, the calls
waiting and every later one fail at once: nobody waits forever.

**What waits for an fsync.**  With ``synchronous="FULL"`` a commit is
fsynced before its callers hear back, but not every write needs that.  Each
call says how durable it must be (:class:`Flush`): ``NOW`` (the default: a
submit, a cancel) is fsynced before its caller hears back; ``LAZY`` (a claim,
a start, a lease renewal: writes whose loss at a power cut only makes a task
run again) is committed without an fsync of its own, and the next fsync makes
it durable, since the WAL is written in order and an fsync covers every frame
before it; ``SOON`` (the end of a run) is fsynced before its caller hears
back, like ``NOW``.  While ``NOW`` calls come steadily (their usual gap,
a moving average, under ``max_hold``), ``LAZY`` and ``SOON`` writes are held,
uncommitted, until the next ``NOW`` call is due (twice the gap, at most
``max_hold``) and go in its transaction: a submitter that sends one submit
after another gets one commit and one fsync per task, not two or three.
An end that someone in this process waits on is not held (the engine says
so: ``Backend.finish(waited=True)`` makes it ``AWAITED``: fsynced, never
held, taking the held writes along, but not counted as a submit), and a
wait that begins while an end is held has the held writes committed at
once (:meth:`Database.expedite`): a caller that submits, waits, then submits
again sends its next submit only once its end is stored, so holding that
end for the next submit cost it the whole hold every task.
Reads are never held.  What a reader sees is always committed; a ``SOON``
write is seen only once it is durable.

**What follows an answer.**  A write from a plain thread (a script's
submit) is answered on this thread once durable; what the engine does next
(wake its loop, which adopts the task and runs it) is the call's ``then``,
run here later: right before the next commit, whose fsync leaves the
interpreter free, or once nothing else comes.  Run at once, that work took
the interpreter from the submitter's next write (this thread's statements
waited for the loop's Python), and the fsync that followed overlapped
nothing: one sequential submitter ran about 1,000 tasks/s, 1,250-1,350 with
the follow-ups after its next write.  ``then`` waits only while the threads
send their next write soon after an answer (twice their usual time, a
moving average, at most ``MAX_FOLLOW``); a thread that submits and then
waits for the task gets no such wait.  The run's end, once stored, is told
to the loop the same way (a ``SOON`` write of :meth:`call_soon`: an end
nobody waits on); an end someone waits on (``AWAITED``) is told at once.

The database file and its ``-wal`` and ``-shm`` files are private (0600):
SQLite gives the latter two the mode of the database file, which is created,
or tightened, before SQLite opens it.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import outcome
import trio

from errands import BackendError

__all__ = ["Database", "Flush", "private_directory", "private_file"]

log = logging.getLogger("errands.backends")

T = TypeVar("T")
#: The most calls one transaction takes; more wait for the next.
MAX_BATCH = 512
#: The longest a write is held for a ``Flush.NOW`` call to share its commit
#: with (seconds); writes are held only while NOW calls come at least this often.
MAX_HOLD = 0.002
#: The longest (seconds) what follows a thread's answer (``call_from_thread``'s
#: ``then``) waits for that thread's next write; it waits only while those
#: writes come back this quickly (see the module docstring).
MAX_FOLLOW = 0.0005


class Flush(enum.Enum):
    """How durable a write must be before its caller hears back (see the module docstring)."""

    #: Fsynced (under ``synchronous="FULL"``) before the caller hears back.
    NOW = "now"
    #: Fsynced before the caller hears back; may be held for a NOW call's commit.
    SOON = "soon"
    #: Committed without an fsync; made durable by the next one.  Only for
    #: writes whose loss at a power cut is harmless (the task runs again).
    #: May be held for a NOW call's commit.
    LAZY = "lazy"
    #: Fsynced before the caller hears back, never held, and takes what is
    #: held along, as NOW; but not a submit: it does not count in the gap
    #: between NOW calls that decides whether writes are held.  For a write
    #: someone waits on (an end a ``wait()`` is parked on).
    AWAITED = "awaited"


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
    __slots__ = (
        "answer",
        "callback",
        "committed",
        "done",
        "flush",
        "fn",
        "queued",
        "result",
        "then",
        "token",
        "write",
    )

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], T],
        write: bool,
        flush: Flush,
        committed: Callable[[T], object] | None = None,
        answer: Callable[[outcome.Outcome[T]], object] | None = None,
        callback: Callable[[outcome.Outcome[T]], object] | None = None,
        then: Callable[[], object] | None = None,
    ) -> None:
        self.fn = fn
        self.write = write
        self.flush = flush if write else Flush.LAZY
        self.committed = committed
        self.result: outcome.Outcome[T] | None = None
        #: Set for a call from a trio run (``token``: that run), which waits
        #: on ``done`` or, queued by :meth:`Database.call_soon`, hears back
        #: through ``callback`` on that run's thread; a call from another
        #: thread has ``answer`` instead, called on the database thread.
        self.answer = answer
        self.callback = callback
        #: For a call from another thread: what follows its answer, and when
        #: it was queued (``time.monotonic()``).
        self.then = then
        self.queued = 0.0
        if answer is None:
            self.done: trio.Event | None = trio.Event() if callback is None else None
            self.token: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        else:
            self.done = self.token = None


class Database:
    """A SQLite database file served by one thread (see the module docstring).

    Args:
        path: the database file (created if missing, private: 0600).
        setup: run once on each new connection, in a transaction (schema).
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` survives power
            loss in WAL mode, ``NORMAL`` only process crashes.
        max_hold: the longest (seconds) a write that can wait is held for a
            ``NOW`` call to share its commit with (see the module docstring).

    Attributes:
        commits: transactions that wrote, so far (counted by the thread).
        synced: those of them that were fsynced (under ``FULL``).
        reruns: batches run a second time, each call in its own savepoint,
            because a write of theirs failed.
    """

    def __init__(
        self,
        path: Path,
        *,
        setup: Callable[[sqlite3.Connection], None],
        synchronous: str = "FULL",
        max_hold: float = MAX_HOLD,
    ) -> None:
        self.path = path
        self.max_hold = max_hold
        self.commits = 0
        self.synced = 0
        self.reruns = 0
        #: Connections opened so far (one at a time; a new one after a failure).
        self.connections = 0
        #: What :meth:`version` said when the first connection was opened.
        self.first_version: tuple[int, int] | None = None
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
        #: Writes held for the next NOW call's commit, and until when at the latest.
        self._held: list[_Call[Any]] = []
        self._held_until = 0.0
        #: When the last NOW call came, and the usual time between two (a moving average).
        self._last_now = 0.0
        self._gap = math.inf
        #: Calls of :meth:`expedite` so far.
        self.expedites = 0
        #: The ``synchronous`` level the connection commits with now.
        self._level = synchronous
        #: What follows the answers delivered so far (``call_from_thread``'s
        #: ``then``), not run yet; when the last of them was answered; and how
        #: long the threads take to send their next write after an answer (a
        #: moving average, for as long as they are quick).
        self._then: list[Callable[[], object]] = []
        self._answered = 0.0
        self._turn = math.inf

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

    async def run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        write: bool = True,
        flush: Flush = Flush.NOW,
        committed: Callable[[T], object] | None = None,
    ) -> T:
        """Run ``fn(connection)`` in the next transaction and return its result.

        Blocks (parks) until that transaction committed, and for a write of
        ``flush`` NOW or SOON until it is durable.  ``committed(result)``, if
        given, is called on the database thread as soon as that is so, before
        this call's caller hears back (only when ``fn`` succeeded and the
        transaction committed; it must be quick and must not raise).
        ``fn`` may run twice (when another write of its transaction fails:
        see the module docstring).  A
        caller cancelled before the call is queued changes nothing; cancelled
        while it waits, the call still happens and its result is dropped.

        Raises:
            BackendError: for anything that went wrong, ``fn``'s own errors
                included (the original error is the ``__cause__``); also when
                the database is not open or its thread has ended.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled already: do nothing
        call = _Call(fn, write, flush, committed)
        self._queue(call)
        assert call.done is not None
        await call.done.wait()
        assert call.result is not None
        return call.result.unwrap()

    def call_soon(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        flush: Flush,
        callback: Callable[[outcome.Outcome[T]], object],
    ) -> None:
        """From the trio run: queue the write ``fn(connection)`` as
        :meth:`run` would, without a coroutine waiting for it; once its
        transaction committed (and, for ``flush`` other than LAZY, is
        durable) or failed, ``callback(outcome)`` is called on the run's
        thread, with the calls :meth:`run` wakes: the value, or the
        BackendError.  A ``SOON`` write's callback is called a little later,
        as what follows an answer of :meth:`call_from_thread` is (before the
        next commit, or once nothing else comes).  It must be quick; what it
        raises is logged.  If the run has ended by then, it is not called
        (the write still happens).

        Raises:
            BackendError: at once, when the database is not open or its
                thread has ended (then ``callback`` is never called).
        """
        self._queue(_Call(fn, True, flush, callback=callback))

    def call_from_thread(
        self,
        fn: Callable[[sqlite3.Connection], T],
        answer: Callable[[outcome.Outcome[T]], object],
        then: Callable[[], object] | None = None,
    ) -> None:
        """From any thread but a trio run's: queue the write ``fn(connection)``
        (flushed NOW) without waiting, as :meth:`run` would run it (``fn``
        may run twice, as there); once its
        transaction committed and is durable (or failed), ``answer(outcome)``
        is called on the database thread: the value, or the BackendError.
        It must be quick and must not raise.

        ``then()``, if given, is called once after ``answer``, on the database
        thread too, when it slows the calling thread's next write least:
        right before the next commit (the statements of that write have run,
        and its fsync leaves the interpreter free), or, when no write comes
        soon, as the thread would otherwise wait (see the module docstring).
        What it raises is logged.

        Raises:
            BackendError: at once, when the database is not open or its
                thread has ended (then neither is ever called).
        """
        call = _Call(fn, True, Flush.NOW, answer=answer, then=then)
        call.queued = time.monotonic()
        self._queue(call)

    def expedite(self) -> None:
        """From any thread: commit the writes held for a NOW call's commit
        (see the module docstring) now, with an fsync, instead of when the
        next NOW call comes.  For a caller that waits on a held write, whose
        next NOW call cannot come first.  Counted in :attr:`expedites`, so
        that a write prepared meanwhile and queued after can tell it is
        waited for too.  Quick; never raises (a closed database has nothing
        held)."""
        self.expedites += 1
        try:
            self._queue(_Call(_nothing, True, Flush.AWAITED, answer=_ignore))
        except BackendError:
            pass

    def _queue(self, call: _Call[Any]) -> None:
        """Queue ``call`` for the thread; BackendError when it takes no more."""
        with self._lock:
            if self._thread is None:
                raise BackendError(f"database {self.path} is not open")
            ended = self._ended
            if ended is None:
                self._calls.put(call)
        if ended is not None:
            # A new error each time: one shared instance would grow a traceback per raise.
            raise BackendError(str(ended)) from ended.__cause__

    async def version(self) -> tuple[int, int]:
        """A value that changes when another connection (another process, or
        another :class:`Database` of this one) committed a change since the
        last call, and never for this one's own commits: SQLite's
        ``data_version``, paired with the number of the connection that read
        it (a new connection counts its own)."""

        def read(conn: sqlite3.Connection) -> tuple[int, int]:
            return self.connections, conn.execute("PRAGMA data_version").fetchone()[0]

        return await self.run(read, write=False)

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
            self._level = self._synchronous
            conn.execute("BEGIN IMMEDIATE")
            self._setup(conn)
            conn.execute("COMMIT")
            self.connections += 1
            if self.first_version is None:
                self.first_version = (1, conn.execute("PRAGMA data_version").fetchone()[0])
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
        # Interrupted: nothing of these was committed nor delivered.
        waiting, self._held = self._batch + self._held, []
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
        self._follow_up()

    def _next_call(self) -> _Call[Any] | bool | None:
        """The next call; None to stop; False when the held calls' time is up.
        What follows the answers runs here once its time is up."""
        while True:
            until = self._held_until if self._held else math.inf
            if self._then:
                due = self._then_due()
                if due > time.monotonic():
                    until = min(until, due)
                else:
                    try:
                        return self._calls.get_nowait()  # its commit runs them
                    except queue.Empty:
                        self._follow_up()
            if until == math.inf:
                return self._calls.get()
            wait = until - time.monotonic()
            try:
                return self._calls.get(timeout=wait) if wait > 0 else self._calls.get_nowait()
            except queue.Empty:
                if self._held and self._held_until <= time.monotonic():
                    return False
                # Or what follows the answers is due: run next time round.

    def _then_due(self) -> float:
        """Until when what follows the answers waits for a next write: while
        the threads send their next write quickly, twice their usual time;
        else not at all."""
        if self._turn * 2 > MAX_FOLLOW:
            return 0.0
        return self._answered + 2 * self._turn

    def _came(self, batch: list[_Call[Any]]) -> None:
        """Learn how soon the threads' writes come after an answer."""
        if not self._answered:
            return
        for call in batch:
            if call.then is not None and call.queued >= self._answered:
                turn = min(call.queued - self._answered, 1.0)
                self._turn = turn if self._turn == math.inf else 0.75 * self._turn + 0.25 * turn
                return

    def _follow_up(self) -> None:
        """Run what follows the answers delivered so far."""
        thens, self._then = self._then, []
        for then in thens:
            try:
                then()
            except Exception:  # a bug: the others still run
                log.exception("what follows an answer of %s failed", self.path)

    def _serve(self, conn: sqlite3.Connection | None) -> None:
        try:
            while True:
                first = self._next_call()
                stop = first is None
                if first is False:  # nothing came to share an fsync with: held calls go
                    batch, self._held = self._held, []
                else:
                    batch = [first] if isinstance(first, _Call) else []
                    while not stop and len(batch) < MAX_BATCH:
                        try:
                            nxt = self._calls.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is None:
                            stop = True
                            break
                        batch.append(nxt)
                    self._came(batch)
                    batch = self._fsync_or_hold(batch, stop)
                self._batch = batch
                if batch and conn is None:
                    try:
                        conn = self._connect()
                    except BackendError as exc:
                        for call in batch:
                            call.result = outcome.Error(exc)
                        self._deliver(batch)
                if batch and conn is not None:
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

    def _fsync_or_hold(self, batch: list[_Call[Any]], stop: bool) -> list[_Call[Any]]:
        """The calls to run now; under FULL, the writes that can wait for a NOW
        call to share its commit are held while NOW calls keep coming."""
        if self._synchronous != "FULL":
            return batch
        now = time.monotonic()
        if any(call.flush is Flush.NOW for call in batch):
            gap = min(now - self._last_now, self.max_hold)
            self._gap = gap if self._gap == math.inf else 0.75 * self._gap + 0.25 * gap
            self._last_now = now
            batch, self._held = self._held + batch, []
            return batch
        if stop or any(call.flush is Flush.AWAITED for call in batch):
            batch, self._held = self._held + batch, []
            return batch
        if self._gap >= self.max_hold:
            return batch  # no steady stream of NOW calls to wait for
        later = [call for call in batch if call.write]
        if not later:
            return batch
        if not self._held:
            # Until the next NOW call is due (twice the usual gap), at most max_hold.
            self._held_until = min(self._last_now + 2 * self._gap, now + self.max_hold)
            if self._held_until <= now:
                return batch
        self._held.extend(later)
        return [call for call in batch if not call.write]

    def _set_level(self, conn: sqlite3.Connection, batch: list[_Call[Any]]) -> None:
        """Under FULL, commit without an fsync when no call of the batch needs one."""
        if self._synchronous != "FULL" or not any(call.write for call in batch):
            return  # (a batch that only reads commits nothing)
        level = "FULL" if any(call.flush is not Flush.LAZY for call in batch) else "NORMAL"
        if level != self._level:
            conn.execute(f"PRAGMA synchronous={level}")  # outside a transaction: between batches
            self._level = level

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Call[Any]]) -> None:
        write = any(call.write for call in batch)
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"
        try:
            self._set_level(conn, batch)
            conn.execute(begin)
            if not self._run_together(conn, batch):
                # A write failed: undone with the others, which run again,
                # each in its own savepoint this time, so that it undoes itself alone.
                self.reruns += 1
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute(begin)
                self._run_apart(conn, batch)
            if self._then:
                self._follow_up()  # while this commit's fsync frees the interpreter
            conn.execute("COMMIT")
            if write:
                self.commits += 1
                self.synced += self._level == "FULL"
            for call in batch:
                if call.committed is not None and isinstance(call.result, outcome.Value):
                    try:
                        call.committed(call.result.value)
                    except Exception:  # a bug: the caller still hears back as usual
                        log.exception("a commit callback of %s failed", self.path)
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

    def _run_together(self, conn: sqlite3.Connection, batch: list[_Call[Any]]) -> bool:
        """Run the calls one after another in the open transaction, with no
        savepoint between them; False, at once, when a write fails (or a
        failure ended the transaction): then the batch is to run again, apart.

        A savepoint per call made SQLite copy each page that a call changed
        into its statement journal, to be able to undo that call alone; a
        batch of calls that all succeed (nearly every batch) needs none.
        Measured: the durable bulk of 640 tasks ran 10-24% faster without."""
        for call in batch:
            try:
                call.result = outcome.Value(call.fn(conn))
            except Exception as exc:
                if call.write or not conn.in_transaction:
                    return False
                call.result = outcome.Error(_failure(f"database {self.path}", exc))
        return True

    def _run_apart(self, conn: sqlite3.Connection, batch: list[_Call[Any]]) -> None:
        """Run the calls in the open transaction, each write in its own
        savepoint: one that fails undoes only itself."""
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

    def _deliver(self, batch: list[_Call[Any]]) -> None:
        by_run: dict[trio.lowlevel.TrioToken, list[_Call[Any]]] = {}
        followed = False
        for call in batch:
            if call.token is not None:
                by_run.setdefault(call.token, []).append(call)
                continue
            assert call.answer is not None and call.result is not None
            try:
                call.answer(call.result)
            except Exception:  # a bug: the other callers still hear back
                log.exception("an answer callback of a database call failed")
            if call.then is not None:
                self._then.append(call.then)
                followed = True
        if followed:
            self._answered = time.monotonic()
        for token, calls in by_run.items():
            # A SOON write queued without a waiter (call_soon: a run's end
            # nobody waits on) is told to its run as what follows an answer.
            now: list[_Call[Any]] = []
            later: list[_Call[Any]] = []
            for call in calls:
                soon = call.callback is not None and call.flush is Flush.SOON
                (later if soon else now).append(call)
            if later:
                self._then.append(functools.partial(_wake_in, token, later))
            if now:
                _wake_in(token, now)


def _nothing(conn: sqlite3.Connection) -> None:
    """The write of :meth:`Database.expedite`: its commit is the point."""


def _ignore(result: outcome.Outcome[None]) -> None:
    pass


def _wake_in(token: trio.lowlevel.TrioToken, calls: list[_Call[Any]]) -> None:
    try:
        token.run_sync_soon(_wake_all, calls)
    except trio.RunFinishedError:
        pass  # that trio run is gone; nobody waits for these results


def _wake_all(calls: list[_Call[Any]]) -> None:
    for call in calls:
        if call.callback is None:
            assert call.done is not None
            call.done.set()
            continue
        assert call.result is not None
        try:
            call.callback(call.result)
        except Exception:  # a bug: the other callers still hear back
            log.exception("a callback of a database call failed")
