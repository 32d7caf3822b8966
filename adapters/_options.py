"""The HTTP app's options, defined and checked once.

``create_app`` and ``errands serve`` both build one :class:`HTTPOptions`, so
each default and each check exists here only (the engine's own options are
:class:`errands.EngineOptions`).  Every cap has a safe default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

__all__ = ["HTTP_DEFAULTS", "HTTPOptions"]


def _count(minimum: int, *, optional: bool = False) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{attribute.name} must be a whole number >= {minimum}, got {value!r}")

    return check


def _seconds(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise ValueError(f"{attribute.name} must be a number of seconds >= 0, got {value!r}")


def _hosts(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return tuple(str(h) for h in value)


@attrs.frozen(kw_only=True)
class HTTPOptions:
    """How the HTTP app answers.

    Attributes:
        bentoml_compat: report statuses as BentoML's clients expect
            (``completed``, ``failed``, ``canceled``).
        max_body_size: the largest request body, in bytes (413 above).
        max_pending: refuse submits and retries with 429 (and
            ``Retry-After``) while this many tasks wait (None: no limit).
        max_wait: the longest a ``?wait=`` long poll on status/get, or a
            ``POST /tasks/wait``, is held, in seconds (a larger ``wait`` is a 400).
        max_held: requests held open at once (long polls, event streams,
            ``/tasks/wait``); past it, 503 with ``Retry-After``.
        max_wait_ids: task ids in one ``POST /tasks/wait``.
        max_parts: parts in one multipart submit.
        hide_errors: send a failed task's error type only, not its message.
        expose_tracebacks: send a failed task's traceback in its status
            (for a deployer's own tools; off by default: it shows code).
        allowed_hosts: the ``Host`` names answered (``"*"``: any); None
            answers every name (a host app that checks them itself).
        read_timeout: seconds a request body may take to arrive (408 past
            it), so a client that stalls half way holds nothing for long.
            A streamed ``submit_many`` (JSON Lines) has no total time: each
            of its chunks must arrive within it instead.
        batch_page: task ids in one ``GET /batches/<id>`` page by default.
        max_batch_page: the largest ``?limit=`` that page takes (400 above).
        dashboard: serve the live dashboard at ``GET /dashboard`` (behind
            the token when auth is on; see ``errands.adapters._dashboard``).
    """

    bentoml_compat: bool = False
    max_body_size: int = attrs.field(default=16 * 1024 * 1024, validator=_count(1))
    max_pending: int | None = attrs.field(default=100_000, validator=_count(1, optional=True))
    max_wait: float = attrs.field(default=60.0, validator=_seconds)
    max_held: int = attrs.field(default=1024, validator=_count(1))
    max_wait_ids: int = attrs.field(default=10_000, validator=_count(1))
    max_parts: int = attrs.field(default=100, validator=_count(1))
    hide_errors: bool = False
    expose_tracebacks: bool = False
    allowed_hosts: tuple[str, ...] | None = attrs.field(default=None, converter=_hosts)
    read_timeout: float = attrs.field(default=30.0, validator=[_seconds, attrs.validators.gt(0)])
    batch_page: int = attrs.field(default=1000, validator=_count(1))
    max_batch_page: int = attrs.field(default=10_000, validator=_count(1))
    dashboard: bool = True

    def __attrs_post_init__(self) -> None:
        if self.batch_page > self.max_batch_page:
            raise ValueError(
                f"batch_page ({self.batch_page}) must not exceed max_batch_page "
                f"({self.max_batch_page})"
            )


HTTP_DEFAULTS = HTTPOptions()
