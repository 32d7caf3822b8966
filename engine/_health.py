"""Whether an engine is alive and ready, and the one place that rides out
storage faults.

A storage fault is weather: every loop the engine runs on its own
(dispatcher, lease keeper, sweeper, progress writer, watcher) runs under
:meth:`Health.supervise`, which catches :class:`~errands.BackendError`, logs
it once per outage, marks the engine not ready, retries with capped
exponential backoff, and marks it ready again when the loop's next step
succeeds.  Any other exception is an engine bug: it is not caught, and the
engine dies (``alive`` turns False) so that its process can exit non-zero.

A fault met by a public call (a submit that cannot be stored) marks the
engine not ready until the same kind of call succeeds again, or for at most
:data:`HOLD` seconds, so an idle server asks its clients back.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from ._errors import BackendError

__all__ = ["HOLD", "Health", "State"]

T = TypeVar("T")

log = logging.getLogger("errands.engine")

#: The first retry delay of a failing loop, in seconds; it doubles up to MAX_BACKOFF.
FIRST_BACKOFF = 0.05
#: The longest wait between two tries of a failing loop, in seconds.
MAX_BACKOFF = 5.0
#: Seconds a fault met by a public call keeps the engine not ready at most.
HOLD = 5.0


class State(enum.Enum):
    """An engine's life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    #: An engine bug ended it: its process should exit non-zero.
    DEAD = "dead"


@attrs.define
class _Fault:
    error: str
    since: float  # time.monotonic()
    until: float | None  # None: until the site succeeds again
    count: int = 1


class Health:
    """The engine's state and its current storage faults.

    Written on the engine's trio thread (a submit's fault and its clearing
    also from the thread that stored it); safe to read from any thread.
    """

    def __init__(self) -> None:
        self.state = State.STARTING
        self.died_of: str | None = None
        self._faults: dict[str, _Fault] = {}
        self._lock = threading.Lock()
        self.total_faults = 0

    # ------------------------------------------------------------------ reading

    @property
    def alive(self) -> bool:
        """False only once an engine bug ended the engine."""
        return self.state is not State.DEAD

    @property
    def ready(self) -> bool:
        """True while the engine runs and its storage answers."""
        return self.state is State.RUNNING and self.storage_error is None

    @property
    def storage_error(self) -> str | None:
        """The current storage fault (the oldest one), or None."""
        now = time.monotonic()
        with self._lock:
            live = [f for f in self._faults.values() if f.until is None or f.until > now]
        if not live:
            return None
        return min(live, key=lambda f: f.since).error

    @property
    def failing(self) -> bool:
        """Whether any site has a fault on record (cheap: for hot paths)."""
        return bool(self._faults)

    def retry_after(self) -> float:
        """Seconds a refused caller should wait before trying again."""
        return 1.0

    # ------------------------------------------------------------------ writing

    def fault(self, site: str, exc: BaseException, *, hold: float | None = None) -> None:
        """Record that ``site`` met a storage fault (logged once per outage).

        ``hold``: for a public call, how long the fault counts at most unless
        the site succeeds again first; None for a supervised loop (until its
        next step succeeds).
        """
        now = time.monotonic()
        until = None if hold is None else now + hold
        with self._lock:
            fault = self._faults.get(site)
            if fault is None:
                self._faults[site] = _Fault(error=str(exc), since=now, until=until)
            else:
                fault.count += 1
                fault.error = str(exc)
                fault.until = until
            self.total_faults += 1
        if fault is None:
            log.warning("storage fault in %s (retrying): %s", site, exc)
        else:
            log.debug("storage fault in %s again (%d): %s", site, fault.count, exc)

    def clear(self, site: str) -> None:
        """``site`` succeeded: its fault, if any, is over."""
        if site not in self._faults:  # the common path takes no lock
            return
        with self._lock:
            fault = self._faults.pop(site, None)
        if fault is not None:
            log.warning(
                "storage recovered in %s after %.1f s (%d faults)",
                site,
                time.monotonic() - fault.since,
                fault.count,
            )

    def kill(self, exc: BaseException) -> None:
        """An engine bug: the engine is dead."""
        self.state = State.DEAD
        self.died_of = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(exc)) or repr(exc)

    # ------------------------------------------------------------------ supervising

    async def supervise(self, site: str, step: Callable[[], Awaitable[object]]) -> None:
        """Run ``step()`` forever; storage faults are retried with capped backoff.

        Each successful step clears the site's fault.  Only cancellation ends
        it; an exception other than BackendError propagates (an engine bug).
        """
        backoff = FIRST_BACKOFF
        while True:
            try:
                await step()
            except BackendError as exc:
                self.fault(site, exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                if backoff != FIRST_BACKOFF or site in self._faults:
                    self.clear(site)
                    backoff = FIRST_BACKOFF

    async def retrying(self, site: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()`` until it does not raise BackendError, with capped backoff.

        For writes that must happen (a finished task's outcome): the caller
        keeps trying for as long as it runs; cancellation ends it.
        """
        backoff = FIRST_BACKOFF
        while True:
            try:
                result = await call()
            except BackendError as exc:
                self.fault(site, exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                self.clear(site)
                return result


def _leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, trio's cancellations left out."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [] if isinstance(exc, trio.Cancelled) else [exc]
