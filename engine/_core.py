"""What the engine's parts share: one object, so no part reaches into another.

The engine (lifecycle, public API, dispatcher), the runner and the upkeep
each get the same :class:`Core`.  It holds the service's definitions, the
options, the backend, the watchers that waiters park on, the counters, and
``wake``, the one way to tell the dispatcher that work may be ready.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from . import _aging
from ._backend import Backend, Queue, Store
from ._define import TaskDefinition
from ._events import Events
from ._health import Health
from ._options import EngineOptions
from ._watching import Watchers

__all__ = ["Core"]


@attrs.define(eq=False)
class Core:
    """The state an engine's parts share (mutable internal)."""

    service_name: str
    definitions: Mapping[str, TaskDefinition]
    options: EngineOptions
    backend: Backend
    owner: str
    wake: Callable[[], None]
    watchers: Watchers = attrs.field(factory=Watchers)
    health: Health = attrs.field(factory=Health)
    events: Events = attrs.field(factory=Events)
    submitted: int = 0
    finished: int = 0
    #: Set once the engine stops claiming: a task claimed now is handed back.
    stopping: bool = False

    @property
    def queue(self) -> Queue:
        return self.backend.queue

    @property
    def store(self) -> Store:
        return self.backend.store

    def now(self) -> float:
        """The wall clock, for stored timestamps."""
        return self.options.clock()

    def rank(self, priority: int, not_before: float | None = None) -> float:
        """The queue rank of a task of ``priority`` (re)entering the queue now,
        to start no sooner than ``not_before`` (see ``_aging.py``)."""
        return _aging.rank(
            priority, now=self.now(), not_before=not_before, aging=self.options.priority_aging
        )
