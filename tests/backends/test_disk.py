"""The diskcache backend beyond the conformance suite: its directory, bad data
on disk, restarts, and telling dead owners at once.  Real files, real
processes, real clock (the backend's thread does real work)."""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

import errands
from errands import Renewal, TaskStatus
from errands._model import StoredTask, TaskRecord, new_task_id
from errands._registry import resolve_backend
from errands.backends import DiskCacheBackend, disk
from errands.backends._owners import OwnerLocks
from errands.backends.disk import ARGS_APART_LIMIT, FORMAT_VERSION, DiskCacheStore

pytestmark = pytest.mark.realtime

svc = errands.Service("disk")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task(batchable=True, max_batch_size=8, max_latency_ms=5)
async def lengths(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


@svc.task
def measure(data: bytes) -> int:
    return sum(data[:1000]) + len(data)


@svc.task(ttl=1)
async def brief() -> bytes:
    return b"\x89PNG" + bytes(200_000)  # large: kept in diskcache's files


async def test_missing_directory_is_created(tmp_path: Path) -> None:
    where = tmp_path / "a" / "b" / "c"
    async with errands.open_engine(svc, backend=DiskCacheBackend(where)) as client:
        task = await client.add.submit(a=1, b=2)
        assert await task.wait(timeout=10) is TaskStatus.SUCCESS
    assert (where / "errands.db").is_file()


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = resolve_backend(f"diskcache://{tmp_path}/x")
    assert isinstance(backend, DiskCacheBackend) and backend.directory == tmp_path / "x"
    monkeypatch.chdir(tmp_path)
    backend = resolve_backend("diskcache://./rel/dir")
    assert isinstance(backend, DiskCacheBackend) and backend.directory == Path("./rel/dir")
    with pytest.raises(errands.BackendError, match="needs a path"):
        resolve_backend("diskcache://nowhere")


async def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    with pytest.raises(errands.BackendError, match="cannot use"):
        async with errands.open_engine(svc, backend=DiskCacheBackend(blocker)):
            pass
    assert blocker.read_text() == "not a directory"  # left alone


async def test_a_corrupt_database_is_a_clear_error_and_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "errands.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(errands.BackendError, match="not a usable errands database"):
        async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)):
            pass
    assert (tmp_path / "errands.db").read_bytes().startswith(b"this is not sqlite")


async def test_data_from_an_incompatible_version_is_refused(tmp_path: Path) -> None:
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        task = await client.add.submit(a=1, b=1)
        await task.wait(timeout=10)
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(errands.BackendError, match="format '99'"):
        async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)):
            pass
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone() == (1,)  # nothing lost


