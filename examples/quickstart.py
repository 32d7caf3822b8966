"""Quickstart: a function service run in-process, from a plain script.

Run it with ``python examples/quickstart.py``.  It starts an engine in a
background thread with :func:`errands.start`, then submits, waits for, gets,
inspects, rejects, cancels and retries tasks, printing what happens.
"""

from __future__ import annotations

import time

import errands

svc = errands.Service("quickstart")


@svc.task
async def add(a: int, b: int) -> int:
    """An async task: it runs on the engine's trio loop."""
    return a + b


# A sync task runs in a worker thread.  ``concurrency=1`` lets one run at a
# time, so a second one waits as ``pending``; ``cancellable=True`` lets it be
# stopped mid-run too, because it checks ``current_task()`` between steps.
@svc.task(concurrency=1, cancellable=True)
def slow_square(x: int) -> int:
    """A sync task that reports its progress while it works."""
    steps = 4
    me = errands.current_task()
    for step in range(steps):
        me.raise_if_cancelled()  # stop here when cancel() was called
        time.sleep(0.025)
        me.report((step + 1) / steps, f"step {step + 1} of {steps}")
    me.report(message="done")
    return x * x


def main() -> None:
    with errands.start(svc) as client:
        # Submit returns a handle at once; wait() blocks until the task is final.
        task = client.add.submit(a=1, b=2)
        print(f"submitted add(a=1, b=2) as task {task.id}")
        print(f"add finished: {task.wait(timeout=10).value}")
        print(f"add result: {task.get()}")

        # A sync task with progress; get_info() keeps the last report.
        square = client.slow_square.submit(x=7)
        square.wait(timeout=10)
        info = square.get_info()
        print(f"slow_square result: {square.get()}")
        print(
            f"slow_square info: status={info.status.value} attempt={info.attempt} "
            f"progress={info.progress} message={info.message!r}"
        )
        if info.started_at and info.finished_at:
            ran = (info.finished_at - info.started_at).total_seconds()
            print(f"slow_square ran for {ran:.2f} s")

        # Arguments are checked at submit: every bad field is named at once.
        try:
            client.add.submit(a="1", b=2.5, c=3)
        except errands.InvalidArguments as exc:
            print(f"rejected add(a='1', b=2.5, c=3): {len(exc.errors)} bad fields")
            for error in exc.errors:
                print(f"  {error.path}: {error.message}")

        # With concurrency=1 the second slow_square waits for the first.
        first = client.slow_square.submit(x=3)
        second = client.slow_square.submit(x=4)
        print(f"second slow_square {second.id} is {second.get_status().value}")
        print(f"cancel second slow_square: {second.cancel().value}")
        try:
            second.get()
        except errands.TaskCancelled as exc:
            print(f"get() after cancel: {type(exc).__name__}")
        first.wait(timeout=10)
        print(f"first slow_square result: {first.get()}")

        # A final task can be retried with the same arguments.
        again = second.retry()
        again.wait(timeout=10)
        print(f"retried as task {again.id} (retry_of={again.get_info().retry_of})")
        print(f"retry result: {again.get()}")
    print("engine stopped")


if __name__ == "__main__":
    main()
