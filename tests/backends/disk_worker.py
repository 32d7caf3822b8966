"""An engine process on a diskcache directory, driven over its stdin and stdout.

Run by ``test_disk_processes.py`` as ``python disk_worker.py DIRECTORY LOG
[--lease S] [--workers N] [--sleep S]``.  It starts ``errands.start(svc,
backend="diskcache:///DIRECTORY")`` and binds nothing on the network.  Every
run of the ``record`` task appends ``<task id> <pid> <attempt>`` to LOG (one
``write`` of one line, fsynced) before it sleeps and returns ``2 * n``.

Protocol: one JSON object per line each way.  Once the engine runs, the
worker prints ``{"ready": <pid>}``.  Then each request ``{"op": ...}`` gets
one answer, ``{"ok": <value>}`` or ``{"error": <exception class>, "message":
...}``, except ``submit``, which first prints ``{"submitted": <id>, "n": <n>}``
for each task as soon as its submit has returned, so a reader that sees an id
knows the task was accepted.

Requests: ``submit`` (count, first, delay, threads, and optionally task and
args: tasks of the endpoint ``task``, ``record`` by default, for n = first,
first + 1, ..., each also given ``args``), ``start`` (task, args, delay: one
task of any endpoint; answers its id), ``status`` / ``info`` / ``get`` / ``cancel`` /
``retry`` (id), ``wait`` (ids, timeout: the final status of each), ``quit``.
``gated``, ``spin`` and ``stall`` log their runs too; ``batch`` (batchable)
logs each item of its calls to LOG.items.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

import errands

svc = errands.Service("disk_worker")
LOG = Path("record.log")
SLEEP = 0.0
_out = threading.Lock()
#: Runs allowed to ``stall`` tasks: enough that one lost again and again (to
#: kills and takeovers) still ends in success.  In test_disk_chaos.py about a
#: third of runs are lost, and a few tasks need 5 or 6 attempts; 20 makes
#: running out (about 120 * 0.35**20 there) a practical impossibility.
PATIENT = 20


def log_run() -> errands.TaskContext:
    """Append this run to LOG, durably, in one write."""
    me = errands.current_task()
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{me.id} {os.getpid()} {me.attempt}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return me


@svc.task
def record(n: int) -> int:
    log_run()
    time.sleep(SLEEP)
    return 2 * n


@svc.task
def gated(gate: str, seconds: float) -> str:
    """Runs until the file ``gate`` exists (at most ``seconds``); cannot be cancelled."""
    log_run()
    deadline = time.monotonic() + seconds
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "opened"


@svc.task(batchable=True, max_batch_size=8, max_latency_ms=50, concurrency=1)
def batch(items: list[int], gate: str = "") -> list[int]:
    """A batch call: logs ``<item> <pid> <attempt>`` per item to LOG.items (in
    one fsynced write), then waits for the file ``gate`` (if named, at most
    30 s), then returns ``2 * item`` for each item."""
    me = errands.current_task()
    lines = "".join(f"{item} {os.getpid()} {me.attempt}\n" for item in items)
    fd = os.open(LOG.with_suffix(".items"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    deadline = time.monotonic() + 30
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return [2 * item for item in items]


@svc.task(cancellable=True)
def spin(seconds: float) -> str:
    """Runs up to ``seconds``, stopping early when cancelled."""
    me = log_run()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if me.cancelled:
            return "stopped"
        time.sleep(0.005)
    return "done"


@svc.task(max_attempts=PATIENT)
async def stall(
    n: int, seed: int = 0, chance: float = 0.0, most: float = 0.0, pause: float = 0.0
) -> int:
    """Returns ``2 * n`` after ``pause`` seconds (awaited); with probability
    ``chance`` it first blocks the engine's trio thread for up to ``most``
    seconds, so the whole engine stalls (no lease renewals) and other
    processes take its claims over.  The draws depend only on ``seed``,
    ``n`` and the attempt, so a run can be replayed.
    """
    me = log_run()
    draw = random.Random(f"{seed}:{n}:{me.attempt}")
    await trio.sleep(pause)
    if draw.random() < chance:
        time.sleep(draw.uniform(0, most))  # noqa: ASYNC251  (blocking the loop is the point)
    return 2 * n


def say(message: dict[str, Any]) -> None:
    with _out:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def submit(client: errands.SyncClient, request: dict[str, Any]) -> int:
    endpoint = client[request.get("task", "record")].options(delay=request.get("delay"))
    first = int(request.get("first", 0))
    args = request.get("args", {})

    def one(n: int) -> None:
        task = endpoint.submit(n=n, **args)
        say({"submitted": task.id, "n": n})  # only now is the task known to be accepted

    # Submits from several threads at once, so they share commits.
    with ThreadPoolExecutor(max_workers=int(request.get("threads", 1))) as pool:
        for future in [pool.submit(one, n) for n in range(first, first + request["count"])]:
            future.result()
    return int(request["count"])


def wait(client: errands.SyncClient, request: dict[str, Any]) -> dict[str, str]:
    deadline = time.monotonic() + float(request["timeout"])
    final = {}
    for task_id in request["ids"]:
        remaining = max(deadline - time.monotonic(), 0.001)
        final[task_id] = client.get_task(task_id).wait(timeout=remaining).value
    return final


def answer(client: errands.SyncClient, request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "submit":
        return submit(client, request)
    if op == "wait":
        return wait(client, request)
    if op == "start":
        endpoint = client[request["task"]].options(delay=request.get("delay"))
        return endpoint.submit(**request["args"]).id
    task = client.get_task(request["id"])
    if op == "status":
        return task.get_status().value
    if op == "info":
        info = task.get_info()
        return {"status": info.status.value, "attempt": info.attempt, "retry_of": info.retry_of}
    if op == "get":
        return task.get()
    if op == "cancel":
        return task.cancel().value
    if op == "retry":
        return task.retry().id
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    global LOG, SLEEP
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.0)
    options = parser.parse_args()
    LOG, SLEEP = options.log, options.sleep
    backend = f"diskcache://{options.directory.resolve()}"
    engine = errands.start(svc, backend=backend, lease=options.lease, workers=options.workers)
    with engine as client:
        say({"ready": os.getpid()})
        for line in sys.stdin:
            request = json.loads(line)
            if request["op"] == "quit":
                break
            try:
                say({"ok": answer(client, request)})
            except Exception as exc:
                say({"error": type(exc).__name__, "message": str(exc)})
    say({"ok": "bye"})


if __name__ == "__main__":
    main()
