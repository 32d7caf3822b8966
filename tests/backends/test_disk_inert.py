"""Large results are read inertly: whoever can write the data directory can
spoil results, but cannot make the server run code, read a file elsewhere or
delete one.  Each test tampers with the ``results/`` diskcache rows directly
with sqlite3, as such a person would."""

from __future__ import annotations

import os
import pathlib
import pickle
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from errands import BackendError, Payload, StoredTask, TaskStatus
from errands._model import TaskRecord, new_task_id
from errands.backends import DiskCacheBackend

pytestmark = pytest.mark.realtime

LARGE = Payload(media_type="image/png", data=b"\x89PNG" + bytes(100_000))


class Planted:
    """Unpickling this touches ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[DiskCacheBackend]:
    made = DiskCacheBackend(tmp_path / "data")
    await made.open()
    try:
        yield made
    finally:
        await made.aclose()


async def finish(backend: DiskCacheBackend, result: Payload) -> str:
    """A task that succeeded with ``result``; returns its id."""
    rec = TaskRecord(
        id=new_task_id(), name="job", args={}, status=TaskStatus.PENDING, created_at=1.0
    )
    assert await backend.store.create(StoredTask.from_record(rec))
    running = attrs.evolve(rec, status=TaskStatus.IN_PROGRESS, token=1)
    assert await backend.store.transition(
        StoredTask.from_record(running), expect=TaskStatus.PENDING
    )
    done = attrs.evolve(running, status=TaskStatus.SUCCESS)
    assert await backend.store.transition(
        StoredTask.from_record(done), expect=TaskStatus.IN_PROGRESS, token=1, result=result
    )
    assert await backend.store.get_result(rec.id) == result
    return rec.id


def tamper(backend: DiskCacheBackend, task_id: str, **columns: object) -> None:
    """Rewrite the result cache row of ``task_id`` (token 1)."""
    sets = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(backend.directory / "results" / "cache.db") as conn:
        changed = conn.execute(
            f"UPDATE Cache SET {sets} WHERE key = ?", (*columns.values(), f"{task_id}:1")
        ).rowcount
    assert changed == 1


def value_file(backend: DiskCacheBackend, task_id: str) -> Path:
    with sqlite3.connect(backend.directory / "results" / "cache.db") as conn:
        (filename,) = conn.execute(
            "SELECT filename FROM Cache WHERE key = ?", (f"{task_id}:1",)
        ).fetchone()
    return backend.directory / "results" / filename


def test_the_planted_pickle_would_run(tmp_path: Path) -> None:
    """The payload of the tests below really runs code when unpickled."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Planted(marker)))
    assert marker.exists()


@pytest.mark.parametrize("where", ["row", "file"])
async def test_a_planted_pickle_is_refused_not_run(
    backend: DiskCacheBackend, tmp_path: Path, where: str
) -> None:
    task_id = await finish(backend, LARGE)
    marker = tmp_path / "ran"
    planted = pickle.dumps(Planted(marker))
    if where == "row":
        tamper(backend, task_id, mode=4, filename=None, value=planted)
    else:
        value_file(backend, task_id).write_bytes(planted)
        tamper(backend, task_id, mode=4)
    with pytest.raises(BackendError, match="not errands data") as caught:
        await backend.store.get_result(task_id)
    assert "Planted" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "text"])
async def test_a_file_outside_the_directory_is_never_read_nor_deleted(
    backend: DiskCacheBackend, tmp_path: Path, how: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET" * 10)
    task_id = await finish(backend, LARGE)
    mode = 2
    if how == "absolute":
        filename = str(secret)
    elif how == "dotdot":
        filename = "../../secret.txt"  # relative to data/results/
    elif how == "symlink":
        link = value_file(backend, task_id)
        link.unlink()
        link.symlink_to(secret)
        filename = str(link.relative_to(backend.directory / "results"))
    else:
        filename, mode = str(secret), 3  # diskcache's text mode
    tamper(backend, task_id, filename=filename, mode=mode)
    with pytest.raises(BackendError) as caught:
        await backend.store.get_result(task_id)
    assert "SECRET" not in str(caught.value)
    # Deleting the task (or purging it) must not delete what the row names.
    assert await backend.store.delete(task_id)
    assert secret.read_bytes() == b"SECRET" * 10


async def test_the_result_cache_pickles_nothing(backend: DiskCacheBackend, tmp_path: Path) -> None:
    """Keys are text and values bytes; anything else is refused, never pickled,
    and a pickled key is never loaded."""
    disk = backend.store._results.disk
    with pytest.raises(TypeError):
        disk.put(("not", "a", "str"))
    with pytest.raises(TypeError):
        disk.store({"a": 1}, False)
    with pytest.raises(TypeError):
        disk.store("text, not bytes", False)
    marker = tmp_path / "ran"
    with pytest.raises(BackendError):
        disk.get(pickle.dumps(Planted(marker)), False)
    assert not marker.exists()
    assert disk.put("job:1") == ("job:1", True)
    # A refused value leaves no file behind.
    assert not list((backend.directory / "results").rglob("*.val"))


async def test_results_still_round_trip(backend: DiskCacheBackend) -> None:
    small = Payload(media_type="application/json", data=b"[1]")
    for payload in (small, LARGE, Payload(media_type="x/y", data=os.urandom(300_000))):
        task_id = await finish(backend, payload)
        assert await backend.store.get_result(task_id) == payload
