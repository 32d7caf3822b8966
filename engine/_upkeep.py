"""Upkeep: leases, recovery of dead workers' tasks, the sweeper, reconciliation.

* The **lease keeper** renews the claims of the runs of this engine (one
  ``renew_many`` per round), stops runs whose claim was lost or whose
  cancellation another process asked for, and recovers expired claims.
* **Recovery** re-queues (attempt + 1) or fails with ``WorkerLost`` the
  tasks of claims whose lease ran out.
* The **orphan finder** looks for ``in_progress`` records that no claim
  holds any more (no queue entry: a worker stalled past its lease and lost
  its claim in a way nothing else notices) and re-queues or fails them.
* The **sweeper** purges expired records and, on shared backends,
  reconciles: a ``pending`` record whose queue entry was lost is queued again.

Each round raises BackendError when storage fails; the engine's supervisor
retries the round (see ``_health.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from . import _records
from ._backend import Renewal
from ._core import Core
from ._model import StoredTask
from ._runner import Runner, Stop
from ._status import TaskStatus

__all__ = ["Upkeep"]

log = logging.getLogger("errands.engine")

PENDING = TaskStatus.PENDING
IN_PROGRESS = TaskStatus.IN_PROGRESS
#: Records read per page when reconciling.
PAGE = 500


class Upkeep:
    """The engine's housekeeping (see the module docstring)."""

    def __init__(self, core: Core, runner: Runner) -> None:
        self.core = core
        self.runner = runner

    @property
    def lease_interval(self) -> float:
        """Seconds between two rounds of the lease keeper."""
        interval = self.core.options.lease / 3
        poll = self.core.backend.poll_interval
        return interval if poll is None else min(interval, poll)

    async def keep_leases(self) -> None:
        """One round: renew this engine's claims, then recover expired ones."""
        core = self.core
        now = core.now()
        runs = list(self.runner.running.values())
        held = list(self.runner.held.values())
        if runs or held:
            answers = await core.queue.renew_many(
                [(r.claim.task_id, r.claim.token) for r in runs]
                + [(c.task_id, c.token) for c in held],
                lease_until=now + core.options.lease,
            )
            # A held claim that was lost fails its fenced start; nothing to do here.
            for run, answer in zip(runs, answers[: len(runs)], strict=True):
                if self.runner.running.get(run.claim.task_id) is not run:
                    continue  # it finished (and was acked) while we renewed
                if answer is Renewal.LOST:
                    log.warning("task %s: lease lost", run.claim.task_id)
                    run.request_stop(Stop.LOST)
                elif answer is Renewal.CANCEL_REQUESTED and run.definition.cancellable:
                    run.request_stop(Stop.CANCEL)
        await self.recover_expired(now)

    async def check_runs(self, task_ids: Collection[str]) -> None:
        """Renew now the claims of those of ``task_ids`` this engine runs (another
        process may have asked to cancel one: its renewal says so)."""
        runs = [self.runner.running[i] for i in task_ids if i in self.runner.running]
        if not runs:
            return
        core = self.core
        answers = await core.queue.renew_many(
            [(r.claim.task_id, r.claim.token) for r in runs],
            lease_until=core.now() + core.options.lease,
        )
        for run, answer in zip(runs, answers, strict=True):
            if (
                answer is Renewal.CANCEL_REQUESTED
                and run.definition.cancellable
                and self.runner.running.get(run.claim.task_id) is run
            ):
                run.request_stop(Stop.CANCEL)

    async def recover_expired(self, now: float) -> None:
        """Re-queue (or fail) the tasks of claims whose lease ran out."""
        core = self.core
        store, queue = core.store, core.queue
        for claim in await queue.expired(now):
            if (
                self.runner.holds(claim.task_id, claim.token) is not None
                or getattr(self.runner.held.get(claim.task_id), "token", None) == claim.token
            ):
                continue  # ours and alive; the next renewal extends it
            stored = await store.get(claim.task_id)
            record = stored.record if stored is not None else None
            if record is None or record.status.is_final:
                await queue.ack(claim.task_id, claim.token)
                continue
            if record.status is PENDING:
                # Claimed, but its worker died before starting it (or between
                # handing it back and releasing the claim).
                await queue.release(
                    claim.task_id,
                    claim.token,
                    not_before=record.not_before or 0.0,
                    rank=core.rank(record.priority, record.not_before),
                )
                core.wake()
                continue
            if record.token != claim.token:
                await queue.ack(claim.task_id, claim.token)  # a newer claim runs it
                continue
            again = _records.lost(record, now=now)
            if await store.transition(
                StoredTask.from_record(again), expect=IN_PROGRESS, token=claim.token
            ):
                if again.status is PENDING:
                    await queue.release(claim.task_id, claim.token, rank=core.rank(record.priority))
                    core.events.lost(record.id, record.name, record.attempt, final=False)
                    core.wake()
                else:
                    await queue.ack(claim.task_id, claim.token)
                    core.finished += 1
                    core.events.lost(record.id, record.name, record.attempt, final=True)
            core.watchers.notify(claim.task_id)

    async def recover_at_start(self) -> None:
        """What a crash may have left: entries lost, claims and records of dead workers."""
        await self.reconcile()
        await self.recover_expired(self.core.now())
        await self.recover_orphans()

    async def recover_orphans(self) -> None:
        """Re-queue (or fail) ``in_progress`` records whose claim is gone.

        A record is an orphan when no queue entry holds its id at all (an
        ``in_progress`` record's entry is removed only after its final write).
        The compare-and-set on status and token makes a record that moved on
        meanwhile (finished, or started by a newer claim) a no-op.
        """
        core = self.core
        store, queue = core.store, core.queue
        offset = 0
        while True:
            rows = await store.list(status=IN_PROGRESS, limit=PAGE, offset=offset)
            for stored in rows:
                if stored.id in self.runner.running or await queue.contains(stored.id):
                    continue
                record = stored.record
                again = _records.lost(record, now=core.now())
                if not await store.transition(
                    StoredTask.from_record(again), expect=IN_PROGRESS, token=record.token
                ):
                    continue
                if again.status is PENDING:
                    await queue.put(
                        record.id,
                        name=record.name,
                        priority=record.priority,
                        rank=core.rank(record.priority),
                    )
                    core.events.lost(record.id, record.name, record.attempt, final=False)
                    core.wake()
                else:
                    core.finished += 1
                    core.events.lost(record.id, record.name, record.attempt, final=True)
                core.watchers.notify(record.id, again if again.status.is_final else None)
            if len(rows) < PAGE:
                return
            offset += PAGE

    async def sweep(self) -> None:
        """One round of the sweeper: purge expired records, then reconcile."""
        core = self.core
        purged = await core.store.purge_expired(core.now())
        if purged:
            log.debug("purged %d expired tasks", purged)
        if core.backend.poll_interval is not None:
            await self.reconcile()

    async def reconcile(self) -> None:
        """Put back pending records whose queue entry was lost between two writes."""
        core = self.core
        offset = 0
        while True:
            rows = await core.store.list(status=PENDING, limit=PAGE, offset=offset)
            for stored in rows:
                if not await core.queue.contains(stored.id):
                    record = stored.record
                    await core.queue.put(
                        record.id,
                        name=record.name,
                        priority=record.priority,
                        not_before=record.not_before or 0.0,
                        rank=core.rank(record.priority, record.not_before),
                    )
                    log.warning("task %s had no queue entry; re-queued", record.id)
                    core.wake()
            if len(rows) < PAGE:
                return
            offset += PAGE
