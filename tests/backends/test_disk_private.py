"""The data directory is private: 0700 directories and 0600 files, whatever
the umask, including the files SQLite and diskcache create."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from errands import BackendError, Payload, StoredTask, TaskStatus
from errands._model import TaskRecord, new_task_id
from errands.backends import DiskCacheBackend

pytestmark = pytest.mark.realtime

OWNER = f"{socket.gethostname()}:1:private"


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """The common default umask, which lets others read what is created."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


async def use(backend: DiskCacheBackend) -> None:
    """Write everything the backend writes: records, a claim (owner lock file),
    a small and a large result."""
    for size in (10, 70_000):
        rec = TaskRecord(
            id=new_task_id(), name="job", args={}, status=TaskStatus.PENDING, created_at=1.0
        )
        assert await backend.enqueue(StoredTask.from_record(rec), priority=0, not_before=0.0)
        [claim] = await backend.queue.claim(
            owner=OWNER, quotas={"job": 1}, limit=1, now=2.0, lease_until=100.0
        )
        running = attrs.evolve(rec, status=TaskStatus.IN_PROGRESS, token=claim.token)
        assert await backend.store.transition(
            StoredTask.from_record(running), expect=TaskStatus.PENDING
        )
        result = Payload(media_type="application/octet-stream", data=b"r" * size)
        done = attrs.evolve(running, status=TaskStatus.SUCCESS)
        assert await backend.store.transition(
            StoredTask.from_record(done),
            expect=TaskStatus.IN_PROGRESS,
            token=claim.token,
            result=result,
        )
        assert await backend.store.get_result(rec.id) == result


def modes(directory: Path) -> dict[str, int]:
    """Every path under ``directory`` (and itself) -> its permission bits."""
    found = {".": stat.S_IMODE(directory.stat().st_mode)}
    for path in directory.rglob("*"):
        found[str(path.relative_to(directory))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def open_to_others(directory: Path) -> dict[str, str]:
    wrong = {}
    for name, mode in modes(directory).items():
        want = 0o700 if (directory / name).is_dir() else 0o600
        if mode != want:
            wrong[name] = oct(mode)
    return wrong


async def test_every_directory_is_0700_and_every_file_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = DiskCacheBackend(data)
    await backend.open()
    try:
        await use(backend)
        names = set(modes(data))
        assert {"errands.db", "errands.db-wal", "owners", "results/cache.db"} <= names
        assert any(name.endswith(".val") for name in names)  # the large result's file
        assert any(name.startswith("owners/") for name in names)  # the owner lock file
        assert open_to_others(data) == {}
    finally:
        await backend.aclose()
    assert open_to_others(data) == {}


async def test_an_open_directory_is_tightened_when_opened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    backend = DiskCacheBackend(data)
    await backend.open()
    await use(backend)
    await backend.aclose()
    # As an older errands, or a careless copy, may have left it.
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    backend = DiskCacheBackend(data)
    await backend.open()
    try:
        await use(backend)
        mine = modes(data)
        for name in (".", "owners", "results"):
            assert mine[name] == 0o700, name
        for name in ("errands.db", "results/cache.db"):
            assert mine[name] == 0o600, name
    finally:
        await backend.aclose()


async def test_a_shared_sticky_directory_is_refused(tmp_path: Path) -> None:
    """A directory like /tmp is shared by design: never chmod it, refuse it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(BackendError, match="shared"):
        await DiskCacheBackend(shared).open()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert list(shared.iterdir()) == []
