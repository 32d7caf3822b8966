"""The options of an engine, defined and checked once.

:func:`~errands.open_engine`, :func:`~errands.start`,
``errands.adapters.asgi.create_app`` and the ``errands serve`` / ``errands
worker`` commands all build one :class:`EngineOptions`, so each default and
each check exists here only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["DEFAULTS", "EngineOptions"]


def _seconds(*, positive: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value > 0 if positive else value >= 0)
        )
        if not ok:
            bound = "a positive" if positive else "a non-negative"
            raise ValueError(f"{attribute.name} must be {bound} number of seconds, got {value!r}")

    return check


def _count(minimum: int) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{attribute.name} must be a whole number >= {minimum}, got {value!r}")

    return check


def _callable(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{attribute.name} must be callable, got {value!r}")


@attrs.frozen(kw_only=True)
class EngineOptions:
    """How an engine runs; every field is checked when the options are built.

    Attributes:
        ttl: seconds a finished task is kept (tasks may set their own).
        lease: seconds a claim lives without renewal; a dead worker's task is
            re-run after this.
        workers: the engine's task slots: how many tasks may run at once,
            all endpoints together; 0 makes a pure client that submits and
            reads but runs nothing.  (Not server processes: ``errands serve
            --workers`` counts those.)
        grace: seconds running tasks get to finish at shutdown; then async
            ones are cancelled and all unfinished ones go back to the queue.
        max_attempts: runs allowed for a task whose worker keeps dying.
        sweep_interval: seconds between purges of expired tasks.
        max_delay: the longest ``delay`` a submit may ask for, in seconds
            (default 30 days).
        max_key_length: the longest idempotency key, in characters.
        max_result_size: the largest result a task may return, in bytes
            (encoded); a larger one fails the task with ``InvalidResult``.
        max_message_length: the longest progress message, in characters.
        max_image_pixels: the most pixels an image argument may have (width
            times height); images are decoded in a worker thread.
        priority_aging: seconds of waiting worth one point of priority: a
            waiting task's effective priority is its priority plus the
            seconds it has waited divided by this, so low-priority work is
            never starved (the rule and its bound: ``docs/decisions.md``,
            "Priority aging").  0 turns aging off: strict priority, then
            submit order.  Every engine sharing a backend should use the
            same value.
        clock: the wall clock for stored timestamps (seconds since the epoch).

    Raises:
        ValueError: naming the bad option.
    """

    ttl: float = attrs.field(default=86400.0, validator=_seconds(positive=True))
    lease: float = attrs.field(default=30.0, validator=_seconds(positive=True))
    workers: int = attrs.field(default=32, validator=_count(0))
    grace: float = attrs.field(default=10.0, validator=_seconds(positive=False))
    max_attempts: int = attrs.field(default=3, validator=_count(1))
    sweep_interval: float = attrs.field(default=60.0, validator=_seconds(positive=True))
    max_delay: float = attrs.field(default=30 * 86400.0, validator=_seconds(positive=False))
    max_key_length: int = attrs.field(default=256, validator=_count(1))
    max_result_size: int = attrs.field(default=256 * 1024 * 1024, validator=_count(1))
    max_message_length: int = attrs.field(default=4096, validator=_count(1))
    max_image_pixels: int = attrs.field(default=25_000_000, validator=_count(1))
    priority_aging: float = attrs.field(default=60.0, validator=_seconds(positive=False))
    clock: Callable[[], float] = attrs.field(default=time.time, validator=_callable, repr=False)


#: The defaults, for signatures that spell the options out.
DEFAULTS = EngineOptions()
