"""The one conformance suite of the Queue and Store contracts (engine/_backend.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import attrs
import pytest
import trio

from errands import (
    Backend,
    BackendError,
    Claim,
    InvalidTransition,
    Payload,
    Renewal,
    StoredTask,
    TaskStatus,
)
from errands._model import TaskRecord, new_task_id

P, R, S, F, C = (
    TaskStatus.PENDING,
    TaskStatus.IN_PROGRESS,
    TaskStatus.SUCCESS,
    TaskStatus.FAILURE,
    TaskStatus.CANCELLED,
)
NOW = 1_800_000_000.0


def record(name: str = "job", created_at: float = NOW, **changes: object) -> TaskRecord:
    base = TaskRecord(id=new_task_id(), name=name, args={"x": 1}, status=P, created_at=created_at)
    return attrs.evolve(base, **changes)


def stored(rec: TaskRecord) -> StoredTask:
    return StoredTask.from_record(rec)


def reloaded(task: StoredTask) -> StoredTask:
    """As another process would see it: rebuilt from bytes."""
    return StoredTask(
        id=task.id,
        name=task.name,
        status=task.status,
        token=task.token,
        created_at=task.created_at,
        expires_at=task.expires_at,
        data=task.data,
    )


async def claim_one(backend: Backend, name: str = "job", now: float = NOW, lease: float = 30):
    claims = await backend.queue.claim(
        owner="w1", quotas={name: 1}, limit=1, now=now, lease_until=now + lease
    )
    return claims[0] if claims else None


# ---------------------------------------------------------------- store


#: The two ways a run's end is stored: ``finish``, and ``finish_now`` where
#: the backend says it finishes at once (``Backend.finishes_now``).
ENDS = ["finish", "finish_now"]


async def end_run(
    backend: Backend, way: str, task: StoredTask, *, claim: Claim, result: Payload | None = None
) -> bool:
    """Store a run's end ``way``; a backend that does not finish at once
    refuses ``finish_now`` (and the end is then stored by ``finish``)."""
    if way == "finish_now":
        if backend.finishes_now:
            return backend.finish_now(task, claim=claim, result=result)
        with pytest.raises(NotImplementedError):
            backend.finish_now(task, claim=claim, result=result)
    return await backend.finish(task, claim=claim, result=result)


async def test_create_and_get(backend: Backend) -> None:
    rec = record()
    assert await backend.store.create(stored(rec))
    got = await backend.store.get(rec.id)
    assert got is not None
    assert (got.id, got.name, got.status, got.token) == (rec.id, "job", P, 0)
    assert reloaded(got).record == rec
    assert type(reloaded(got).record.status) is TaskStatus  # not a plain str
    assert await backend.store.get(new_task_id()) is None


async def test_get_many_reads_the_records_that_exist(backend: Backend) -> None:
    records = [record() for _ in range(3)]
    for rec in records:
        assert await backend.store.create(stored(rec))
    unknown = new_task_id()
    ids = [records[0].id, unknown, records[2].id, records[0].id]
    got = await backend.store.get_many(ids)
    assert sorted(got) == sorted([records[0].id, records[2].id])
    assert reloaded(got[records[2].id]).record == records[2]
    assert await backend.store.get_many([]) == {}
    many = [record() for _ in range(1200)]  # more than one SQL statement's worth
    for rec in many:
        await backend.store.create(stored(rec))
    got = await backend.store.get_many([r.id for r in many] + [unknown])
    assert len(got) == 1200 and unknown not in got


async def test_get_state_reads_the_record_as_a_status_needs_it(backend: Backend) -> None:
    """``get_state``: what a status, a wait or an info reads; the arguments
    left out where the backend keeps them apart (large ones are, on disk)."""
    small = record()
    large = record(args={"text": "x" * 100_000})
    for rec in (small, large):
        assert await backend.store.create(stored(rec))
        got = await backend.store.get_state(rec.id)
        assert got is not None
        assert (got.id, got.name, got.status, got.token) == (rec.id, "job", P, 0)
        assert got.without_args().status is P
        assert got.info() == stored(rec).info()
    running = attrs.evolve(large, status=R, attempt=1, token=7)
    assert await backend.store.transition(stored(running), expect=P)
    got = await backend.store.get_state(large.id)
    assert got is not None and (got.status, got.token) == (R, 7)
    assert got.without_args().attempt == 1
    assert await backend.store.get_state(new_task_id()) is None
    whole = await backend.store.get(large.id)
    assert whole is not None and whole.record.args == {"text": "x" * 100_000}


async def test_create_refuses_a_duplicate_id(backend: Backend) -> None:
    rec = record()
    assert await backend.store.create(stored(rec))
    assert not await backend.store.create(stored(attrs.evolve(rec, name="other")))
    got = await backend.store.get(rec.id)
    assert got is not None and got.name == "job"


async def test_transition_is_compare_and_set(backend: Backend) -> None:
    rec = record()
    await backend.store.create(stored(rec))
    running = attrs.evolve(rec, status=R, attempt=1, token=7)
    assert await backend.store.transition(stored(running), expect=P)
    # The same move again finds the record no longer pending.
    assert not await backend.store.transition(stored(running), expect=P)
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is R and got.token == 7
    assert reloaded(got).record == running


async def test_transition_checks_the_fencing_token(backend: Backend) -> None:
    rec = record()
    await backend.store.create(stored(rec))
    await backend.store.transition(stored(attrs.evolve(rec, status=R, token=5)), expect=P)
    done = stored(attrs.evolve(rec, status=S, token=5))
    assert not await backend.store.transition(done, expect=R, token=4)
    assert not await backend.store.transition(done, expect=R, token=6)
    assert (await backend.store.get(rec.id)).status is R  # type: ignore[union-attr]
    assert await backend.store.transition(done, expect=R, token=5)


async def test_transition_refuses_moves_outside_the_state_machine(backend: Backend) -> None:
    rec = record()
    await backend.store.create(stored(rec))
    for expect, new in [(P, S), (P, F), (S, P), (F, R), (C, P), (S, F), (P, P)]:
        with pytest.raises(InvalidTransition):
            await backend.store.transition(stored(attrs.evolve(rec, status=new)), expect=expect)
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P


async def test_in_progress_update_in_place(backend: Backend) -> None:
    rec = record()
    await backend.store.create(stored(rec))
    running = attrs.evolve(rec, status=R, token=3)
    await backend.store.transition(stored(running), expect=P)
    progressed = attrs.evolve(running, progress=0.5, message="half")
    assert await backend.store.transition(stored(progressed), expect=R, token=3)
    got = await backend.store.get(rec.id)
    assert got is not None and reloaded(got).record.progress == 0.5


async def test_missing_record_transition_is_refused(backend: Backend) -> None:
    rec = record()
    assert not await backend.store.transition(stored(attrs.evolve(rec, status=C)), expect=P)
    assert await backend.store.get(rec.id) is None


async def test_result_is_saved_with_the_transition(backend: Backend) -> None:
    rec = record()
    await backend.store.create(stored(rec))
    await backend.store.transition(stored(attrs.evolve(rec, status=R, token=1)), expect=P)
    blob = Payload(media_type="image/png", data=bytes(range(256)) * 4096)
    refused = stored(attrs.evolve(rec, status=S, token=1))
    assert not await backend.store.transition(refused, expect=R, token=2, result=blob)
    assert await backend.store.get_result(rec.id) is None  # a refused move stores nothing
    assert await backend.store.transition(refused, expect=R, token=1, result=blob)
    assert await backend.store.get_result(rec.id) == blob
    # Reading never deletes.
    assert await backend.store.get_result(rec.id) == blob
    assert await backend.store.get(rec.id) is not None


async def test_small_and_large_results_alike(backend: Backend) -> None:
    for size in (0, 10, 40_000):
        rec = record()
        await backend.store.create(stored(rec))
        await backend.store.transition(stored(attrs.evolve(rec, status=R, token=3)), expect=P)
        blob = Payload(media_type="application/octet-stream", data=b"x" * size)
        done = stored(attrs.evolve(rec, status=S, token=3))
        assert not await backend.store.transition(done, expect=R, token=2, result=blob)
        assert await backend.store.get_result(rec.id) is None
        assert await backend.store.transition(done, expect=R, token=3, result=blob)
        assert await backend.store.get_result(rec.id) == blob


async def test_get_results_reads_many_as_get_result_reads_one(backend: Backend) -> None:
    """Small and large results together; tasks without one (running, failed,
    deleted, unknown) are left out, as ``get_result`` answers None for them."""
    ids = []
    for size in (0, 10, 40_000, None):
        rec = record()
        ids.append(rec.id)
        await backend.store.create(stored(rec))
        await backend.store.transition(stored(attrs.evolve(rec, status=R, token=3)), expect=P)
        if size is None:
            continue  # left running
        blob = Payload(media_type=f"x/size-{size}", data=b"y" * size)
        assert await backend.store.transition(
            stored(attrs.evolve(rec, status=S, token=3)), expect=R, token=3, result=blob
        )
    failed = record()
    await backend.store.create(stored(failed))
    await backend.store.transition(stored(attrs.evolve(failed, status=R, token=1)), expect=P)
    assert await backend.store.transition(
        stored(attrs.evolve(failed, status=F, token=1)), expect=R, token=1
    )
    gone = ids[1]
    assert await backend.store.delete(gone)
    asked = [*ids, failed.id, new_task_id()]
    found = await backend.store.get_results(asked)
    one_by_one = {}
    for task_id in asked:
        payload = await backend.store.get_result(task_id)
        if payload is not None:
            one_by_one[task_id] = payload
    assert found == one_by_one
    assert set(found) == {ids[0], ids[2]}
    assert found[ids[2]] == Payload(media_type="x/size-40000", data=b"y" * 40_000)
    assert found[ids[0]] == Payload(media_type="x/size-0", data=b"")
    assert await backend.store.get_results([]) == {}
    # Records and results together, as get_many (without the arguments)
    # and get_result read them.
    both = await backend.store.get_with_results(asked)
    records = await backend.store.get_many(asked)
    assert set(both) == set(records) == {ids[0], ids[2], ids[3], failed.id}
    for task_id, (task, payload) in both.items():
        assert task.info() == records[task_id].info() and task.status is records[task_id].status
        whole = records[task_id].record
        assert task.without_args() == attrs.evolve(whole, args={}) or task.without_args() == whole
        assert payload == one_by_one.get(task_id)
    assert await backend.store.get_with_results([]) == {}


async def test_delete(backend: Backend) -> None:
    rec = record()
    await backend.store.create(stored(rec))
    await backend.store.transition(stored(attrs.evolve(rec, status=R, token=1)), expect=P)
    payload = Payload(media_type="application/json", data=b"1")
    await backend.store.transition(
        stored(attrs.evolve(rec, status=S, token=1)), expect=R, token=1, result=payload
    )
    assert await backend.store.delete(rec.id)
    assert await backend.store.get(rec.id) is None
    assert await backend.store.get_result(rec.id) is None
    assert not await backend.store.delete(rec.id)


async def test_list_filters_orders_and_pages(backend: Backend) -> None:
    recs = [record(name="a" if i % 2 else "b", created_at=NOW + i) for i in range(6)]
    for rec in recs:
        await backend.store.create(stored(rec))
    await backend.store.transition(stored(attrs.evolve(recs[1], status=C)), expect=P)
    ids = [t.id for t in await backend.store.list()]
    assert ids == [r.id for r in reversed(recs)]
    assert [t.id for t in await backend.store.list(name="a")] == [
        recs[5].id,
        recs[3].id,
        recs[1].id,
    ]
    assert [t.id for t in await backend.store.list(status=C)] == [recs[1].id]
    assert [t.id for t in await backend.store.list(name="a", status=P)] == [recs[5].id, recs[3].id]
    assert [t.id for t in await backend.store.list(limit=2, offset=1)] == [recs[4].id, recs[3].id]
    assert await backend.store.list(name="zzz") == []


async def test_list_stays_exact_as_tasks_come_and_go(backend: Backend) -> None:
    """Listed once, then records created (some at the same moment), moved,
    deleted and purged: every listing after holds exactly the records as
    they are, newest first (the order of ties is each backend's own, but
    fixed: a page is the same slice of the whole listing)."""
    live: dict[str, TaskRecord] = {}

    async def check() -> None:
        for name in (None, "a", "b"):
            for status in (None, P, R, S, C):
                want = {
                    r.id
                    for r in live.values()
                    if (name is None or r.name == name) and (status is None or r.status is status)
                }
                got = await backend.store.list(name=name, status=status, limit=1000)
                assert {t.id for t in got} == want and len(got) == len(want), (name, status)
                times = [live[t.id].created_at for t in got]
                assert times == sorted(times, reverse=True), (name, status)
                page = await backend.store.list(name=name, status=status, limit=3, offset=2)
                assert [t.id for t in page] == [t.id for t in got[2:5]], (name, status)

    async def add(rec: TaskRecord) -> None:
        assert await backend.store.create(stored(rec))
        live[rec.id] = rec

    async def move(rec: TaskRecord, **changes: object) -> None:
        moved = attrs.evolve(live[rec.id], **changes)
        assert await backend.store.transition(stored(moved), expect=live[rec.id].status)
        live[rec.id] = moved

    first = [record(name="ab"[i % 2], created_at=NOW + i // 3) for i in range(9)]
    for rec in first:
        await add(rec)
    await check()  # the first listing (the memory backend builds its index here)
    more = [record(name="ab"[i % 2], created_at=NOW + 1 + i % 4) for i in range(8)]
    for rec in more:
        await add(rec)
    await move(first[0], status=R, started_at=NOW)
    await move(first[0], status=S, finished_at=NOW, expires_at=NOW + 50)
    await move(more[3], status=C, finished_at=NOW, expires_at=NOW + 5)
    await move(first[4], status=C, finished_at=NOW, expires_at=NOW + 500)
    await check()
    assert await backend.store.delete(first[2].id)
    del live[first[2].id]
    assert await backend.store.delete(first[0].id)
    del live[first[0].id]
    assert await backend.store.purge_expired(NOW + 10) == 1
    del live[more[3].id]
    await add(record(name="a", created_at=NOW - 1))
    await check()


async def test_a_listing_without_arguments_lists_the_same_tasks(backend: Backend) -> None:
    """``list(arguments=False)``: the same tasks, in the same order, each
    with the same scalars and ``info()`` (a backend may leave the arguments
    unread)."""
    recs = [record(name="ab"[i % 2], created_at=NOW + i, args={"x": i}) for i in range(5)]
    for rec in recs:
        await backend.store.create(stored(rec))
    done = attrs.evolve(recs[3], status=C, finished_at=NOW + 9, expires_at=NOW + 99)
    assert await backend.store.transition(stored(done), expect=P)
    for query in ({}, {"name": "a"}, {"status": C}, {"limit": 2, "offset": 1}):
        whole = await backend.store.list(**query)  # type: ignore[arg-type]
        listed = await backend.store.list(arguments=False, **query)  # type: ignore[arg-type]
        assert [t.id for t in listed] == [t.id for t in whole], query
        for a, b in zip(whole, listed, strict=True):
            assert (a.status, a.token, a.created_at, a.expires_at) == (
                b.status,
                b.token,
                b.created_at,
                b.expires_at,
            )
            assert a.info() == b.info()
    ids = [r.id for r in recs]
    whole = await backend.store.get_many(ids)
    read = await backend.store.get_many(ids, arguments=False)
    assert read.keys() == whole.keys() == set(ids)
    for task_id, task in read.items():
        assert task.info() == whole[task_id].info() and task.status is whole[task_id].status
        assert task.version_data == whole[task_id].version_data  # what a poll compares


async def test_newest_ends_are_the_listing_s_status_expiry_and_end(backend: Backend) -> None:
    """``newest_ends``: status, expiry and end of the newest records, in
    the listing's order, as the records hold them."""
    recs = [record(created_at=NOW + i) for i in range(5)]
    for rec in recs:
        await backend.store.create(stored(rec))
    running = attrs.evolve(recs[1], status=R, started_at=NOW + 2)
    assert await backend.store.transition(stored(running), expect=P)
    started = attrs.evolve(recs[2], status=R, started_at=NOW + 3)
    assert await backend.store.transition(stored(started), expect=P)
    for rec, status, ended in ((started, S, NOW + 3.25), (recs[4], C, NOW + 7.5)):
        done = attrs.evolve(rec, status=status, finished_at=ended, expires_at=ended + 60)
        assert await backend.store.transition(stored(done), expect=rec.status)
    listed = await backend.store.list(limit=4)
    ends = await backend.store.newest_ends(4)
    assert ends == [(t.status, t.expires_at, t.record.finished_at) for t in listed]
    assert ends[0] == (C, NOW + 67.5, NOW + 7.5) and ends[2] == (S, NOW + 63.25, NOW + 3.25)
    assert ends[1] == (P, None, None) and ends[3] == (R, None, None)
    assert await backend.store.newest_ends(0) == []


