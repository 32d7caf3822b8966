"""Bulk submit and batch handles, in-process: ``submit_many``, ``Batch``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

import errands
from errands import Backend, TaskStatus, _batches, _engine
from errands.backends import DiskCacheBackend, MemoryBackend
from tests.conftest import trio_wall
from tests.tools import count_calls, mock_clock

svc = errands.Service("bulk")
started: list[int] = []


@svc.task
async def square(x: int) -> int:
    started.append(x)
    await trio.sleep(x % 3)
    if x == 13:
        raise RuntimeError("unlucky")
    return x * x


@svc.task
async def forever(x: int) -> int:
    await trio.sleep_forever()
    return x


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": lambda path: MemoryBackend(),
    "diskcache": lambda path: DiskCacheBackend(path / "data", synchronous="NORMAL"),
    "redis": lambda path: MemoryBackend(),  # replaced by make_backend (needs redis_url)
}


@pytest.fixture(params=sorted(BACKENDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> trio.testing.MockClock:
    return mock_clock(kind)


@pytest.fixture
def make_backend(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], Backend]:
    if kind == "redis":
        from errands.backends.redis import RedisBackend

        url = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:12]}"
        return lambda: RedisBackend(url, prefix=prefix)
    return lambda: BACKENDS[kind](tmp_path)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    started.clear()


async def test_valid_items_are_accepted_and_invalid_ones_named(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    items = [{"x": 1}, {"x": "two"}, {"x": 3}, {"y": 4}, "not an object", {"x": 13}]
    async with errands.open_engine(svc, backend=make_backend(), clock=trio_wall) as client:
        batch = await client.square.submit_many(items)
        assert len(batch.tasks) == 3
        assert sorted(batch.rejected) == [1, 3, 4]
        assert isinstance(batch.rejected[1], errands.InvalidArguments)
        assert "$.x" in str(batch.rejected[1])
        assert "$.y: unknown argument" in str(batch.rejected[3])
        assert "an item must be an object" in str(batch.rejected[4])
        counts = await batch.wait()
        assert counts["total"] == 3
        assert (counts["success"], counts["failure"]) == (2, 1)
        results = [r async for r in batch.results()]
        assert [(r.index, r.status, r.result) for r in results] == [
            (0, "success", 1),
            (2, "success", 9),
            (5, "failure", None),
        ]
        assert batch.indexes == [0, 2, 5]
        assert results[2].error is not None and results[2].error.message == "unlucky"
        assert [r.task_id for r in results] == [t.id for t in batch.tasks]
        again = await client.get_batch(batch.id)
        assert [t.id for t in again.tasks] == [t.id for t in batch.tasks]
        assert again.indexes == [0, 2, 5]
        assert again.name == "square"


async def test_results_as_completed_come_in_finishing_order(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with errands.open_engine(svc, backend=make_backend(), clock=trio_wall) as client:
        batch = await client.square.submit_many({"x": x} for x in (2, 1, 0))
        results = [r async for r in batch.results(order="completed")]
        assert [r.result for r in results] == [0, 1, 4]
        assert [r.index for r in results] == [2, 1, 0]


async def test_results_in_submission_order_come_as_each_is_final(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend], kind: str
) -> None:
    """A task not final yet holds back the ones after it, not the ones before;
    those after it that are final by then come right after it."""
    async with errands.open_engine(svc, backend=make_backend(), clock=trio_wall) as client:
        batch = await client.square.submit_many({"x": x} for x in (0, 3, 2, 6, 4))
        start = trio.current_time()
        seen = []
        async for r in batch.results():
            seen.append((r.index, r.result, round(trio.current_time() - start)))
        # x sleeps x % 3 seconds: 0 and 3 end at once, 2 after 2 s; 6 (at
        # once) and 4 (after 1 s) are final by then and come right after it.
        assert [(i, v) for i, v, _ in seen] == [(0, 0), (1, 9), (2, 4), (3, 36), (4, 16)]
        if kind == "memory":  # elsewhere the mock clock also jumps while real I/O waits
            assert [at for _, _, at in seen] == [0, 0, 2, 2, 2]


async def test_results_of_a_finished_batch_are_read_together(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    """Results of final tasks are read a window at a time (one store call per
    500 tasks, not two per task), across windows, gone members included."""
    backend = make_backend()
    async with errands.open_engine(svc, backend=backend, clock=trio_wall) as client:
        batch = await client.square.submit_many({"x": 3 * i} for i in range(1100))
        await batch.wait()
        gone = batch.tasks[700].id
        assert await backend.store.delete(gone)
        calls = count_calls(backend.store, "get", "get_result", "get_with_results")
        results = [r async for r in batch.results()]
        assert [r.index for r in results] == list(range(1100))
        assert results[700].status == "expired" and results[700].result is None
        expected = [(3 * i) ** 2 for i in range(1100)]
        assert [r.result for r in results if r.index != 700] == expected[:700] + expected[701:]
        # Three windows of up to 500, one store call each, and no read of a
        # single task's result (nor of its record: the waits of tasks this
        # engine ended read nothing; the engine's upkeep may read one or two
        # meanwhile on a backend whose clock ran ahead in this test).
        count = calls.count
        assert count["get_result"] == 0 and count["get_with_results"] == 3, count
        assert count["get"] < 20, count


async def test_a_batch_is_waited_for_together(
    clock: trio.testing.MockClock,
    make_backend: Callable[[], Backend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Batch.wait()`` reads its tasks 500 at a time, then each once more as
    it ends: no read of one task at a time, however many were final (here
    the engine remembers no end of its own, as for a batch it did not run)."""
    from errands import _watching

    monkeypatch.setattr(_watching, "ENDED_KEPT", 0)
    backend = make_backend()
    async with errands.open_engine(svc, backend=backend, clock=trio_wall) as client:
        done = await client.square.submit_many({"x": 3 * i} for i in range(1100))
        await done.wait()
        calls = count_calls(backend.store, "get", "get_many")
        counts = await done.wait()
        assert counts["success"] == 1100
        # (The engine's upkeep may read a task or two meanwhile; a wait that
        # reads one task at a time reads 1,100.)
        assert calls.count["get"] < 20, calls.count
        # Three for the wait, three for the counts (memory, Redis), and on a
        # backend shared with other processes a poll round or two.
        assert calls.count["get_many"] < 20, calls.count
        running = await client.square.submit_many({"x": x} for x in (2, 5))
        start = trio.current_time()
        assert (await running.wait())["success"] == 2
        assert trio.current_time() - start >= 2 - 1e-9  # until the last one ended


