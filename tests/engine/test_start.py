"""errands.start: the engine in a background thread, driven from sync code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

import errands
from errands import TaskStatus

pytestmark = pytest.mark.realtime

svc = errands.Service("threaded")
gate = threading.Event()


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
def blocking(n: int) -> int:
    gate.wait(10)
    return n


@svc.task
def report_back(n: int) -> str:
    errands.current_task().report(0.5, "halfway")
    return f"got {n}"


def test_start_submit_wait_get() -> None:
    with errands.start(svc) as client:
        task = client.add.submit(a=1, b=2)
        assert isinstance(task, errands.Task)
        assert task.wait(timeout=10) is TaskStatus.SUCCESS
        assert task.get() == 3
        assert task.get_status() is TaskStatus.SUCCESS
        info = task.get_info()
        assert info.status is TaskStatus.SUCCESS and info.attempt == 1
        other = client.report_back.submit(n=4)
        assert other.wait(timeout=10) is TaskStatus.SUCCESS
        assert other.get() == "got 4"
        assert other.get_info().message == "halfway"
        again = other.retry()
        assert again.wait(timeout=10) is TaskStatus.SUCCESS
        assert again.get_info().retry_of == other.id
        assert client.get_task(task.id).get() == 3
        assert [t.id for t in client.list(name="add")] == [task.id]


def test_sync_handles_raise_the_same_errors() -> None:
    gate.clear()
    with errands.start(svc, workers=1) as client:
        running = client.blocking.submit(n=1)
        waiting = client.blocking.submit(n=2)
        with pytest.raises(errands.TaskNotReady):
            waiting.get()
        with pytest.raises(TimeoutError):
            waiting.wait(timeout=0.05)
        assert waiting.cancel() is TaskStatus.CANCELLED
        with pytest.raises(errands.InvalidArguments, match=r"\$\.n"):
            client.blocking.submit(n="one")
        with pytest.raises(errands.TaskNotFound):
            client.blocking.get_task("no-such-task").get_status()
        gate.set()
        assert running.wait(timeout=10) is TaskStatus.SUCCESS


def test_repr_html_shows_id_and_status() -> None:
    with errands.start(svc) as client:
        task = client.add.submit(a=1, b=1)
        task.wait(timeout=10)
        html = task._repr_html_()
        assert task.id in html and "success" in html and "<code>add</code>" in html
        # A handle made from a bare id shows the task's name too.
        assert "<code>add</code>" in client.get_task(task.id)._repr_html_()
    # After close the display still renders (it must never raise in a notebook).
    assert "unknown" in task._repr_html_()


def test_close_is_idempotent_and_stops_the_thread() -> None:
    client = errands.start(svc)
    threads = [t for t in threading.enumerate() if t.name == "errands-engine"]
    assert threads
    client.close()
    client.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(errands.EngineClosed):
        client.add.submit(a=1, b=1)


def test_start_errors_surface_in_the_caller() -> None:
    @errands.service
    class Broken:
        def __init__(self) -> None:
            raise RuntimeError("model file missing")

        @errands.task
        def run(self) -> None: ...

    with pytest.raises(RuntimeError, match="model file missing"):
        errands.start(Broken)
    with pytest.raises(errands.BackendError, match="unknown backend scheme"):
        errands.start(svc, backend="nosuch://x")


def test_interpreter_exit_shuts_the_engine_down_cleanly(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import errands
        svc = errands.Service("exit")

        @svc.task
        def work(n: int) -> int:
            return n * 2

        client = errands.start(svc)
        task = client.work.submit(n=21)
        print(task.wait(timeout=10).value, task.get(), flush=True)
        # no close(): interpreter exit must stop the engine without hanging
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["success", "42"]
    assert "Traceback" not in done.stderr
