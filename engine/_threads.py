"""Long-lived worker threads for sync task functions.

Jobs are fed from the trio thread through a ``queue.SimpleQueue``.  A job goes
to an idle thread when there is one, otherwise a new thread starts for it, so
a job never waits behind a busy thread (the engine's concurrency slots are
what bound how many run).  Finished jobs pile up behind a lock and one
``TrioToken.run_sync_soon`` callback hands all of them back to the loop: a busy
pool wakes the loop once per batch, not once per task.

Measured against one ``trio.lowlevel.start_thread_soon`` per task (see
``docs/decisions.md``), this is about 1.5x faster for no-op sync tasks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

__all__ = ["WorkerThreads"]

Deliver = Callable[[outcome.Outcome[Any]], None]
_Job = tuple[Callable[[], Any], Deliver]


class WorkerThreads:
    """Threads that run sync callables and report back to one trio run.

    Create it inside the trio run it reports to; call :meth:`close` when done.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads free to take a job, counting reserved ones out
        self._lock = threading.Lock()
        self._token = trio.lowlevel.current_trio_token()
        self._done: list[tuple[Deliver, outcome.Outcome[Any]]] = []
        self._flush_scheduled = False

    def submit(self, fn: Callable[[], Any], deliver: Deliver) -> None:
        """Run ``fn()`` in a worker thread; ``deliver(outcome)`` then runs on the trio thread.

        If the trio run has finished by then, ``deliver`` is not called.
        """
        with self._lock:
            reserve = self._idle > 0
            if reserve:
                self._idle -= 1
        if not reserve:
            thread = threading.Thread(target=self._work, name="errands-worker", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._jobs.put((fn, deliver))

    def _work(self) -> None:
        jobs, lock = self._jobs, self._lock
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, deliver = job
            result = outcome.capture(fn)
            del fn, job
            with lock:
                self._done.append((deliver, result))
                self._idle += 1
                schedule = not self._flush_scheduled
                self._flush_scheduled = True
            if schedule:
                try:
                    self._token.run_sync_soon(self._flush)
                except trio.RunFinishedError:
                    pass  # the engine is gone; it handed its tasks back already

    def _flush(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._flush_scheduled = False
        for deliver, result in done:
            deliver(result)

    def close(self) -> None:
        """Let every thread end: idle ones at once, busy ones after their job."""
        for _ in self._threads:
            self._jobs.put(None)
        self._threads.clear()