async def test_purge_expired(backend: Backend) -> None:
    old, new, live = record(), record(), record()
    for rec in (old, new, live):
        await backend.store.create(stored(rec))
    await backend.store.transition(
        stored(attrs.evolve(old, status=C, expires_at=NOW + 10)), expect=P
    )
    await backend.store.transition(
        stored(attrs.evolve(new, status=C, expires_at=NOW + 100)), expect=P
    )
    assert await backend.store.purge_expired(NOW + 5) == 0
    assert await backend.store.purge_expired(NOW + 10) == 1
    assert await backend.store.get(old.id) is None
    assert await backend.store.get(new.id) is not None
    assert await backend.store.get(live.id) is not None
    assert await backend.store.purge_expired(NOW + 1000) == 1
    assert await backend.store.get(live.id) is not None  # never expires while pending


async def test_enqueue_creates_and_queues_together(backend: Backend) -> None:
    rec = record(priority=2)
    assert await backend.enqueue(stored(rec), priority=2, not_before=0.0)
    got = await backend.store.get(rec.id)
    assert got is not None and reloaded(got).record == rec
    assert await backend.queue.contains(rec.id)
    claim = await claim_one(backend)
    assert claim is not None and claim.task_id == rec.id
    # A duplicate id is neither stored again nor queued again.
    await backend.queue.ack(rec.id, claim.token)
    again = stored(attrs.evolve(rec, name="other"))
    assert not await backend.enqueue(again, priority=0, not_before=0.0)
    assert not await backend.queue.contains(rec.id)
    got = await backend.store.get(rec.id)
    assert got is not None and got.name == "job"


