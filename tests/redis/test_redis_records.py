"""How the Redis backend keeps a task: its arguments apart from the rest of
its record, written once; a record written whole (by an errands of before)
read whole and written whole."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

import errands
from errands import StoredTask, TaskStatus
from errands._model import TaskRecord, new_task_id
from errands.backends.redis import RedisBackend

pytestmark = pytest.mark.realtime

svc = errands.Service("records")


@svc.task
def add(a: int, b: int) -> int:
    return a + b


def backend_and_raw(redis_url: str) -> tuple[RedisBackend, redis.Redis, str]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    return RedisBackend(redis_url, prefix=prefix), redis.Redis.from_url(redis_url), prefix


async def test_arguments_are_written_once_apart_from_the_record(redis_url: str) -> None:
    """``a`` holds the arguments, ``d`` the rest, rewritten at each change
    without them (a 1 MB argument was sent again at the start and at the
    end, and a listing of 50 such tasks read 65 MB: 192 ms); a listing need
    not read them at all."""
    backend, raw, prefix = backend_and_raw(redis_url)
    async with errands.open_engine(svc, backend=backend) as client:
        task = await client.add.submit(a=40, b=2)
        assert await task.wait(timeout=30) is TaskStatus.SUCCESS
        again = await task.retry()  # the arguments read back whole
        assert await again.wait(timeout=30) is TaskStatus.SUCCESS
        assert await task.get() == await again.get() == 42
        for task_id in (task.id, again.id):
            fields = raw.hgetall(f"{{{prefix}}}:t:{task_id}")
            assert json.loads(fields[b"a"]) == {"a": 40, "b": 2}
            record = json.loads(fields[b"d"])
            assert "args" not in record and record["status"] == "success"
        listed = await backend.store.list(arguments=False)
        assert {t.id for t in listed} == {task.id, again.id}
        assert {t.info().status for t in listed} == {TaskStatus.SUCCESS}
        with pytest.raises(RuntimeError, match="not read"):
            listed[0].record  # noqa: B018
    # get() reads the result and the rest, never the arguments (an image
    # given as input was sent again with every get()): from an engine that
    # did not end the task, so it reads the store.
    raw.hset(f"{{{prefix}}}:t:{task.id}", "a", b"{not json")
    other_backend = RedisBackend(redis_url, prefix=prefix)
    async with errands.open_engine(svc, backend=other_backend) as other:
        assert await other.get_task(task.id).get() == 42
        read, payload = (await other_backend.store.get_with_results([task.id]))[task.id]
        assert payload is not None and read.info().status is TaskStatus.SUCCESS
        with pytest.raises(RuntimeError, match="not read"):
            read.record  # noqa: B018
    raw.close()


async def test_a_record_stored_whole_runs_and_stays_whole(redis_url: str) -> None:
    """A task an errands of before wrote (``d`` with its arguments, no
    ``a``): read whole, started and ended whole (a write of the rest alone
    is refused, and sent again whole), never losing its arguments."""
    backend, raw, prefix = backend_and_raw(redis_url)
    await backend.open()
    record = TaskRecord(
        id=new_task_id(),
        name="add",
        args={"a": 1, "b": 2},
        status=TaskStatus.PENDING,
        created_at=time.time(),
    )
    key = f"{{{prefix}}}:t:{record.id}"
    try:
        assert await backend.store.create(StoredTask.from_record(record))
        whole = StoredTask.from_record(record).data
        raw.hset(key, "d", whole)
        raw.hdel(key, "a")
        await backend.queue.put(record.id, name="add", priority=0)
    finally:
        await backend.aclose()
    backend = RedisBackend(redis_url, prefix=prefix)
    async with errands.open_engine(svc, backend=backend) as client:
        task = client.get_task(record.id)
        assert await task.wait(timeout=30) is TaskStatus.SUCCESS
        assert await task.get() == 3
        fields = raw.hgetall(key)
        assert b"a" not in fields and json.loads(fields[b"d"])["args"] == {"a": 1, "b": 2}
        [listed] = await backend.store.list(arguments=False)
        assert listed.info().status is TaskStatus.SUCCESS
        again = await task.retry()  # its arguments, read from the whole record
        assert await again.wait(timeout=30) is TaskStatus.SUCCESS
        assert await again.get() == 3
    raw.close()