#: The queue table as errands made it before priority aging (format "1").
_QUEUE_BEFORE_AGING = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta (key, value) VALUES ('format', '1'), ('seq', '4'), ('token', '1');
CREATE TABLE queue (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    not_before REAL NOT NULL,
    owner TEXT,
    token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_waiting ON queue (name, priority DESC, seq) WHERE owner IS NULL;
INSERT INTO queue (id, name, priority, seq, not_before) VALUES
    ('low-1', 'job', 0, 1, 0), ('high', 'job', 5, 2, 0), ('low-2', 'job', 0, 3, 0);
INSERT INTO queue (id, name, priority, seq, not_before, owner, token, lease_until)
    VALUES ('held', 'job', 7, 4, 0, 'gone', 1, 10);
"""


async def test_a_queue_made_before_priority_aging_is_migrated(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.executescript(_QUEUE_BEFORE_AGING)
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    try:
        q = backend.queue
        # Entries keep the order they had: priority, then put order.
        assert [await q.position(i) for i in ("high", "low-1", "low-2")] == [0, 1, 2]
        await q.put("new", name="job", rank=-4.5)  # ranked between priority 5 and 0
        [expired] = await q.expired(100.0)
        assert await q.release("held", expired.token)  # no rank given: -priority, first
        claims = await q.claim(owner="w", quotas={"job": 9}, limit=9, now=100.0, lease_until=130.0)
        assert [c.task_id for c in claims] == ["held", "high", "new", "low-1", "low-2"]
    finally:
        await backend.aclose()
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "queue_ranked" in indexes and "queue_waiting" not in indexes
        ranks = dict(conn.execute("SELECT id, rank FROM queue"))
    assert ranks == {"held": -7, "high": -5, "new": -4.5, "low-1": 0, "low-2": 0}
    backend = DiskCacheBackend(tmp_path)  # opening again changes nothing
    await backend.open()
    await backend.aclose()
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        assert dict(conn.execute("SELECT id, rank FROM queue")) == ranks


def _waiting_counted(path: Path) -> tuple[int, dict[str, int]]:
    """The waiting entries of the queue, counted the slow way (all, by name)."""
    with sqlite3.connect(path / "errands.db") as conn:
        named = dict(
            conn.execute("SELECT name, COUNT(*) FROM queue WHERE owner IS NULL GROUP BY name")
        )
    return sum(named.values()), named


async def _depths(backend: DiskCacheBackend, names: list[str]) -> tuple[int, dict[str, int]]:
    q = backend.queue
    named = {name: await q.depth(name) for name in names}
    return await q.depth(), {name: n for name, n in named.items() if n}


T = TypeVar("T")


async def _steps(backend: DiskCacheBackend, call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``await call()``, and the SQLite virtual-machine steps the backend's
    connection took meanwhile (a progress handler called at every step)."""
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    def count(conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(step, 1)

    def stop(conn: sqlite3.Connection) -> None:
        conn.set_progress_handler(None, 1)

    await backend._db.run(count, write=False)
    steps[0] = 0
    try:
        answer = await call()
    finally:
        taken = steps[0]
        await backend._db.run(stop, write=False)
    return answer, taken


async def test_the_queue_depth_follows_every_move_of_an_entry(tmp_path: Path) -> None:
    """``depth()`` answers from counts the database keeps as entries come
    and go: after each kind of move they equal a count of the queue."""
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    q = backend.queue
    names = ["a", "b"]

    async def check() -> None:
        assert await _depths(backend, names) == _waiting_counted(tmp_path)

    try:
        ids = [new_task_id() for _ in range(8)]
        for i, task_id in enumerate(ids):
            await q.put(task_id, name=names[i % 2], not_before=500.0 if i == 7 else 0.0)
        await q.put(ids[0], name="a")  # already there: nothing moves
        await check()
        assert await q.depth() == 8
        quotas = {"a": 2, "b": 1}
        claims = await q.claim(owner="w", quotas=quotas, limit=3, now=1.0, lease_until=60.0)
        await check()
        assert await q.depth() == 5
        assert await q.release(claims[0].task_id, claims[0].token, not_before=2.0)
        await check()
        assert await q.ack(claims[1].task_id, claims[1].token)
        assert await q.request_cancel(claims[2].task_id)
        renewal = await q.renew(claims[2].task_id, claims[2].token, lease_until=90.0)
        assert renewal is Renewal.CANCEL_REQUESTED
        await check()
        assert await q.remove(ids[7])  # the delayed one
        assert not await q.remove(claims[2].task_id)  # claimed: stays
        await check()
        [lost] = await q.expired(100.0)
        assert await q.release(lost.task_id, lost.token)
        await check()
        record = StoredTask.from_record(
            TaskRecord(
                id=new_task_id(), name="b", args={}, status=TaskStatus.PENDING, created_at=1.0
            )
        )
        assert await backend.enqueue(record, priority=0, not_before=0.0)
        await check()
        assert await q.depth() == 7 and await q.depth("b") == 3 and await q.depth("c") == 0
    finally:
        await backend.aclose()


async def test_the_queue_depth_is_read_without_counting_the_queue(tmp_path: Path) -> None:
    """The depth of a deep queue costs what a shallow one's does (SQLite's
    virtual-machine steps, counted by a progress handler on the backend's
    connection), where counting the entries took steps in proportion."""
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    q = backend.queue

    async def depths() -> tuple[int, int]:
        return await q.depth(), await q.depth("job")

    async def steps_of_depth() -> int:
        (total, named), taken = await _steps(backend, depths)
        assert total == named
        return taken

    async def put(n: int) -> None:
        async with trio.open_nursery() as nursery:  # shares commits
            for _ in range(n):
                nursery.start_soon(functools.partial(q.put, new_task_id(), name="job"))

    try:
        await put(10)
        shallow = await steps_of_depth()
        await put(3000)
        assert await q.depth() == 3010
        deep = await steps_of_depth()
    finally:
        await backend.aclose()
    assert deep <= shallow + 20, (shallow, deep)


async def test_positions_deep_in_a_queue_are_read_from_its_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a queue of more than ``EXACT_POSITIONS`` waiting entries of one
    name whose positions are asked often, positions come from the name's
    order, read once and kept for ``ORDER_FRESH`` seconds: a status polled
    again costs SQLite the same steps whatever the queue's depth (a count
    of the entries ahead took steps in proportion).  A short queue's
    positions, and the first ones asked of a deep queue, are counted."""
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    q = backend.queue

    async def position_and_steps(task_id: str) -> tuple[int | None, int]:
        return await _steps(backend, functools.partial(q.position, task_id))

    def counted(task_id: str) -> int:
        with sqlite3.connect(tmp_path / "errands.db") as conn:
            name, rank, seq = conn.execute(
                "SELECT name, rank, seq FROM queue WHERE id = ?", (task_id,)
            ).fetchone()
            (ahead,) = conn.execute(
                "SELECT COUNT(*) FROM queue WHERE owner IS NULL AND name = ?"
                " AND (rank < ? OR (rank = ? AND seq < ?))",
                (name, rank, rank, seq),
            ).fetchone()
        return int(ahead)

    try:
        ids = [new_task_id() for _ in range(3000)]
        for task_id in ids[:10]:
            await q.put(task_id, name="job")
        shallow, shallow_steps = await position_and_steps(ids[9])
        assert shallow == counted(ids[9]) == 9  # counted: exact
        async with trio.open_nursery() as nursery:
            for task_id in ids[10:-1]:
                nursery.start_soon(functools.partial(q.put, task_id, name="job"))
        await q.put(ids[-1], name="job")
        await q.put(new_task_id(), name="other")
        await q.put(ids[-1], name="job")  # already waiting: unchanged
        for _ in range(disk.COUNTS_BEFORE_ORDER):  # counted, exact
            first, first_steps = await position_and_steps(ids[-1])
            assert first == counted(ids[-1]) == 2999
            assert first_steps > 3000
        assert await q.position(ids[-1]) == 2999  # reads the order
        again, again_steps = await position_and_steps(ids[-1])
        middle, middle_steps = await position_and_steps(ids[1500])
        assert (again, middle) == (2999, counted(ids[1500]))
        assert max(again_steps, middle_steps) <= shallow_steps + 20, (
            shallow_steps,
            again_steps,
            middle_steps,
        )
        claims = await q.claim(owner="w", quotas={"job": 5}, limit=5, now=1.0, lease_until=9.0)
        assert len(claims) == 5
        assert await q.position(claims[0].task_id) is None  # not waiting any more
        assert await q.position(ids[-1]) == 2999  # from the order read before the claims
        monkeypatch.setattr(disk, "ORDER_FRESH", 0.0)  # too old now: read again
        assert await q.position(ids[-1]) == counted(ids[-1]) == 2994
    finally:
        await backend.aclose()


async def test_tasks_waiting_for_later_cost_nothing_to_the_ready_ones(tmp_path: Path) -> None:
    """Entries delayed till later are kept out of the ready order and
    looked up by when they are due: a claim, a submit that starts its task
    and the next due time cost SQLite the same steps with 3,000 of them
    waiting as with 10 (each walked past all of them before).  Once due
    they are claimed in rank order among the ready ones, as before."""
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    q = backend.queue

    async def steps_of(call: Callable[[], Awaitable[object]]) -> tuple[object, int]:
        return await _steps(backend, call)

    def new_task() -> StoredTask:
        return StoredTask.from_record(
            TaskRecord(
                id=new_task_id(), name="job", args={}, status=TaskStatus.PENDING, created_at=1.0
            )
        )

    async def costs() -> list[int]:
        ready = new_task_id()
        await q.put(ready, name="job", rank=5.0)
        claims, claim = await steps_of(
            lambda: q.claim(owner="w", quotas={"job": 1}, limit=1, now=100.0, lease_until=130.0)
        )
        assert [c.task_id for c in claims] == [ready]  # type: ignore[attr-defined]
        due, next_due = await steps_of(lambda: q.next_due(["job"]))
        assert due == 10_000.0
        started, submit = await steps_of(
            lambda: backend.enqueue_and_start(
                new_task(),
                priority=0,
                owner="w",
                now=100.0,
                lease_until=130.0,
                starting=lambda claim, pending: pending,
            )
        )
        assert started[1] is not None  # type: ignore[index]
        return [claim, next_due, submit]

    async def delay(n: int) -> None:
        async with trio.open_nursery() as nursery:  # shares commits
            for i in range(n):
                put = functools.partial(q.put, new_task_id(), name="job", rank=float(i % 7))
                nursery.start_soon(functools.partial(put, not_before=10_000.0 + i))

    try:
        await delay(10)
        few = await costs()
        await delay(3000)
        many = await costs()
        assert all(m <= f + 50 for f, m in zip(few, many, strict=True)), (few, many)
        # Due: claimed in rank order with the ready ones.
        await q.put("ready-late", name="job", rank=0.5)
        await q.put("due-first", name="job", not_before=50.0, rank=0.0)
        await q.put("due-last", name="job", not_before=60.0, rank=1.0)
        assert await q.next_due(["job"]) == 0.0  # ready ones wait
        claims = await q.claim(owner="w", quotas={"job": 9}, limit=9, now=100.0, lease_until=130.0)
        order = [c.task_id for c in claims]
        assert order[:3] == ["due-first", "ready-late", "due-last"], order
    finally:
        await backend.aclose()


async def test_depth_counts_are_made_for_a_queue_that_had_none(tmp_path: Path) -> None:
    """A database written before the counts were kept (or by a process that
    dropped them) gets them, counted, when opened; writes that bypass this
    errands (an older one sharing the directory) keep them right, since the
    database itself keeps them."""
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    try:
        for name in ("a", "a", "b"):
            await backend.queue.put(new_task_id(), name=name)
    finally:
        await backend.aclose()
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        for (trigger,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall():
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE queue_depth")
        conn.execute(
            "INSERT INTO queue (id, name, priority, seq, not_before, rank)"
            " VALUES ('x', 'b', 0, 9, 0, 0)"
        )
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    try:
        assert await _depths(backend, ["a", "b"]) == (4, {"a": 2, "b": 2})
        with sqlite3.connect(tmp_path / "errands.db") as conn:  # as an older errands writes
            conn.execute("DELETE FROM queue WHERE id = 'x'")
            conn.execute(
                "INSERT INTO queue (id, name, priority, seq, not_before, rank, owner)"
                " VALUES ('y', 'c', 0, 10, 0, 0, 'elsewhere')"
            )
            conn.execute("UPDATE queue SET owner = NULL WHERE id = 'y'")
        assert await _depths(backend, ["a", "b", "c"]) == (4, {"a": 2, "b": 1, "c": 1})
        assert await _depths(backend, ["a", "b", "c"]) == _waiting_counted(tmp_path)
    finally:
        await backend.aclose()


async def test_a_task_s_arguments_are_written_once_apart_from_its_record(
    tmp_path: Path,
) -> None:
    """``args`` holds the arguments, written when the task is created;
    ``data``, rewritten at each change (start, end), never holds them: large
    arguments (an image, a document) were written, fsynced and encoded to
    JSON again at each change."""
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        task = await client.add.submit(a=40, b=2)
        await task.wait(timeout=10)
        again = await task.retry()  # the arguments read back whole
        await again.wait(timeout=10)
        assert await task.get() == await again.get() == 42
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        rows = dict(conn.execute("SELECT id, data FROM tasks"))
        args = dict(conn.execute("SELECT id, args FROM tasks"))
        updates = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        assert conn.execute("SELECT COUNT(*) FROM large_args").fetchone() == (0,)
    assert updates == (FORMAT_VERSION,)
    for task_id in (task.id, again.id):
        assert json.loads(args[task_id]) == {"a": 40, "b": 2}
        record = json.loads(rows[task_id])
        assert "args" not in record and record["status"] == "success"


async def test_large_arguments_are_kept_out_of_the_task_s_row(tmp_path: Path) -> None:
    """Arguments of ``ARGS_APART_LIMIT`` bytes or more live in ``large_args``:
    SQLite rewrites a whole row, overflow pages included, at each change of
    it (the start, the end), and a task given 5 MB of bytes took 127 ms from
    submit to ``get()``, 49 ms with them apart.  They read back whole (a
    run, a retry), a listing reads none of them, and a delete or a purge
    drops them with the task."""
    data = bytes(range(256)) * (ARGS_APART_LIMIT // 256)
    expected = sum(data[:1000]) + len(data)
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        ran = await client.measure.submit(data=data)  # started in its submit
        queued = await client.measure.options(delay=0.1).submit(data=data)  # claimed later
        small = await client.add.submit(a=1, b=2)
        for task in (ran, queued, small):
            assert await task.wait(timeout=10) is TaskStatus.SUCCESS
        again = await ran.retry()  # the arguments read back whole
        assert await again.wait(timeout=10) is TaskStatus.SUCCESS
        assert await ran.get() == await queued.get() == await again.get() == expected
        listed = await client.engine.backend.store.list(arguments=False)
        assert {t.id for t in listed} == {ran.id, queued.id, small.id, again.id}
        for row in listed:
            with pytest.raises(RuntimeError, match="not read"):
                row.record  # noqa: B018
            assert row.info().status is TaskStatus.SUCCESS
        [whole] = [t for t in await client.engine.backend.store.list() if t.id == ran.id]
        assert whole.record.args == {"data": base64.b64encode(data).decode()}  # as stored
        with sqlite3.connect(tmp_path / "errands.db") as conn:
            in_row = dict(conn.execute("SELECT id, args FROM tasks"))
            apart = dict(conn.execute("SELECT id, args FROM large_args"))
        assert in_row[ran.id] is in_row[queued.id] is in_row[again.id] is None
        assert json.loads(in_row[small.id]) == {"a": 1, "b": 2}
        assert apart.keys() == {ran.id, queued.id, again.id}
        assert await client.engine.backend.store.delete(queued.id)
    async with errands.open_engine(  # two days on: the sweeper purges the rest
        svc,
        backend=DiskCacheBackend(tmp_path),
        sweep_interval=0.2,
        clock=lambda: time.time() + 2 * 86400,
    ):
        await trio.sleep(0.6)
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM large_args").fetchone() == (0,)


async def test_statuses_and_listings_never_decode_the_arguments(tmp_path: Path) -> None:
    """A task's status and a listing read the record without its arguments
    (which may be megabytes: listing 50 tasks of 1 MB each decoded 65 MB of
    JSON, 131 ms, now 56): arguments that no longer decode do not show
    there; what needs them (a run, a cancel, a retry) reports them."""
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        task = await client.add.options(delay=3600).submit(a=1, b=2)
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE tasks SET args = ? WHERE id = ?", (b"{not json", task.id))
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        handle = client.get_task(task.id)
        assert await handle.get_status() is TaskStatus.PENDING
        assert (await handle.get_info()).status is TaskStatus.PENDING
        with pytest.raises(errands.TaskNotReady):  # get() reads no arguments either
            await handle.get()
        [listed] = await client.engine.list()
        assert listed.id == task.id and listed.status is TaskStatus.PENDING
        # Not even read for a listing (typeof(), not the value: 50 tasks of
        # 1 MB each, 56 -> 3.5 ms).
        [row] = await client.engine.backend.store.list(arguments=False)
        with pytest.raises(RuntimeError, match="not read"):
            row.record  # noqa: B018
        # Nor for a many-task wait (nor a poll for other processes' changes).
        assert await client.engine.wait_any([task.id], 0) == {}
        read = await client.engine.backend.store.get_many([task.id], arguments=False)
        with pytest.raises(RuntimeError, match="not read"):
            read[task.id].record  # noqa: B018
        with pytest.raises(errands.BackendError, match="unreadable"):
            await client.engine.load(task.id)  # the whole record: its arguments too


#: A task as format "1" stored it: the whole record, arguments included, in ``data``.
_FORMAT_1_RECORD = {
    "id": "Kh0yYgm3SUS2Fo4yNWz6WQ",
    "name": "add",
    "args": {"a": 1, "b": 2},
    "status": "pending",
    "created_at": 1_800_000_000.0,
    "attempt": 0,
    "max_attempts": 3,
    "priority": 0,
    "ttl": 86400.0,
}


async def test_tasks_stored_whole_by_format_1_are_split_when_opened(tmp_path: Path) -> None:
    """A database of format "1" opens: each record's arguments move to
    ``args`` (by SQLite, once), a record that is not JSON stays as it was, and
    the tasks run as they would have."""
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    await backend.aclose()  # a database of this format, with no task
    old = dict(_FORMAT_1_RECORD)
    broken = "Ab0yYgm3SUS2Fo4yNWz6WQ"
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'format'")
        for task_id, data in ((old["id"], json.dumps(old).encode()), (broken, b"{garbage")):
            conn.execute(
                "INSERT INTO tasks (id, name, status, token, created_at, expires_at, data)"
                " VALUES (?, 'add', 'pending', 0, 1800000000.0, NULL, ?)",
                (task_id, data),
            )
        conn.execute(
            "INSERT INTO queue (id, name, priority, seq, not_before) VALUES (?, 'add', 0, 1, 0)",
            (old["id"],),
        )
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        moved = client.get_task(old["id"])
        assert await moved.wait(timeout=10) is TaskStatus.SUCCESS
        assert await moved.get() == 3
        with pytest.raises(errands.BackendError, match="unreadable"):
            await client.get_task(broken).get_status()
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (
            FORMAT_VERSION,
        )
        data, args = conn.execute(
            "SELECT data, args FROM tasks WHERE id = ?", (old["id"],)
        ).fetchone()
        assert json.loads(args) == {"a": 1, "b": 2} and "args" not in json.loads(data)
        assert conn.execute("SELECT data, args FROM tasks WHERE id = ?", (broken,)).fetchone() == (
            b"{garbage",
            None,
        )


async def test_a_status_a_wait_and_a_long_poll_read_no_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what runs, cancels or retries a task reads its arguments: a
    status, an info, a wait and a long poll of its changes read the record
    without them (5 MB of bytes are 6.7 MB of base64, about 5 ms of SQLite
    per read, and ``next_change`` decoded them too)."""
    read: list[str] = []
    whole_get = DiskCacheStore.get

    async def get(self: DiskCacheStore, task_id: str) -> StoredTask | None:
        read.append(task_id)
        return await whole_get(self, task_id)

    monkeypatch.setattr(DiskCacheStore, "get", get)
    data = bytes(ARGS_APART_LIMIT)
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        task = await client.measure.options(delay=3600).submit(data=data)
        assert await task.get_status() is TaskStatus.PENDING
        assert (await task.get_info()).status is TaskStatus.PENDING
        with pytest.raises(TimeoutError):
            await task.wait(timeout=0.05)
        with pytest.raises(TimeoutError):
            await client.engine.next_change(task.id, await task.get_info(), timeout=0.05)
        assert read == []
        assert await task.cancel() is TaskStatus.CANCELLED  # reads it, as it must
        assert read == [task.id]


async def test_large_arguments_in_a_format_2_row_still_run(tmp_path: Path) -> None:
    """Format "2" kept every task's arguments in its row: such a database
    opens (now format "3", nothing moved), and its waiting task with large
    arguments runs with them."""
    backend = DiskCacheBackend(tmp_path)
    await backend.open()
    await backend.aclose()
    data = bytes(ARGS_APART_LIMIT)
    old = {key: value for key, value in _FORMAT_1_RECORD.items() if key != "args"}
    old["name"] = "measure"
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'format'")
        conn.execute(
            "INSERT INTO tasks (id, name, status, token, created_at, expires_at, data, args)"
            " VALUES (?, 'measure', 'pending', 0, 1800000000.0, NULL, ?, ?)",
            (
                old["id"],
                json.dumps(old).encode(),
                json.dumps({"data": base64.b64encode(data).decode()}).encode(),
            ),
        )
        conn.execute(
            "INSERT INTO queue (id, name, priority, seq, not_before)"
            " VALUES (?, 'measure', 0, 1, 0)",
            (old["id"],),
        )
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        task = client.get_task(old["id"])
        assert await task.wait(timeout=10) is TaskStatus.SUCCESS
        assert await task.get() == len(data)
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == ("3",)
        assert conn.execute("SELECT COUNT(*) FROM large_args").fetchone() == (0,)


async def test_an_unreadable_record_is_an_error_not_a_loss(tmp_path: Path) -> None:
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        task = await client.add.submit(a=1, b=1)
        await task.wait(timeout=10)
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (b"{garbage", task.id))
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        handle = client.get_task(task.id)
        with pytest.raises(errands.BackendError, match=f"record of task {task.id} is unreadable"):
            await handle.get_status()
        # wait() and get() read the stored status (and get() the stored
        # result) alone, never decoding the record: the task ended, and its
        # result is intact.
        assert await handle.wait(timeout=10) is TaskStatus.SUCCESS
        assert await handle.get() == 2