async def _enqueue_from_thread(backend: Backend, task: StoredTask) -> object:
    """``enqueue_from_thread`` called from a plain thread, as a submit from a
    script's thread makes it; what ``answer`` got (from the backend's thread).
    ``then`` is called once, after ``answer``, from the backend's thread too."""
    followed = threading.Event()
    got: list[object] = []

    def answer(created: object) -> None:
        got.append((created, threading.current_thread() is not caller))

    def then() -> None:
        got.append(("then", threading.current_thread() is not caller))
        followed.set()

    def call() -> None:
        backend.enqueue_from_thread(
            task, priority=0, not_before=0.0, rank=None, answer=answer, then=then
        )

    caller = threading.Thread(target=call)
    caller.start()
    await trio.to_thread.run_sync(caller.join)
    assert await trio.to_thread.run_sync(followed.wait, 10)
    [(created, elsewhere), (then_, followed_elsewhere)] = got
    assert then_ == "then"
    assert elsewhere and followed_elsewhere  # the backend's own thread, not the caller's
    return created


async def test_enqueue_from_thread_creates_and_queues_where_the_backend_says_so(
    backend: Backend,
) -> None:
    """``enqueue_from_thread``: what :meth:`enqueue` does, from a thread that
    does not wait for a trio run; a backend without it says so."""
    rec = record()
    if not backend.enqueues_from_threads:
        with pytest.raises(NotImplementedError):
            backend.enqueue_from_thread(
                stored(rec), priority=0, not_before=0.0, rank=None, answer=print
            )
        return
    assert await _enqueue_from_thread(backend, stored(rec)) is True
    got = await backend.store.get(rec.id)
    assert got is not None and reloaded(got).record == rec
    claim = await claim_one(backend)
    assert claim is not None and claim.task_id == rec.id
    # A duplicate id is neither stored again nor queued again.
    await backend.queue.ack(rec.id, claim.token)
    assert await _enqueue_from_thread(backend, stored(attrs.evolve(rec, name="other"))) is False
    assert not await backend.queue.contains(rec.id)
    got = await backend.store.get(rec.id)
    assert got is not None and got.name == "job"
    # A closed backend refuses at once, and never answers.
    await backend.aclose()
    with pytest.raises(BackendError):
        backend.enqueue_from_thread(
            stored(record()), priority=0, not_before=0.0, rank=None, answer=print
        )
    await backend.open()


async def test_a_backend_closed_by_one_engine_serves_the_next(backend: Backend) -> None:
    """One backend object, opened and closed by one engine after another
    (``errands.start(svc, backend=b)`` twice in a notebook): the second
    finds what the first stored, and stores, claims and answers threads
    as the first did."""
    first = record()
    assert await backend.enqueue(stored(first), priority=0, not_before=0.0)
    await backend.aclose()
    await backend.open()
    second = record()
    assert await backend.enqueue(stored(second), priority=0, not_before=0.0)
    got = await backend.store.get(first.id)
    assert got is not None and reloaded(got).record == first
    claimed = {c.task_id for c in [await claim_one(backend), await claim_one(backend)] if c}
    assert claimed == {first.id, second.id}
    if backend.enqueues_from_threads:
        third = record()
        assert await _enqueue_from_thread(backend, stored(third)) is True
        assert await backend.queue.contains(third.id)


# ---------------------------------------------------------------- queue


async def test_claim_order_is_priority_then_fifo(backend: Backend) -> None:
    q = backend.queue
    ids = [new_task_id() for _ in range(4)]
    await q.put(ids[0], name="job")
    await q.put(ids[1], name="job", priority=5)
    await q.put(ids[2], name="job")
    await q.put(ids[3], name="job", priority=5)
    claims = await q.claim(owner="w", quotas={"job": 10}, limit=10, now=NOW, lease_until=NOW + 30)
    assert [c.task_id for c in claims] == [ids[1], ids[3], ids[0], ids[2]]
    tokens = [c.token for c in claims]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    assert all(c.owner == "w" and c.lease_until == NOW + 30 and c.name == "job" for c in claims)


async def test_claim_order_is_rank_then_fifo(backend: Backend) -> None:
    q = backend.queue
    ids = [new_task_id() for _ in range(5)]
    await q.put(ids[0], name="job", priority=9, rank=NOW + 5)  # rank decides, not priority
    await q.put(ids[1], name="job", rank=NOW - 100)
    await q.put(ids[2], name="job", rank=NOW + 5)
    await q.put(ids[3], name="job", priority=-3, rank=-1e12)
    await q.put(ids[4], name="other", rank=NOW)
    claims = await q.claim(
        owner="w", quotas={"job": 10, "other": 10}, limit=10, now=NOW, lease_until=NOW + 30
    )
    assert [c.task_id for c in claims] == [ids[3], ids[1], ids[4], ids[0], ids[2]]


async def test_rank_none_is_minus_priority(backend: Backend) -> None:
    q = backend.queue
    ranked, plain, urgent = new_task_id(), new_task_id(), new_task_id()
    await q.put(ranked, name="job", rank=-1.5)
    await q.put(plain, name="job", priority=1)  # rank -1
    await q.put(urgent, name="job", priority=2)  # rank -2
    claims = await q.claim(owner="w", quotas={"job": 3}, limit=3, now=NOW, lease_until=NOW + 30)
    assert [c.task_id for c in claims] == [urgent, ranked, plain]


async def test_a_delayed_entry_joins_at_its_rank(backend: Backend) -> None:
    q = backend.queue
    early, delayed, late = new_task_id(), new_task_id(), new_task_id()
    await q.put(delayed, name="job", not_before=NOW + 60, rank=NOW + 60)
    await q.put(early, name="job", rank=NOW + 59)
    await q.put(late, name="job", rank=NOW + 61)
    assert await q.position(delayed) == 1
    claims = await q.claim(owner="w", quotas={"job": 3}, limit=3, now=NOW, lease_until=NOW + 1)
    assert [c.task_id for c in claims] == [early, late]
    await q.ack(late, claims[1].token)
    await q.put(late, name="job", rank=NOW + 61)
    claims = await q.claim(
        owner="w", quotas={"job": 3}, limit=3, now=NOW + 60, lease_until=NOW + 61
    )
    assert [c.task_id for c in claims] == [delayed, late]


