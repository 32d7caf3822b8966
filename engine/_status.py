"""Task statuses and the state machine that moves between them."""

from __future__ import annotations

import enum

from ._errors import InvalidTransition

__all__ = ["FINAL_STATUSES", "TRANSITIONS", "TaskStatus", "check_transition"]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. ``.value`` is the name used on the wire."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for ``success``, ``failure`` and ``cancelled``: nothing moves it on."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILURE, TaskStatus.CANCELLED})

#: Every allowed move; any other is refused.  ``in_progress -> pending`` is a
#: lost lease, an automatic retry or a shutdown handing the task back.
TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (TaskStatus.PENDING, TaskStatus.IN_PROGRESS),
        (TaskStatus.PENDING, TaskStatus.CANCELLED),
        (TaskStatus.IN_PROGRESS, TaskStatus.SUCCESS),
        (TaskStatus.IN_PROGRESS, TaskStatus.FAILURE),
        (TaskStatus.IN_PROGRESS, TaskStatus.CANCELLED),
        (TaskStatus.IN_PROGRESS, TaskStatus.PENDING),
    }
)


def check_transition(old: TaskStatus, new: TaskStatus) -> None:
    """Raise :class:`~errands.InvalidTransition` unless ``old -> new`` is allowed.

    ``in_progress -> in_progress`` is allowed too: it is an update in place
    (progress) by the worker that holds the task.
    """
    if (old, new) in TRANSITIONS or (old is new is TaskStatus.IN_PROGRESS):
        return
    raise InvalidTransition(f"a task cannot move from {old.value} to {new.value}")
