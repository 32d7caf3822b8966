"""Programs some tests need from outside Python: found on PATH, or the test
is skipped loudly (and fails under CI, which installs them: see the Makefile)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio.testing

__all__ = ["Calls", "count_calls", "find_tool", "mock_clock", "redis_server", "wait_answering"]

#: Real seconds a MockClock waits, idle, before it jumps, for a backend
#: whose calls run in threads (diskcache, Redis): while one runs, the trio
#: side looks idle, and a jump then skips ahead to the next deadline (a poll,
#: a batch's latency) though nothing timed out.  10 ms was too short on a
#: loaded machine (two batching tests on Redis failed under the suite's two
#: workers and under two busy processes, on the code before and after
#: them alike); 50 ms held in every run under the same load.
THREADED_AUTOJUMP = 0.05


def mock_clock(kind: str) -> trio.testing.MockClock:
    """A MockClock for tests run on backend ``kind``: jumping at once on the
    memory backend, after :data:`THREADED_AUTOJUMP` on the others."""
    return trio.testing.MockClock(autojump_threshold=0 if kind == "memory" else THREADED_AUTOJUMP)


def find_tool(*names: str, what: str) -> str:
    """The path of the first of ``names`` on PATH.

    None there: under CI (``CI`` set) the test fails, since CI installs them;
    elsewhere it is skipped with a reason that says what to install.
    """
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    message = (
        f"{' or '.join(names)} not found on PATH: {what} NOT RUN "
        f"(install it: `apt-get install {names[0]}`, `brew install {names[0]}`)"
    )
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must install it (make test does)")
    pytest.skip(message)


def wait_answering(
    url: str, process: subprocess.Popen[Any], *, timeout: float = 30.0, status: int = 200
) -> None:
    """Wait until ``url`` answers ``status`` (a server ``process`` we started
    is up), failing if the process exits first or ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the server exited ({process.returncode})"
        try:
            if httpx.get(url, timeout=1).status_code == status:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer {status} in {timeout:g} s"
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(
    directory: Path, *, appendonly: bool = False, port: int | None = None, unix: bool = False
) -> Iterator[str]:
    """A redis-server of our own on 127.0.0.1 (a free port), its data in
    ``directory``; yields its URL (``unix://`` on a socket in ``directory``
    with ``unix``), and stops it by its PID on leaving."""
    binary = find_tool("redis-server", what="the Redis tests")
    port = port or _free_port()
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        str(directory / "redis.log"),
    ]
    socket_path = directory / "redis.sock"
    if unix:
        command += ["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log = directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start:\n{tail}")
            time.sleep(0.02)
        yield f"unix://{socket_path}?db=0" if unix else f"redis://127.0.0.1:{port}/0"
    finally:
        if process.poll() is None:
            process.terminate()  # our own, by its PID
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Calls:
    """What :func:`count_calls` saw: per method, how many calls and the
    first argument of each (the task id, or the ids, that it was asked for)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.count = dict.fromkeys(names, 0)
        self.first_args: dict[str, list[Any]] = {name: [] for name in names}

    def ids_read(self, name: str) -> int:
        """How many ids the calls of ``name`` asked for in all (a method of many ids)."""
        return sum(len(ids) for ids in self.first_args[name])


def count_calls(owner: Any, *names: str) -> Calls:
    """Count the calls of the async methods ``names`` of the object ``owner``
    (a store, an engine), which still do what they did: the instance's
    methods are wrapped, its class is not touched."""
    calls = Calls(names)
    for name in names:
        real = getattr(owner, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.count[_name] += 1
            if args:
                first = args[0]
                calls.first_args[_name].append(list(first) if not isinstance(first, str) else first)
            return await _real(*args, **kwargs)

        setattr(owner, name, counted)
    return calls


def spy_b64decodes(monkeypatch: Any) -> list[tuple[int, int]]:
    """Every base64 decode errands' converter makes from now on (it still
    decodes): the length of the text and the ident of the thread, each."""
    import threading

    from errands import _convert

    seen: list[tuple[int, int]] = []
    real = _convert.pybase64.b64decode

    def spy(data: Any, *args: Any, **kwargs: Any) -> bytes:
        seen.append((len(data), threading.get_ident()))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(_convert.pybase64, "b64decode", spy)
    return seen


def sample_records() -> list[Any]:
    """One task record of each kind the engine stores (``TaskRecord``s):
    pending, started, started again after a retry, failed, succeeded,
    cancelled, handed back (counting and not), lost (with attempts left
    and without)."""
    from errands import TaskStatus
    from errands._model import TaskError, TaskRecord
    from errands._records import (
        cancelled_pending,
        finished,
        handed_back,
        lost,
        retry_later,
        started,
    )

    error = TaskError(type="ValueError", message="bad é")
    pending = TaskRecord(
        id="abcdefghijklmnopqrstuv",
        name="double",
        args={"x": 1, "nested": {"list": [1, 2.5, None, True, "é"]}},
        status=TaskStatus.PENDING,
        created_at=1_800_000_000.0,
        priority=-3,
        retry_of="vutsrqponmlkjihgfedcba",
        ttl_failure=5.0,
    )
    first = started(pending, token=5, now=1_800_000_001.0)
    again = started(
        retry_later(first, error=error, now=1_800_000_002.0, not_before=1_800_000_003.0),
        token=6,
        now=1_800_000_004.0,
    )
    return [
        pending,
        first,
        again,
        finished(
            again.replace(progress=0.5, message="half"),
            status=TaskStatus.FAILURE,
            now=1_800_000_005.0,
            error=error,
            traceback="Traceback ...",
        ),
        finished(first, status=TaskStatus.SUCCESS, now=1_800_000_002.0, result_type="int"),
        cancelled_pending(pending, now=1_800_000_001.0),
        handed_back(first, counts=False, now=1_800_000_002.0),
        handed_back(first, counts=True, now=1_800_000_002.0),
        lost(first, now=1_800_000_002.0),
        lost(first.replace(attempt=3, max_attempts=3), now=1_800_000_002.0),
    ]
