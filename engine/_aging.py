"""Priority aging: the order in which the queue hands out waiting tasks.

**The rule.**  A waiting task's effective priority is its priority plus one
point for every ``priority_aging`` seconds it has waited since it became
ready::

    effective(now) = priority + (now - ready_at) / priority_aging

``ready_at`` is when the task (re)entered the queue (its submit, its
automatic retry, its re-queue after a lost worker or a shutdown), or its
``not_before`` if that is later.  The ready task with the highest effective
priority is claimed first; ties go to the one put first.

**The static key.**  ``now`` is the same for every waiting task, so ordering
by ``effective(now)``, highest first, is ordering by::

    rank = ready_at - priority * priority_aging

lowest first, whatever ``now`` is.  The engine computes the rank once, when
it puts or releases a task (:func:`rank`), and a backend only keeps its
entries sorted by ``(rank, put order)``: nothing is re-sorted as time passes,
and every backend orders the same way.

**The bound.**  A task of priority ``p`` ready at ``t`` is claimed before any
task of priority ``q`` that becomes ready after ``t + (q - p) *
priority_aging``.  Under a steady stream of priority-``q`` work it therefore
starts at most ``(q - p) * priority_aging`` seconds after ``t``, plus the time
it takes to work off what was ahead of it at that moment.  In turn, a large
batch of old low-priority tasks delays new high-priority work only once it
has waited that long.

``priority_aging = 0`` turns aging off: ``rank = -priority``, strict priority
and then put order.
"""

from __future__ import annotations

__all__ = ["rank"]

#: Priorities beyond this magnitude count as this much (no float overflow).
_LIMIT = 2**63


def rank(priority: int, *, now: float, not_before: float | None, aging: float) -> float:
    """The queue rank of a task of ``priority`` (re)entering the queue at ``now``.

    Args:
        priority: the task's priority (higher runs first).
        now: the engine's wall clock now.
        not_before: when the task may start, if later than ``now``.
        aging: seconds of waiting worth one point of priority
            (``EngineOptions.priority_aging``); 0 for none.

    Returns:
        The key a :class:`~errands.Queue` orders waiting entries by, lowest
        first (see the module docstring).
    """
    points = float(max(-_LIMIT, min(priority, _LIMIT)))
    if not aging:
        return -points
    ready_at = now if not_before is None else max(now, not_before)
    return ready_at - points * aging