async def test_a_batch_counts_by_the_stored_status_alone(tmp_path: Path) -> None:
    """Counting a batch reads each member's stored status and expiry, never
    its record (decoding every member's JSON was most of the counts' cost):
    an unreadable member is counted, and the others are not harmed."""
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        batch = await client.add.submit_many([{"a": i, "b": 1} for i in range(20)])
        assert (await batch.wait(timeout=30))["success"] == 20
    bad = batch.tasks[4].id
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (b"{garbage", bad))
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        again = await client.get_batch(batch.id)
        counts = await again.counts()
        assert counts["success"] == 20 and counts["total"] == 20
        with pytest.raises(errands.BackendError, match=f"record of task {bad} is unreadable"):
            await client.get_task(bad).get_status()
        assert await client.get_task(batch.tasks[5].id).get() == 6


async def test_restart_resumes_pending_and_keeps_results(tmp_path: Path) -> None:
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        done = await client.add.submit(a=2, b=3)
        await done.wait(timeout=10)
        image = await client.brief.submit()
        await image.wait(timeout=10)
        later = await client.add.options(delay=0.5).submit(a=40, b=2)
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        assert await client.get_task(done.id).get() == 5
        assert await client.get_task(later.id).wait(timeout=10) is TaskStatus.SUCCESS
        assert await client.get_task(later.id).get() == 42
    results = list((tmp_path / "results").rglob("*.val"))
    assert results, "the large result should live in diskcache's files"
    # brief has ttl=1: with the wall clock 5 s on it has expired, and the
    # sweeper removes it and its file.
    async with errands.open_engine(
        svc,
        backend=DiskCacheBackend(tmp_path),
        sweep_interval=0.2,
        clock=lambda: time.time() + 5,
    ) as client:
        with pytest.raises(errands.TaskNotFound):
            await client.get_task(image.id).get()
        await trio.sleep(0.6)
        assert await client.get_task(done.id).get() == 5
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM tasks WHERE id = ?", (image.id,)).fetchone() == (
            0,
        )
    assert not list((tmp_path / "results").rglob("*.val"))