async def test_release_takes_the_given_rank(backend: Backend) -> None:
    q = backend.queue
    first, second, third = new_task_id(), new_task_id(), new_task_id()
    await q.put(first, name="job", rank=NOW)
    await q.put(second, name="job", rank=NOW + 10)
    await q.put(third, name="job", rank=NOW + 20)
    claim = await claim_one(backend)
    assert claim is not None and claim.task_id == first
    # Released with a rank past the others', it goes behind them, and behind
    # an equal rank put before the release.
    assert await q.release(first, claim.token, rank=NOW + 20)
    assert await q.position(first) == 2
    claims = await q.claim(owner="w", quotas={"job": 3}, limit=3, now=NOW, lease_until=NOW + 30)
    assert [c.task_id for c in claims] == [second, third, first]
    # Released with no rank: -priority, ahead of every rank above it.
    assert await q.release(third, claims[1].token)
    again = await claim_one(backend)
    assert again is not None and again.task_id == third


async def test_position_follows_claim_order(backend: Backend) -> None:
    q = backend.queue
    ids = [new_task_id() for _ in range(6)]
    ranks = [NOW + 3, NOW - 7, NOW + 3, -5.0, NOW + 1, NOW - 7]
    for task_id, rank in zip(ids, ranks, strict=True):
        await q.put(task_id, name="job", priority=len(ids), rank=rank)
    await q.put(new_task_id(), name="other", rank=-1e12)  # another name: not counted
    positions = {i: await q.position(i) for i in ids}
    claims = await q.claim(owner="w", quotas={"job": 9}, limit=9, now=NOW, lease_until=NOW + 30)
    order = [c.task_id for c in claims]
    assert order == [ids[3], ids[1], ids[5], ids[4], ids[0], ids[2]]
    assert [positions[i] for i in order] == list(range(6))


async def test_positions_stay_exact_as_the_queue_changes(backend: Backend) -> None:
    """Positions asked once stay exact through every later put, claim,
    release and removal (a backend may build its index when first asked)."""
    q = backend.queue
    a, b, c, d, e = (new_task_id() for _ in range(5))

    async def positions(*task_ids: str) -> list[int | None]:
        return [await q.position(t) for t in task_ids]

    await q.put(a, name="job", rank=NOW + 2)
    await q.put(b, name="job", rank=NOW + 4)
    assert await positions(a, b) == [0, 1]
    await q.put(c, name="job", rank=NOW + 1)  # ahead of both
    await q.put(d, name="job", rank=NOW + 3)
    await q.put(new_task_id(), name="other", rank=-1e12)  # another name: not counted
    assert await positions(c, a, d, b) == [0, 1, 2, 3]
    claim = await claim_one(backend)
    assert claim is not None and claim.task_id == c
    assert await positions(c, a, d, b) == [None, 0, 1, 2]
    assert await q.release(c, claim.token, rank=NOW + 3.5)  # between d and b
    assert await positions(a, d, c, b) == [0, 1, 2, 3]
    assert await q.remove(d)
    assert await positions(a, d, c, b) == [0, None, 1, 2]
    await q.put(e, name="job", rank=NOW)
    assert await positions(e, a, c, b) == [0, 1, 2, 3]
    assert await q.depth("job") == 4
    claims = await q.claim(owner="w", quotas={"job": 9}, limit=9, now=NOW, lease_until=NOW + 30)
    assert [each.task_id for each in claims] == [e, a, c, b]
    assert await q.depth("job") == 0
    assert await q.depth() == 1


async def test_put_is_idempotent(backend: Backend) -> None:
    q = backend.queue
    task_id = new_task_id()
    await q.put(task_id, name="job")
    await q.put(task_id, name="job", priority=9)
    assert await q.depth() == 1
    claim = await claim_one(backend)
    assert claim is not None
    await q.put(task_id, name="job")  # claimed: still a no-op
    assert await q.depth() == 0
    assert await claim_one(backend) is None


async def test_quotas_and_limit(backend: Backend) -> None:
    q = backend.queue
    for name in ("a", "a", "a", "b", "b", "c"):
        await q.put(new_task_id(), name=name)
    claims = await q.claim(
        owner="w", quotas={"a": 2, "b": 5}, limit=3, now=NOW, lease_until=NOW + 1
    )
    names = sorted(c.name for c in claims)
    assert len(claims) == 3 and names.count("a") <= 2 and "c" not in names
    rest = await q.claim(owner="w", quotas={"a": 5, "b": 5}, limit=9, now=NOW, lease_until=NOW + 1)
    assert sorted(c.name for c in claims + rest) == ["a", "a", "a", "b", "b"]
    assert await q.depth() == 1 and await q.depth("c") == 1 and await q.depth("a") == 0


async def test_delayed_entries_wait_for_their_time(backend: Backend) -> None:
    q = backend.queue
    later, now_id = new_task_id(), new_task_id()
    await q.put(later, name="job", not_before=NOW + 60, priority=10)
    assert await q.next_due(["job"]) == NOW + 60
    await q.put(now_id, name="job")
    due = await q.next_due(["job"])
    assert due is not None and due <= NOW
    assert [
        c.task_id
        for c in await q.claim(owner="w", quotas={"job": 5}, limit=5, now=NOW, lease_until=NOW + 1)
    ] == [now_id]
    assert await q.next_due(["job"]) == NOW + 60
    assert await q.next_due(["other"]) is None
    assert await claim_one(backend, now=NOW + 59) is None
    claim = await claim_one(backend, now=NOW + 60)
    assert claim is not None and claim.task_id == later


async def test_renew_ack_release_are_fenced(backend: Backend) -> None:
    q = backend.queue
    task_id = new_task_id()
    await q.put(task_id, name="job", priority=3)
    first = await claim_one(backend)
    assert first is not None
    assert await q.renew(task_id, first.token, lease_until=NOW + 100) is Renewal.RENEWED
    assert await q.expired(NOW + 50) == []
    assert await q.release(task_id, first.token)
    assert not await q.release(task_id, first.token)  # no longer held
    second = await claim_one(backend)
    assert second is not None and second.token > first.token
    # The old holder is fenced off everywhere.
    assert await q.renew(task_id, first.token, lease_until=NOW + 100) is Renewal.LOST
    assert not await q.ack(task_id, first.token)
    assert not await q.release(task_id, first.token)
    assert await q.contains(task_id)
    assert await q.ack(task_id, second.token)
    assert not await q.contains(task_id)
    assert await q.renew(task_id, second.token, lease_until=NOW + 100) is Renewal.LOST


async def test_renew_many_answers_in_order(backend: Backend) -> None:
    q = backend.queue
    ids = [new_task_id() for _ in range(3)]
    for task_id in ids:
        await q.put(task_id, name="job")
    claims = await q.claim(owner="w", quotas={"job": 3}, limit=3, now=NOW, lease_until=NOW + 1)
    by_id = {c.task_id: c for c in claims}
    await q.request_cancel(ids[1])
    await q.ack(ids[2], by_id[ids[2]].token)
    answers = await q.renew_many(
        [(i, by_id[i].token) for i in ids] + [(ids[0], by_id[ids[0]].token + 99)],
        lease_until=NOW + 50,
    )
    assert answers == [Renewal.RENEWED, Renewal.CANCEL_REQUESTED, Renewal.LOST, Renewal.LOST]
    assert await q.expired(NOW + 10) == []
    assert await q.renew_many([], lease_until=NOW) == []


async def test_release_keeps_priority_and_can_delay(backend: Backend) -> None:
    q = backend.queue
    urgent, plain = new_task_id(), new_task_id()
    await q.put(urgent, name="job", priority=9)
    claim = await claim_one(backend)
    assert claim is not None and claim.task_id == urgent
    await q.put(plain, name="job")
    assert await q.release(urgent, claim.token)
    again = await claim_one(backend)
    assert again is not None and again.task_id == urgent  # priority kept
    assert await q.release(urgent, again.token, not_before=NOW + 30)
    nxt = await claim_one(backend)
    assert nxt is not None and nxt.task_id == plain
    assert await claim_one(backend, now=NOW + 29) is None
    last = await claim_one(backend, now=NOW + 30)
    assert last is not None and last.task_id == urgent