async def test_a_large_batch_is_written_in_chunks_and_runs_whole(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with errands.open_engine(svc, backend=make_backend(), clock=trio_wall) as client:
        batch = await client.square.submit_many({"x": 3 * i} for i in range(1200))
        assert len(batch.tasks) == 1200
        counts = await batch.wait()
        assert counts["success"] == 1200
        assert sorted(started) == [3 * i for i in range(1200)]


async def test_cancel_stops_what_has_not_finished(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with errands.open_engine(
        svc, backend=make_backend(), clock=trio_wall, workers=2
    ) as client:
        batch = await client.forever.submit_many({"x": x} for x in range(5))
        await trio.sleep(1)  # two run, three wait
        with pytest.raises(TimeoutError, match="not finished after 1 s"):
            await batch.wait(timeout=1)
        counts = await batch.cancel()
        assert counts["cancelled"] == 5
        assert all([await t.get_status() is TaskStatus.CANCELLED for t in batch.tasks])


async def test_priority_and_delay_apply_to_every_item(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with errands.open_engine(
        svc, backend=make_backend(), clock=trio_wall, workers=1
    ) as client:
        blocker = await client.forever.submit(x=0)
        await trio.sleep(0.5)
        low = await client.square.submit_many([{"x": 30}, {"x": 33}])
        high = await client.square.options(priority=5).submit_many([{"x": 60}, {"x": 63}])
        later = await client.square.options(delay=5).submit_many([{"x": 90}])
        await blocker.cancel()
        await low.wait()
        await high.wait()
        assert started[:4] == [60, 63, 30, 33]
        assert await later.tasks[0].get_status() is TaskStatus.PENDING
        await later.wait()
        assert started[-1] == 90


async def test_an_idempotency_key_makes_a_resent_batch_the_same_batch(
    clock: trio.testing.MockClock, make_backend: Callable[[], Backend]
) -> None:
    async with errands.open_engine(svc, backend=make_backend(), clock=trio_wall) as client:
        keyed = client.square.options(idempotency_key="upload-7")
        first = await keyed.submit_many([{"x": 3}, {"x": "bad"}, {"x": 6}])
        await first.wait()
        again = await keyed.submit_many([{"x": 3}, {"x": "bad"}, {"x": 6}, {"x": 9}])
        assert again.id == first.id
        assert [t.id for t in again.tasks[:2]] == [t.id for t in first.tasks]
        await again.wait()
        assert sorted(started) == [3, 6, 9]  # the repeated items did not run again
        other = await keyed.submit_many([{"x": 4}])
        assert other.tasks == [] and 0 in other.rejected  # same key, other arguments
        assert "other arguments" in str(other.rejected[0])


async def test_an_unknown_batch_is_not_found(autojump_clock: trio.testing.MockClock) -> None:
    async with errands.open_engine(svc, clock=trio_wall) as client:
        for bad in ("A" * 22, "nope", "../x"):
            with pytest.raises(errands.BatchNotFound):
                await client.get_batch(bad)


async def test_a_batch_goes_when_its_last_task_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with errands.open_engine(svc, clock=trio_wall, ttl=10, sweep_interval=1) as client:
        batch = await client.square.submit_many([{"x": 3}, {"x": 6}])
        await batch.wait()
        await trio.sleep(12)
        with pytest.raises(errands.BatchNotFound):
            await client.get_batch(batch.id)


async def test_a_batch_on_diskcache_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "data"
    async with errands.open_engine(svc, backend=DiskCacheBackend(path), workers=0) as client:
        batch = await client.square.submit_many({"x": 3 * i} for i in range(700))
    async with errands.open_engine(svc, backend=DiskCacheBackend(path)) as client:
        again = await client.get_batch(batch.id)
        assert [t.id for t in again.tasks] == [t.id for t in batch.tasks]
        with trio.fail_after(60):
            counts = await again.wait()
        assert counts["success"] == 700


def test_the_sync_client_submits_many() -> None:
    with errands.start(svc) as client:
        batch = client.square.submit_many([{"x": 0}, {"x": "no"}, {"x": 3}])
        assert sorted(batch.rejected) == [1]
        assert batch.wait(timeout=30)["success"] == 2
        assert [r.result for r in batch.results()] == [0, 9]
        assert client.get_batch(batch.id).counts()["total"] == 2


async def test_a_batch_wait_does_not_read_again_what_this_engine_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``batch.wait()`` reads each task once when it starts waiting; a task
    that this engine then ends is known final from its end, not read again
    (each used to be read twice)."""
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend) as client:
        batch = await client.square.submit_many([{"x": x} for x in range(300)])
        calls = count_calls(backend.store, "get_many")
        waiting = client.engine.waiting_set([t.id for t in batch.tasks], infos=False)
        left = {t.id for t in batch.tasks}
        try:
            while left:
                left.difference_update(await waiting.next(None))
        finally:
            waiting.close()
        assert calls.ids_read("get_many") == 300
        assert (await batch.counts())["success"] == 299


@pytest.mark.parametrize("span", [None, 7])
async def test_results_in_submission_order_read_each_task_a_few_times(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, span: int | None
) -> None:
    """``batch.results()`` in submission order waits on the batch as a
    waiting set does (each task read when the wait begins and once at its
    end), then reads the outcomes of the tasks whose turn has come: at most
    three reads per task.  It read a window of up to 500 tasks again at
    each end of the task whose turn it was: here 6,223 reads for 300 tasks.
    A batch is waited on a span of members at a time (made small here)."""
    if span is not None:
        monkeypatch.setattr(_batches, "SPAN", span)
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend, workers=8) as client:
        batch = await client.square.submit_many([{"x": x} for x in range(300)])
        calls = count_calls(backend.store, "get_many", "get_with_results")
        results = [r async for r in batch.results()]
        assert [r.index for r in results] == list(range(300))
        assert [r.result for r in results[:4]] == [0, 1, 4, 9]
        read = calls.ids_read("get_many") + calls.ids_read("get_with_results")
        assert read <= 3 * 300, read


@pytest.fixture
def disk_clock() -> trio.testing.MockClock:
    return mock_clock("diskcache")


async def test_a_process_alone_on_its_directory_reads_no_waited_task_for_changes(
    disk_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The change watcher looks for changes that other processes make; on
    diskcache, SQLite tells whether any other connection committed since
    its last round, and while none did it reads nothing.  Waiting 5 s on
    500 tasks that do not run read them at each round before (about
    25,000 reads): now only the wait's own first read."""
    backend = DiskCacheBackend(tmp_path / "data", synchronous="NORMAL")
    async with errands.open_engine(svc, backend=backend, workers=0) as client:
        batch = await client.square.submit_many([{"x": x} for x in range(500)])
        calls = count_calls(backend.store, "get_many")
        with pytest.raises(TimeoutError):
            await batch.wait(timeout=5)
        assert calls.ids_read("get_many") == 500


async def test_the_change_watcher_reads_waited_tasks_within_its_budget(
    disk_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """While another process writes to the directory, diskcache cannot tell
    which tasks it changed: each round of the change watcher reads every
    waited task, and a round that read many pauses in proportion, so the
    watcher reads at most ``WATCH_READS`` tasks a second (made small here:
    1,000).  Waiting 5 s on 500 tasks that do not run read them about 50
    times (25,000 reads) before."""
    monkeypatch.setattr(_engine, "WATCH_READS", 1000)
    backend = DiskCacheBackend(tmp_path / "data", synchronous="NORMAL")
    other = DiskCacheBackend(tmp_path / "data", synchronous="NORMAL")  # another connection
    async with (
        errands.open_engine(svc, backend=backend, workers=0) as client,
        errands.open_engine(svc, backend=other, workers=0) as elsewhere,
        trio.open_nursery() as nursery,
    ):

        async def write_now_and_then() -> None:
            while True:
                await elsewhere.square.submit(x=0)
                await trio.sleep(0.05)

        nursery.start_soon(write_now_and_then)
        batch = await client.square.submit_many([{"x": x} for x in range(500)])
        calls = count_calls(backend.store, "get_many")
        with pytest.raises(TimeoutError):
            await batch.wait(timeout=5)
        read = calls.ids_read("get_many")
        assert 1000 <= read <= 500 + 5 * 1000 + 500, read  # its own read, then the rounds
        nursery.cancel_scope.cancel()


async def test_a_batch_opened_by_id_reads_one_member_for_its_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The members of a batch share their task name: opening a batch by id
    (``get_batch``, every HTTP results stream) reads the first member
    still kept, not the first 500 (most of a bulk's reads after its own).
    When the first is gone, the next ones say it."""
    backend = MemoryBackend()
    async with errands.open_engine(svc, backend=backend, workers=0) as client:
        batch = await client.square.submit_many([{"x": x} for x in range(640)])
        calls = count_calls(backend.store, "get_many")
        again = await client.get_batch(batch.id)
        assert again.name == "square" and len(again.tasks) == 640
        assert calls.ids_read("get_many") == 1
        assert await backend.store.delete(batch.tasks[0].id)
        again = await client.get_batch(batch.id)
        assert again.name == "square"
        assert calls.ids_read("get_many") == 1 + 1 + 499