def _hold_in_child(directory: Path, owner: str) -> subprocess.Popen[str]:
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from errands.backends._owners import OwnerLocks
        OwnerLocks(Path({str(directory)!r})).hold({owner!r})
        print("held", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_owner_locks_tell_a_dead_process_at_once(tmp_path: Path) -> None:
    import socket

    owner = f"{socket.gethostname()}:12345:abcdefgh"
    locks = OwnerLocks(tmp_path)
    assert not locks.is_dead(owner)  # no lock file: unknown, never judged dead
    with _hold_in_child(tmp_path, owner) as child:
        try:
            assert not locks.is_dead(owner)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            assert locks.is_dead(owner)
        finally:
            if child.poll() is None:
                child.kill()
    assert not locks.is_dead("another-host:1:x")


async def test_claims_of_a_killed_engine_are_recovered_without_waiting(tmp_path: Path) -> None:
    """kill -9 an engine holding a long task; a new engine with a 60 s lease
    re-runs it at once, because the dead owner's lock is gone."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time, errands
            svc = errands.Service("killme")

            def say(line):
                # One write per line: the task's thread and the main thread
                # print at about the same moment (print's pieces interleave).
                sys.stdout.write(line + "\\n")
                sys.stdout.flush()

            @svc.task
            def slow(tag: str) -> str:
                say(f"started {errands.current_task().attempt}")
                if errands.current_task().attempt == 1:
                    time.sleep(600)
                return tag

            if __name__ == "__main__":
                client = errands.start(svc, backend="diskcache://" + sys.argv[1], lease=60)
                task = client.slow.submit(tag="done")
                say(f"id {task.id}")
                time.sleep(600)
            """
        )
    )
    data = tmp_path / "data"
    task_id = _start_then_kill(script, data)
    sys.path.insert(0, str(tmp_path))
    try:
        import worker  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    started = time.monotonic()
    async with errands.open_engine(worker.svc, backend=DiskCacheBackend(data), lease=60) as client:
        task = client.get_task(task_id)
        assert await task.wait(timeout=20) is TaskStatus.SUCCESS
        assert await task.get() == "done"
        assert (await task.get_info()).attempt == 2
    assert time.monotonic() - started < 20  # far less than the 60 s lease