async def test_expired_claims(backend: Backend) -> None:
    q = backend.queue
    a, b = new_task_id(), new_task_id()
    await q.put(a, name="job")
    await q.put(b, name="job")
    ca = await claim_one(backend, lease=10)
    cb = await claim_one(backend, lease=20)
    assert ca is not None and cb is not None
    assert await q.expired(NOW + 9) == []
    assert [c.task_id for c in await q.expired(NOW + 10)] == [ca.task_id]
    assert sorted(c.task_id for c in await q.expired(NOW + 25)) == sorted([a, b])
    # Expired claims stay until acked or released.
    assert await q.contains(a)
    assert await q.renew(a, ca.token, lease_until=NOW + 100) is Renewal.RENEWED
    assert [c.task_id for c in await q.expired(NOW + 25)] == [cb.task_id]


async def test_remove_only_takes_waiting_entries(backend: Backend) -> None:
    q = backend.queue
    waiting, claimed = new_task_id(), new_task_id()
    await q.put(claimed, name="job")
    claim = await claim_one(backend)
    assert claim is not None
    await q.put(waiting, name="job")
    assert not await q.remove(claimed)
    assert await q.contains(claimed)
    assert await q.remove(waiting)
    assert not await q.remove(waiting)
    assert not await q.contains(waiting)
    assert await claim_one(backend) is None


async def test_cancel_requests_reach_the_holder(backend: Backend) -> None:
    q = backend.queue
    task_id = new_task_id()
    await q.put(task_id, name="job")
    assert not await q.request_cancel(task_id)  # waiting: nothing to flag
    claim = await claim_one(backend)
    assert claim is not None
    assert await q.request_cancel(task_id)
    assert await q.renew(task_id, claim.token, lease_until=NOW + 60) is Renewal.CANCEL_REQUESTED
    assert await q.release(task_id, claim.token)
    again = await claim_one(backend)
    assert again is not None  # a new claim starts without the old flag
    assert await q.renew(task_id, again.token, lease_until=NOW + 60) is Renewal.RENEWED
    assert not await q.request_cancel(new_task_id())


async def test_depth_and_position(backend: Backend) -> None:
    q = backend.queue
    ids = [new_task_id() for _ in range(4)]
    for task_id in ids[:3]:
        await q.put(task_id, name="job")
    await q.put(ids[3], name="job", priority=1)
    await q.put(new_task_id(), name="other")
    assert await q.depth() == 5 and await q.depth("job") == 4
    assert [await q.position(i) for i in ids] == [1, 2, 3, 0]
    claim = await claim_one(backend)
    assert claim is not None and claim.task_id == ids[3]
    assert await q.position(ids[3]) is None
    assert [await q.position(i) for i in ids[:3]] == [0, 1, 2]
    assert await q.position(new_task_id()) is None


async def test_state_and_position_is_what_the_two_reads_give(backend: Backend) -> None:
    """``Backend.state_and_position``: the task as ``get_state`` reads it and,
    while it waits, its position as ``Queue.position`` gives it; no position
    for a task that does not wait, nothing for one that is not there."""
    tasks = [record() for _ in range(3)]
    for rec in tasks:
        assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    claim = await claim_one(backend)
    assert claim is not None and claim.task_id == tasks[0].id
    begun = attrs.evolve(tasks[0], status=TaskStatus.IN_PROGRESS, token=claim.token)
    assert await backend.begin(stored(begun), claim=claim)
    for rec in tasks:
        found, position = await backend.state_and_position(rec.id)
        state = await backend.store.get_state(rec.id)
        assert found is not None and state is not None
        assert (found.id, found.status, found.token) == (state.id, state.status, state.token)
        assert found.without_args() == state.without_args()
        assert position == await backend.queue.position(rec.id)
    assert [(await backend.state_and_position(r.id))[1] for r in tasks] == [None, 0, 1]
    assert await backend.state_and_position(new_task_id()) == (None, None)


async def test_a_cancelled_call_changes_nothing_or_everything(backend: Backend) -> None:
    """Each call is atomic: cancelled at any point, it has happened fully or not at all."""
    rec = record()
    await backend.store.create(stored(rec))
    running = stored(attrs.evolve(rec, status=R, token=1))
    with trio.CancelScope() as scope:
        scope.cancel()
        await backend.store.transition(running, expect=P)
    got = await backend.store.get(rec.id)
    assert got is not None and got.status in (P, R)
    if got.status is P:
        assert await backend.store.transition(running, expect=P)
    with trio.CancelScope() as scope:
        scope.cancel()
        await backend.queue.put(rec.id, name="job")
    if not await backend.queue.contains(rec.id):
        await backend.queue.put(rec.id, name="job")
    assert await backend.queue.depth() == 1


async def test_every_method_is_a_cancel_point(backend: Backend) -> None:
    """A call made inside a cancelled scope raises Cancelled and does nothing."""
    q, s = backend.queue, backend.store
    task_id = new_task_id()
    calls = [
        lambda: q.put(task_id, name="job"),
        lambda: q.claim(owner="w", quotas={"job": 1}, limit=1, now=NOW, lease_until=NOW),
        lambda: q.renew(task_id, 1, lease_until=NOW),
        lambda: q.ack(task_id, 1),
        lambda: q.release(task_id, 1),
        lambda: q.remove(task_id),
        lambda: q.request_cancel(task_id),
        lambda: q.expired(NOW),
        lambda: q.contains(task_id),
        lambda: q.next_due(["job"]),
        lambda: q.depth(),
        lambda: q.position(task_id),
        lambda: s.create(stored(record())),
        lambda: s.get(task_id),
        lambda: s.get_result(task_id),
        lambda: s.delete(task_id),
        lambda: s.list(),
        lambda: s.purge_expired(NOW),
        lambda: backend.enqueue(stored(record()), priority=0, not_before=0.0),
        lambda: backend.claim_and_start(
            owner="w",
            quotas={"job": 1},
            limit=1,
            now=NOW,
            lease_until=NOW,
            starting=lambda claim, pending: pending,
        ),
    ]
    for call in calls:
        with trio.CancelScope() as scope:
            scope.cancel()
            await call()
        assert scope.cancelled_caught, call
    assert await q.depth() == 0 and await s.list() == []


# ---------------------------------------------------------------- begin and delete_expired


async def test_begin_starts_a_pending_task_only_under_a_held_claim(backend: Backend) -> None:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    claim = await claim_one(backend)
    assert claim is not None
    running = stored(attrs.evolve(rec, status=R, attempt=1, token=claim.token))
    assert await backend.begin(running, claim=claim)
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is R and got.token == claim.token
    # Not pending any more: a second begin changes nothing.
    assert not await backend.begin(running, claim=claim)


async def test_begin_refuses_a_claim_that_was_lost(backend: Backend) -> None:
    """A worker that stalled past its lease must not start the task once its
    claim was released (and claimed again): that would leave the task
    in_progress under a claim nobody holds."""
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    stale = await claim_one(backend, lease=1)
    assert stale is not None
    assert await backend.queue.release(stale.task_id, stale.token)  # recovery gave it back
    late = stored(attrs.evolve(rec, status=R, attempt=1, token=stale.token))
    assert not await backend.begin(late, claim=stale)
    fresh = await claim_one(backend)
    assert fresh is not None and fresh.token > stale.token
    assert not await backend.begin(late, claim=stale)  # still refused: the entry is fresh's
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P and got.token == 0
    assert await backend.begin(
        stored(attrs.evolve(rec, status=R, attempt=1, token=fresh.token)), claim=fresh
    )


async def test_begin_refuses_an_acked_claim(backend: Backend) -> None:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    claim = await claim_one(backend)
    assert claim is not None
    assert await backend.queue.ack(claim.task_id, claim.token)
    running = stored(attrs.evolve(rec, status=R, attempt=1, token=claim.token))
    assert not await backend.begin(running, claim=claim)
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P


# ---------------------------------------------------------------- start and finish


def starting_under(claim: Claim, seen: list[StoredTask]) -> Callable[[StoredTask], StoredTask]:
    """A ``starting`` function as the engine's runner passes it; records its calls."""

    def starting(pending: StoredTask) -> StoredTask:
        seen.append(pending)
        return stored(attrs.evolve(pending.record, status=R, attempt=1, token=claim.token))

    return starting


