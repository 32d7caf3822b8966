"""Expiry, shutdown, lost workers and fencing, with the memory backend."""

from __future__ import annotations

import threading
import time

import attrs
import pytest
import trio
import trio.testing

import errands
from errands import Renewal, StoredTask, TaskStatus, _records
from errands._model import TaskRecord, new_task_id
from errands.backends import MemoryBackend
from errands.backends.memory import MemoryQueue
from tests.conftest import trio_wall

svc = errands.Service("recovery")
runs: list[str] = []


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task(ttl=60)
async def short_lived() -> str:
    return "soon gone"


@svc.task
async def sleepy(seconds: float, tag: str) -> str:
    runs.append(tag)
    await trio.sleep(seconds)
    return tag


#: Hold the victim's first attempt of sync_sleepy until set; set as it returns.
released = threading.Event()
victim_returned = threading.Event()
#: The most runs of sync_sleepy at once (other than the victim's first).
at_once = {"now": 0, "most": 0}


@svc.task
def sync_sleepy(tag: str) -> str:
    attempt = errands.current_task().attempt
    if attempt == 1 and tag == "victim":
        released.wait(60)
        victim_returned.set()
        return f"{tag}-{attempt}"
    at_once["now"] += 1
    at_once["most"] = max(at_once["most"], at_once["now"])
    time.sleep(0.005)
    at_once["now"] -= 1
    return f"{tag}-{attempt}"


def engine(backend: object = None, **options: object) -> errands.open_engine:  # type: ignore[valid-type]
    options.setdefault("clock", trio_wall)
    return errands.open_engine(svc, backend=backend, **options)  # type: ignore[arg-type]


async def test_expired_task_reads_as_not_found_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    async with engine(backend, sweep_interval=3600) as client:
        task = await client.short_lived.submit()
        await task.wait()
        await trio.sleep(59)
        assert await task.get() == "soon gone"
        await trio.sleep(1)
        with pytest.raises(errands.TaskNotFound):
            await task.get()
        with pytest.raises(errands.TaskNotFound):
            await task.get_status()
        # Not yet swept: reads never delete, expiry alone hides it.
        assert await backend.store.get(task.id) is not None
        assert [t.id for t in await client.list()] == []