def _start_then_kill(script: Path, data: Path) -> str:
    """Run the worker until its task started, then SIGKILL it; return the task id."""
    with subprocess.Popen(
        [sys.executable, str(script), str(data)], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            lines = [child.stdout.readline().split() for _ in range(2)]
            assert any(line[:1] == ["id"] for line in lines), lines
            task_id = next(line[1] for line in lines if line[:1] == ["id"])
            assert ["started", "1"] in lines
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
    return task_id


async def test_large_results_are_fsynced_before_the_record_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        task = await client.brief.submit()
        assert await task.wait(timeout=10) is TaskStatus.SUCCESS
        assert len(await task.get()) == 200_004
    assert len(synced) >= 2  # the value's file and its folder
    synced.clear()
    async with errands.open_engine(
        svc, backend=DiskCacheBackend(tmp_path / "fast", synchronous="NORMAL")
    ) as client:
        task = await client.brief.submit()
        await task.wait(timeout=10)
    assert synced == []


async def test_an_unreadable_waiting_task_fails_alone(tmp_path: Path) -> None:
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        bad = await client.add.options(delay=0.1).submit(a=1, b=1)
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (b"{garbage", bad.id))
    await trio.sleep(0.2)  # due when the next engine opens: claimed first
    # One task slot: had the bad task kept it (retried as a storage fault),
    # the good one would never run and the engine would not be ready.
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path), workers=1) as client:
        good = await client.add.submit(a=2, b=2)
        assert await good.wait(timeout=10) is TaskStatus.SUCCESS
        assert await good.get() == 4
        failed = client.get_task(bad.id)
        assert await failed.wait(timeout=10) is TaskStatus.FAILURE
        info = await failed.get_info()
        assert info.error is not None and info.error.type == "UnreadableRecord"
        assert "unreadable" in info.error.message
        assert client.statistics().ready