async def test_start_reads_checks_and_starts_in_one_call(backend: Backend) -> None:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    claim = await claim_one(backend)
    assert claim is not None
    seen: list[StoredTask] = []
    begun = await backend.start(claim, starting=starting_under(claim, seen))
    assert [reloaded(t).record for t in seen] == [rec]  # called once, with the pending record
    assert begun is not None and begun.status is R and begun.token == claim.token
    got = await backend.store.get(rec.id)
    assert got is not None and reloaded(got).record == begun.record
    # Not pending any more: a second start changes nothing and builds nothing.
    assert await backend.start(claim, starting=starting_under(claim, seen)) is None
    assert len(seen) == 1


async def test_start_refuses_a_lost_claim(backend: Backend) -> None:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    stale = await claim_one(backend, lease=1)
    assert stale is not None
    assert await backend.queue.release(stale.task_id, stale.token)  # recovery gave it back
    seen: list[StoredTask] = []
    assert await backend.start(stale, starting=starting_under(stale, seen)) is None
    fresh = await claim_one(backend)
    assert fresh is not None and fresh.token > stale.token
    assert await backend.start(stale, starting=starting_under(stale, seen)) is None
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P and got.token == 0
    assert await backend.start(fresh, starting=starting_under(fresh, seen)) is not None


async def test_start_does_not_start_a_task_cancelled_while_it_waited(backend: Backend) -> None:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    claim = await claim_one(backend)
    assert claim is not None
    cancelled = attrs.evolve(rec, status=C, finished_at=NOW, expires_at=NOW + 60)
    assert await backend.store.transition(stored(cancelled), expect=P)
    seen: list[StoredTask] = []
    assert await backend.start(claim, starting=starting_under(claim, seen)) is None
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is C
    assert (
        await backend.start(
            Claim(
                task_id=new_task_id(), name="job", token=claim.token, owner="w1", lease_until=NOW
            ),
            starting=starting_under(claim, seen),
        )
        is None
    )  # no such task
    assert seen == []


async def test_start_raises_what_starting_raises_and_changes_nothing(backend: Backend) -> None:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    claim = await claim_one(backend)
    assert claim is not None

    def broken(pending: StoredTask) -> StoredTask:
        raise ZeroDivisionError("the engine's own bug")

    with pytest.raises(ZeroDivisionError):
        await backend.start(claim, starting=broken)
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P
    assert await backend.start(claim, starting=starting_under(claim, [])) is not None


@pytest.mark.parametrize("way", ENDS)
async def test_a_late_finish_leaves_the_entry_of_a_task_put_back_meanwhile(
    backend: Backend, way: str
) -> None:
    """The reaper of another engine puts back a task whose lease ran out:
    its record back to ``pending`` (compare-and-set on the token), then its
    entry released.  A worker that stalled past its lease and finishes
    between the two does not store its outcome (the record moved on), and
    must not drop the entry either: the release that follows makes it
    waiting again, and the task runs again (before, on diskcache, the
    finish's ack deleted it, and the task stayed ``pending`` with nothing
    in the queue until a sweep's reconcile, a minute later)."""
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    [(claim, begun)] = await claim_and_start(backend, claim_starting([]))
    assert begun is not None
    lost = attrs.evolve(begun.record, status=P)
    assert await backend.store.transition(stored(lost), expect=R, token=claim.token)
    done = attrs.evolve(begun.record, status=S, finished_at=NOW, expires_at=NOW + 60)
    payload = Payload(media_type="application/json", data=b"1")
    assert not await end_run(backend, way, stored(done), claim=claim, result=payload)
    await backend.queue.release(claim.task_id, claim.token)
    assert await backend.queue.depth() == 1
    again = await claim_one(backend)
    assert again is not None and again.task_id == rec.id and again.token > claim.token
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P


def claim_starting(seen: list[StoredTask]) -> Callable[[Claim, StoredTask], StoredTask]:
    """A ``starting`` function as the engine's dispatcher passes it to
    ``claim_and_start``; records its calls."""

    def starting(claim: Claim, pending: StoredTask) -> StoredTask:
        seen.append(pending)
        return stored(attrs.evolve(pending.record, status=R, attempt=1, token=claim.token))

    return starting


async def claim_and_start(
    backend: Backend,
    starting: Callable[[Claim, StoredTask], StoredTask],
    *,
    quotas: dict[str, int] | None = None,
    limit: int = 10,
) -> list[tuple[Claim, StoredTask | None]]:
    return await backend.claim_and_start(
        owner="w1",
        quotas=quotas or {"job": 10},
        limit=limit,
        now=NOW,
        lease_until=NOW + 30,
        starting=starting,
    )


async def test_claim_and_start_claims_as_claim_does_and_stores_what_it_started(
    backend: Backend,
) -> None:
    """Each claim is a real claim, best first, within the quotas and the
    limit; a claim that came with a record was started as stored, one that
    came without one is started by ``start`` as any claim."""
    recs = [record(priority=p) for p in (0, 5, 1)]
    for rec in recs:
        assert await backend.enqueue(stored(rec), priority=rec.priority, not_before=0.0)
    other = record(name="other")
    assert await backend.enqueue(stored(other), priority=9, not_before=0.0)
    seen: list[StoredTask] = []
    got = await claim_and_start(backend, claim_starting(seen), quotas={"job": 2}, limit=3)
    assert [claim.task_id for claim, _ in got] == [recs[1].id, recs[2].id]  # best first
    assert [claim.name for claim, _ in got] == ["job", "job"]
    assert len({claim.token for claim, _ in got}) == 2
    assert len(seen) == sum(begun is not None for _, begun in got)  # once per started claim
    for claim, begun in got:
        if begun is None:
            begun = await backend.start(claim, starting=starting_under(claim, []))
        assert begun is not None and begun.status is R and begun.token == claim.token
        now = await backend.store.get(claim.task_id)
        assert now is not None and reloaded(now).record == begun.record
        assert await backend.queue.renew(claim.task_id, claim.token, lease_until=NOW + 60) is (
            Renewal.RENEWED
        )
        done = attrs.evolve(begun.record, status=S, finished_at=NOW, expires_at=NOW + 60)
        assert await backend.finish(stored(done), claim=claim)
    # What was not claimed waits as it did.
    assert await backend.queue.depth() == 2
    assert await claim_and_start(backend, claim_starting([]), quotas={"job": 0}) == []


async def test_the_built_in_backends_start_what_they_claim(backend: Backend) -> None:
    """Not part of the contract (the default starts none), but what each
    built-in backend does: every claimed pending task comes back started, so
    a dispatch round costs one call (disk, memory) or two round trips
    (Redis), not one more per task."""
    recs = [record() for _ in range(3)]
    for rec in recs:
        assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    seen: list[StoredTask] = []
    got = await claim_and_start(backend, claim_starting(seen))
    assert len(got) == 3 and len(seen) == 3
    assert all(begun is not None and begun.token == claim.token for claim, begun in got)
    for claim, _ in got:
        now = await backend.store.get(claim.task_id)
        assert now is not None and now.status is R and now.token == claim.token


async def test_claim_and_start_leaves_a_task_its_starting_refused_pending_and_claimed(
    backend: Backend,
) -> None:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    calls: list[str] = []

    def broken(claim: Claim, pending: StoredTask) -> StoredTask:
        calls.append(pending.id)
        raise ZeroDivisionError("the engine's own bug")

    [(claim, begun)] = await claim_and_start(backend, broken)
    assert begun is None and len(calls) <= 1
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P
    # The claim holds, and start() raises what starting raises, as ever.
    with pytest.raises(ZeroDivisionError):
        await backend.start(claim, starting=lambda pending: broken(claim, pending))
    assert await backend.start(claim, starting=starting_under(claim, [])) is not None


async def test_claim_and_start_does_not_start_a_stale_entry(backend: Backend) -> None:
    """An entry whose record is no longer pending (cancelled while it
    waited) is claimed but not started; ``start`` then refuses it too."""
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    cancelled = attrs.evolve(rec, status=C, finished_at=NOW, expires_at=NOW + 60)
    assert await backend.store.transition(stored(cancelled), expect=P)
    seen: list[StoredTask] = []
    [(claim, begun)] = await claim_and_start(backend, claim_starting(seen))
    assert begun is None and seen == []
    assert await backend.start(claim, starting=starting_under(claim, seen)) is None
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is C


