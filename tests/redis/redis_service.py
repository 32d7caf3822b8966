"""The service the Redis multi-process tests run in ``errands serve`` and
``errands worker`` processes (and in the test process itself).

``record`` appends ``<task id> <pid> <attempt>`` to the file named by
``ERRANDS_TEST_LOG`` (one fsynced write per run), sleeps ``pause`` seconds
and returns ``2 * n``.
"""

from __future__ import annotations

import os
import time

import trio

import errands

svc = errands.Service("redis_multi")


def _log_run() -> None:
    me = errands.current_task()
    path = os.environ.get("ERRANDS_TEST_LOG")
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{me.id} {os.getpid()} {me.attempt}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@svc.task(max_attempts=5)
def record(n: int, pause: float = 0.0) -> int:
    _log_run()
    time.sleep(pause)
    return 2 * n


@svc.task
async def slow(seconds: float) -> str:
    _log_run()
    await trio.sleep(seconds)
    return "done"
