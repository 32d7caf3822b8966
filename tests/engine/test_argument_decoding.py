"""Where a task's stored arguments are decoded: a sync function's in its
worker thread, just before the call, so that large arguments (bytes,
images, long lists) never stall the engine's loop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import errands
from errands.backends import DiskCacheBackend, MemoryBackend
from tests.tools import spy_b64decodes

pytestmark = pytest.mark.realtime

svc = errands.Service("decoding")


@svc.task
def size(data: bytes) -> int:
    return len(data)


@svc.task(timeout=30)
def size_in_time(data: bytes) -> int:
    return len(data)


@pytest.mark.parametrize("name", ["size", "size_in_time"])
@pytest.mark.parametrize("kind", ["memory", "diskcache"])
async def test_a_sync_task_s_arguments_are_decoded_in_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, name: str
) -> None:
    """On each path a sync task takes (memory: settled in a batch, or with
    a timeout in a task of its own; diskcache: a task of its own), its
    bytes are decoded off the loop's thread."""
    decoded = spy_b64decodes(monkeypatch)
    backend = MemoryBackend() if kind == "memory" else DiskCacheBackend(tmp_path)
    async with errands.open_engine(svc, backend=backend) as client:
        task = await getattr(client, name).submit(data=b"\x00" * 1000)
        assert await task.wait(timeout=10) is errands.TaskStatus.SUCCESS
        assert await task.get() == 1000
    loop = threading.get_ident()  # the engine ran in this trio run
    decoded_on = [thread for _, thread in decoded]
    assert decoded_on and loop not in decoded_on, decoded_on