async def enqueue_and_start(
    backend: Backend, rec: TaskRecord, starting: Callable[[Claim, StoredTask], StoredTask]
) -> tuple[bool, tuple[Claim, StoredTask | None] | None]:
    return await backend.enqueue_and_start(
        stored(rec),
        priority=rec.priority,
        owner="w1",
        now=NOW,
        lease_until=NOW + 30,
        starting=starting,
    )


async def test_enqueue_and_start_starts_the_new_task_where_the_backend_says_so(
    backend: Backend,
) -> None:
    """A backend that starts on enqueue claims the new task for the owner
    and stores its started record; any other only enqueues it."""
    rec = record()
    seen: list[StoredTask] = []
    created, started = await enqueue_and_start(backend, rec, claim_starting(seen))
    assert created
    if not backend.starts_on_enqueue:
        assert started is None and seen == []
        assert await backend.queue.depth() == 1
        return
    assert started is not None
    claim, begun = started
    assert (claim.task_id, claim.name, claim.owner) == (rec.id, "job", "w1")
    assert claim.lease_until == NOW + 30
    assert [t.id for t in seen] == [rec.id] and seen[0].status is P
    assert begun is not None and begun.status is R and begun.token == claim.token
    now = await backend.store.get(rec.id)
    assert now is not None and reloaded(now).record == begun.record
    assert await backend.queue.depth() == 0 and await backend.queue.contains(rec.id)
    assert await backend.queue.renew(rec.id, claim.token, lease_until=NOW + 60) is (Renewal.RENEWED)
    # A claim like any other: its token is newer than the last one, and the
    # task finishes as any claimed task does.
    other = record()
    assert await backend.enqueue(stored(other), priority=0, not_before=0.0)
    later = await claim_one(backend)
    assert later is not None and later.token > claim.token
    done = attrs.evolve(begun.record, status=S, finished_at=NOW, expires_at=NOW + 60)
    assert await backend.finish(stored(done), claim=claim)
    assert not await backend.queue.contains(rec.id)


async def test_enqueue_and_start_from_thread_does_what_enqueue_and_start_does(
    backend: Backend,
) -> None:
    """From a plain thread, where the backend can (``enqueues_from_threads``
    and ``starts_on_enqueue``, once the owner has claimed here before): the
    same step as :meth:`enqueue_and_start`, answered from the backend's
    thread; where it cannot, False and nothing done (the engine then calls
    :meth:`enqueue_from_thread`)."""
    first = record()
    assert (await enqueue_and_start(backend, first, claim_starting([])))[0]  # the owner claimed
    rec = record()
    seen: list[StoredTask] = []
    answered = threading.Event()
    got: list[object] = []

    def answer(value: object) -> None:
        got.append(value)
        answered.set()

    def call() -> bool:
        return backend.enqueue_and_start_from_thread(
            stored(rec),
            priority=0,
            rank=None,
            owner="w1",
            now=NOW,
            lease_until=NOW + 30,
            starting=claim_starting(seen),
            answer=answer,
        )

    done = await trio.to_thread.run_sync(call)
    if not (backend.enqueues_from_threads and backend.starts_on_enqueue):
        assert done is False and not await backend.queue.contains(rec.id)
        return
    assert done is True
    assert await trio.to_thread.run_sync(answered.wait, 10)
    [(created, started)] = got  # type: ignore[misc]
    assert created is True
    claim, begun = started
    assert (claim.task_id, claim.owner) == (rec.id, "w1")
    assert begun is not None and begun.status is R and begun.token == claim.token
    now = await backend.store.get(rec.id)
    assert now is not None and reloaded(now).record == begun.record


async def test_a_task_started_by_enqueue_and_start_is_held_like_any_claimed_task(
    starting_backend: Backend,
) -> None:
    """Its claim's lease runs out as any lease does, and a released claim
    puts it back in line (behind what waited before it)."""
    backend = starting_backend
    rec = record()
    created, started = await enqueue_and_start(backend, rec, claim_starting([]))
    assert created and started is not None
    claim, _ = started
    assert [c.task_id for c in await backend.queue.expired(NOW + 31)] == [rec.id]
    assert await backend.queue.expired(NOW + 29) == []
    waiting = record()
    assert await backend.enqueue(stored(waiting), priority=0, not_before=0.0)
    assert await backend.queue.release(rec.id, claim.token)
    assert await backend.queue.position(rec.id) == 1
    assert await backend.queue.depth() == 2
    first, second = await claim_one(backend), await claim_one(backend)
    assert first is not None and second is not None
    assert (first.task_id, second.task_id) == (waiting.id, rec.id)
    assert second.token > claim.token


async def test_enqueue_and_start_claims_what_waits_ahead_of_the_new_task(
    starting_backend: Backend,
) -> None:
    """The claim is the one a dispatch round would make next: an older task
    of the same name that waits goes first (the new one then waits behind
    it), and a higher-ranked one too; a task of another name does not."""
    backend = starting_backend
    older = record()
    elsewhere = record(name="other")
    for rec in (older, elsewhere):
        assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    new = record()
    created, started = await enqueue_and_start(backend, new, claim_starting([]))
    assert created and started is not None
    claim, begun = started
    assert claim.task_id == older.id and begun is not None and begun.id == older.id
    assert await backend.queue.position(new.id) == 0
    got = await backend.store.get(new.id)
    assert got is not None and got.status is P
    # A task ranked higher than the new one goes first as well.
    urgent = record(priority=5)
    assert await backend.enqueue(stored(urgent), priority=5, not_before=0.0)
    created, started = await enqueue_and_start(backend, record(), claim_starting([]))
    assert created and started is not None and started[0].task_id == urgent.id


async def test_enqueue_and_start_passes_a_delayed_task_that_is_not_due(
    starting_backend: Backend,
) -> None:
    backend = starting_backend
    delayed = record()
    assert await backend.enqueue(stored(delayed), priority=9, not_before=NOW + 60)
    new = record()
    created, started = await enqueue_and_start(backend, new, claim_starting([]))
    assert created and started is not None and started[0].task_id == new.id
    assert await backend.queue.next_due(["job"]) == NOW + 60


async def test_enqueue_and_start_of_an_existing_id_claims_nothing(backend: Backend) -> None:
    rec = record()
    waiting = record()
    for r in (rec, waiting):
        assert await backend.enqueue(stored(r), priority=0, not_before=0.0)
    seen: list[StoredTask] = []
    assert await enqueue_and_start(backend, rec, claim_starting(seen)) == (False, None)
    assert seen == [] and await backend.queue.depth() == 2


async def test_enqueue_and_start_leaves_a_task_its_starting_refused_pending_and_claimed(
    starting_backend: Backend,
) -> None:
    backend = starting_backend

    def broken(claim: Claim, pending: StoredTask) -> StoredTask:
        raise ZeroDivisionError("the engine's own bug")

    rec = record()
    created, started = await enqueue_and_start(backend, rec, broken)
    assert created and started is not None
    claim, begun = started
    assert begun is None and claim.task_id == rec.id
    got = await backend.store.get(rec.id)
    assert got is not None and got.status is P
    assert await backend.start(claim, starting=starting_under(claim, [])) is not None


async def started(backend: Backend) -> tuple[TaskRecord, Claim]:
    rec = record()
    assert await backend.enqueue(stored(rec), priority=0, not_before=0.0)
    claim = await claim_one(backend)
    assert claim is not None
    begun = await backend.start(claim, starting=starting_under(claim, []))
    assert begun is not None
    return begun.record, claim


async def test_the_backends_in_memory_and_only_they_finish_at_once(backend: Backend) -> None:
    assert backend.finishes_now is backend.volatile


@pytest.mark.parametrize("way", ENDS)
async def test_finish_moves_the_record_saves_the_result_and_acks(
    backend: Backend, way: str
) -> None:
    running, claim = await started(backend)
    done = attrs.evolve(running, status=S, finished_at=NOW, expires_at=NOW + 60)
    payload = Payload(media_type="application/json", data=b"[1]")
    assert await end_run(backend, way, stored(done), claim=claim, result=payload)
    got = await backend.store.get(running.id)
    assert got is not None and reloaded(got).record == done
    assert await backend.store.get_result(running.id) == payload
    assert not await backend.queue.contains(running.id)
    assert not await backend.queue.ack(claim.task_id, claim.token)  # acked already


