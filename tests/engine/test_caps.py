"""The engine's caps: each has a safe default, an option, and a clear error."""

from __future__ import annotations

import io

import pytest
import trio
import trio.testing
from PIL import Image

import errands
from errands import TaskStatus
from tests.conftest import trio_wall

svc = errands.Service("caps")


@svc.task
async def echo(text: str) -> str:
    return text


@svc.task
async def chatty(length: int) -> int:
    errands.current_task().report(0.5, "x" * length)
    return length


def engine(**caps: int) -> errands.open_engine:  # type: ignore[valid-type]
    # The caps are set through EngineOptions (open_engine spells out only the
    # everyday options).
    return errands.open_engine(svc, options=errands.EngineOptions(clock=trio_wall, **caps))


def test_the_defaults_are_generous_and_bounded() -> None:
    options = errands.EngineOptions()
    assert options.max_delay == 30 * 86400
    assert options.max_key_length == 256
    assert options.max_result_size == 256 * 1024 * 1024
    assert options.max_message_length == 4096
    assert options.max_image_pixels == 25_000_000
    with pytest.raises(ValueError, match="max_key_length must be a whole number >= 1"):
        errands.EngineOptions(max_key_length=0)


async def test_a_delay_past_the_cap_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with engine(max_delay=60) as client:
        with pytest.raises(errands.LimitExceeded, match="between 0 and 60 seconds") as caught:
            await client.echo.options(delay=61).submit(text="x")
        assert caught.value.limit == "max_delay" and caught.value.maximum == 60
        assert await client.list() == []
        task = await client.echo.options(delay=60).submit(text="x")
        assert await task.wait() is TaskStatus.SUCCESS
        assert trio.current_time() >= 60


async def test_an_idempotency_key_past_the_cap_is_refused() -> None:
    async with engine(max_key_length=8) as client:
        with pytest.raises(errands.LimitExceeded, match="9 characters long; the limit is 8"):
            await client.echo.options(idempotency_key="k" * 9).submit(text="x")
        task = await client.echo.options(idempotency_key="k" * 8).submit(text="x")
        assert await task.wait() is TaskStatus.SUCCESS


async def test_a_result_past_the_cap_fails_its_task() -> None:
    async with engine(max_result_size=10) as client:
        task = await client.echo.submit(text="x" * 11)
        assert await task.wait() is TaskStatus.FAILURE
        info = await task.get_info()
        assert info.error is not None and info.error.type == "InvalidResult"
        assert "max_result_size" in info.error.message
        small = await client.echo.submit(text="x" * 10)
        assert await small.wait() is TaskStatus.SUCCESS


async def test_a_progress_message_past_the_cap_is_an_error_in_task_code() -> None:
    async with engine(max_message_length=100) as client:
        task = await client.chatty.submit(length=101)
        assert await task.wait() is TaskStatus.FAILURE
        info = await task.get_info()
        assert info.error is not None and info.error.type == "ValueError"
        assert "max_message_length" in info.error.message
        ok = await client.chatty.submit(length=100)
        assert await ok.wait() is TaskStatus.SUCCESS


@svc.task
async def size(image: Image.Image) -> list[int]:
    return list(image.size)


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")
    return out.getvalue()


async def test_an_image_past_the_pixel_cap_is_refused_at_submit() -> None:
    async with engine(max_image_pixels=100) as client:
        with pytest.raises(errands.InvalidArguments, match="11x10 pixels; the limit is 100"):
            await client.size.submit(image=png(11, 10))
        task = await client.size.submit(image=png(10, 10))
        assert await task.wait() is TaskStatus.SUCCESS
        assert await task.get() == [10, 10]


async def test_the_default_pixel_cap_refuses_a_decompression_bomb() -> None:
    bomb = png(6000, 5000)  # 30 million pixels in a small file
    assert len(bomb) < 100_000
    async with engine() as client:
        with pytest.raises(errands.InvalidArguments, match="max_image_pixels"):
            await client.size.submit(image=bomb)
