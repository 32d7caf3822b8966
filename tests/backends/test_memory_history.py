"""The memory backend keeps a long history cheaply: final records and results
as bytes, which Python's garbage collector never walks."""

from __future__ import annotations

import gc

import pytest

import errands
from errands import TaskStatus
from errands._model import TaskError, TaskRecord, pack_record, unpack_record
from errands._records import finished, started
from errands.backends import MemoryBackend
from tests.tools import sample_records

svc = errands.Service("history")


@svc.task
async def double(x: int, tags: list[str]) -> dict[str, object]:
    return {"x": 2 * x, "tags": tags}


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def count_unpacks(
    monkeypatch: pytest.MonkeyPatch, *, with_args: list[bool] | None = None
) -> list[bytes]:
    """The packed records unpacked from now on (``unpack_record`` still
    unpacks them), one entry each; ``with_args`` gets whether each unpacked
    the arguments too."""
    from errands import _model

    unpacked: list[bytes] = []
    real = _model.unpack_record

    def counting(packed: bytes, *, args: bool = True) -> TaskRecord:
        unpacked.append(packed)
        if with_args is not None:
            with_args.append(args)
        return real(packed, args=args)

    monkeypatch.setattr(_model, "unpack_record", counting)
    return unpacked


async def test_finished_tasks_add_no_objects_for_the_collector_to_walk() -> None:
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend, workers=64) as client:

        async def burst(n: int) -> list[errands.AsyncTask]:
            tasks = [await client.double.submit(x=i, tags=["a", "b"]) for i in range(n)]
            for task in tasks:
                assert await task.wait(timeout=30) is TaskStatus.SUCCESS
            return tasks

        await burst(500)  # warm: every code path and cache once
        before = _tracked()
        tasks = await burst(2_000)
        ids = [task.id for task in tasks]
        del tasks
        after = _tracked()
        # Each finished task is two entries of plain values (its record, as
        # a tuple of scalars and bytes, and its result); the record objects
        # a task once had are gone.  (As objects,
        # a finished task left about seven tracked objects behind.)
        assert after - before < 200, after - before  # not even one per ten tasks
        # And reads give the same answers.
        assert await client.get_task(ids[7]).get() == {"x": 14, "tags": ["a", "b"]}
        info = await client.get_task(ids[7]).get_info()
        assert info.status is TaskStatus.SUCCESS and info.attempt == 1
        assert [a.outcome.value for a in info.attempts] == ["success"]
        listed = await client.engine.list(status=TaskStatus.SUCCESS, limit=3000)
        assert {i.id for i in listed} >= set(ids)


def test_a_packed_record_unpacks_equal() -> None:
    records = sample_records()
    for each in records:
        assert unpack_record(pack_record(each)) == each
    back = unpack_record(pack_record(records[3]))
    assert back.status is TaskStatus.FAILURE and back.error == TaskError(
        type="ValueError", message="bad é"
    )
    assert [a.outcome.value for a in back.attempts] == ["failure", "failure"]


@svc.task
def size(data: bytes, label: str = "") -> int:
    return len(data)


def test_large_flat_arguments_are_kept_apart_not_copied() -> None:
    """Arguments of strings and scalars that hold a long string (the base64
    of a ``bytes`` argument) are kept as their items beside the packed rest:
    the string is not copied, each unpack gives a new dict, and the whole
    leaves the collector's sight like the packed bytes do."""
    text = "QUJD" * 40_000
    record = TaskRecord(
        id="abcdefghijklmnopqrstuv",
        name="size",
        args={"data": text, "label": "x", "n": 1, "f": None},
        status=TaskStatus.PENDING,
        created_at=1.0,
    )
    done = finished(started(record, token=1, now=2.0), status=TaskStatus.SUCCESS, now=3.0)
    packed = pack_record(done)
    assert isinstance(packed, tuple)
    one, two = unpack_record(packed), unpack_record(packed)
    assert one == done and two == done
    assert one.args["data"] is text and one.args is not two.args
    assert unpack_record(packed, args=False).args == {}
    for _ in range(3):  # a tuple is untracked once what it holds is
        gc.collect()
    assert not gc.is_tracked(packed)
    # Small or nested arguments are packed into the bytes, as before.
    small = pack_record(done.replace(args={"data": "QUJD", "n": 1}))
    nested = pack_record(done.replace(args={"data": text, "more": [1]}))
    assert isinstance(small, bytes) and isinstance(nested, bytes)
    assert unpack_record(nested).args == {"data": text, "more": [1]}


async def test_a_large_argument_runs_ends_and_retries_on_the_memory_backend() -> None:
    data = bytes(range(256)) * 1024
    async with errands.open_engine(svc) as client:
        task = await client.size.submit(data=data, label="big")
        assert await task.wait(timeout=30) is TaskStatus.SUCCESS
        assert await task.get() == len(data)
        again = await task.retry()  # the arguments read back from the final record
        assert await again.wait(timeout=30) is TaskStatus.SUCCESS
        assert await again.get() == len(data)
        info = await again.get_info()
        assert info.status is TaskStatus.SUCCESS


