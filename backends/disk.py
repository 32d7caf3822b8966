"""The durable backend: one directory, shared safely by the processes of one machine.

Layout of the directory::

    errands.db     SQLite (WAL): task records, the queue and small results, one
                   transaction per batch of calls (group commit, see _database.py);
                   arguments of 16 KiB and up in a table of their own
                   (``large_args``), written once, never with the row's changes
    owners/        one lock file per live engine, to tell dead owners at once
    results/       a diskcache.Cache of large result payloads (32 KiB and up:
                   images), kept in its files, not in SQLite rows

Records and queue entries share one database, so ``enqueue`` (record + entry)
and every claim are single transactions.  A small result is written in the
same transaction as the compare-and-set that moves the record to
``success``.  A large one is written to diskcache first, under ``<task
id>:<fencing token>``, and then the record is moved by compare-and-set: a
worker whose claim was taken over writes under its own token, its
compare-and-set fails, and it can never overwrite the newer attempt's
result.

With the default ``synchronous="FULL"``, a committed write survives power
loss (SQLite's WAL with full sync); ``"NORMAL"`` survives process crashes only.

The directory is private: the backend makes it and its folders 0700 and every
file it writes 0600, whatever the umask, and tightens them when it opens a
directory left more open.  Large results are read inertly (see
:class:`_InertDisk`): what is on disk is data, never code, and never names a
file outside ``results/``.  Every failure of the storage (a full disk, a
broken file, a lock) reaches the caller as :class:`errands.BackendError`,
with the original error as its ``__cause__``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import sqlite3
import stat
import time
from array import array
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import outcome
import trio
from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW, MODE_TEXT, UNKNOWN

from errands import (
    Backend,
    BackendError,
    Claim,
    Payload,
    Queue,
    Renewal,
    Store,
    StoredTask,
    TaskStatus,
)
from errands._backend import NewestEnds, start_record
from errands._status import check_transition

from ._database import Database, Flush, private_directory, private_file
from ._owners import OwnerLocks

__all__ = ["FORMAT_VERSION", "DiskCacheBackend", "DiskCacheQueue", "DiskCacheStore"]

#: Bumped when the on-disk layout changes incompatibly.
FORMAT_VERSION = "3"
#: Results smaller than this (bytes) are stored in errands.db with the status
#: change that makes them the task's result; larger ones in diskcache's files.
INLINE_RESULT_LIMIT = 32 * 1024
#: Arguments (JSON bytes) at least this large are kept in ``large_args``, not
#: in the task's row: SQLite rewrites a whole row at each change of it (the
#: start, the end), overflow pages included, and 5 MB of bytes as base64
#: cost about 8 ms of writes and reads a rewrite.  Smaller ones stay in the
#: row, where reading them needs no second lookup.
ARGS_APART_LIMIT = 16 * 1024

log = logging.getLogger("errands.backends")
T = TypeVar("T")


def _guarded(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, its failures raised as BackendError (``what`` says where)."""
    try:
        return fn(*args, **kwargs)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"{what}: {type(exc).__name__}: {exc}") from exc


#: The value files diskcache names: ``ab/cd/<28 hex digits>.val``.
_VALUE_FILE = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{28}\.val)")


class _InertDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's serialization, reduced to what errands stores, and inert.

    Keys are text and values bytes: anything else is refused, never pickled.
    Reading, a row in pickle or text mode is refused rather than loaded, and a
    value file is read only when its name is one diskcache makes
    (``ab/cd/<hex>.val``), inside the cache directory, not through a symbolic
    link.  So whoever can write the directory can spoil results but cannot make
    the reader run code, nor read, nor delete, a file elsewhere.  Value files
    and their folders are created private (0600, 0700).
    """

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self._root = os.path.realpath(directory)
        #: fsync value files and their folders before their row commits.
        self.durable = False

    # ------------------------------------------------------------------ keys

    def put(self, key: object) -> tuple[str, bool]:
        if type(key) is not str:
            raise TypeError(f"result cache keys are str, not {type(key).__name__}")
        return key, True

    def get(self, key: object, raw: bool) -> str:
        if not raw or type(key) is not str:
            raise BackendError("the result cache holds a key errands did not write")
        return key

    # ------------------------------------------------------------------ values

    def store(self, value: object, read: bool, key: object = UNKNOWN) -> Any:
        if read or type(value) is not bytes:
            raise TypeError(f"the result cache stores bytes, not {type(value).__name__}")
        if len(value) < self.min_file_size:
            return 0, MODE_RAW, None, sqlite3.Binary(value)
        filename, full_path = self.filename(key, value)
        self._write(full_path, io.BytesIO(value), "xb")
        return len(value), MODE_BINARY, filename, None

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        if mode != "xb" or encoding is not None:
            raise TypeError("the result cache writes bytes only")
        folder = os.path.dirname(full_path)
        made = self._make_folders(folder)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        for attempt in range(10):
            try:
                fd = os.open(full_path, flags, 0o600)
                break
            except FileNotFoundError:  # another process removed the emptied folder
                if attempt == 9:
                    raise
                made += self._make_folders(folder)
        size = 0
        try:
            with os.fdopen(fd, "wb") as writer:
                os.fchmod(fd, 0o600)  # exactly, whatever the umask took
                for chunk in iterator:
                    size += len(chunk)
                    writer.write(chunk)
                writer.flush()
                if self.durable:
                    # diskcache does not fsync value files; the record will
                    # say the result exists only after this.
                    os.fsync(fd)
        except BaseException:
            for path, remove in [(full_path, os.remove), *((m, os.rmdir) for m in made[::-1])]:
                try:
                    remove(path)  # no partial file left behind (a full disk), nor its folders
                except OSError:
                    break
            raise
        if self.durable:
            for path in {folder, *(os.path.dirname(m) for m in made)}:
                _fsync_folder(path)
        return size

    def _make_folders(self, folder: str) -> list[str]:
        """Create the missing folders from the cache directory down to ``folder``, 0700."""
        made = []
        relative = os.path.relpath(folder, self._directory)
        path = self._directory
        for part in relative.split(os.sep):
            path = os.path.join(path, part)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            os.chmod(path, 0o700)  # exactly, whatever the umask took
            made.append(path)
        return made

    def fetch(self, mode: int, filename: object, value: object, read: bool) -> bytes:
        if read:
            raise TypeError("the result cache does not hand out its files")
        if mode == MODE_RAW and filename is None:
            if type(value) is not bytes:
                raise BackendError(f"the stored value is {type(value).__name__}, not bytes")
            return value
        if mode == MODE_BINARY and value is None:
            folder, name = self._locate(filename)
            try:
                fd = os.open(
                    os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                )
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise BackendError(f"result file {filename!r} is a symbolic link") from None
                raise  # diskcache reads a missing file as a missing value
            with os.fdopen(fd, "rb") as reader:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise BackendError(f"result file {filename!r} is not a regular file")
                return reader.read()
        kind = {MODE_PICKLE: "a pickle", MODE_TEXT: "text"}
        raise BackendError(f"the stored value is {kind.get(mode, f'of mode {mode!r}')}")

    def _locate(self, filename: object) -> tuple[str, str]:
        """The folder of a value file (symbolic links resolved) and its name, or BackendError."""
        found = _VALUE_FILE.fullmatch(filename) if isinstance(filename, str) else None
        if found is None:
            raise BackendError(f"result file name {filename!r} is not one diskcache makes")
        folder = os.path.join(self._root, found[1], found[2])
        if os.path.realpath(folder) != folder:
            raise BackendError(f"result file {filename!r} leads out of the result cache")
        return folder, found[3]

    def remove(self, file_path: object) -> None:
        try:
            folder, name = self._locate(file_path)
        except BackendError as exc:
            log.warning("not removing a result file: %s", exc)
            return
        try:
            os.remove(os.path.join(folder, name))  # a link itself, never what it names
        except OSError:
            pass  # another process removed it
        for path in (folder, os.path.dirname(folder)):  # emptied folders, down to the cache's
            try:
                os.rmdir(path)
            except OSError:
                break


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    token INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    data BLOB NOT NULL,
    args BLOB
);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_name ON tasks (name, status, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_expiry ON tasks (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    not_before REAL NOT NULL,
    owner TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    rank REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_by_task ON batches (task_id);
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS large_args (id TEXT PRIMARY KEY, args BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS queue_claims ON queue (lease_until) WHERE owner IS NOT NULL;
"""

