"""The task lifecycle through open_engine, on trio's autojump clock."""

from __future__ import annotations

import attrs
import hypothesis
import hypothesis.strategies
import pytest
import trio
import trio.testing

import errands
from errands import TaskStatus
from errands.backends import MemoryBackend
from tests.conftest import EPOCH, trio_wall

svc = errands.Service("lifecycle")
gate = {"event": trio.Event()}


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
async def sleepy(seconds: float) -> str:
    await trio.sleep(seconds)
    return "awake"


@svc.task
async def boom(message: str) -> None:
    raise RuntimeError(message)


@svc.task
def sync_add(a: int, b: int) -> int:
    return a + b


@svc.task
async def blocked() -> str:
    await gate["event"].wait()
    return "opened"


@svc.task
async def reporter(steps: int) -> int:
    for i in range(steps):
        errands.current_task().report((i + 1) / steps, f"step {i + 1}")
        await trio.sleep(1)
    return steps


def engine(**options: object) -> errands.open_engine:  # type: ignore[valid-type]
    options.setdefault("clock", trio_wall)
    return errands.open_engine(svc, **options)  # type: ignore[arg-type]


async def test_submit_wait_get_info(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.add.submit(a=2, b=3)
        assert isinstance(task.id, str) and len(task.id) == 22
        assert await task.wait() is TaskStatus.SUCCESS
        assert await task.get() == 5
        info = await task.get_info()
        assert info.status is TaskStatus.SUCCESS and info.name == "add"
        assert info.attempt == 1 and info.error is None and info.retry_of is None
        assert info.created_at.timestamp() == pytest.approx(EPOCH, abs=1)
        assert info.started_at is not None and info.finished_at is not None
        assert info.finished_at >= info.started_at >= info.created_at
        # Reading a result never deletes it.
        assert await task.get() == 5
        assert await task.get_status() is TaskStatus.SUCCESS


async def test_sync_function_runs_in_a_thread() -> None:
    async with engine() as client:
        task = await client.sync_add.submit(a=20, b=22)
        assert await task.wait(timeout=10) is TaskStatus.SUCCESS
        assert await task.get() == 42


async def test_dispatch_is_event_driven(autojump_clock: trio.testing.MockClock) -> None:
    """A submit starts the task with no polling interval: mock time does not move."""
    async with engine() as client:
        before = trio.current_time()
        task = await client.add.submit(a=1, b=1)
        assert await task.wait() is TaskStatus.SUCCESS
        assert trio.current_time() == before


async def test_get_before_final_is_not_ready(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.sleepy.submit(seconds=10)
        with pytest.raises(errands.TaskNotReady, match="pending|in_progress"):
            await task.get()
        assert await task.wait() is TaskStatus.SUCCESS
        assert trio.current_time() == pytest.approx(10)


async def test_failure_records_the_error(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.boom.submit(message="the model exploded")
        assert await task.wait() is TaskStatus.FAILURE
        with pytest.raises(errands.TaskFailed, match="the model exploded") as caught:
            await task.get()
        assert "RuntimeError" in str(caught.value)
        info = await task.get_info()
        assert info.error is not None
        assert info.error.type == "RuntimeError" and info.error.message == "the model exploded"
        assert info.attempt == 1  # retries are opt-in


async def test_wait_timeout_raises_builtin_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.sleepy.submit(seconds=100)
        with pytest.raises(TimeoutError):
            await task.wait(timeout=5)
        assert trio.current_time() == pytest.approx(5)
        assert await task.get_status() is TaskStatus.IN_PROGRESS
        assert await task.wait(timeout=200) is TaskStatus.SUCCESS


@pytest.mark.parametrize("bad_id", ["", "nope", "A" * 22, "../../etc/passwd", "x" * 500])
async def test_unknown_or_malformed_id_is_not_found(bad_id: str) -> None:
    async with engine() as client:
        task = client.add.get_task(bad_id)
        for call in (task.get_status, task.get_info, task.get, task.cancel, task.retry, task.wait):
            with pytest.raises(errands.TaskNotFound):
                await call()


async def test_get_task_handle_for_existing_id(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.add.submit(a=1, b=2)
        await task.wait()
        again = client.sleepy.get_task(task.id)  # ids are global across endpoints
        assert await again.get() == 3
        assert again == client.get_task(task.id)


async def test_progress_is_kept_after_the_end(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.reporter.submit(steps=4)
        await trio.sleep(2.5)
        info = await task.get_info()
        assert info.status is TaskStatus.IN_PROGRESS
        assert info.progress == pytest.approx(0.75) and info.message == "step 3"
        await task.wait()
        info = await task.get_info()
        assert info.progress == 1.0 and info.message == "step 4"


async def test_report_validates_progress() -> None:
    bad: list[BaseException] = []
    local = errands.Service("local")

    @local.task
    async def bad_report() -> None:
        for value in (1.5, -0.1, float("nan"), True, "half"):
            try:
                errands.current_task().report(value)  # type: ignore[arg-type]
            except (ValueError, TypeError) as exc:
                bad.append(exc)

    async with errands.open_engine(local) as client:
        task = await client.bad_report.submit()
        assert await task.wait() is TaskStatus.SUCCESS
    assert len(bad) == 5


def test_current_task_outside_a_task() -> None:
    with pytest.raises(errands.ErrandsError, match="outside a running task"):
        errands.current_task()


async def test_priority_orders_waiting_tasks(autojump_clock: trio.testing.MockClock) -> None:
    order: list[int] = []
    local = errands.Service("prio")

    @local.task(concurrency=1)
    async def job(n: int) -> None:
        order.append(n)
        await trio.sleep(1)

    async with errands.open_engine(local, clock=trio_wall) as client:
        first = await client.job.submit(n=0)  # takes the only slot
        await trio.testing.wait_all_tasks_blocked()
        low = [await client.job.submit(n=n) for n in (1, 2)]
        high = await client.job.options(priority=5).submit(n=3)
        for t in [first, *low, high]:
            await t.wait()
    assert order == [0, 3, 1, 2]


async def test_delay_holds_a_task_back(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        task = await client.add.options(delay=30).submit(a=1, b=2)
        await trio.sleep(29)
        assert await task.get_status() is TaskStatus.PENDING
        assert await task.wait() is TaskStatus.SUCCESS
        info = await task.get_info()
        assert info.started_at is not None
        assert info.started_at.timestamp() == pytest.approx(EPOCH + 30, abs=0.01)


async def test_queue_position_of_pending_tasks(autojump_clock: trio.testing.MockClock) -> None:
    gate["event"] = trio.Event()
    local = errands.Service("pos")

    @local.task(concurrency=1)
    async def one() -> None:
        await gate["event"].wait()

    async with errands.open_engine(local, clock=trio_wall) as client:
        tasks = [await client.one.submit() for _ in range(4)]
        await trio.testing.wait_all_tasks_blocked()
        infos = [await t.get_info() for t in tasks]
        assert [i.status for i in infos] == [TaskStatus.IN_PROGRESS] + [TaskStatus.PENDING] * 3
        assert [i.position for i in infos] == [None, 0, 1, 2]
        gate["event"].set()
        for t in tasks:
            await t.wait()


async def test_list_tasks(autojump_clock: trio.testing.MockClock) -> None:
    async with engine() as client:
        a = await client.add.submit(a=1, b=1)
        await trio.sleep(1)
        b = await client.boom.submit(message="x")
        await a.wait()
        await b.wait()
        rows = await client.list()
        assert [r.id for r in rows] == [b.id, a.id]  # newest first
        assert [r.id for r in await client.list(status=TaskStatus.FAILURE)] == [b.id]
        assert [r.id for r in await client.list(name="add")] == [a.id]
        assert [r.id for r in await client.list(limit=1, offset=1)] == [a.id]


async def test_statistics_count_tasks(autojump_clock: trio.testing.MockClock) -> None:
    async with engine(workers=4) as client:
        tasks = [await client.add.submit(a=i, b=i) for i in range(3)]
        for t in tasks:
            await t.wait()
        stats = client.statistics()
        assert (stats.submitted, stats.finished, stats.running, stats.workers) == (3, 3, 0, 4)


async def test_calls_after_close_raise_engine_closed() -> None:
    async with engine() as client:
        task = await client.add.submit(a=1, b=2)
        await task.wait()
    with pytest.raises(errands.EngineClosed):
        await task.get()
    with pytest.raises(errands.EngineClosed):
        await client.add.submit(a=1, b=2)


async def test_class_service_is_instantiated_once_per_start() -> None:
    created: list[object] = []

    @errands.service
    class Model:
        def __init__(self) -> None:
            created.append(self)
            self.offset = 100

        @errands.task
        def predict(self, x: int) -> int:
            return x + self.offset

        @errands.task(name="apredict", concurrency=2)
        async def predict_async(self, x: int) -> int:
            return x - self.offset

    for _ in range(2):
        async with errands.open_engine(Model) as client:
            tasks = [await client.predict.submit(x=i) for i in range(3)]
            other = await client.apredict.submit(x=1)
            for t in tasks:
                await t.wait(timeout=10)
            await other.wait(timeout=10)
            assert [await t.get() for t in tasks] == [100, 101, 102]
            assert await other.get() == -99
    assert len(created) == 2


async def test_record_round_trip_keeps_every_field(autojump_clock: trio.testing.MockClock) -> None:
    """What the engine stores decodes to the same record (JSON, never pickle)."""
    backend = MemoryBackend()
    async with engine(backend=backend) as client:
        task = await client.reporter.submit(steps=1)
        await task.wait()
    stored = await backend.store.get(task.id)
    assert stored is not None
    rebuilt = errands.StoredTask(
        id=stored.id,
        name=stored.name,
        status=stored.status,
        token=stored.token,
        created_at=stored.created_at,
        expires_at=stored.expires_at,
        data=stored.data,
    )
    assert rebuilt.record == stored.record
    assert attrs.asdict(rebuilt.record)["message"] == "step 1"


async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    with pytest.raises(KeyError, match="mine"):
        async with engine():
            raise KeyError("mine")


async def test_service_init_error_comes_out_as_itself() -> None:
    @errands.service
    class Broken:
        def __init__(self) -> None:
            raise OSError("weights not found")

        @errands.task
        async def run(self) -> None: ...

    with pytest.raises(OSError, match="weights not found"):
        async with errands.open_engine(Broken):
            pass


async def test_waiting_leaves_no_wakeup_events_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with engine() as client:
        done = await client.add.submit(a=1, b=1)
        await done.wait()
        await done.wait()  # already final
        slow = await client.sleepy.submit(seconds=50)
        with pytest.raises(TimeoutError):
            await slow.wait(timeout=1)
        assert client.engine.watchers.watches == {}
        async with trio.open_nursery() as nursery:  # two waiters share one event
            nursery.start_soon(slow.wait)
            nursery.start_soon(slow.wait)
        assert client.engine.watchers.watches == {}


async def test_idempotency_key_returns_the_first_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with engine(ttl=100) as client:
        keyed = client.add.options(idempotency_key="order-17")
        first = await keyed.submit(a=1, b=2)
        again = await keyed.submit(a=1, b=2)  # same key, same arguments: the first task
        assert again.id == first.id
        with pytest.raises(errands.InvalidArguments, match="order-17.*other arguments") as bad:
            await keyed.submit(a=5, b=5)  # same key, other arguments: refused
        assert [e.path for e in bad.value.errors] == ["$"]
        assert await first.wait() is TaskStatus.SUCCESS
        assert await (await keyed.submit(a=1, b=2)).get() == 3
        other = await client.add.options(idempotency_key="order-18").submit(a=1, b=2)
        assert other.id != first.id
        assert client.statistics().submitted == 2
        # Another endpoint with the same key is another task.
        assert (await client.sleepy.options(idempotency_key="order-17").submit(seconds=1)).id != (
            first.id
        )
        await trio.sleep(101)  # the first task expired: the key makes a new one
        fresh = await keyed.submit(a=2, b=2)
        assert fresh.id == first.id
        assert await fresh.wait() is TaskStatus.SUCCESS
        assert await fresh.get() == 4


async def test_workers_zero_is_a_pure_client(autojump_clock: trio.testing.MockClock) -> None:
    backend = MemoryBackend()
    async with engine(backend=backend, workers=0) as client:
        task = await client.add.submit(a=1, b=1)
        await trio.sleep(60)
        assert await task.get_status() is TaskStatus.PENDING  # nothing runs here
    async with engine(backend=backend) as client:
        assert await client.get_task(task.id).wait() is TaskStatus.SUCCESS


@hypothesis.given(raw=hypothesis.strategies.binary(min_size=16, max_size=16))
def test_task_ids_never_look_like_command_line_options(raw: bytes) -> None:
    from errands._engine import idempotent_id
    from errands._model import is_task_id, task_id_from_bytes

    for task_id in (task_id_from_bytes(raw), task_id_from_bytes(b"\xf8" + raw[1:])):
        assert is_task_id(task_id) and not task_id.startswith("-")
    key = raw.hex()
    assert not idempotent_id("svc", "task", key).startswith("-")
    assert task_id_from_bytes(b"\xfb" + bytes(15)).startswith("x")  # would be "-"
