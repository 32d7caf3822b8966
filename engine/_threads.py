"""Long-lived worker threads for sync task functions.

A job never waits behind a busy thread (the engine's concurrency slots are
what bound how many run), yet a burst of short jobs does not wake a thread
per job either.  The pool keeps one count, ``looking``: threads awake and
about to take a job.  A submit wakes (or starts) a thread only when nobody
is looking; a thread that takes a job while more are queued first makes
sure somebody else looks (waking an idle thread, or starting one when every
thread is busy), then runs its job, then looks again.  So a burst of
no-op jobs is run by the one or two threads already awake, and a burst of
blocking ones still gets one thread per job, one wake-up after another.
Idle threads are woken newest first (the one most likely still warm).

Finished jobs pile up behind the lock and one ``TrioToken.run_sync_soon``
callback hands all of them back to the loop: a busy pool wakes the loop
once per batch, not once per task.  Jobs submitted in a :meth:`burst` (the
runs one dispatch round starts) wake no thread until the burst is over, so
that their results come back together, not a few at a time while the loop
is still submitting (a thread woken by the first job runs each as soon as
the loop lets go of the interpreter, at every line it logs).

Measured in ``benchmarks/threadpath.py`` and ``docs/performance.md``.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import outcome
import trio

__all__ = ["WorkerThreads"]

Deliver = Callable[[outcome.Outcome[Any]], None]
_Job = tuple[Callable[[], Any], Deliver]


class _Worker:
    """One thread's bell: released to wake it."""

    __slots__ = ("bell",)

    def __init__(self) -> None:
        self.bell = threading.Lock()
        self.bell.acquire()


class WorkerThreads:
    """Threads that run sync callables and report back to one trio run.

    Create it inside the trio run it reports to; call :meth:`close` when done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._idle: list[_Worker] = []  # asleep, newest last
        self._looking = 0  # awake (or being woken) and about to take a job
        self._threads = 0
        self._closed = False
        self._token = trio.lowlevel.current_trio_token()
        self._done: list[tuple[Deliver, outcome.Outcome[Any]]] = []
        self._flush_scheduled = False
        self._bursts = 0  # bursts open (the trio thread's only)

    def submit(self, fn: Callable[[], Any], deliver: Deliver) -> None:
        """Run ``fn()`` in a worker thread; ``deliver(outcome)`` then runs on the trio thread.

        If the trio run has finished by then, ``deliver`` is not called.
        """
        with self._lock:
            self._jobs.append((fn, deliver))
            start = self._looking == 0 and not self._bursts and self._call_one()
        if start:
            self._start()

    @contextlib.contextmanager
    def burst(self) -> Iterator[None]:
        """Jobs submitted inside (on the trio thread) wake a thread only when
        it ends, one wake-up for all of them."""
        self._bursts += 1
        try:
            yield
        finally:
            self._bursts -= 1
            if not self._bursts:
                with self._lock:
                    start = bool(self._jobs) and self._looking == 0 and self._call_one()
                if start:
                    self._start()

    def _call_one(self) -> bool:
        """Under the lock: get one more thread looking; True when one must
        be started (no idle thread to wake)."""
        self._looking += 1
        if self._idle:
            self._idle.pop().bell.release()
            return False
        self._threads += 1
        return True

    def _start(self) -> None:
        threading.Thread(target=self._work, name="errands-worker", daemon=True).start()

    def _work(self) -> None:
        me = _Worker()
        lock, jobs = self._lock, self._jobs
        while True:
            with lock:
                if self._closed:
                    self._looking -= 1
                    self._threads -= 1
                    return
                if not jobs:
                    self._looking -= 1
                    self._idle.append(me)
                    job = None
                    start = False
                else:
                    job = jobs.popleft()
                    self._looking -= 1
                    # More waiting and nobody else looking: call someone
                    # before running this one (which may block for long).
                    start = bool(jobs) and self._looking == 0 and self._call_one()
            if start:
                self._start()
            if job is None:
                me.bell.acquire()  # woken by _call_one (looking counted) or close
                continue
            fn, deliver = job
            result = outcome.capture(fn)
            del fn, job
            with lock:
                self._done.append((deliver, result))
                self._looking += 1
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
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._looking += len(idle)
        for worker in idle:
            worker.bell.release()