async def test_sweeper_deletes_expired_tasks(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    async with engine(backend, sweep_interval=10, ttl=30) as client:
        keep = await client.short_lived.submit()  # ttl 60 (its own)
        gone = await client.add.submit(a=1, b=2)  # ttl 30 (the engine's)
        await keep.wait()
        await gone.wait()
        await trio.sleep(45)
        assert await backend.store.get(gone.id) is None
        assert await backend.store.get_result(gone.id) is None
        assert await keep.get() == "soon gone"
        await trio.sleep(20)
        assert await backend.store.get(keep.id) is None


async def test_shutdown_waits_for_running_tasks_within_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    async with engine(backend, grace=10) as client:
        task = await client.sleepy.submit(seconds=5, tag="quick")
        await trio.testing.wait_all_tasks_blocked()
    stored = await backend.store.get(task.id)
    assert stored is not None and stored.status is TaskStatus.SUCCESS
    assert trio.current_time() == pytest.approx(5)


async def test_shutdown_hands_unfinished_work_back(autojump_clock: trio.testing.MockClock) -> None:
    runs.clear()
    backend = MemoryBackend()
    async with engine(backend, grace=2, workers=1) as client:
        running = await client.sleepy.submit(seconds=100, tag="long")
        waiting = await client.sleepy.submit(seconds=1, tag="next")
        await trio.testing.wait_all_tasks_blocked()
    assert trio.current_time() == pytest.approx(2)
    for task in (running, waiting):
        stored = await backend.store.get(task.id)
        assert stored is not None and stored.status is TaskStatus.PENDING
    stored = await backend.store.get(running.id)
    assert stored is not None and stored.record.attempt == 0  # the cut-short run does not count
    # The next engine on the same storage picks both up: nothing accepted is lost.
    async with engine(backend) as client:
        assert await client.sleepy.get_task(running.id).wait() is TaskStatus.SUCCESS
        assert await client.sleepy.get_task(waiting.id).wait() is TaskStatus.SUCCESS
        assert (await client.get_task(running.id).get_info()).attempt == 1
    assert runs[0] == "long" and sorted(runs[1:]) == ["long", "next"]


async def _plant_dead_claim(backend: MemoryBackend, *, attempt: int = 0) -> tuple[str, int]:
    """A task claimed and started by a worker that then died (never renews)."""
    now = trio_wall()
    record = TaskRecord(
        id=new_task_id(),
        name="sleepy",
        args={"seconds": 1, "tag": "rerun"},
        status=TaskStatus.PENDING,
        created_at=now,
        attempt=attempt,
    )
    assert await backend.store.create(StoredTask.from_record(record))
    await backend.queue.put(record.id, name="sleepy")
    [claim] = await backend.queue.claim(
        owner="dead-worker", quotas={"sleepy": 1}, limit=1, now=now, lease_until=now + 30
    )
    started = attrs.evolve(
        record, status=TaskStatus.IN_PROGRESS, attempt=attempt + 1, token=claim.token
    )
    assert await backend.store.transition(
        StoredTask.from_record(started), expect=TaskStatus.PENDING
    )
    return record.id, claim.token


async def test_task_of_a_dead_worker_runs_again(autojump_clock: trio.testing.MockClock) -> None:
    runs.clear()
    backend = MemoryBackend()
    task_id, _ = await _plant_dead_claim(backend)
    async with engine(backend, lease=30) as client:
        task = client.get_task(task_id)
        assert await task.get_status() is TaskStatus.IN_PROGRESS
        assert await task.wait() is TaskStatus.SUCCESS
        assert 30 <= trio.current_time() <= 30 + 10 + 1  # after the lease, at the next look
        info = await task.get_info()
        assert info.attempt == 2 and info.error is None
    assert runs == ["rerun"]


async def test_dead_worker_on_last_attempt_fails_the_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs.clear()
    backend = MemoryBackend()
    task_id, _ = await _plant_dead_claim(backend, attempt=2)  # this was attempt 3 of 3
    async with engine(backend, lease=30) as client:
        task = client.get_task(task_id)
        assert await task.wait() is TaskStatus.FAILURE
        info = await task.get_info()
        assert info.error is not None and info.error.type == "WorkerLost"
        with pytest.raises(errands.TaskFailed, match="stopped responding"):
            await task.get()
    assert runs == []


@svc.task
async def no_arguments() -> str:
    runs.append("no_arguments")
    return "ran"


async def test_a_placeholder_left_by_a_dead_worker_fails_and_never_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A record that did not decode is started as a placeholder (no
    arguments, default options) and failed at once; a worker that died
    between the two leaves the placeholder in progress.  Recovery fails it:
    it does not run the placeholder as the task."""
    runs.clear()
    backend = MemoryBackend()
    now = trio_wall()
    task_id = new_task_id()
    placeholder = _records.unreadable(task_id, "no_arguments", now)
    assert await backend.store.create(StoredTask.from_record(placeholder))
    await backend.queue.put(task_id, name="no_arguments")
    [claim] = await backend.queue.claim(
        owner="dead-worker", quotas={"no_arguments": 1}, limit=1, now=now, lease_until=now + 30
    )
    started = _records.started(placeholder, token=claim.token, now=now)
    assert await backend.store.transition(
        StoredTask.from_record(started), expect=TaskStatus.PENDING
    )
    async with engine(backend, lease=30) as client:
        task = client.get_task(task_id)
        assert await task.wait() is TaskStatus.FAILURE
        info = await task.get_info()
        assert info.attempt == 1
        assert info.error is not None and info.error.type == "WorkerLost"
    assert runs == []


async def test_claim_whose_worker_died_before_starting_is_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    now = trio_wall()
    record = TaskRecord(
        id=new_task_id(),
        name="add",
        args={"a": 1, "b": 1},
        status=TaskStatus.PENDING,
        created_at=now,
    )
    await backend.store.create(StoredTask.from_record(record))
    await backend.queue.put(record.id, name="add")
    await backend.queue.claim(
        owner="dead", quotas={"add": 1}, limit=1, now=now, lease_until=now + 30
    )
    async with engine(backend, lease=30) as client:
        task = client.get_task(record.id)
        assert await task.wait() is TaskStatus.SUCCESS
        assert (await task.get_info()).attempt == 1


class TakeoverQueue(MemoryQueue):
    """A memory queue on which another worker steals a claim (as after a long GC
    pause or a network partition): the claim is released and re-claimed."""

    def __init__(self, name: str = "sleepy") -> None:
        super().__init__()
        self.name = name
        self.steal: str | None = None
        self.thief_token: int | None = None

    async def renew(self, task_id: str, token: int, *, lease_until: float) -> Renewal:
        if task_id == self.steal and self.thief_token is None:
            await self.release(task_id, token)
            [claim] = await self.claim(
                owner="thief", quotas={self.name: 1}, limit=1, now=0.0, lease_until=lease_until
            )
            self.thief_token = claim.token
        return await super().renew(task_id, token, lease_until=lease_until)


async def test_a_worker_that_lost_its_lease_writes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    queue = TakeoverQueue()
    backend.queue = queue
    async with engine(backend, lease=9) as client:
        task = await client.sleepy.submit(seconds=100, tag="victim")
        await trio.testing.wait_all_tasks_blocked()
        stored = await backend.store.get(task.id)
        assert stored is not None
        old_token = stored.token
        # The thief moves the record to its own attempt, as a real worker would.
        queue.steal = task.id
        await trio.sleep(3.5)  # the victim's first renewal happens at lease / 3
        assert queue.thief_token is not None and queue.thief_token > old_token
        stored = await backend.store.get(task.id)
        assert stored is not None
        assert not await backend.store.transition(  # the victim's token is fenced off
            StoredTask.from_record(attrs.evolve(stored.record, status=TaskStatus.SUCCESS)),
            expect=TaskStatus.IN_PROGRESS,
            token=queue.thief_token,
        )
        thief = attrs.evolve(stored.record, token=queue.thief_token, attempt=2)
        assert await backend.store.transition(
            StoredTask.from_record(thief), expect=TaskStatus.IN_PROGRESS, token=old_token
        )
        await trio.sleep(2)  # the victim's run was stopped at its renewal; it wrote nothing
        stored = await backend.store.get(task.id)
        assert stored is not None
        assert stored.status is TaskStatus.IN_PROGRESS and stored.token == queue.thief_token
        assert client.statistics().running == 0
        # The thief never renews either: once its lease runs out, the task is run again.
        assert await task.wait() is TaskStatus.SUCCESS
        assert (await task.get_info()).attempt == 3


async def test_a_sync_run_that_lost_its_claim_writes_nothing_and_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same for a sync run on the memory backend, which has no trio task
    of its own: the stop abandons it while its thread still blocks (it is
    settled at once, writing nothing, and its slot is free), and the thread's
    late return is dropped, not settled a second time (which would free the
    slot twice: two runs at once with one worker)."""
    released.clear()
    victim_returned.clear()
    at_once.update(now=0, most=0)
    backend = MemoryBackend()
    queue = TakeoverQueue("sync_sleepy")
    backend.queue = queue
    try:
        async with engine(backend, lease=9, workers=1) as client:
            task = await client.sync_sleepy.submit(tag="victim")
            await trio.testing.wait_all_tasks_blocked()
            stored = await backend.store.get(task.id)
            assert stored is not None and stored.status is TaskStatus.IN_PROGRESS
            old_token = stored.token
            queue.steal = task.id
            await trio.sleep(3.5)  # the first renewal, at lease / 3, meets the thief
            assert queue.thief_token is not None and queue.thief_token > old_token
            thief = attrs.evolve(stored.record, token=queue.thief_token, attempt=2)
            assert await backend.store.transition(
                StoredTask.from_record(thief), expect=TaskStatus.IN_PROGRESS, token=old_token
            )
            await trio.sleep(2)
            stored = await backend.store.get(task.id)
            assert stored is not None
            assert stored.status is TaskStatus.IN_PROGRESS and stored.token == queue.thief_token
            assert client.statistics().running == 0  # abandoned while its thread blocks
            released.set()  # the abandoned thread returns now
            await trio.to_thread.run_sync(victim_returned.wait)
            # Run again once the thief's lease ran out.
            assert await task.wait() is TaskStatus.SUCCESS
            assert await task.get() == "victim-3"
            others = [await client.sync_sleepy.submit(tag=f"t{i}") for i in range(20)]
            for other in others:
                assert await other.wait() is TaskStatus.SUCCESS
            assert at_once["most"] == 1  # one worker: never two runs at once
    finally:
        released.set()