async def test_a_waited_finish_stores_the_same_and_expedite_is_harmless(
    backend: Backend,
) -> None:
    """``waited`` (someone waits on the end) may change how soon the end is
    committed, never what is stored; ``expedite()`` changes nothing stored."""
    backend.expedite()  # nothing under way: nothing to do
    running, claim = await started(backend)
    done = attrs.evolve(running, status=S, finished_at=NOW, expires_at=NOW + 60)
    payload = Payload(media_type="application/json", data=b"[2]")
    backend.expedite()
    assert await backend.finish(stored(done), claim=claim, result=payload, waited=True)
    got = await backend.store.get(running.id)
    assert got is not None and reloaded(got).record == done
    assert await backend.store.get_result(running.id) == payload
    assert not await backend.queue.contains(running.id)


@pytest.mark.parametrize("way", ENDS)
async def test_finish_refuses_a_stale_token_and_leaves_the_newer_claim(
    backend: Backend, way: str
) -> None:
    running, stale = await started(backend)
    # The lease ran out: recovery put the task back and a fresh claim started it.
    back = attrs.evolve(running, status=P, token=0)
    assert await backend.store.transition(stored(back), expect=R, token=stale.token)
    assert await backend.queue.release(stale.task_id, stale.token)
    fresh = await claim_one(backend)
    assert fresh is not None
    assert await backend.start(fresh, starting=starting_under(fresh, [])) is not None
    late = attrs.evolve(running, status=S, finished_at=NOW, expires_at=NOW + 60)
    payload = Payload(media_type="application/json", data=b'"late"')
    assert not await end_run(backend, way, stored(late), claim=stale, result=payload)
    got = await backend.store.get(running.id)
    assert got is not None and got.status is R and got.token == fresh.token
    assert await backend.store.get_result(running.id) is None  # nothing of it saved
    assert (
        await backend.queue.renew(fresh.task_id, fresh.token, lease_until=NOW + 60)
        is Renewal.RENEWED
    )  # the fresh claim's entry stays


@pytest.mark.parametrize("way", ENDS)
async def test_finish_acks_even_when_the_record_moved_on(backend: Backend, way: str) -> None:
    running, claim = await started(backend)
    # Failed by someone else (its worker judged lost) while this claim still held it.
    lost = attrs.evolve(running, status=F, finished_at=NOW, expires_at=NOW + 60)
    assert await backend.store.transition(stored(lost), expect=R, token=claim.token)
    done = attrs.evolve(running, status=S, finished_at=NOW + 1, expires_at=NOW + 61)
    assert not await end_run(backend, way, stored(done), claim=claim, result=None)
    got = await backend.store.get(running.id)
    assert got is not None and got.status is F
    assert not await backend.queue.contains(running.id)  # acked all the same


async def test_delete_expired_deletes_only_an_expired_record(backend: Backend) -> None:
    live = record()
    assert await backend.store.create(stored(live))
    assert not await backend.store.delete_expired(live.id, NOW + 10**9)  # pending: never expires
    done = attrs.evolve(live, status=C, finished_at=NOW, expires_at=NOW + 60)
    assert await backend.store.transition(stored(done), expect=P)
    assert not await backend.store.delete_expired(live.id, NOW + 59)
    assert await backend.store.get(live.id) is not None
    assert await backend.store.delete_expired(live.id, NOW + 60)
    assert await backend.store.get(live.id) is None
    assert not await backend.store.delete_expired(live.id, NOW + 60)
    assert not await backend.store.delete_expired(new_task_id(), NOW)


# ---------------------------------------------------------------- batches


async def test_enqueue_many_creates_queues_and_records_membership(backend: Backend) -> None:
    tasks = [stored(record()) for _ in range(3)]
    answers = await backend.enqueue_many(
        tasks, priority=0, not_before=0.0, batch_id="b" * 22, positions=[0, 1, 2]
    )
    assert answers == [True, True, True]
    assert list(await backend.store.batch_members("b" * 22)) == [
        (i, t.id) for i, t in enumerate(tasks)
    ]
    for task in tasks:
        assert await backend.store.get(task.id) is not None
        assert await backend.queue.contains(task.id)
    more = [stored(record()) for _ in range(2)]
    # Gaps are allowed (items refused at submit), and order is by position.
    await backend.enqueue_many(
        more, priority=0, not_before=0.0, batch_id="b" * 22, positions=[9, 5]
    )
    members = list(await backend.store.batch_members("b" * 22))
    assert [m[1] for m in members] == [t.id for t in [*tasks, more[1], more[0]]]
    assert [m[0] for m in members] == [0, 1, 2, 5, 9]
    assert list(await backend.store.batch_members("b" * 22, offset=1, limit=2)) == members[1:3]
    assert list(await backend.store.batch_members("c" * 22)) == []


async def test_enqueue_many_again_is_idempotent(backend: Backend) -> None:
    tasks = [stored(record()) for _ in range(2)]
    await backend.enqueue_many(
        tasks, priority=0, not_before=0.0, batch_id="b" * 22, positions=[0, 1]
    )
    claims = await claim_one(backend)
    again = await backend.enqueue_many(
        tasks, priority=0, not_before=0.0, batch_id="b" * 22, positions=[0, 1]
    )
    assert again == [False, False]  # existed: nothing created, nothing queued twice
    assert [m[1] for m in await backend.store.batch_members("b" * 22)] == [t.id for t in tasks]
    assert claims is not None
    assert await backend.queue.depth("job") == 1


async def test_enqueue_many_orders_by_priority_then_submission(backend: Backend) -> None:
    low = [stored(record()) for _ in range(2)]
    high = [stored(record()) for _ in range(2)]
    await backend.enqueue_many(low, priority=0, not_before=0.0, batch_id="l" * 22, positions=[0, 1])
    await backend.enqueue_many(
        high, priority=3, not_before=0.0, batch_id="h" * 22, positions=[0, 1]
    )
    claims = await backend.queue.claim(
        owner="w", quotas={"job": 4}, limit=4, now=NOW, lease_until=NOW + 30
    )
    assert [c.task_id for c in claims] == [t.id for t in high + low]


async def test_batch_counts_read_the_stored_status_and_expiry(backend: Backend) -> None:
    """Pending, running, each final status, past its expiry, and deleted:
    counted by what each member's record says now, on every backend."""
    tasks = [stored(record()) for _ in range(7)]
    await backend.enqueue_many(
        tasks, priority=0, not_before=0.0, batch_id="b" * 22, positions=list(range(7))
    )
    ends = [(S, NOW + 100), (F, NOW + 100), (C, NOW + 100), (S, NOW - 1)]
    for task in tasks[1:6]:
        running = attrs.evolve(task.record, status=R, started_at=NOW)
        assert await backend.store.transition(stored(running), expect=P)
    for task, (status, expires_at) in zip(tasks[2:6], ends, strict=True):
        ended = attrs.evolve(task.record, status=status, finished_at=NOW, expires_at=expires_at)
        assert await backend.store.transition(stored(ended), expect=R)
    assert await backend.store.delete(tasks[6].id)
    counts = await backend.store.batch_counts("b" * 22, now=NOW)
    assert counts == {
        "pending": 1,
        "in_progress": 1,
        "success": 1,
        "failure": 1,
        "cancelled": 1,
        "expired": 2,
        "total": 7,
    }
    # An expiry exactly now counts as expired; an unknown batch counts nothing.
    later = await backend.store.batch_counts("b" * 22, now=NOW + 100)
    assert later["expired"] == 5 and later["total"] == 7 and later["success"] == 0
    nothing = await backend.store.batch_counts("c" * 22, now=NOW)
    assert nothing == {s.value: 0 for s in TaskStatus} | {"total": 0}


async def test_a_batch_goes_with_its_last_record(backend: Backend) -> None:
    done = [stored(record()) for _ in range(2)]
    for task in done:
        assert await backend.store.create(task)
        ended = attrs.evolve(task.record, status=C, finished_at=NOW, expires_at=NOW + 10)
        assert await backend.store.transition(stored(ended), expect=P)
    await backend.store.add_batch_members("b" * 22, [(0, done[0].id), (1, done[1].id)])
    assert await backend.store.delete(done[0].id)
    assert [m[1] for m in await backend.store.batch_members("b" * 22)] == [t.id for t in done]
    assert await backend.store.purge_expired(NOW + 11) == 1
    assert list(await backend.store.batch_members("b" * 22)) == []
