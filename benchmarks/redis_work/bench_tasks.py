"""The no-op work of ``benchmarks/redis.py``: an errands service and an RQ job."""

from __future__ import annotations

import errands

svc = errands.Service("redis_bench")


@svc.task
async def noop() -> None:
    pass


def rq_noop() -> None:
    """RQ's job: the same nothing."""
