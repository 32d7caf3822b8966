"""Whatever a task does is its own recorded failure; the engine keeps serving.

Each test makes one task misbehave, checks that the task failed with a
readable error, and then runs the next task on the same engine.  The real
clock is used (a worker thread is invisible to trio's autojump clock); every
task here ends at once.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import trio

import errands
from errands import TaskStatus

svc = errands.Service("faults")


class Bail(BaseException):
    """A BaseException that is neither Exception nor trio's Cancelled."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class Exploding(dict[str, Any]):
    """A result whose encoding raises OSError."""

    def items(self) -> Any:
        raise OSError("the result's device went away")

    def keys(self) -> Any:
        raise OSError("the result's device went away")

    def __iter__(self) -> Any:
        raise OSError("the result's device went away")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
async def async_bail() -> int:
    await trio.lowlevel.checkpoint()
    raise Bail("out of here")


@svc.task
def sync_bail() -> int:
    raise Bail("out of here")


@svc.task
async def async_interrupt() -> int:
    raise KeyboardInterrupt


@svc.task
def sync_interrupt() -> int:
    raise KeyboardInterrupt


@svc.task
async def async_exit() -> int:
    sys.exit(3)


@svc.task
def sync_exit() -> int:
    sys.exit(3)


@svc.task
async def unprintable() -> int:
    raise Unprintable


@svc.task
def sync_unprintable() -> int:
    raise Unprintable


@svc.task
async def exploding() -> dict[str, Any]:
    return Exploding(a=1)


@svc.task
async def cmyk() -> Any:
    from PIL import Image

    return Image.new("CMYK", (4, 4))


@svc.task
async def group_of_errors() -> int:
    async with trio.open_nursery() as nursery:

        async def fail() -> None:
            raise Bail("in a nursery")

        nursery.start_soon(fail)
    return 0


def engine() -> Any:
    return errands.open_engine(svc)


async def _fails_alone(client: Any, name: str, error_type: str) -> errands.TaskInfo:
    task = await getattr(client, name).submit()
    assert await task.wait(timeout=60) is TaskStatus.FAILURE
    info: errands.TaskInfo = await task.get_info()
    assert info.error is not None and info.error.type == error_type
    with pytest.raises(errands.TaskFailed):
        await task.get()
    # The engine still serves: the next task runs and succeeds.
    after = await client.add.submit(a=2, b=3)
    assert await after.wait(timeout=60) is TaskStatus.SUCCESS
    assert await after.get() == 5
    assert client.engine.health.alive
    return info


@pytest.mark.parametrize("name", ["async_bail", "sync_bail", "group_of_errors"])
async def test_a_base_exception_fails_only_its_task(
    name: str,
) -> None:
    async with engine() as client:
        kind = "BaseExceptionGroup" if name == "group_of_errors" else "Bail"
        info = await _fails_alone(client, name, kind)
        assert info.error is not None
        expected = "Bail: in a nursery" if name == "group_of_errors" else "out of here"
        assert expected in info.error.message


@pytest.mark.parametrize("name", ["async_exit", "sync_exit"])
async def test_sys_exit_in_a_task_fails_only_its_task(
    name: str,
) -> None:
    async with engine() as client:
        info = await _fails_alone(client, name, "SystemExit")
        assert info.error is not None and info.error.message == "3"


@pytest.mark.parametrize("name", ["async_interrupt", "sync_interrupt"])
async def test_keyboard_interrupt_raised_by_task_code_fails_the_task(
    name: str,
) -> None:
    """The choice recorded in docs/decisions.md: a KeyboardInterrupt that task
    code raises is that task's failure, like any other BaseException."""
    async with engine() as client:
        await _fails_alone(client, name, "KeyboardInterrupt")


@pytest.mark.parametrize("name", ["unprintable", "sync_unprintable"])
async def test_an_error_that_cannot_be_printed_is_still_recorded(
    name: str,
) -> None:
    async with engine() as client:
        info = await _fails_alone(client, name, "Unprintable")
        assert info.error is not None and "unprintable" in info.error.message


async def test_a_result_whose_encoding_raises_anything_fails_the_task() -> None:
    async with engine() as client:
        info = await _fails_alone(client, "exploding", "InvalidResult")
        assert info.error is not None and "device went away" in info.error.message


async def test_a_cmyk_image_result_fails_the_task() -> None:
    async with engine() as client:
        info = await _fails_alone(client, "cmyk", "InvalidResult")
        assert info.error is not None and info.error.message