async def test_records_whose_arguments_do_not_pack_are_kept_as_objects() -> None:
    """Arguments are JSON data when they come from a submit; a record built
    by other code may hold anything, and is then kept as it is."""
    backend = MemoryBackend()
    odd = TaskRecord(
        id="abcdefghijklmnopqrstuw",
        name="double",
        args={"x": object()},
        status=TaskStatus.PENDING,
        created_at=1.0,
    )
    store = backend.store
    stored = errands.StoredTask.from_record(odd)
    assert await store.create(stored)
    done = finished(started(odd, token=1, now=2.0), status=TaskStatus.CANCELLED, now=3.0)
    begun = errands.StoredTask.from_record(started(odd, token=1, now=2.0))
    assert await store.transition(begun, expect=TaskStatus.PENDING)
    assert await store.transition(
        errands.StoredTask.from_record(done), expect=TaskStatus.IN_PROGRESS
    )
    got = await store.get(odd.id)
    assert got is not None and got.record == done and got.status is TaskStatus.CANCELLED


async def test_listing_unpacks_only_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """``list()`` filters and orders the history by its side columns: a page's
    records are unpacked when read, and a listing of live tasks unpacks none."""
    unpacks = count_unpacks(monkeypatch)
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend) as client:
        tasks = [await client.double.submit(x=i, tags=[]) for i in range(300)]
        for task in tasks:
            await task.wait(timeout=30)
        store = backend.store
        unpacks.clear()
        assert await store.list(status=TaskStatus.IN_PROGRESS) == []
        assert await store.list(status=TaskStatus.PENDING) == []
        assert len(unpacks) == 0
        page = await store.list(limit=5, offset=10)
        assert len(unpacks) == 0 and len(page) == 5
        assert all(t.record.id == t.id for t in page)
        assert len(unpacks) == 5
        every = await store.list(limit=1000)
        assert len(every) == 300
        # Newest first; tasks created at the same moment in id order (as the
        # diskcache backend orders them).
        keys = [(-t.created_at, t.id) for t in every]
        assert keys == sorted(keys)
        assert [t.id for t in page] == [t.id for t in every[10:15]]
        assert await store.list(name="nothing") == []
        assert len(await store.list(name="double", status=TaskStatus.SUCCESS, limit=1000)) == 300


async def test_reads_of_the_status_alone_unpack_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's counts, waits and reads of the stored status and expiry use
    the scalars kept beside each final record: nothing is unpacked (counting
    a finished batch of 10,000 unpacked every record: about 15 µs a member)."""
    unpacks = count_unpacks(monkeypatch)
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend) as client:
        batch = await client.double.submit_many([{"x": i, "tags": ["t"]} for i in range(200)])
        counts = await batch.wait(timeout=30)
        assert counts["success"] == 200 and counts["total"] == 200
        assert await batch.counts() == counts
        store = backend.store
        found = await store.get_many([t.id for t in batch.tasks])
        assert {t.status for t in found.values()} == {TaskStatus.SUCCESS}
        assert all(t.expires_at is not None and t.token > 0 for t in found.values())
        assert len(unpacks) == 0
        # The record itself is still there, whole, when it is read.
        info = await batch.tasks[3].get_info()
        assert info.status is TaskStatus.SUCCESS and len(unpacks) == 1
        assert await batch.tasks[3].get() == {"x": 6, "tags": ["t"]}


async def test_statuses_and_listings_leave_the_arguments_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A final record's arguments are packed after the rest: its status,
    its info, a listing and the dashboard's summary unpack the rest alone
    (arguments may be megabytes: listing 50 tasks of 1 MB each took 44 ms);
    what needs the arguments (a retry) unpacks them."""
    with_args: list[bool] = []
    count_unpacks(monkeypatch, with_args=with_args)
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend) as client:
        task = await client.double.submit(x=3, tags=["a"])
        assert await task.wait(timeout=30) is TaskStatus.SUCCESS
        assert (await task.get_info()).status is TaskStatus.SUCCESS
        assert await task.get_status() is TaskStatus.SUCCESS
        [listed] = await client.engine.list()
        assert listed.id == task.id
        [(status, _, ended)] = await backend.store.newest_ends(10)
        assert status is TaskStatus.SUCCESS and ended is not None
        assert with_args and not any(with_args), with_args
        again = await task.retry()
        assert with_args[-1] is True  # the arguments, unpacked for the retry
        assert await again.wait(timeout=30) is TaskStatus.SUCCESS
        assert await again.get() == {"x": 6, "tags": ["a"]}
