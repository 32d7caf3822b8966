"""Storage faults in the diskcache backend arrive as ``BackendError`` (the raw
error kept as ``__cause__``), never kill its database thread, and never leave
a caller waiting forever.  A full disk is real: a file-size limit
(RLIMIT_FSIZE) set in a child process."""

from __future__ import annotations

import functools
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from errands import BackendError
from errands.backends import DiskCacheBackend
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


async def test_owner_lock_failures_arrive_as_backend_error(tmp_path: Path) -> None:
    backend = DiskCacheBackend(tmp_path / "data")
    await backend.open()
    try:
        owners = tmp_path / "data" / "owners"
        shutil.rmtree(owners, ignore_errors=True)
        owners.write_text("in the way")
        with trio.fail_after(10), pytest.raises(BackendError) as caught:
            await backend.queue.claim(
                owner="host:1:x", quotas={"job": 1}, limit=1, now=1.0, lease_until=2.0
            )
        assert isinstance(caught.value.__cause__, OSError)
    finally:
        await backend.aclose()


FULL_DISK = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path

    import attrs, trio

    from errands import BackendError, Payload, StoredTask, TaskStatus
    from errands._model import TaskRecord, new_task_id
    from errands.backends import DiskCacheBackend

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    _, HARD = resource.getrlimit(resource.RLIMIT_FSIZE)
    data = Path(sys.argv[1])
    report = {}

    def describe(exc):
        return [type(exc).__name__, type(exc.__cause__).__name__]

    async def enqueue(backend):
        rec = TaskRecord(id=new_task_id(), name="job", args={"pad": "x" * 2000},
                         status=TaskStatus.PENDING, created_at=1.0)
        assert await backend.enqueue(StoredTask.from_record(rec), priority=0, not_before=0.0)
        return rec

    async def claimed(backend):
        rec = await enqueue(backend)
        [claim] = await backend.queue.claim(
            owner="host:1:x", quotas={"job": 1}, limit=1, now=2.0, lease_until=1e12
        )
        running = attrs.evolve(rec, status=TaskStatus.IN_PROGRESS, token=claim.token)
        assert await backend.store.transition(StoredTask.from_record(running),
                                              expect=TaskStatus.PENDING)
        return running

    async def finish(backend, running, payload):
        done = attrs.evolve(running, status=TaskStatus.SUCCESS)
        return await backend.store.transition(
            StoredTask.from_record(done), expect=TaskStatus.IN_PROGRESS,
            token=running.token, result=payload,
        )

    async def main():
        backend = DiskCacheBackend(data)
        await backend.open()
        running = await claimed(backend)
        accepted = [(await enqueue(backend)).id]
        limit = max(p.stat().st_size for p in data.rglob("*") if p.is_file()) + 256 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, HARD))
        big = Payload(media_type="image/png", data=b"\\x89PNG" + bytes(limit + 65536))
        try:
            await finish(backend, running, big)
        except Exception as exc:
            report["large_result"] = describe(exc)
        for _ in range(2000):
            try:
                accepted.append((await enqueue(backend)).id)
            except Exception as exc:
                report["enqueue"] = describe(exc)
                break
        report["accepted_under_limit"] = len(accepted)
        try:
            report["read_under_limit"] = (await backend.store.get(accepted[0])) is not None
        except Exception as exc:
            report["read_under_limit"] = describe(exc)

        resource.setrlimit(resource.RLIMIT_FSIZE, (HARD, HARD))
        for _ in range(20):
            accepted.append((await enqueue(backend)).id)
        report["large_after"] = await finish(backend, running, big)
        report["large_read_back"] = await backend.store.get_result(running.id) == big
        await backend.aclose()

        backend = DiskCacheBackend(data)  # reopened: what was accepted is all there
        await backend.open()
        found = await backend.store.get_many(accepted)
        queued = [await backend.queue.contains(i) for i in accepted]
        report["lost"] = len(accepted) - len(found)
        report["queued"] = all(queued)
        report["large_after_reopen"] = await backend.store.get_result(running.id) == big
        await backend.aclose()
        results = data / "results"
        report["value_files"] = len(list(results.rglob("*.val")))
        report["empty_folders"] = [
            str(p) for p in results.rglob("*") if p.is_dir() and not any(p.iterdir())
        ]

    trio.run(main)
    print(json.dumps(report))
    """
)


def test_a_full_disk_is_a_backend_error_and_loses_nothing_accepted(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["large_result"][0] == "BackendError", report
    assert report["enqueue"][0] == "BackendError", report
    assert report["accepted_under_limit"] > 1, report  # the limit was reached by enqueues
    assert report["read_under_limit"] is True, report
    assert report["large_after"] is True and report["large_read_back"] is True, report
    assert report["lost"] == 0 and report["queued"] is True, report
    assert report["large_after_reopen"] is True, report
    assert report["value_files"] == 1 and report["empty_folders"] == [], report  # no debris


THREAD_SUBMITS_ON_A_FULL_DISK = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path

    import errands
    from errands.backends import DiskCacheBackend

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    _, HARD = resource.getrlimit(resource.RLIMIT_FSIZE)
    data = Path(sys.argv[1])
    svc = errands.Service("full")

    @svc.task(concurrency=1)
    async def hold(pad: str) -> None:
        import trio

        await trio.sleep(3600)

    report = {}
    with errands.start(svc, backend=DiskCacheBackend(data), grace=0.1) as client:
        accepted = [client.hold.submit(pad="x").id]
        limit = max(p.stat().st_size for p in data.rglob("*") if p.is_file()) + 256 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, HARD))
        for _ in range(5000):
            try:
                accepted.append(client.hold.submit(pad="x" * 2000).id)
            except errands.EngineUnavailable as exc:
                report["refused"] = [str(exc).startswith("the task was not accepted"),
                                     exc.retry_after]
                break
        report["accepted_under_limit"] = len(accepted)
        report["fault_seen"] = client.statistics().storage_error is not None
        resource.setrlimit(resource.RLIMIT_FSIZE, (HARD, HARD))
        for _ in range(20):
            accepted.append(client.hold.submit(pad="y").id)
        report["fault_cleared"] = client.statistics().storage_error is None
    with errands.start(svc, backend=DiskCacheBackend(data), grace=0.1) as client:
        lost = 0
        for task_id in accepted:
            try:
                client.get_task(task_id).get_status()
            except errands.TaskNotFound:
                lost += 1
        report["lost"] = lost
    print(json.dumps(report))
    """
)


def test_submits_from_a_thread_on_a_full_disk_are_refused_and_lose_nothing(
    tmp_path: Path,
) -> None:
    """Submits from a plain thread, stored by the database thread without
    the engine's loop: a full disk refuses them with EngineUnavailable (the
    engine's health says so until a submit is stored again), and every
    submit that returned a task is there for the next engine."""
    done = subprocess.run(
        [sys.executable, "-c", THREAD_SUBMITS_ON_A_FULL_DISK, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["refused"] == [True, 1.0], report
    assert report["accepted_under_limit"] > 1, report  # the limit was reached by submits
    assert report["fault_seen"] is True and report["fault_cleared"] is True, report
    assert report["lost"] == 0, report