#: Run after :func:`_migrate`: indexes on columns that older databases lacked.
_INDEXES = """
CREATE INDEX IF NOT EXISTS queue_ranked ON queue (name, rank, seq) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS queue_ready ON queue (name, rank, seq)
    WHERE owner IS NULL AND not_before = 0;
CREATE INDEX IF NOT EXISTS queue_delayed ON queue (name, not_before)
    WHERE owner IS NULL AND not_before > 0;
"""


def _setup(conn: sqlite3.Connection) -> None:
    _execute(conn, _SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    if row is None:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("format", FORMAT_VERSION), ("seq", "0"), ("token", "0")],
        )
    elif row[0] not in _READABLE_FORMATS:
        raise BackendError(
            f"this directory holds errands data in format {row[0]!r}, but this version "
            f"of errands reads format {FORMAT_VERSION!r}; use another directory or the "
            "matching errands version"
        )
    _migrate(conn, FORMAT_VERSION if row is None else row[0])
    _execute(conn, _INDEXES)
    _keep_depths(conn)


#: The waiting entries of each name, kept by the database itself (the
#: triggers below) as entries are put, claimed, released and removed: a
#: queue's depth is then read, not counted (a count of 100,000 waiting
#: entries took about 10 ms, on the one thread every write waits for).
#: Being the database's own, they stay right whoever writes: another
#: process, or an errands that knows nothing of them.
_DEPTH_TABLE = (
    "CREATE TABLE queue_depth (name TEXT PRIMARY KEY, waiting INTEGER NOT NULL) WITHOUT ROWID"
)
_DEPTH_TRIGGERS = {
    "queue_depth_put": "AFTER INSERT ON queue WHEN NEW.owner IS NULL BEGIN"
    " INSERT OR IGNORE INTO queue_depth (name, waiting) VALUES (NEW.name, 0);"
    " UPDATE queue_depth SET waiting = waiting + 1 WHERE name = NEW.name; END",
    "queue_depth_gone": "AFTER DELETE ON queue WHEN OLD.owner IS NULL BEGIN"
    " UPDATE queue_depth SET waiting = waiting - 1 WHERE name = OLD.name; END",
    "queue_depth_left": "AFTER UPDATE OF owner, name ON queue"
    " WHEN OLD.owner IS NULL AND (NEW.owner IS NOT NULL OR NEW.name IS NOT OLD.name) BEGIN"
    " UPDATE queue_depth SET waiting = waiting - 1 WHERE name = OLD.name; END",
    "queue_depth_joined": "AFTER UPDATE OF owner, name ON queue"
    " WHEN NEW.owner IS NULL AND (OLD.owner IS NOT NULL OR NEW.name IS NOT OLD.name) BEGIN"
    " INSERT OR IGNORE INTO queue_depth (name, waiting) VALUES (NEW.name, 0);"
    " UPDATE queue_depth SET waiting = waiting + 1 WHERE name = NEW.name; END",
}


def _keep_depths(conn: sqlite3.Connection) -> None:
    """Make the depth counts and their triggers where they are missing (a
    new database, or one an earlier errands made), counting the queue once,
    in the setup's transaction: no write comes between the count and the
    triggers."""
    ours = ("queue_depth", *_DEPTH_TRIGGERS)
    marks = ", ".join("?" * len(ours))
    found = conn.execute(f"SELECT COUNT(*) FROM sqlite_master WHERE name IN ({marks})", ours)
    if found.fetchone()[0] == len(ours):
        return
    for name in _DEPTH_TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute("DROP TABLE IF EXISTS queue_depth")
    conn.execute(_DEPTH_TABLE)
    conn.execute(
        "INSERT INTO queue_depth (name, waiting)"
        " SELECT name, COUNT(*) FROM queue WHERE owner IS NULL GROUP BY name"
    )
    for name, body in _DEPTH_TRIGGERS.items():
        conn.execute(f"CREATE TRIGGER {name} {body}")


def _execute(conn: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):  # executescript would commit our transaction
        if statement.strip():
            conn.execute(statement)


#: The formats this errands opens: the one it writes, and the ones before it,
#: which :func:`_migrate` brings up to it: "2" (large arguments in the
#: task's row, where this format reads them still) and "1" (tasks stored
#: whole).
_READABLE_FORMATS = (FORMAT_VERSION, "2", "1")


def _migrate(conn: sqlite3.Connection, found: str) -> None:
    """Bring a database an earlier errands made (in format ``found``) up to
    this schema and format."""
    if not any(column[1] == "args" for column in conn.execute("PRAGMA table_info(tasks)")):
        conn.execute("ALTER TABLE tasks ADD COLUMN args BLOB")
    if found == "1":
        _split_args(conn)
    if found != FORMAT_VERSION:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (FORMAT_VERSION,))
    if not any(column[1] == "rank" for column in conn.execute("PRAGMA table_info(queue)")):
        # Made before priority aging: its waiting entries keep the order they
        # had (higher priority first, then put order), which rank -priority is.
        conn.execute("ALTER TABLE queue ADD COLUMN rank REAL NOT NULL DEFAULT 0")
        conn.execute("UPDATE queue SET rank = -priority")
    conn.execute("DROP INDEX IF EXISTS queue_waiting")  # its order, (priority, seq), is gone


def _split_args(conn: sqlite3.Connection) -> None:
    """Format 1 kept each task whole in ``data``: its arguments move to
    ``args``, by SQLite's JSON functions (no record decoded in Python).  A
    record that is not valid JSON stays whole, as unreadable as it was."""
    conn.execute(
        "UPDATE tasks SET args = CAST(json_extract(CAST(data AS TEXT), '$.args') AS BLOB),"
        " data = CAST(json_remove(CAST(data AS TEXT), '$.args') AS BLOB)"
        " WHERE args IS NULL AND json_valid(CAST(data AS TEXT))"
        " AND json_type(CAST(data AS TEXT), '$.args') = 'object'"
    )


def _next(conn: sqlite3.Connection, counter: str, step: int = 1) -> int:
    """Move ``counter`` on by ``step``; its new value (the last one taken)."""
    row = conn.execute(
        "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = ? RETURNING value",
        (step, counter),
    ).fetchone()
    return int(row[0])


def _stored(row: tuple[Any, ...], *, read: bool = True) -> StoredTask:
    """A row of ``_TASK_COLUMNS``; with ``read`` False, of ``_LISTED_COLUMNS``
    (its last value the type of ``args``, not ``args``): the task without
    its arguments, unless they are in ``data``."""
    task_id, name, status, token, created_at, expires_at, data, args = row
    scalars: dict[str, Any] = {
        "id": task_id,
        "name": name,
        "status": TaskStatus(status),
        "token": token,
        "created_at": created_at,
        "expires_at": expires_at,
    }
    if args is None or args == "null":
        # Stored whole (a record that _migrate could not read stays so).
        return StoredTask(**scalars, data=bytes(data))
    return StoredTask.from_parts(**scalars, state=bytes(data), args=bytes(args) if read else None)


def _listed(row: tuple[Any, ...]) -> StoredTask:
    return _stored(row, read=False)


#: A task's row: its record in two parts, ``data`` (JSON without the
#: arguments, rewritten at each change) and ``args`` (JSON, written once;
#: NULL when they are in ``large_args``, see ``ARGS_APART_LIMIT``).
_INSERTED_COLUMNS = "id, name, status, token, created_at, expires_at, data, args"
_TASK_VALUES = "?, ?, ?, ?, ?, ?, ?, ?"
#: A task read back (from ``tasks t``), its arguments wherever they are
#: (``coalesce`` reads ``large_args`` only when the row has none).
_TASK_COLUMNS = (
    "t.id, t.name, t.status, t.token, t.created_at, t.expires_at, t.data,"
    " coalesce(t.args, (SELECT a.args FROM large_args a WHERE a.id = t.id))"
)
#: The same without the arguments: whether ``data`` holds them instead.
#: (``typeof``: SQLite reads the type without the value; ``IS NULL`` read
#: the value, megabytes for large arguments.)
_LISTED_COLUMNS = (
    "t.id, t.name, t.status, t.token, t.created_at, t.expires_at, t.data,"
    " coalesce(nullif(typeof(t.args), 'null'),"
    " (SELECT typeof(a.args) FROM large_args a WHERE a.id = t.id), 'null')"
)

#: Ids per ``IN (...)`` of one query: under SQLite's bound-variable limit.
_IDS_PER_QUERY = 500


def _state(conn: sqlite3.Connection, task_id: str) -> StoredTask | None:
    """:meth:`DiskCacheStore.get_state`, on the database thread."""
    row = conn.execute(
        f"SELECT {_LISTED_COLUMNS} FROM tasks t WHERE t.id = ?", (task_id,)
    ).fetchone()
    return None if row is None else _listed(row)