async def test_an_unreadable_task_a_submit_started_as_the_engine_stopped_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit's write may claim and start the task that waits at the head
    of its name's queue.  If the write comes back once the engine began to
    stop, that task goes back to the queue, unless its stored record did
    not read: its start stored a placeholder, which must not wait in the
    queue as if it were the task (run later, with no arguments).  It is
    failed as unreadable, as it would be in a slot."""
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        bad = await client.add.options(delay=0.1).submit(a=1, b=1)
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (b"{garbage", bad.id))
    await trio.sleep(0.2)  # due: the submit below finds it at the head of the queue
    backend = DiskCacheBackend(tmp_path)
    looked = trio.Event()

    async def nothing(self: Any, *args: Any, **kwargs: Any) -> Any:
        looked.set()
        return []  # dispatch rounds claim nothing here: the submit's write does

    async def not_due(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(type(backend), "claim_and_start", nothing)
    monkeypatch.setattr(type(backend.queue), "next_due", not_due)
    real = type(backend).enqueue_and_start
    async with errands.open_engine(svc, backend=backend) as client:
        engine = client.engine

        async def stopping_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
            engine.core.stopping = True  # the engine begins to stop meanwhile
            return await real(self, *args, **kwargs)

        await looked.wait()  # the engine's first round has looked
        monkeypatch.setattr(type(backend), "enqueue_and_start", stopping_meanwhile)
        good = await client.add.submit(a=2, b=2)
        monkeypatch.setattr(type(backend), "enqueue_and_start", real)
        engine.core.stopping = False
        info = await client.get_task(bad.id).get_info()
        assert info.status is TaskStatus.FAILURE, info
        assert info.error is not None and info.error.type == "UnreadableRecord"
        assert await good.get_status() is TaskStatus.PENDING


async def test_an_unreadable_task_waiting_for_a_batch_fails_alone(tmp_path: Path) -> None:
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        bad = await client.lengths.options(delay=0.1).submit(texts=["x"])
    with sqlite3.connect(tmp_path / "errands.db") as conn:
        conn.execute("UPDATE tasks SET data = ? WHERE id = ?", (b"{garbage", bad.id))
    await trio.sleep(0.2)  # due when the next engine opens
    async with errands.open_engine(svc, backend=DiskCacheBackend(tmp_path)) as client:
        good = await client.lengths.submit(texts=["abc", "de"])
        assert await good.wait(timeout=10) is TaskStatus.SUCCESS
        assert await good.get() == [3, 2]
        failed = client.get_task(bad.id)
        assert await failed.wait(timeout=10) is TaskStatus.FAILURE
        info = await failed.get_info()
        assert info.error is not None and info.error.type == "UnreadableRecord"
        assert client.statistics().ready


def _record(name: str = "add") -> StoredTask:
    return StoredTask.from_record(
        TaskRecord(id=new_task_id(), name=name, args={}, status=TaskStatus.PENDING, created_at=1.0)
    )


async def test_changed_tasks_tells_another_connection_s_commits_from_its_own(
    tmp_path: Path,
) -> None:
    """``changed_tasks()`` answers nothing changed (``()``) while only this
    backend object wrote, and None (read every waited task) after another
    one on the directory (another process) committed."""
    backend = DiskCacheBackend(tmp_path / "data", poll_interval=0.01, synchronous="NORMAL")
    other = DiskCacheBackend(tmp_path / "data", poll_interval=0.01, synchronous="NORMAL")
    await backend.open()
    await other.open()
    try:
        assert await backend.changed_tasks() == ()
        assert await backend.store.create(_record())
        assert await backend.changed_tasks() == ()  # its own commit
        assert await other.store.create(_record())
        assert await backend.changed_tasks() is None
        assert await backend.changed_tasks() == ()
    finally:
        await other.aclose()
        await backend.aclose()


async def test_changed_tasks_reads_all_while_and_just_after_engines_share_the_object(
    tmp_path: Path,
) -> None:
    """Engines sharing one backend object commit through one connection,
    and SQLite counts none of those commits as another's: while two have
    it open, and at the first call after one closed (what it wrote just
    before closing), ``changed_tasks()`` answers None."""
    backend = DiskCacheBackend(tmp_path / "data", poll_interval=0.01, synchronous="NORMAL")
    await backend.open()
    try:
        await backend.open()  # a second engine
        assert await backend.changed_tasks() is None
        assert await backend.store.create(_record())  # by the second engine
        await backend.aclose()  # which then closes
        assert await backend.changed_tasks() is None
        assert await backend.changed_tasks() == ()
    finally:
        await backend.aclose()