def _rows_by_ids(
    conn: sqlite3.Connection, sql: str, ids: Sequence[str], *after: Any
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``sql`` (whose ``{marks}`` takes the placeholders of the
    ids, and whose other parameters ``after`` follow them) for ``ids``, a
    chunk of them per query."""
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        yield from conn.execute(sql.format(marks=",".join("?" * len(chunk))), (*chunk, *after))


#: A name with more waiting entries than this may answer positions from
#: its order (:class:`_Order`), not by counting the entries ahead.
EXACT_POSITIONS = 1000
#: Positions of one such name counted within :data:`ORDER_FRESH` seconds
#: before its order is read (a rare status is counted, exact).
COUNTS_BEFORE_ORDER = 8
#: How long (seconds) a name's order serves positions before it is read
#: again; longer for an order that took long to read, so that reading
#: orders takes at most a twentieth of the database thread.
ORDER_FRESH = 1.0


class _Order:
    """The ``(rank, seq)`` of every waiting entry of one name, in queue
    order, as one read found them: a position is then found by bisection.

    Counting the entries ahead took SQLite time in proportion to the
    position (6 ms at 50,000), on the thread every write waits for, for
    each status of a task far back in a deep queue, which clients poll.
    Reading the order took 51 ms at 50,000 entries; it serves every
    position asked for :data:`ORDER_FRESH` seconds (or twenty times as
    long as it took to read), so a position may be that old.  Entries put
    since are placed among those it holds."""

    __slots__ = ("keep", "ranks", "read_at", "seqs")

    def __init__(self, rows: list[tuple[float, int]], read_at: float, took: float) -> None:
        self.ranks = array("d", [rank for rank, _ in rows])
        self.seqs = array("q", [seq for _, seq in rows])
        self.read_at = read_at
        self.keep = max(1.0, 20 * took)  # in units of ORDER_FRESH

    def fresh(self, now: float) -> bool:
        return now - self.read_at < ORDER_FRESH * self.keep

    def ahead_of(self, rank: float, seq: int) -> int:
        ranks, seqs = self.ranks, self.seqs
        low, high = 0, len(ranks)
        while low < high:
            middle = (low + high) // 2
            other = ranks[middle]
            if other < rank or (other == rank and seqs[middle] < seq):
                low = middle + 1
            else:
                high = middle
        return low


class DiskCacheQueue(Queue):
    """The queue table of ``errands.db`` (see :class:`errands.Queue` for the contract)."""

    def __init__(self, db: Database, poll_interval: float, owners: OwnerLocks) -> None:
        self._db = db
        self._poll = poll_interval
        self._owners = owners
        #: Per name, its order while it serves positions, and when the
        #: positions counted lately began and how many (the database thread's).
        self._orders: dict[str, _Order] = {}
        self._counted: dict[str, tuple[float, int]] = {}

    async def put(
        self,
        task_id: str,
        *,
        name: str,
        priority: int = 0,
        not_before: float = 0.0,
        rank: float | None = None,
    ) -> None:
        def put(conn: sqlite3.Connection) -> None:
            _put(conn, task_id, name, priority, not_before, rank)

        await self._db.run(put)

    async def claim(
        self,
        *,
        owner: str,
        quotas: Mapping[str, int],
        limit: int,
        now: float,
        lease_until: float,
    ) -> list[Claim]:
        await self.hold_owner_lock(owner)

        def claim(conn: sqlite3.Connection) -> list[Claim]:
            return _claim(conn, owner, quotas, limit, now, lease_until)

        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):  # begun, it finishes: the engine sees every claim
            # LAZY: a claim lost at a power cut is claimed again (no fsync of its own).
            claims = await self._db.run(claim, flush=Flush.LAZY)
        return claims

    def holds_owner_lock(self, owner: str) -> bool:
        """Whether this process holds ``owner``'s lock already (any thread)."""
        return self._owners.holds(owner)

    async def hold_owner_lock(self, owner: str) -> None:
        """Take ``owner``'s lock before its first claim: it proves the owner alive."""
        if not self._owners.holds(owner):
            what = f"cannot take the owner lock in {self._owners.directory}"
            await trio.to_thread.run_sync(_guarded, what, self._owners.hold, owner)

    async def renew(self, task_id: str, token: int, *, lease_until: float) -> Renewal:
        [answer] = await self.renew_many([(task_id, token)], lease_until=lease_until)
        return answer

    async def renew_many(
        self, claims: Sequence[tuple[str, int]], *, lease_until: float
    ) -> list[Renewal]:
        def renew(conn: sqlite3.Connection) -> list[Renewal]:
            answers = []
            for task_id, token in claims:
                row = conn.execute(
                    "SELECT cancel FROM queue WHERE id = ? AND token = ? AND owner IS NOT NULL",
                    (task_id, token),
                ).fetchone()
                if row is None:
                    answers.append(Renewal.LOST)
                    continue
                conn.execute(
                    "UPDATE queue SET lease_until = ? WHERE id = ?", (lease_until, task_id)
                )
                answers.append(Renewal.CANCEL_REQUESTED if row[0] else Renewal.RENEWED)
            return answers

        return await self._db.run(renew, flush=Flush.LAZY)  # a lost renewal: a shorter lease

    async def ack(self, task_id: str, token: int) -> bool:
        def ack(conn: sqlite3.Connection) -> bool:
            return _ack(conn, task_id, token)

        return await self._db.run(ack)

    async def release(
        self, task_id: str, token: int, *, not_before: float = 0.0, rank: float | None = None
    ) -> bool:
        def release(conn: sqlite3.Connection) -> bool:
            held = conn.execute(
                "SELECT priority FROM queue WHERE id = ? AND token = ? AND owner IS NOT NULL",
                (task_id, token),
            ).fetchone()
            if held is None:
                return False
            conn.execute(
                "UPDATE queue SET owner = NULL, token = 0, lease_until = 0, cancel = 0,"
                " not_before = ?, rank = ?, seq = ? WHERE id = ?",
                (not_before, -held[0] if rank is None else rank, _next(conn, "seq"), task_id),
            )
            return True

        return await self._db.run(release)

    async def remove(self, task_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM queue WHERE id = ? AND owner IS NULL", (task_id,))
            return cursor.rowcount == 1

        return await self._db.run(remove)

    async def request_cancel(self, task_id: str) -> bool:
        def flag(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE queue SET cancel = 1 WHERE id = ? AND owner IS NOT NULL", (task_id,)
            )
            return cursor.rowcount == 1

        return await self._db.run(flag)

    async def expired(self, now: float) -> list[Claim]:
        """Claims whose lease ran out, and on this machine also the claims of
        owners whose process is known to have died (see ``_owners.py``)."""

        def expired(conn: sqlite3.Connection) -> list[Claim]:
            dead = [
                owner
                for (owner,) in conn.execute(
                    "SELECT DISTINCT owner FROM queue WHERE owner IS NOT NULL AND lease_until > ?",
                    (now,),
                )
                if self._owners.is_dead(owner)
            ]
            marks = ",".join("?" * len(dead))
            found = [
                Claim(task_id=i, name=n, token=t, owner=o, lease_until=u)
                for i, n, t, o, u in conn.execute(
                    "SELECT id, name, token, owner, lease_until FROM queue"
                    f" WHERE owner IS NOT NULL AND (lease_until <= ? OR owner IN ({marks}))"
                    " ORDER BY lease_until",
                    (now, *dead),
                )
            ]
            for owner in dead:
                self._owners.forget(owner)
            return found

        return await self._db.run(expired, write=False)

    async def contains(self, task_id: str) -> bool:
        def contains(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("SELECT 1 FROM queue WHERE id = ?", (task_id,)).fetchone() is not None
            )

        return await self._db.run(contains, write=False)

    async def next_due(self, names: Sequence[str]) -> float | None:
        def next_due(conn: sqlite3.Connection) -> float | None:
            due = None
            for name in names:  # each by its indexes (see _promote)
                ready = conn.execute(
                    "SELECT 1 FROM queue WHERE owner IS NULL AND not_before = 0 AND name = ?"
                    " LIMIT 1",
                    (name,),
                ).fetchone()
                if ready is not None:
                    return 0.0
                (first,) = conn.execute(
                    "SELECT MIN(not_before) FROM queue"
                    " WHERE owner IS NULL AND not_before > 0 AND name = ?",
                    (name,),
                ).fetchone()
                if first is not None and (due is None or first < due):
                    due = float(first)
            return due

        if not names:
            await trio.lowlevel.checkpoint()
            return None
        return await self._db.run(next_due, write=False)

    async def depth(self, name: str | None = None) -> int:
        def depth(conn: sqlite3.Connection) -> int:
            # Read from the counts the database keeps (see _DEPTH_TRIGGERS).
            if name is None:
                row = conn.execute("SELECT TOTAL(waiting) FROM queue_depth").fetchone()
            else:
                row = conn.execute(
                    "SELECT waiting FROM queue_depth WHERE name = ?", (name,)
                ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._db.run(depth, write=False)

    async def position(self, task_id: str) -> int | None:
        """Exact while the task's name has at most :data:`EXACT_POSITIONS`
        waiting entries, or its positions are asked rarely; beyond, from its
        order (see :class:`_Order`), which may be a second old or more."""
        return await self._db.run(lambda conn: self._position(conn, task_id), write=False)

    def _position(self, conn: sqlite3.Connection, task_id: str) -> int | None:
        """:meth:`position`, on the database thread."""
        me = conn.execute(
            "SELECT name, rank, seq FROM queue WHERE id = ? AND owner IS NULL", (task_id,)
        ).fetchone()
        if me is None:
            return None
        name, rank, seq = me
        order = self._order(conn, name)
        if order is not None:
            return order.ahead_of(rank, seq)
        row = conn.execute(
            "SELECT COUNT(*) FROM queue WHERE owner IS NULL AND name = ?"
            " AND (rank < ? OR (rank = ? AND seq < ?))",
            (name, rank, rank, seq),
        ).fetchone()
        return int(row[0])

    def _order(self, conn: sqlite3.Connection, name: str) -> _Order | None:
        """``name``'s order while it serves, read again when it is too old,
        once its positions are asked often; None while they are to be
        counted (few entries, or few asks).  On the database thread."""
        now = time.monotonic()
        order = self._orders.get(name)
        if order is not None and order.fresh(now):
            return order
        for old in [n for n, o in self._orders.items() if not o.fresh(now)]:
            del self._orders[old]  # a name nobody asks of any more keeps nothing
        row = conn.execute("SELECT waiting FROM queue_depth WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] <= EXACT_POSITIONS:
            return None
        since, counted = self._counted.get(name, (now, 0))
        if now - since >= ORDER_FRESH:
            since, counted = now, 0
        if counted < COUNTS_BEFORE_ORDER:
            self._counted[name] = (since, counted + 1)
            return None
        del self._counted[name]
        rows = conn.execute(
            "SELECT rank, seq FROM queue WHERE owner IS NULL AND name = ? ORDER BY rank, seq",
            (name,),
        ).fetchall()
        order = self._orders[name] = _Order(rows, now, time.monotonic() - now)
        return order

    async def wait_for_work(self) -> None:
        await trio.sleep(self._poll)


def _put(
    conn: sqlite3.Connection,
    task_id: str,
    name: str,
    priority: int,
    not_before: float,
    rank: float | None,
) -> None:
    # No read first: an entry already there is left as it is, and the counter
    # moves only when one was added.
    cursor = conn.execute(
        "INSERT INTO queue (id, name, priority, seq, not_before, rank) VALUES"
        " (?, ?, ?, (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'seq'), ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        (task_id, name, priority, not_before, -priority if rank is None else rank),
    )
    if cursor.rowcount == 1:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'seq'")


class _Puts:
    """:func:`_put` of many entries in one transaction, the counter read
    once and moved once at the end (not twice per entry)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._added = 0
        self._base = 0

    def __enter__(self) -> Callable[[str, str, int, float, float | None], None]:
        row = self._conn.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'seq'")
        self._base = int(row.fetchone()[0])
        return self._put

    def _put(
        self, task_id: str, name: str, priority: int, not_before: float, rank: float | None
    ) -> None:
        cursor = self._conn.execute(
            "INSERT INTO queue (id, name, priority, seq, not_before, rank)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                task_id,
                name,
                priority,
                self._base + self._added + 1,
                not_before,
                -priority if rank is None else rank,
            ),
        )
        self._added += cursor.rowcount

    def __exit__(self, *exc: object) -> None:
        if self._added and exc[0] is None:
            _next(self._conn, "seq", self._added)


def _promote(conn: sqlite3.Connection, name: str, now: float) -> None:
    """The waiting entries of ``name`` delayed till ``now`` or before join
    the ready ones (``not_before`` 0), in rank order with them.

    Delayed entries are kept out of the ready order (index ``queue_ready``)
    and found by when they are due (``queue_delayed``): in one order, every
    claim, and every submit that looks for a ready task of its name, walked
    past all the entries not due yet (4 ms per submit at 20,000 of them, 16
    at 60,000).  An errands of before, sharing the directory, claims by
    ``not_before <= now`` and reads 0 as due: the two agree."""
    conn.execute(
        "UPDATE queue SET not_before = 0"
        " WHERE owner IS NULL AND not_before > 0 AND name = ? AND not_before <= ?",
        (name, now),
    )


def _claim(
    conn: sqlite3.Connection,
    owner: str,
    quotas: Mapping[str, int],
    limit: int,
    now: float,
    lease_until: float,
) -> list[Claim]:
    """Claim up to ``limit`` ready entries (see :meth:`Queue.claim`)."""
    found: list[tuple[float, int, str, str]] = []
    for name, quota in quotas.items():
        if quota <= 0:
            continue
        _promote(conn, name, now)
        found.extend(
            (rank, seq, task_id, name)
            for task_id, rank, seq in conn.execute(
                "SELECT id, rank, seq FROM queue WHERE owner IS NULL AND not_before = 0"
                " AND name = ? ORDER BY rank, seq LIMIT ?",
                (name, min(quota, limit)),
            )
        )
    found.sort()
    chosen = found[:limit]
    if not chosen:
        return []
    # The tokens of this claim, in one step of the counter: each claim's
    # own, larger than any before it (transactions are serial).
    last = _next(conn, "token", len(chosen))
    claims = [
        Claim(task_id=task_id, name=name, token=token, owner=owner, lease_until=lease_until)
        for token, (_, _, task_id, name) in enumerate(chosen, last - len(chosen) + 1)
    ]
    conn.executemany(
        "UPDATE queue SET owner = ?, token = ?, lease_until = ?, cancel = 0 WHERE id = ?",
        [(owner, claim.token, lease_until, claim.task_id) for claim in claims],
    )
    return claims


def _pending_records(conn: sqlite3.Connection, task_ids: Sequence[str]) -> dict[str, StoredTask]:
    """The ``pending`` records of ``task_ids`` (read in one query, not one
    each), by id."""
    if not task_ids:
        return {}
    sql = f"SELECT {_TASK_COLUMNS} FROM tasks t WHERE t.id IN ({{marks}}) AND t.status = ?"
    pending = TaskStatus.PENDING.value
    return {row[0]: _stored(row) for row in _rows_by_ids(conn, sql, task_ids, pending)}


def _start_claimed(
    conn: sqlite3.Connection,
    claim: Claim,
    starting: Callable[[Claim, StoredTask], StoredTask],
    pending: StoredTask | None = None,
    read: bool = False,
) -> StoredTask | None:
    """Move the claimed task's ``pending`` record to what ``starting`` makes
    of it (see :meth:`Backend.claim_and_start`); None when it did not start.
    ``pending``: its record, when this transaction created it or ``read``
    it already (None then: it is not pending)."""
    if pending is None and not read:
        row = conn.execute(
            f"SELECT {_TASK_COLUMNS} FROM tasks t WHERE t.id = ? AND t.status = ?",
            (claim.task_id, TaskStatus.PENDING.value),
        ).fetchone()
        pending = None if row is None else _stored(row)
    begun = None if pending is None else start_record(starting, claim, pending)
    if begun is None:
        return None
    try:
        data = begun.state_data
    except Exception:  # as start_record: the caller's start() raises it
        return None
    conn.execute(
        "UPDATE tasks SET status = ?, token = ?, expires_at = ?, data = ? WHERE id = ?",
        (begun.status.value, begun.token, begun.expires_at, data, begun.id),
    )
    return begun


def _create_started(
    conn: sqlite3.Connection,
    task: StoredTask,
    priority: int,
    rank: float | None,
    owner: str,
    lease_until: float,
    starting: Callable[[Claim, StoredTask], StoredTask],
    token: int,
) -> tuple[Claim, StoredTask | None]:
    """Write the new ``pending`` task as a claim would leave it, claimed by
    ``owner`` under the fencing ``token`` (taken from the counter) and
    started: what :func:`_create`, :func:`_put`, :func:`_claim` and
    :func:`_start_claimed` write for a task that nothing waits ahead of, in
    two inserts.  If ``starting`` refuses it, it is written ``pending`` and
    claimed, and comes back with None (as from ``claim_and_start``)."""
    claim = Claim(
        task_id=task.id, name=task.name, token=token, owner=owner, lease_until=lease_until
    )
    begun = start_record(starting, claim, task)
    try:
        # Encoded first: if that fails, the task is written pending.
        data = None if begun is None else begun.state_data
    except Exception:  # as start_record: the caller's start() raises it
        begun = data = None
    row = task if begun is None else begun
    _insert(conn, "INSERT", row, row.state_data if data is None else data, task.args_data)
    # seq orders waiting entries only: a release gives the entry a new one.
    conn.execute(
        "INSERT INTO queue (id, name, priority, seq, not_before, rank, owner, token,"
        " lease_until, cancel) VALUES (?, ?, ?, 0, 0, ?, ?, ?, ?, 0)",
        (
            task.id,
            task.name,
            priority,
            -priority if rank is None else rank,
            owner,
            token,
            lease_until,
        ),
    )
    return claim, begun


def _holds(conn: sqlite3.Connection, claim: Claim) -> bool:
    """Whether the queue entry of ``claim`` is still claimed with its token."""
    held = conn.execute(
        "SELECT 1 FROM queue WHERE id = ? AND token = ? AND owner IS NOT NULL",
        (claim.task_id, claim.token),
    ).fetchone()
    return held is not None


def _ack(conn: sqlite3.Connection, task_id: str, token: int) -> bool:
    cursor = conn.execute(
        "DELETE FROM queue WHERE id = ? AND token = ? AND owner IS NOT NULL", (task_id, token)
    )
    return cursor.rowcount == 1


def _add_members(
    conn: sqlite3.Connection, batch_id: str, members: Sequence[tuple[int, str]]
) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO batches (batch_id, position, task_id) VALUES (?, ?, ?)",
        [(batch_id, position, task_id) for position, task_id in members],
    )


def _drop_empty_batches(conn: sqlite3.Connection, task_ids: Sequence[str]) -> None:
    """Records were deleted: drop the batches of theirs with no member record left."""
    batches: set[str] = set()
    for start in range(0, len(task_ids), 500):
        chunk = task_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        batches.update(
            row[0]
            for row in conn.execute(
                f"SELECT DISTINCT batch_id FROM batches WHERE task_id IN ({marks})", chunk
            )
        )
    for batch_id in batches:
        conn.execute(
            "DELETE FROM batches WHERE batch_id = ? AND NOT EXISTS (SELECT 1 FROM batches m"
            " JOIN tasks t ON t.id = m.task_id WHERE m.batch_id = ?)",
            (batch_id, batch_id),
        )


def _enqueue(
    conn: sqlite3.Connection,
    task: StoredTask,
    priority: int,
    not_before: float,
    rank: float | None,
) -> bool:
    """The transaction of :meth:`DiskCacheBackend.enqueue`."""
    if not _create(conn, task):
        return False
    _put(conn, task.id, task.name, priority, not_before, rank)
    return True


def _enqueue_and_start(
    conn: sqlite3.Connection,
    task: StoredTask,
    priority: int,
    rank: float | None,
    owner: str,
    now: float,
    lease_until: float,
    starting: Callable[[Claim, StoredTask], StoredTask],
) -> tuple[bool, tuple[Claim, StoredTask | None] | None]:
    """The transaction of :meth:`DiskCacheBackend.enqueue_and_start`.

    Its checks ride on the statement that takes the fencing token the task
    starts under, if it does: one statement less per submit (each costs the
    database thread a round trip for the interpreter lock).  A token taken
    for a task that does not start so is skipped: tokens only need to grow."""
    token, exists, queued, ready, due = conn.execute(
        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'token' RETURNING value,"
        " (SELECT 1 FROM tasks WHERE id = ?1), (SELECT 1 FROM queue WHERE id = ?1),"
        " (SELECT 1 FROM queue WHERE owner IS NULL AND not_before = 0 AND name = ?2"
        " LIMIT 1),"
        " (SELECT 1 FROM queue WHERE owner IS NULL AND not_before > 0 AND name = ?2"
        " AND not_before <= ?3 LIMIT 1)",
        (task.id, task.name, now),
    ).fetchone()
    waits = ready or due
    if exists:
        return False, None
    if not queued and not waits:
        started = _create_started(
            conn, task, priority, rank, owner, lease_until, starting, int(token)
        )
        return True, started
    if not _enqueue(conn, task, priority, 0.0, rank):
        return False, None
    for claim in _claim(conn, owner, {task.name: 1}, 1, now, lease_until):
        mine = task if claim.task_id == task.id else None
        return True, (claim, _start_claimed(conn, claim, starting, mine))
    return True, None


def _answering(
    answer: Callable[[T | BackendError], object],
) -> Callable[[outcome.Outcome[T]], None]:
    """A database call's answer callback that hands ``answer`` the value, or
    the BackendError (the database's errors are all BackendError)."""

    def answered(result: outcome.Outcome[T]) -> None:
        if isinstance(result, outcome.Value):
            answer(result.value)
        elif isinstance(result, outcome.Error):
            error = result.error
            if not isinstance(error, BackendError):
                error = BackendError(f"{type(error).__name__}: {error}")
            answer(error)

    return answered


def _if_created(on_stored: Callable[[], None]) -> Callable[[bool | tuple[bool, Any]], None]:
    """A commit callback (on the database thread) that calls ``on_stored``
    when the enqueue's answer says the task was created."""

    def committed(answer: bool | tuple[bool, Any]) -> None:
        if answer if isinstance(answer, bool) else answer[0]:
            on_stored()

    return committed


def _create(conn: sqlite3.Connection, task: StoredTask) -> bool:
    return _insert(conn, "INSERT OR IGNORE", task, task.state_data, task.args_data)


def _insert(
    conn: sqlite3.Connection, verb: str, task: StoredTask, state: bytes, args: bytes
) -> bool:
    """Write a new task's row (``verb``: INSERT, or INSERT OR IGNORE), with
    large arguments in ``large_args``; whether the row was written."""
    apart = len(args) >= ARGS_APART_LIMIT
    cursor = conn.execute(
        f"{verb} INTO tasks ({_INSERTED_COLUMNS}) VALUES ({_TASK_VALUES})",
        (
            task.id,
            task.name,
            task.status.value,
            task.token,
            task.created_at,
            task.expires_at,
            state,
            None if apart else args,
        ),
    )
    if cursor.rowcount != 1:
        return False
    if apart:
        conn.execute("INSERT OR REPLACE INTO large_args (id, args) VALUES (?, ?)", (task.id, args))
    return True


class DiskCacheStore(Store):
    """Records in ``errands.db``, results in the ``results/`` diskcache."""

    def __init__(self, db: Database, *, durable_files: bool) -> None:
        self._db = db
        self.durable_files = durable_files
        self._results_cache: diskcache.Cache | None = None
        self._limiter = trio.CapacityLimiter(4)

    @property
    def _results(self) -> diskcache.Cache:
        if self._results_cache is None:
            raise BackendError("the diskcache backend is not open")
        return self._results_cache

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread; its failures raised as BackendError."""
        where = "?" if self._results_cache is None else self._results_cache.directory
        what = f"the result cache {where} failed"
        return await trio.to_thread.run_sync(_guarded, what, fn, *args, limiter=self._limiter)

    async def create(self, task: StoredTask) -> bool:
        def create(conn: sqlite3.Connection) -> bool:
            return _create(conn, task)

        return await self._db.run(create)

    async def get(self, task_id: str) -> StoredTask | None:
        def get(conn: sqlite3.Connection) -> StoredTask | None:
            row = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks t WHERE t.id = ?", (task_id,)
            ).fetchone()
            return None if row is None else _stored(row)

        return await self._db.run(get, write=False)

    async def get_state(self, task_id: str) -> StoredTask | None:
        return await self._db.run(lambda conn: _state(conn, task_id), write=False)

    async def get_many(
        self, task_ids: Collection[str], *, arguments: bool = True
    ) -> dict[str, StoredTask]:
        ids = list(task_ids)
        columns = _TASK_COLUMNS if arguments else _LISTED_COLUMNS
        build = _stored if arguments else _listed

        def get_many(conn: sqlite3.Connection) -> dict[str, StoredTask]:
            sql = f"SELECT {columns} FROM tasks t WHERE t.id IN ({{marks}})"
            return {row[0]: build(row) for row in _rows_by_ids(conn, sql, ids)}

        return await self._db.run(get_many, write=False)

    async def transition(
        self,
        task: StoredTask,
        *,
        expect: TaskStatus,
        token: int | None = None,
        result: Payload | None = None,
    ) -> bool:
        return await self._transition(task, expect=expect, token=token, result=result)

    async def _transition(
        self,
        task: StoredTask,
        *,
        expect: TaskStatus,
        token: int | None,
        result: Payload | None,
        then: Callable[[sqlite3.Connection], object] | None = None,
        flush: Flush = Flush.NOW,
    ) -> bool:
        """:meth:`transition`, and ``then(conn)`` in the same transaction
        whether or not the record moved."""
        check_transition(expect, task.status)
        key = f"{task.id}:{task.token}"
        expedited = self._db.expedites
        inline = result is None or len(result.data) < INLINE_RESULT_LIMIT
        if not inline:
            # A large result goes to diskcache first, under this attempt's own
            # token; only the compare-and-set below makes it the task's result.
            assert result is not None
            keep = max((task.expires_at or 0.0) - time.time(), 0.0) + 3600.0
            await self._in_thread(self._write_result, key, result, keep)
        transition = self._transition_write(task, expect, token, result if inline else None, then)
        if flush is Flush.SOON and self._db.expedites != expedited:
            # A waiter came while a large result was written: its expedite
            # found nothing held yet, so this end is not to be held either.
            flush = Flush.AWAITED
        moved = await self._db.run(transition, flush=flush)
        if not moved and not inline:
            await self._in_thread(self._results.delete, key)
        return moved

    @staticmethod
    def _transition_write(
        task: StoredTask,
        expect: TaskStatus,
        token: int | None,
        inline: Payload | None,
        then: Callable[[sqlite3.Connection], object] | None,
    ) -> Callable[[sqlite3.Connection], bool]:
        """The write of :meth:`_transition` (``inline``: a small result,
        stored with the record)."""
        data = task.state_data  # the arguments, written once, never change

        def transition(conn: sqlite3.Connection) -> bool:
            sql = (
                "UPDATE tasks SET name = ?, status = ?, token = ?, expires_at = ?, data = ?"
                " WHERE id = ? AND status = ?"
            )
            params: tuple[Any, ...] = (
                task.name,
                task.status.value,
                task.token,
                task.expires_at,
                data,
                task.id,
                expect.value,
            )
            if token is not None:
                sql += " AND token = ?"
                params += (token,)
            moved = conn.execute(sql, params).rowcount == 1
            if moved and inline is not None:
                # Small results commit with the status change, in the same
                # transaction (and the same group commit).
                conn.execute(
                    "INSERT OR REPLACE INTO results (id, media_type, data) VALUES (?, ?, ?)",
                    (task.id, inline.media_type, inline.data),
                )
            if then is not None:
                then(conn)
            return moved

        return transition

    def _write_result(self, key: str, result: Payload, keep: float) -> None:
        # With durable_files, the disk fsyncs the value's file and folder
        # before this returns, so before the record says the result exists.
        self._results.set(key, bytes(result.data), expire=keep, tag=result.media_type)

    async def get_result(self, task_id: str) -> Payload | None:
        def find(conn: sqlite3.Connection) -> int | Payload | None:
            row = conn.execute(
                "SELECT t.token, r.media_type, r.data FROM tasks t"
                " LEFT JOIN results r ON r.id = t.id WHERE t.id = ? AND t.status = ?",
                (task_id, TaskStatus.SUCCESS.value),
            ).fetchone()
            if row is None:
                return None
            token, media_type, data = row
            if media_type is not None:
                return Payload(media_type=media_type, data=bytes(data))
            return int(token)  # a large result, in diskcache

        found = await self._db.run(find, write=False)
        if found is None or isinstance(found, Payload):
            return found
        return await self._in_thread(self._read_result, f"{task_id}:{found}")

    async def get_with_results(
        self, task_ids: Collection[str]
    ) -> dict[str, tuple[StoredTask, Payload | None]]:
        ids = list(task_ids)
        success = TaskStatus.SUCCESS.value

        def find(
            conn: sqlite3.Connection,
        ) -> tuple[dict[str, tuple[StoredTask, Payload | None]], dict[str, int]]:
            found: dict[str, tuple[StoredTask, Payload | None]] = {}
            large: dict[str, int] = {}  # task id -> token: in diskcache
            sql = (
                f"SELECT {_LISTED_COLUMNS}, r.media_type, r.data FROM tasks t"
                " LEFT JOIN results r ON r.id = t.id WHERE t.id IN ({marks})"
            )
            for row in _rows_by_ids(conn, sql, ids):
                task = _listed(row[:8])
                media_type, data = row[8], row[9]
                payload = None
                if task.status.value == success:
                    if media_type is not None:
                        payload = Payload(media_type=media_type, data=bytes(data))
                    else:
                        large[task.id] = task.token
                found[task.id] = (task, payload)
            return found, large

        found, large = await self._db.run(find, write=False)
        for task_id, payload in (await self._large_results(large)).items():
            found[task_id] = (found[task_id][0], payload)
        return found

    async def get_results(self, task_ids: Collection[str]) -> dict[str, Payload]:
        ids = list(task_ids)

        def find(conn: sqlite3.Connection) -> tuple[dict[str, Payload], dict[str, int]]:
            small: dict[str, Payload] = {}
            large: dict[str, int] = {}  # task id -> token: in diskcache
            sql = (
                "SELECT t.id, t.token, r.media_type, r.data FROM tasks t"
                " LEFT JOIN results r ON r.id = t.id WHERE t.id IN ({marks}) AND t.status = ?"
            )
            for task_id, token, media_type, data in _rows_by_ids(
                conn, sql, ids, TaskStatus.SUCCESS.value
            ):
                if media_type is not None:
                    small[task_id] = Payload(media_type=media_type, data=bytes(data))
                else:
                    large[task_id] = int(token)
            return small, large

        found, large = await self._db.run(find, write=False)
        for task_id, payload in (await self._large_results(large)).items():
            if payload is not None:
                found[task_id] = payload
        return found

    async def _large_results(self, large: dict[str, int]) -> dict[str, Payload | None]:
        """The results kept in diskcache's files (task id -> its token), read
        in one thread hop; None where a file is gone."""
        if not large:
            return {}

        def read() -> dict[str, Payload | None]:
            return {i: self._read_result(f"{i}:{token}") for i, token in large.items()}

        return await self._in_thread(read)

    def _read_result(self, key: str) -> Payload | None:
        try:
            value, tag = self._results.get(key, default=None, tag=True)
        except BackendError as exc:  # refused by _InertDisk
            raise BackendError(f"stored result {key} is not errands data: {exc}") from exc
        if value is None:
            return None
        if not isinstance(value, bytes) or not isinstance(tag, str):
            raise BackendError(f"stored result {key} is not errands data")
        return Payload(media_type=tag, data=value)

    async def delete(self, task_id: str) -> bool:
        return await self._delete(task_id, expired_by=None)

    async def delete_expired(self, task_id: str, now: float) -> bool:
        return await self._delete(task_id, expired_by=now)

    async def _delete(self, task_id: str, *, expired_by: float | None) -> bool:
        def delete(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT token, expires_at FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row is None:
                return None
            if expired_by is not None and (row[1] is None or row[1] > expired_by):
                return None  # compare-and-delete: not (or no longer) expired
            conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            conn.execute("DELETE FROM large_args WHERE id = ?", (task_id,))
            conn.execute("DELETE FROM results WHERE id = ?", (task_id,))
            if expired_by is None:  # (an expired id is deleted to be used anew)
                _drop_empty_batches(conn, [task_id])
            return int(row[0])

        token = await self._db.run(delete)
        if token is None:
            return False
        await self._in_thread(self._results.delete, f"{task_id}:{token}")
        return True

    async def add_batch_members(self, batch_id: str, members: Sequence[tuple[int, str]]) -> None:
        await self._db.run(lambda conn: _add_members(conn, batch_id, members))

    async def batch_members(
        self, batch_id: str, *, offset: int = 0, limit: int | None = None
    ) -> list[tuple[int, str]]:
        def members(conn: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT position, task_id FROM batches WHERE batch_id = ?"
                " ORDER BY position LIMIT ? OFFSET ?",
                (batch_id, -1 if limit is None else limit, offset),
            )
            return [(int(position), str(task_id)) for position, task_id in rows]

        return await self._db.run(members, write=False)

    async def batch_counts(self, batch_id: str, *, now: float) -> dict[str, int]:
        """One query: the members joined to their tasks' status and expiry,
        grouped (a member without a record, or past its expiry, is expired)."""

        def count(conn: sqlite3.Connection) -> list[tuple[str | None, int]]:
            rows = conn.execute(
                "SELECT CASE WHEN t.id IS NULL OR t.expires_at <= ? THEN NULL"
                " ELSE t.status END, count(*)"
                " FROM batches b LEFT JOIN tasks t ON t.id = b.task_id"
                " WHERE b.batch_id = ? GROUP BY 1",
                (now, batch_id),
            )
            return [(status, int(n)) for status, n in rows]

        counts = dict.fromkeys((s.value for s in TaskStatus), 0)
        total = 0
        for status, n in await self._db.run(count, write=False):
            key = "expired" if status is None else status
            counts[key] = counts.get(key, 0) + n
            total += n
        counts["total"] = total
        return counts

    async def list(
        self,
        *,
        name: str | None = None,
        status: TaskStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        arguments: bool = True,
    ) -> list[StoredTask]:
        """Without ``arguments``, the arguments are not read (50 tasks of
        1 MB each: 65 MB copied out of SQLite per listing)."""
        columns = _TASK_COLUMNS if arguments else _LISTED_COLUMNS
        build = _stored if arguments else _listed

        def rows(conn: sqlite3.Connection) -> list[StoredTask]:
            where, params = [], []
            if name is not None:
                where.append("t.name = ?")
                params.append(name)
            if status is not None:
                where.append("t.status = ?")
                params.append(status.value)
            sql = f"SELECT {columns} FROM tasks t"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY t.created_at DESC, t.id LIMIT ? OFFSET ?"
            return [build(r) for r in conn.execute(sql, (*params, limit, offset))]

        return await self._db.run(rows, write=False)

    async def newest_ends(self, limit: int) -> NewestEnds:
        """One query; ``finished_at`` is read out of the record's JSON by
        SQLite, the record never decoded (the dashboard reads the newest 500
        up to four times a second: 27 ms a read when each was decoded)."""

        def rows(conn: sqlite3.Connection) -> NewestEnds:
            query = conn.execute(
                "SELECT status, expires_at, json_extract(CAST(data AS TEXT), '$.finished_at')"
                " FROM tasks ORDER BY created_at DESC, id LIMIT ?",
                (limit,),
            )
            return [(TaskStatus(status), expires, ended) for status, expires, ended in query]

        return await self._db.run(rows, write=False)

    async def purge_expired(self, now: float) -> int:
        def purge(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            gone = conn.execute(
                "SELECT id, token FROM tasks WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now,),
            ).fetchall()
            conn.executemany("DELETE FROM results WHERE id = ?", [(i,) for i, _ in gone])
            conn.executemany("DELETE FROM large_args WHERE id = ?", [(i,) for i, _ in gone])
            conn.execute(
                "DELETE FROM tasks WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            )
            _drop_empty_batches(conn, [str(i) for i, _ in gone])
            return [(str(i), int(t)) for i, t in gone]

        gone = await self._db.run(purge)

        def drop_results() -> None:
            for task_id, token in gone:
                self._results.delete(f"{task_id}:{token}")
            self._results.expire()  # results of attempts that lost their claim

        await self._in_thread(drop_results)
        return len(gone)


def _acker(claim: Claim) -> Callable[[sqlite3.Connection], None]:
    """The ack of a run's end, in its transaction: the claim's entry goes,
    unless the record was put back to pending meanwhile (the release that
    follows makes its entry wait again)."""

    def ack(conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM queue WHERE id = ?1 AND token = ?2 AND owner IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND status = 'pending')",
            (claim.task_id, claim.token),
        )

    return ack


class DiskCacheBackend(Backend):
    """Tasks in a directory on this machine: durable, shared by its processes.

    Args:
        directory: where the data lives (created if missing).
        poll_interval: seconds between looks for work and changes made by
            other processes.
        synchronous: ``"FULL"`` (default: committed writes survive power
            loss) or ``"NORMAL"`` (they survive process crashes only).
    """

    queue: DiskCacheQueue
    store: DiskCacheStore
    starts_on_enqueue = True
    reports_stored = True  # a submit's commit, on the database thread
    enqueues_from_threads = True  # on the database thread, without the engine's loop
    finishes_soon = True  # a run's end queued for the database thread, answered after

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        poll_interval: float = 0.1,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError('synchronous must be "FULL" or "NORMAL"')
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        self._synchronous = synchronous
        self._db = Database(self.directory / "errands.db", setup=_setup, synchronous=synchronous)
        self._owners = OwnerLocks(self.directory / "owners")
        self.queue = DiskCacheQueue(self._db, poll_interval, self._owners)
        self.store = DiskCacheStore(self._db, durable_files=synchronous == "FULL")
        self._opened = 0
        #: What ``Database.version`` said at the last ``changed_tasks``.
        self._version: tuple[int, int] | None = None
        #: Whether more than one engine had this object open since then.
        self._shared = False

    async def open(self) -> None:
        """Create the directory if needed and open the database and result cache."""
        self._opened += 1
        if self._opened > 1:
            self._shared = True
            await trio.lowlevel.checkpoint()
            return
        try:
            await trio.to_thread.run_sync(self._prepare)
            await self._db.open()
        except BaseException:
            self._opened -= 1
            cache, self.store._results_cache = self.store._results_cache, None
            if cache is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(cache.close)
            raise
        self._version = self._db.first_version  # changes from here on count

    def _prepare(self) -> None:
        """Make the directory and its folders private, and open the result cache."""
        what = f"cannot use {self.directory} for errands data"
        _guarded(what, self._make_private)
        cache = _guarded(
            what,
            diskcache.Cache,
            str(self.directory / "results"),
            disk=_InertDisk,
            eviction_policy="none",
            sqlite_synchronous=2 if self._synchronous == "FULL" else 1,
        )
        cache.disk.durable = self.store.durable_files
        self.store._results_cache = cache

    def _make_private(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.stat(self.directory).st_mode & stat.S_ISVTX:
            raise BackendError(
                f"{self.directory} is a shared directory (sticky bit, like /tmp); "
                "give errands a directory of its own"
            )
        private_directory(self.directory)
        if not os.access(self.directory, os.R_OK | os.W_OK | os.X_OK):
            raise BackendError(f"{self.directory} is not readable and writable")
        private_directory(self.directory / "owners")
        results = self.directory / "results"
        private_directory(results)
        # diskcache's SQLite files, created private before it opens them
        # (SQLite gives -wal and -shm the mode of the database file).
        private_file(results / "cache.db")
        for name in ("cache.db-wal", "cache.db-shm"):
            private_file(results / name, create=False)

    async def changed_tasks(self) -> Collection[str] | None:
        """After ``poll_interval``: None (any waited task may have changed)
        when another process committed a change to the database since the
        last call, else nothing (``()``).

        SQLite's ``data_version`` tells the commits of other connections
        from this one's own.  Without it, the change watcher read every
        waited task at each poll in every process, for changes that in a
        process alone on its directory nobody else makes (a batch of 8,000
        tasks waited on: 26.7 reads a task).  Engines that share this
        backend object write through one connection and each hears only of
        its own changes: then it is always None, and once more after the
        others closed (for what they wrote just before).
        """
        assert self.poll_interval is not None  # positive, by the constructor
        await trio.sleep(self.poll_interval)
        version = await self._db.version()
        last, self._version = self._version, version
        shared, self._shared = self._shared, self._opened > 1
        if version != last or shared:
            return None
        return ()

    async def begin(self, task: StoredTask, *, claim: Claim) -> bool:
        """Check the claim and move the record ``pending -> in_progress`` in one transaction."""
        check_transition(TaskStatus.PENDING, task.status)
        data = task.state_data

        def begin(conn: sqlite3.Connection) -> bool:
            if not _holds(conn, claim):
                return False
            cursor = conn.execute(
                "UPDATE tasks SET status = ?, token = ?, expires_at = ?, data = ?"
                " WHERE id = ? AND status = ?",
                (
                    task.status.value,
                    task.token,
                    task.expires_at,
                    data,
                    task.id,
                    TaskStatus.PENDING.value,
                ),
            )
            return cursor.rowcount == 1

        return await self._db.run(begin, flush=Flush.LAZY)

    async def start(
        self, claim: Claim, *, starting: Callable[[StoredTask], StoredTask]
    ) -> StoredTask | None:
        """Read the record, check the claim and move the record ``pending ->
        in_progress``, in one transaction."""
        failed: list[BaseException] = []

        def start(conn: sqlite3.Connection) -> StoredTask | None:
            row = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks t JOIN queue q ON q.id = t.id"
                " WHERE t.id = ? AND t.status = ? AND q.token = ? AND q.owner IS NOT NULL",
                (claim.task_id, TaskStatus.PENDING.value, claim.token),
            ).fetchone()
            if row is None:  # not pending, or the claim is no longer held
                return None
            try:
                begun = starting(_stored(row))
                check_transition(TaskStatus.PENDING, begun.status)
                data = begun.state_data
            except Exception as exc:  # the engine's, not the database's: raised as it is
                failed.append(exc)
                return None
            conn.execute(
                "UPDATE tasks SET status = ?, token = ?, expires_at = ?, data = ? WHERE id = ?",
                (begun.status.value, begun.token, begun.expires_at, data, begun.id),
            )
            return begun

        # LAZY: a start lost at a power cut leaves the task pending, to run again.
        begun = await self._db.run(start, flush=Flush.LAZY)
        if failed:
            raise failed[0]
        return begun

    async def claim_and_start(
        self,
        *,
        owner: str,
        quotas: Mapping[str, int],
        limit: int,
        now: float,
        lease_until: float,
        starting: Callable[[Claim, StoredTask], StoredTask],
    ) -> list[tuple[Claim, StoredTask | None]]:
        """Claim, then move each claimed ``pending`` record to ``in_progress``,
        in one transaction."""
        await self.queue.hold_owner_lock(owner)

        def claim_and_start(conn: sqlite3.Connection) -> list[tuple[Claim, StoredTask | None]]:
            claims = _claim(conn, owner, quotas, limit, now, lease_until)
            pending = _pending_records(conn, [claim.task_id for claim in claims])
            return [
                (claim, _start_claimed(conn, claim, starting, pending.get(claim.task_id), True))
                for claim in claims
            ]

        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):  # begun, it finishes: the engine sees every claim
            # LAZY: a claim or start lost at a power cut is claimed again.
            started = await self._db.run(claim_and_start, flush=Flush.LAZY)
        return started

    async def finish(
        self,
        task: StoredTask,
        *,
        claim: Claim,
        result: Payload | None = None,
        waited: bool = False,
    ) -> bool:
        """Move the record and ack the claim in one transaction."""
        # SOON: durable before the runner hears back, sharing a submit's fsync
        # if one comes.  AWAITED (not held) when someone waits on it: the
        # submit that would share the commit is the waiter's next one, which
        # waits for this end.
        return await self.store._transition(
            task,
            expect=TaskStatus.IN_PROGRESS,
            token=claim.token,
            result=result,
            then=_acker(claim),
            flush=Flush.AWAITED if waited else Flush.SOON,
        )

    def finish_soon(
        self,
        task: StoredTask,
        *,
        claim: Claim,
        result: Payload | None = None,
        waited: bool = False,
        answer: Callable[[bool | BackendError], object],
    ) -> bool:
        """:meth:`finish`'s one write, queued for the database thread now
        (see :meth:`Backend.finish_soon`); a result stored apart is left to
        :meth:`finish`, which writes its file first."""
        if result is not None and len(result.data) >= INLINE_RESULT_LIMIT:
            return False
        check_transition(TaskStatus.IN_PROGRESS, task.status)
        transition = DiskCacheStore._transition_write(
            task, TaskStatus.IN_PROGRESS, claim.token, result, _acker(claim)
        )

        def stored(moved: outcome.Outcome[bool]) -> None:
            if isinstance(moved, outcome.Error):
                error = moved.error  # the database says BackendError
                if not isinstance(error, BackendError):
                    error = BackendError(f"ending task {task.id} failed: {error!r}")
                answer(error)
            else:
                answer(moved.unwrap())

        try:
            self._db.call_soon(
                transition, flush=Flush.AWAITED if waited else Flush.SOON, callback=stored
            )
        except BackendError:
            return False  # not open: finish() says so, and is retried
        return True

    def expedite(self) -> None:
        self._db.expedite()

    async def state_and_position(self, task_id: str) -> tuple[StoredTask | None, int | None]:
        """Both in one transaction (see :meth:`Backend.state_and_position`):
        a status of a waiting task costs one trip to the database, not two."""
        queue = self.queue

        def read(conn: sqlite3.Connection) -> tuple[StoredTask | None, int | None]:
            stored = _state(conn, task_id)
            if stored is None or stored.status is not TaskStatus.PENDING:
                return stored, None
            return stored, queue._position(conn, task_id)

        return await self._db.run(read, write=False)

    async def enqueue(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> bool:
        def enqueue(conn: sqlite3.Connection) -> bool:
            return _enqueue(conn, task, priority, not_before, rank)

        committed = None if on_stored is None else _if_created(on_stored)
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):  # begun, it finishes: the caller gets the id
            created = await self._db.run(enqueue, committed=committed)
        return created

    def enqueue_from_thread(
        self,
        task: StoredTask,
        *,
        priority: int,
        not_before: float,
        rank: float | None,
        answer: Callable[[bool | BackendError], object],
        then: Callable[[], object] | None = None,
    ) -> None:
        def enqueue(conn: sqlite3.Connection) -> bool:
            return _enqueue(conn, task, priority, not_before, rank)

        self._db.call_from_thread(enqueue, _answering(answer), then)

    def enqueue_and_start_from_thread(
        self,
        task: StoredTask,
        *,
        priority: int,
        rank: float | None,
        owner: str,
        now: float,
        lease_until: float,
        starting: Callable[[Claim, StoredTask], StoredTask],
        answer: Callable[
            [tuple[bool, tuple[Claim, StoredTask | None] | None] | BackendError], object
        ],
        then: Callable[[], object] | None = None,
    ) -> bool:
        if not self.queue.holds_owner_lock(owner):
            return False  # its first claim takes it, on the engine's loop

        def enqueue(
            conn: sqlite3.Connection,
        ) -> tuple[bool, tuple[Claim, StoredTask | None] | None]:
            return _enqueue_and_start(conn, task, priority, rank, owner, now, lease_until, starting)

        self._db.call_from_thread(enqueue, _answering(answer), then)
        return True

    async def enqueue_and_start(
        self,
        task: StoredTask,
        *,
        priority: int,
        rank: float | None = None,
        owner: str,
        now: float,
        lease_until: float,
        starting: Callable[[Claim, StoredTask], StoredTask],
        on_stored: Callable[[], None] | None = None,
    ) -> tuple[bool, tuple[Claim, StoredTask | None] | None]:
        """Create, queue, claim and start in one transaction (committed as a
        submit is: durable before it returns).  When no ready task of its
        name waits, the new task is written claimed and started at once: its
        ``pending`` record is never written, nor its entry claimed apart."""
        await self.queue.hold_owner_lock(owner)

        def enqueue(
            conn: sqlite3.Connection,
        ) -> tuple[bool, tuple[Claim, StoredTask | None] | None]:
            return _enqueue_and_start(conn, task, priority, rank, owner, now, lease_until, starting)

        committed = None if on_stored is None else _if_created(on_stored)
        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):  # begun, it finishes: the caller gets the id
            answer = await self._db.run(enqueue, committed=committed)
        return answer

    async def enqueue_many(
        self,
        tasks: Sequence[StoredTask],
        *,
        priority: int,
        not_before: float,
        rank: float | None = None,
        batch_id: str,
        positions: Sequence[int],
    ) -> list[bool]:
        members = list(zip(positions, (t.id for t in tasks), strict=True))

        def enqueue(conn: sqlite3.Connection) -> list[bool]:
            _add_members(conn, batch_id, members)
            answers = []
            with _Puts(conn) as put:
                for task in tasks:
                    created = _create(conn, task)
                    if created:
                        put(task.id, task.name, priority, not_before, rank)
                    answers.append(created)
            return answers

        await trio.lowlevel.checkpoint_if_cancelled()
        with trio.CancelScope(shield=True):  # one transaction: all of the chunk or none
            answers = await self._db.run(enqueue)
        return answers

    async def aclose(self) -> None:
        """Close the database and the result cache (after the last engine using it)."""
        self._opened -= 1
        if self._opened > 0:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True):
            try:
                await self._db.aclose()
            finally:
                try:
                    what = f"cannot release the owner locks in {self._owners.directory}"
                    await trio.to_thread.run_sync(_guarded, what, self._owners.release_all)
                finally:
                    cache, self.store._results_cache = self.store._results_cache, None
                    if cache is not None:
                        what = f"cannot close the result cache {cache.directory}"
                        await trio.to_thread.run_sync(_guarded, what, cache.close)

    @classmethod
    def from_url(cls, url: str) -> DiskCacheBackend:
        """``diskcache:///absolute/path`` or ``diskcache://./relative/path``."""
        _, _, rest = url.partition("://")
        if rest.startswith("/") or rest.startswith("./") or rest.startswith("../"):
            return cls(rest)
        raise BackendError(
            f"diskcache URL {url!r} needs a path: diskcache:///absolute/path or "
            "diskcache://./relative/path"
        )

    def __repr__(self) -> str:
        return f"DiskCacheBackend({str(self.directory)!r})"
